"""`gpupool account`, `gpupool providers`, `gpupool status`: the network and your money, as tables.

HTTP clients of a gateway only (no database, no torch). Money is shown in credits
with µcr in parentheses (1 credit = 1,000,000 µcr), as everywhere in the CLI;
`--json` prints the gateway's own body instead.

    gpupool status                       # the running devnet's gateway, else 127.0.0.1:8000
    gpupool account --api-key gp-...     # or GPUPOOL_API_KEY; a running devnet's key by default
    gpupool providers --gateway https://gw.example
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Optional

import httpx
import typer

from gpupool.cli_support import credits, default_api_key, default_gateway, running_devnet

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

GatewayOpt = Annotated[Optional[str], typer.Option(
    "--gateway", help="gateway base URL, http(s):// or ws(s):// (default: the running devnet's, else "
    "http://127.0.0.1:8000)")]
KeyOpt = Annotated[Optional[str], typer.Option("--api-key", envvar="GPUPOOL_API_KEY",
                                               help="API key (default: the running devnet's development key)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the gateway's JSON")]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _call(url: str, api_key: str | None = None, missing: str | None = None) -> Any:
    """GET a gateway URL; one line and exit 1 on any failure. `missing`: the message for a 404."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(url, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach {url}: {exc} (is the gateway running? pass --gateway)") from None
    if response.status_code == 404 and missing is not None:
        raise _fail(missing)
    if response.status_code != 200:
        try:
            detail = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            detail = response.text[:200]
        raise _fail(f"{url} answered {response.status_code}: {detail}")
    return response.json()


def _console() -> Console:
    # Imported here: only the views print with rich, not every process the gpupool command starts.
    from rich.console import Console

    # Wide enough for node ids and money; soft wrap off so tables are not cut when piped.
    return Console(width=max(Console().width, 120), soft_wrap=False)


def _table(title: str) -> Table:
    from rich.table import Table

    return Table(title=title, title_justify="left")


def account(gateway: GatewayOpt = None, api_key: KeyOpt = None, limit: Annotated[int, typer.Option(
            min=1, max=100, help="how many recent charges")] = 10, as_json: JsonOpt = False) -> None:
    """Your account on a gateway: balance, holds and why, recent charges (credits, with µcr)."""
    key = default_api_key(api_key)
    if not key:
        raise _fail("pass --api-key or set GPUPOOL_API_KEY (create a key with `gpupool keys create`)")
    base = default_gateway(gateway)
    body = _call(f"{base}/v1/account?limit={limit}", key)
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    out = _console()
    out.print(f"account [bold]{body['account']}[/] on {base}")
    out.print(f"  balance   {credits(body['balance'])}   spendable now")
    out.print(f"  held      {credits(body['held'])}")
    for hold in body.get("holds", []):
        out.print(f"    - {credits(hold['amount_ucr'])}: {hold['reason']}", highlight=False)
    if body.get("in_flight") or body.get("unsettled_charges"):
        out.print(f"  in flight {body['in_flight']} requests; charged, settling: {credits(body['unsettled_charges'])}")
    charges = body.get("recent_charges", [])
    if not charges:
        out.print("  no charges yet")
        return
    # Charges are a few µcr each: the column is in µcr (its header says so), credits would be all zeros.
    table = _table("recent charges (newest first)")
    for col, kw in (("at (UTC)", {"no_wrap": True}), ("request", {"no_wrap": True}), ("model", {}),
                    ("provider", {"no_wrap": True}), ("status", {}), ("tokens in/out", {"justify": "right"}),
                    ("cost (µcr)", {"justify": "right", "no_wrap": True})):
        table.add_column(col, **kw)
    for c in charges:
        table.add_row(str(c.get("at") or "")[:19].replace("T", " "), c["request_id"][:24], c["model"],
                      str(c["provider"])[:14], c["status"], f"{c['prompt_tokens']}/{c['completion_tokens']}",
                      f"{c['cost']:,}")
    out.print(table)


def providers(gateway: GatewayOpt = None, as_json: JsonOpt = False) -> None:
    """Providers connected to a gateway: region, models and prices, load, RTT, reputation."""
    base = default_gateway(gateway)
    rows: list[dict[str, Any]] = []
    after = ""
    while True:  # the list is paged: follow it to the end
        page = _call(f"{base}/v1/providers?limit=100" + (f"&after={after}" if after else ""),
                     missing=f"{base} has no /v1/providers (an older gateway): try `gpupool market`")
        rows += page.get("data", [])
        if not page.get("has_more") or not page.get("last_id"):
            break
        after = page["last_id"]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    out = _console()
    if not rows:
        out.print(f"no providers connected to {base}")
        return
    table = _table(f"{len(rows)} providers on {base} (prices in µcr per 1M tokens in/out)")
    for col in ("provider", "region", "state", "models (price in/out)", "load", "RTT ms", "GFLOP/s", "reputation",
                "audits ok/failed"):
        table.add_column(col, no_wrap=col != "models (price in/out)")
    for p in rows:
        models = ", ".join(f"{m['name']} ({m['price_in']:,}/{m['price_out']:,})" for m in p.get("models", []))
        load = p.get("load") or {}
        audits = p.get("audits") or {}
        gflops = p.get("verified_gflops")
        table.add_row(p["id"][:14], p.get("region", ""), p.get("state", ""), models,
                      f"{load.get('in_flight', 0)}/{load.get('max_concurrency', 0)}",
                      "-" if p.get("rtt_ms") is None else f"{p['rtt_ms']:.1f}",
                      "-" if gflops is None else f"{gflops:,.1f}", f"{p.get('reputation', 0):.2f}",
                      f"{audits.get('passed', 0)}/{audits.get('failed', 0)}")
    out.print(table)


def status(gateway: GatewayOpt = None, as_json: JsonOpt = False) -> None:
    """A gateway at a glance: health, models, providers, checkers."""
    base = default_gateway(gateway)
    health = _call(f"{base}/healthz")
    checkers = _checkers(base)
    if as_json:
        typer.echo(json.dumps({**health, "checkers": checkers, "gateway": base}, indent=2))
        return
    out = _console()
    out.print(f"gateway {base}: [bold]{health.get('status', '?')}[/] (gpupool {health.get('version', '?')})")
    out.print(f"  providers connected: {health.get('providers', 0)}")
    out.print(f"  checkers connected : {'unknown (this gateway does not say)' if checkers is None else checkers}")
    models = health.get("models", [])
    out.print(f"  models             : {', '.join(models) if models else 'none yet'}")
    try:
        market = httpx.get(f"{base}/v1/market", timeout=10).json().get("data", [])
    except (httpx.HTTPError, ValueError):
        return
    if market:
        table = _table("models (prices in µcr per 1M tokens)")
        for col in ("model", "task", "providers", "price in", "price out", "slots in use", "verified"):
            table.add_column(col)
        rng: Callable[[dict[str, int] | None], str] = lambda r: "-" if not r else (
            f"{r['min']:,}" if r["min"] == r["max"] else f"{r['min']:,}-{r['max']:,}")
        for m in market:
            cap = m.get("capacity") or {}
            table.add_row(m["model"], m["task"], str(m["providers"]), rng(m.get("price_in")), rng(m.get("price_out")),
                          f"{cap.get('in_flight', 0)}/{cap.get('slots', 0)}", "yes" if m.get("verified") else "no")
        out.print(table)


def _checkers(base: str) -> int | None:
    """Checkers connected: from /v1/stats where the gateway has it, else /admin/audits with the devnet's token."""
    try:
        r = httpx.get(f"{base}/v1/stats", timeout=10)
        if r.status_code == 200 and "checkers" in r.json():
            return int(r.json()["checkers"])
        devnet = running_devnet()
        if devnet and devnet.get("admin_token") and default_gateway(devnet.get("url")) == base:
            r = httpx.get(f"{base}/admin/audits", timeout=10,
                          headers={"Authorization": f"Bearer {devnet['admin_token']}"})
            if r.status_code == 200:
                return len(r.json().get("checkers", []))
    except (httpx.HTTPError, ValueError):
        pass
    return None


def register(app: typer.Typer) -> None:
    """Add the commands to the `gpupool` app."""
    app.command("account")(account)
    app.command("providers")(providers)
    app.command("status")(status)
