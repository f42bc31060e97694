"""The one `gpupool` command: gateway, provider, checker, market, ask, demo.

Registered here from their own modules: `gpupool keys ...` (cli_keys.py), `gpupool devnet` (cli_devnet.py),
`gpupool ledger ...` (ledger/cli.py), `gpupool batch ...` (batch/cli.py), `gpupool sim ...` (sim/cli.py) and
the money views `account`, `providers`, `status` (cli_views.py).

Flags map one-to-one onto the fields of `GatewaySettings` / `ProviderSettings`
(a test checks that), and each also reads `GPUPOOL_<ROLE>_<FIELD>` and `--config FILE`.
Every role also takes `-v/--verbose`, `-q/--quiet`, `--log-format` and `--log-requests`
(gpupool/logs.py). Ordinary mistakes end in one line naming the fix and exit status 1
(cli_support.friendly); a bad flag value exits 2.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from gpupool import config, errors, logs
from gpupool.cli_support import (
    HELP,
    credits,
    default_api_key,
    default_gateway,
    fail,
    friendly,
)
from gpupool.ledger.cli import ledger_app
from gpupool.urls import ws_url

app = typer.Typer(help="gpupool: pool idle GPUs into one OpenAI-compatible inference network.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings=HELP)
from gpupool.cli_keys import keys_app  # noqa: E402 - the gateway's store, imported only when a command runs

app.add_typer(keys_app, name="keys")
app.add_typer(ledger_app, name="ledger")
from gpupool.batch.cli import batch_app  # noqa: E402 - an HTTP client only (no torch, no database)

app.add_typer(batch_app, name="batch")
from gpupool.sim.cli import sim_app  # noqa: E402 - the simulator (numpy imported only when it runs)

app.add_typer(sim_app, name="sim")
from gpupool import cli_views  # noqa: E402 - account, providers, status (HTTP clients only)
from gpupool.cli_views import GatewayOpt  # noqa: E402 - the one --gateway option

cli_views.register(app)
from gpupool.cli_devnet import devnet  # noqa: E402 - the local network (its modules imported when it runs)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML settings file")]


LOG_OPTIONS = [
    ("verbose", int, typer.Option("--verbose", "-v", count=True, show_default=False, help="also log one line per request "
                                  "(-vv: debug lines too)"), 0),
    ("quiet", bool, typer.Option("--quiet", "-q", help="log warnings and errors only"), False),
    ("log_format", str, typer.Option("--log-format", help="text, or json (one object per line)"), "text"),
    ("log_requests", bool, typer.Option("--log-requests", help="one line per request (as -v)"), False),
]


def _run(coro: object) -> None:
    try:
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]


def settings_command(cls: type, run: Callable[[Any], None], doc: str, group: bool = False) -> Callable[..., None]:
    """A command whose flags are generated from the fields of a settings dataclass.

    Each field becomes `--field-name` (or its `flag` metadata), defaulting to None so
    that unset flags fall through to the environment, the TOML file and the defaults.
    With `group`, it is the callback of a command group and does nothing when a
    sub-command (e.g. `gpupool provider earnings`) was named instead.
    """
    hints = typing.get_type_hints(cls)
    params = []
    if group:
        params.append(inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context))
    for f in dataclasses.fields(cls):
        base = hints[f.name]
        if typing.get_origin(base) in (typing.Union, types.UnionType):
            base = next(a for a in typing.get_args(base) if a is not type(None))
        flag = "--" + (f.metadata.get("flag") or f.name).replace("_", "-")
        decls = [flag, f"--no-{flag[2:]}"] if base is bool else [flag]
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata.get("help", "") + (f" (default: {default})" if default not in (None, "") else "")
        option = typer.Option("/".join(decls) if base is bool else flag, help=help_text, show_default=False)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                        annotation=Annotated[Optional[base], option], default=None))
    params.append(inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, annotation=ConfigOpt, default=None))
    for name, kind, option, default in LOG_OPTIONS:
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                        annotation=Annotated[kind, option], default=default))

    def command(*args: Any, **kwargs: Any) -> None:
        ctx = kwargs.pop("ctx", args[0] if args else None)
        if ctx is not None and ctx.invoked_subcommand:
            return
        verbose, quiet = kwargs.pop("verbose"), kwargs.pop("quiet")
        log_format, log_requests = kwargs.pop("log_format"), kwargs.pop("log_requests")
        config_file = kwargs.pop("config_file")
        settings = None
        try:
            logs.setup(-1 if quiet else verbose, log_format, log_requests)
            settings = config.load(cls, config_file, kwargs)
            run(settings)
        except ValueError as exc:
            raise fail(str(exc), 2) from None
        except (OSError, LookupError, errors.StartupError) as exc:
            raise fail(friendly(exc, port=getattr(settings, "port", None)) or f"{exc}") from None
        except Exception as exc:
            message = friendly(exc)
            if message is None:
                raise
            raise fail(message) from None

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = doc
    return command


def _run_gateway(settings: config.GatewaySettings) -> None:
    from gpupool.gateway.web.server import serve

    _run(serve(settings))


def _run_provider(settings: config.ProviderSettings) -> None:
    from gpupool.provider.runner import serve

    _run(serve(settings))


app.command("gateway")(settings_command(
    config.GatewaySettings, _run_gateway,
    "Run a gateway: the OpenAI-compatible API and the endpoint providers connect to."))
def _run_checker(settings: config.CheckerSettings) -> None:
    from gpupool.checker.runner import serve

    settings.gateways = [ws_url(u) for u in settings.gateways]  # http(s):// works too
    _run(serve(settings))


app.command("checker")(settings_command(
    config.CheckerSettings, _run_checker,
    "Run a checker: hold reference models, re-run audited requests, send signed verdicts to gateways."))

provider_app = typer.Typer(invoke_without_command=True, no_args_is_help=False, rich_markup_mode=None,
                           context_settings=HELP)
provider_app.callback()(settings_command(
    config.ProviderSettings, _run_provider,
    "Run a provider: load models and serve them to one or more gateways "
    "(`gpupool provider earnings` shows what it has earned).", group=True))
app.add_typer(provider_app, name="provider")



def _get(url: str, api_key: str | None = None) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(url, timeout=10, headers=headers)
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {url}: {exc} (is the gateway running? pass --gateway)") from None
    if response.status_code != 200:
        try:
            detail = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            detail = response.text[:300]
        raise fail(f"{url} answered {response.status_code}: {detail}")
    return response.json()


@provider_app.command("earnings")
def provider_earnings(
    gateway: GatewayOpt = None,
    key_file: Annotated[Path, typer.Option(help="the provider's identity key")] = config.default_home() / "provider.key",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show this provider's earnings on a gateway's ledger: held (in the audit window) and withdrawable."""
    import json

    from gpupool.identity import Identity

    if not key_file.exists():
        raise fail(f"no provider key at {key_file} (pass --key-file)", 2)
    node_id = Identity.load_or_create(key_file).node_id
    body = _get(f"{default_gateway(gateway)}/v1/providers/{node_id}/earnings")
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    typer.echo(f"provider {node_id}")
    for what in ("held", "withdrawable", "staked"):
        typer.echo(f"  {what:<13} {credits(body[what]):>36}")
    typer.echo(f"  held earnings become withdrawable {body['audit_window_s']:.0f} s after settlement")


@provider_app.command("unsuspend")
def provider_unsuspend(
    node_id: str,
    gateway: GatewayOpt = None,
    admin_token: Annotated[str, typer.Option(envvar="GPUPOOL_GATEWAY_ADMIN_TOKEN",
                                             help="the gateway's admin token")] = "",
) -> None:
    """Lift a provider's suspension on a gateway (the operator's call: e.g. after a mistaken audit)."""
    import httpx

    url = f"{default_gateway(gateway)}/admin/providers/{node_id}/unsuspend"
    try:
        r = httpx.post(url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=10)
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {url}: {exc} (is the gateway running? pass --gateway)") from None
    if r.status_code != 200:
        raise fail(f"{url} answered {r.status_code}: {r.text[:300]}")
    typer.echo(f"provider {node_id}: suspension lifted")


@app.command()
def market(gateway: GatewayOpt = None,
           as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """List what the network offers: per model, providers, prices, capacity and measured speed."""
    import json

    body = _get(f"{default_gateway(gateway)}/v1/market")
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    typer.echo(f"prices in µcr per 1M tokens, per image in µcr (1 credit = 1,000,000 µcr); gateway fee "
               f"{body['fee_bps'] / 100:g}%")
    typer.echo(f"{'model':<16} {'task':<11} {'prov':>4} {'price in':>17} {'price out':>17} {'per image':>13} "
               f"{'slots':>9} {'speed':>16}  {'reads':<10} regions")
    for m in body["data"]:
        def rng(r: dict[str, int] | None) -> str:
            return "-" if not r else (f"{r['min']:,}" if r["min"] == r["max"] else f"{r['min']:,}-{r['max']:,}")
        sp = m["measured_speed"]
        speed = f"{sp['median']:,.0f} {sp['unit']}" if sp else "not measured"
        typer.echo(f"{m['model']:<16} {m['task']:<11} {m['providers']:>4} {rng(m['price_in']):>17} "
                   f"{rng(m['price_out']):>17} {rng(m.get('price_image')):>13} "
                   f"{m['capacity']['in_flight']:>4}/{m['capacity']['slots']:<4} "
                   f"{speed:>16}  {'+'.join(m.get('accepts') or ['text']):<10} {','.join(m['regions'])}")


app.command()(devnet)  # here, so `gpupool --help` lists the commands in the order it always has


@app.command()
def ask(
    prompt: Annotated[str, typer.Argument(help="what to ask")],
    model: Annotated[str, typer.Option(help="model name, see /v1/models")] = "tiny-llama",
    gateway: Annotated[Optional[list[str]], typer.Option("--gateway", help="gateway base URL; repeat to fail over")] = None,
    api_key: Annotated[Optional[str], typer.Option(envvar="GPUPOOL_API_KEY", help="API key")] = None,
    max_tokens: Annotated[int, typer.Option(help="longest answer in tokens")] = 64,
) -> None:
    """Stream one chat answer, failing over between gateways if one is down."""
    import openai

    from gpupool.sdk import connect

    api_key = default_api_key(api_key)  # a running devnet's development key, as `gpupool status` finds it
    if not api_key:
        typer.echo("error: pass --api-key or set GPUPOOL_API_KEY", err=True)
        raise typer.Exit(2)
    client = connect(gateway or [default_gateway(None)], api_key, max_retries=0)
    try:
        for chunk in client.chat.completions.create(model=model, stream=True, max_tokens=max_tokens,
                                                    messages=[{"role": "user", "content": prompt}]):
            if chunk.choices and chunk.choices[0].delta.content:
                typer.echo(chunk.choices[0].delta.content, nl=False)
        typer.echo()
    except openai.APIError as exc:
        typer.echo(f"\nerror: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def demo(
    home: Annotated[Optional[Path], typer.Option(help="where the demo network keeps its files and logs "
                                                 "(default: ~/.gpupool/demo)")] = None,
    providers: Annotated[int, typer.Option(help="number of provider processes")] = 3,
) -> None:
    """Start a local network, run a retail search + chat scenario through it, print results, stop."""
    from gpupool.demo import run_demo

    logs.quiet_third_parties()
    sys.exit(run_demo(home, providers))


if __name__ == "__main__":
    app()
