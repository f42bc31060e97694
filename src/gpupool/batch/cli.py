"""`gpupool batch ...`: submit a JSONL file as a batch, watch it, fetch results, cancel, estimate.

    gpupool batch estimate requests.jsonl                       # cost at current prices, nothing runs
    gpupool batch submit requests.jsonl --endpoint /v1/embeddings --max-share 0.3 --wait
    gpupool batch status batch_...        gpupool batch results batch_... -o out.jsonl
    gpupool batch cancel batch_...        gpupool batch list

Talks to a gateway over HTTP with an API key (`--api-key` or GPUPOOL_API_KEY, else a
running devnet's key and URL, as `gpupool status` finds them); a plain client install is
enough (no torch, no provider code).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import httpx
import typer

from gpupool.cli_support import default_api_key, default_gateway

batch_app = typer.Typer(no_args_is_help=True, help="Batch jobs: the OpenAI Batch API over the pool.")

GatewayOpt = Annotated[Optional[str], typer.Option(
    "--gateway", envvar="GPUPOOL_BASE_URL", help="gateway base URL [default: a running devnet's, else http://127.0.0.1:8000]")]
KeyOpt = Annotated[Optional[str], typer.Option("--api-key", envvar="GPUPOOL_API_KEY", help="API key")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
DEFAULT_GATEWAY = None  # default_gateway(): a running devnet's URL, else http://127.0.0.1:8000


def _client(gateway: str | None, api_key: str | None) -> httpx.Client:
    api_key = default_api_key(api_key)  # a running devnet's development key, as `gpupool status` finds it
    if not api_key:
        typer.echo("error: pass --api-key, set GPUPOOL_API_KEY, or start `gpupool devnet`", err=True)
        raise typer.Exit(2)
    base = default_gateway(gateway).rstrip("/").removesuffix("/v1")
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {api_key}"}, timeout=120)


def _call(client: httpx.Client, method: str, path: str, **kw: Any) -> Any:
    try:
        r = client.request(method, path, **kw)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach {client.base_url}: {exc}", err=True)
        raise typer.Exit(1) from None
    if r.status_code >= 400:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:300]
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1)
    return r


def _upload(client: httpx.Client, file: Path) -> str:
    if not file.is_file():
        typer.echo(f"error: no such file: {file}", err=True)
        raise typer.Exit(2)
    with file.open("rb") as f:
        r = _call(client, "POST", "/v1/files", files={"file": (file.name, f)}, data={"purpose": "batch"})
    return str(r.json()["id"])


def _endpoint_of(file: Path) -> str:
    with file.open("rb") as f:
        first = f.readline()
    try:
        return str(json.loads(first)["url"])
    except (ValueError, KeyError, TypeError):
        return "/v1/embeddings"


def _summary(b: dict[str, Any]) -> str:
    c = b["request_counts"]
    g = b.get("gpupool", {})
    return (f"{b['id']}  {b['status']:<11} {c['completed']:,}/{c['total']:,} done, {c['failed']:,} failed, "
            f"cost {g.get('cost_ucr', 0):,} µcr, top provider share {g.get('provider_share_reached', 0):.0%}")


@batch_app.command()
def estimate(file: Path, endpoint: Annotated[Optional[str], typer.Option(help="default: the first line's url")] = None,
             gateway: GatewayOpt = DEFAULT_GATEWAY, api_key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """What FILE would cost at the pool's current prices (uploads it to check it, runs nothing)."""
    with _client(gateway, api_key) as client:
        file_id = _upload(client, file)
        try:
            body = _call(client, "POST", "/v1/batches/estimate",
                         json={"input_file_id": file_id, "endpoint": endpoint or _endpoint_of(file)}).json()
        finally:
            client.delete(f"/v1/files/{file_id}")
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    typer.echo(f"{body['requests']:,} requests ({body['inputs']:,} inputs) for {body['model']} at {body['endpoint']}, "
               f"{body['providers']} provider(s) now")
    cost = body.get("cost_ucr")
    if cost is None:
        typer.echo(f"no estimate: {body.get('note', '')}")
        return
    typer.echo(f"estimated cost: {cost['low']:,} µcr (cheapest providers) / {cost['typical']:,} µcr (median price); "
               f"at most {cost['high']:,} µcr")
    typer.echo(f"a cap (--max-cost) of {cost['high']:,} µcr can never stop this batch")


@batch_app.command()
def submit(file: Path,
           endpoint: Annotated[Optional[str], typer.Option(help="default: the first line's url")] = None,
           max_share: Annotated[Optional[float], typer.Option(
               "--max-share", help="privacy cap: most share of items one provider may see (0-1)")] = None,
           max_cost: Annotated[Optional[int], typer.Option("--max-cost", help="cost cap in µcr")] = None,
           metadata: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE, repeatable")] = None,
           wait: Annotated[bool, typer.Option("--wait", help="follow it with a progress bar until it ends")] = False,
           gateway: GatewayOpt = DEFAULT_GATEWAY, api_key: KeyOpt = None) -> None:
    """Upload FILE (JSONL, one request per line) and start a batch over it."""
    meta: dict[str, str] = {}
    for kv in metadata or []:
        k, sep, v = kv.partition("=")
        if not sep:
            typer.echo(f"error: --metadata {kv!r}: expected KEY=VALUE", err=True)
            raise typer.Exit(2)
        meta[k] = v
    if max_share is not None:
        meta["gpupool_max_provider_share"] = str(max_share)
    if max_cost is not None:
        meta["gpupool_max_cost_ucr"] = str(max_cost)
    with _client(gateway, api_key) as client:
        file_id = _upload(client, file)
        b = _call(client, "POST", "/v1/batches", json={"input_file_id": file_id,
                                                       "endpoint": endpoint or _endpoint_of(file),
                                                       "completion_window": "24h", "metadata": meta}).json()
        typer.echo(b["id"])
        if wait:
            b = _follow(client, b["id"])
            typer.echo(_summary(b), err=True)
            if b["status"] != "completed":
                raise typer.Exit(1)


def _follow(client: httpx.Client, batch_id: str) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(batch_id, total=None)
        while True:
            b = _call(client, "GET", f"/v1/batches/{batch_id}").json()
            c = b["request_counts"]
            bar.update(task, total=c["total"], completed=c["completed"] + c["failed"],
                       description=f"{batch_id} {b['status']}")
            if b["status"] in ("completed", "failed", "expired", "cancelled"):
                return b
            time.sleep(0.5)


@batch_app.command()
def status(batch_id: str, gateway: GatewayOpt = DEFAULT_GATEWAY, api_key: KeyOpt = None,
           as_json: JsonOpt = False) -> None:
    """A batch's status, counts, cost and privacy share."""
    with _client(gateway, api_key) as client:
        b = _call(client, "GET", f"/v1/batches/{batch_id}").json()
    typer.echo(json.dumps(b, indent=2) if as_json else _summary(b))


@batch_app.command("list")
def list_batches(limit: int = 20, gateway: GatewayOpt = DEFAULT_GATEWAY, api_key: KeyOpt = None) -> None:
    """This account's batches, newest first."""
    with _client(gateway, api_key) as client:
        body = _call(client, "GET", "/v1/batches", params={"limit": limit}).json()
    for b in body["data"]:
        typer.echo(_summary(b))


@batch_app.command()
def results(batch_id: str,
            output: Annotated[Optional[Path], typer.Option("--output", "-o",
                                                           help="write here (default: stdout)")] = None,
            errors: Annotated[bool, typer.Option("--errors", help="the error file instead of the output")] = False,
            gateway: GatewayOpt = DEFAULT_GATEWAY, api_key: KeyOpt = None) -> None:
    """Download a finished batch's output (or error) lines, in input order."""
    with _client(gateway, api_key) as client:
        b = _call(client, "GET", f"/v1/batches/{batch_id}").json()
        file_id = b.get("error_file_id" if errors else "output_file_id")
        if not file_id:
            what = "errors" if errors else "output"
            typer.echo(f"error: batch {batch_id} is {b['status']} and has no {what} file", err=True)
            raise typer.Exit(1)
        with client.stream("GET", f"/v1/files/{file_id}/content") as r:
            sink = output.open("wb") if output else sys.stdout.buffer
            try:
                for chunk in r.iter_bytes():
                    sink.write(chunk)
            finally:
                if output:
                    sink.close()
                else:
                    sink.flush()


@batch_app.command()
def cancel(batch_id: str, gateway: GatewayOpt = DEFAULT_GATEWAY, api_key: KeyOpt = None) -> None:
    """Stop a batch: nothing new starts; unfinished items go to its error file."""
    with _client(gateway, api_key) as client:
        b = _call(client, "POST", f"/v1/batches/{batch_id}/cancel").json()
    typer.echo(_summary(b))
