"""What the `gpupool` commands share: finding the database, units, help layout, and errors a person can act on.

    url, origin = database_url(None)        # flag > GPUPOOL_GATEWAY_DB > a running devnet's > ~/.gpupool
    say_database(url, origin)               # every command that reads a database says which one
    message = friendly(exc)                 # one line for an ordinary mistake, or None (a real bug)

A running `gpupool devnet` leaves `<GPUPOOL_HOME>/devnet.json` (its pid, database,
URL, admin token and key file) while it runs, so `gpupool ledger balance devnet`,
`gpupool keys list`, `gpupool account` ... find it without flags.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Any

import typer

from gpupool.identity import default_home

DEVNET_POINTER = "devnet.json"
UCR_PER_CREDIT = 1_000_000
# Plain click help (no rich tables): full flag names at any width, no `<bool>` tags; up to
# 120 columns where the terminal has them (`context_settings=HELP` on a Typer app or group).
HELP: dict[str, Any] = {"max_content_width": 120}


# ---------------------------------------------------------------- units

def credits(ucr: int | None) -> str:
    """`12.345678 cr (12,345,678 µcr)`: credits for reading, µcr because that is what the API returns."""
    if ucr is None:
        return "-"
    return f"{ucr / UCR_PER_CREDIT:,.6f} cr ({ucr:,} µcr)"


# ---------------------------------------------------------------- the running devnet

def pointer_path() -> Path:
    return default_home() / DEVNET_POINTER


def write_devnet_pointer(info: dict[str, Any]) -> Path:
    path = pointer_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the admin token
    with os.fdopen(fd, "w") as f:
        json.dump({**info, "pid": os.getpid()}, f)
    os.replace(tmp, path)
    return path


def remove_devnet_pointer() -> None:
    path = pointer_path()
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def running_devnet() -> dict[str, Any] | None:
    """The pointer of a devnet that is running now (its process alive), else None."""
    try:
        info = json.loads(pointer_path().read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if isinstance(info, dict) else None


# ---------------------------------------------------------------- which database, which gateway

def database_url(flag: str | None, env: str = "GPUPOOL_GATEWAY_DB") -> tuple[str, str]:
    """The database a command reads, and where that choice came from (to print)."""
    if flag:
        return flag, "--db"
    for name in (env, "GPUPOOL_GATEWAY_DB"):
        if os.environ.get(name):
            return os.environ[name], name
    devnet = running_devnet()
    if devnet and devnet.get("db"):
        return str(devnet["db"]), f"the running devnet's, found through {pointer_path()}"
    return f"sqlite+aiosqlite:///{default_home() / 'gateway.db'}", "default"


def ledger_url(flag: str | None) -> tuple[str, str]:
    if flag:
        return flag, "--ledger"
    if os.environ.get("GPUPOOL_GATEWAY_LEDGER"):
        return os.environ["GPUPOOL_GATEWAY_LEDGER"], "GPUPOOL_GATEWAY_LEDGER"
    return database_url(None)


def say_database(url: str, origin: str, what: str = "database") -> None:
    print(f"{what}: {redact(url)} ({origin})", file=sys.stderr)


def redact(url: str) -> str:
    """A database URL without its password."""
    head, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        creds, _, host = rest.partition("@")
        user = creds.split(":", 1)[0]
        return f"{head}://{user}:***@{host}" if ":" in creds else url
    return url


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite URL (None for other databases or in-memory)."""
    if not url.startswith("sqlite"):
        return None
    path = url.partition(":///")[2].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def require_existing(url: str) -> None:
    """Refuse to read a SQLite database that does not exist (opening one would create it)."""
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise LookupError(f"no database at {path}: start a gateway (or `gpupool devnet`) first, "
                          "or pass --db with the gateway's database URL")


def default_gateway(flag: str | None) -> str:
    """--gateway, else the running devnet's URL, else http://127.0.0.1:8000 (as http(s) either way)."""
    from gpupool.urls import http_url

    if flag:
        return http_url(flag)
    devnet = running_devnet()
    return http_url(str(devnet["url"])) if devnet and devnet.get("url") else "http://127.0.0.1:8000"


def default_api_key(flag: str | None) -> str | None:
    """--api-key / GPUPOOL_API_KEY, else the running devnet's development key."""
    if flag:
        return flag
    devnet = running_devnet()
    if devnet and devnet.get("key_file"):
        try:
            return Path(devnet["key_file"]).read_text().strip()
        except OSError:
            return None
    return None


# ---------------------------------------------------------------- errors a person can act on

def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: MESSAGE` to stderr; `raise fail(...)` ends the command with exit status `code`."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def friendly(exc: BaseException, *, port: int | None = None) -> str | None:
    """One or two lines for an ordinary mistake; None when `exc` is a bug (let it show)."""
    from gpupool.errors import StartupError

    if isinstance(exc, StartupError | LookupError):
        return str(exc).strip("'\"")
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        where = f"port {port}" if port is not None else "the port"
        return f"{where} is already in use (another gateway or devnet?): stop it, or pick another with --port"
    if isinstance(exc, OSError) and exc.errno == errno.EACCES and port is not None and port < 1024:
        return f"port {port} needs root: pick one above 1023 with --port"
    db = _database_problem(exc)
    if db:
        return db
    if isinstance(exc, ConnectionError | TimeoutError) or (
            isinstance(exc, OSError) and exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                                                       errno.ETIMEDOUT)):
        return f"cannot connect: {exc}"
    if isinstance(exc, OSError):
        # Files, sockets, an HTTP library's connection error (aiohttp's are OSErrors): the
        # message names the path or host, and nothing in a traceback would help more.
        return f"{exc}"
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return (f"the database driver {exc.name!r} is not installed; gpupool uses sqlite+aiosqlite:///PATH or "
                "postgresql+asyncpg://USER@HOST/DB")
    return None


def _database_problem(exc: BaseException) -> str | None:
    try:
        from sqlalchemy import exc as sa
    except ImportError:  # pragma: no cover - sqlalchemy is a core dependency
        return None
    hint = "database URLs look like sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB"
    if isinstance(exc, sa.ArgumentError | sa.NoSuchModuleError):
        return f"bad database URL: {exc}; {hint}"
    if isinstance(exc, sa.InvalidRequestError) and "async" in str(exc):
        return f"the database URL needs an async driver (sqlite+aiosqlite://, postgresql+asyncpg://): {exc}"
    if isinstance(exc, sa.OperationalError | sa.InterfaceError | sa.DBAPIError):
        return f"cannot open the database: {str(exc.orig) if getattr(exc, 'orig', None) else exc}; {hint}"
    return None
