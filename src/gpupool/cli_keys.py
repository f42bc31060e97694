"""`gpupool keys create|list|revoke`: client API keys, written straight into the gateway's database.

The only commands that open the gateway's store (gateway/store.py) rather than call a
gateway over HTTP: keys are created before any gateway runs, and a revocation reaches
every gateway sharing the database within seconds (Store.authenticate's cache).

    gpupool keys create --name alice --rpm 60
    gpupool keys list --db postgresql://...
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

from gpupool.cli_support import (
    HELP,
    database_url,
    fail,
    friendly,
    redact,
    require_existing,
    say_database,
)

keys_app = typer.Typer(help="Create, list and revoke client API keys.", no_args_is_help=True,
                       rich_markup_mode=None, context_settings=HELP)


def _with_store(db: str | None, call: Callable[[Any], Any], create: bool = False) -> Any:
    """Open the gateway's store (see cli_support.database_url), say which, run one call, close it.

    Without `create`, a SQLite file that does not exist is an error rather than a new database."""
    from gpupool.gateway.store import Store

    url, origin = database_url(db)
    say_database(url, origin)

    async def go() -> Any:
        store = await Store.open(url)
        try:
            return await call(store)
        finally:
            await store.close()

    try:
        if not create:
            require_existing(url)
        return asyncio.run(go())
    except OSError as exc:
        raise fail(f"cannot open the database {redact(url)}: {exc}") from None
    except Exception as exc:
        message = friendly(exc)
        if message is None:
            raise
        raise fail(message) from None


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="who the key is for")] = "default",
    db: Annotated[Optional[str], typer.Option(help="the gateway's database URL")] = None,
    key: Annotated[Optional[str], typer.Option(help="register this exact key instead of a random one")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    rpm: Annotated[int, typer.Option(min=0, help="requests per minute (0: the gateway's --key-rpm)")] = 0,
    tpm: Annotated[int, typer.Option(min=0, help="tokens per minute (0: the gateway's --key-tpm)")] = 0,
    concurrency: Annotated[int, typer.Option(min=0, help="requests at once (0: the gateway's "
                                             "--key-concurrency)")] = 0,
) -> None:
    """Create an API key in the gateway's database and print it (shown only once)."""
    created = _with_store(db, lambda store: store.create_key(name, key, rpm=rpm, tpm=tpm, concurrency=concurrency),
                          create=True)
    typer.echo(created if quiet else f"API key for {name!r} (store it now; it is not shown again):\n{created}")


@keys_app.command("list")
def keys_list(db: Annotated[Optional[str], typer.Option(help="the gateway's database URL")] = None) -> None:
    """List API keys (hints only; keys are stored hashed)."""
    keys = _with_store(db, lambda store: store.list_keys())
    if not keys:
        typer.echo("no API keys yet: create one with `gpupool keys create --name NAME`")
        return
    typer.echo(f"{'id':>4}  {'key':<10}  {'name':<20} {'account':<20} {'limits (rpm/tpm/conc.)':<22} state")
    for k in keys:
        limits = "/".join(str(k[x] or "-") for x in ("rpm", "tpm", "concurrency"))
        typer.echo(f"{k['id']:>4}  {k['hint']:<10}  {k['name']:<20} {k['account']:<20} {limits:<22} "
                   f"{'revoked' if k['revoked'] else 'active'}")


@keys_app.command("revoke")
def keys_revoke(key_id: int, db: Annotated[Optional[str], typer.Option(help="the gateway's database URL")]
                = None) -> None:
    """Revoke an API key by id (see `gpupool keys list`)."""
    if not _with_store(db, lambda store: store.revoke_key(key_id)):
        raise fail(f"no key with id {key_id} (see `gpupool keys list`)")
    typer.echo(f"revoked key {key_id}")
