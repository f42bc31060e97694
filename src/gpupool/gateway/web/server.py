"""Run a gateway: open the store, load the key, serve the app with uvicorn until a signal.

    await serve(GatewaySettings(port=0, ready_file=Path("gw.json")))

With `port=0` the OS picks a free port; the chosen address is written as JSON to
`ready_file` once the gateway accepts connections (tests and devnet wait on it), and to
`listening_file` as soon as the port listens (devnet starts its providers then).

The port is bound and listening before the heavy part of the start (the app's imports,
the database, the ledger), so a restarted gateway's clients and providers wait in the
listen backlog and are answered the moment it is ready, instead of being refused and
backing off past it (issue 18: the restart's worst case). Hence the lazy imports below.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import os
import socket
from pathlib import Path

from gpupool.config import GatewaySettings
from gpupool.gc_tuning import freeze_startup_heap, limit_malloc_arenas, map_large_blocks
from gpupool.tls import server_files

log = logging.getLogger("gpupool.gateway")

# A restart's reconnect storm (clients and providers) waits here, not refused. Sized for 10,000
# providers dialling at once: past the backlog the kernel drops their SYNs, and each one's TCP
# retries after 1, 2, 4... s, so the handshake gate sat idle for seconds in bench/scale's restart
# with uvicorn's 2048. The kernel caps it at net.core.somaxconn (4096 by default: docs/operations.md).
LISTEN_BACKLOG = 16384


def _event_loop() -> str:
    try:
        import uvloop  # noqa: F401

        return "uvloop"
    except ImportError:
        return "asyncio"


def listen_early(host: str, port: int) -> socket.socket:
    """Bind and listen now; connections queue in the backlog until the server accepts them."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


async def serve(settings: GatewaySettings) -> None:
    limit_malloc_arenas()  # before the database threads start (gc_tuning)
    map_large_blocks()
    # The start (mostly imports) makes objects that live as long as the process: collecting
    # during it only walks them again and again (~5% of its CPU). One collection when it is
    # over (freeze_startup_heap), then the serving thresholds.
    gc.disable()
    tls = server_files(settings.tls_cert, settings.tls_key)  # checked before anything starts
    sock = listen_early(settings.host, settings.port)
    port = sock.getsockname()[1]
    url = f"{'https' if tls else 'http'}://{settings.host}:{port}"
    try:
        if settings.listening_file:  # devnet starts its providers now: they dial while the rest loads
            _write_json(settings.listening_file, {"url": url, "port": port})
        # Imported here, after the port listens: they are most of the start (module docstring).
        import uvicorn

        from gpupool.gateway.edge.slow_clients import guarded_http
        from gpupool.gateway.money.shared_limits import check_redis
        from gpupool.gateway.store import Store
        from gpupool.gateway.web.app import create_app
        from gpupool.identity import Identity
        from gpupool.ledger import open_ledger

        if settings.redis_url:
            await check_redis(settings.redis_url)  # one line and no start, rather than limits that silently do not hold
        identity = Identity.load_or_create(settings.key_file)
        store = await Store.open(settings.db_url())
        ledger = await open_ledger(settings.ledger_url())
    except BaseException:
        sock.close()  # a start that fails refuses the waiting connections at once
        raise
    if not settings.public_url:  # what /v1/gateways and the shared registry tell others (--public-url)
        host = socket.gethostname() if settings.host in ("0.0.0.0", "::", "") else settings.host
        host = f"[{host}]" if ":" in host else host
        settings = dataclasses.replace(settings, public_url=f"{'https' if tls else 'http'}://{host}:{port}")
    app = create_app(settings, store, identity, ledger)
    config = uvicorn.Config(
        app,
        loop="none",  # the caller's loop (uvloop when installed) is already running
        # httptools, plus deadlines on each request's headers and body (gateway/edge/slow_clients.py)
        http=guarded_http(settings.header_timeout_s, settings.body_timeout_s),
        ws="websockets-sansio",
        ws_max_size=16 * 1024 * 1024,
        ws_ping_interval=None,  # the hub pings providers itself and measures RTT
        ws_per_message_deflate=False,  # msgpack frames are small: compressing them costs more than it saves
        # The client address counts only for keyless requests (--anonymous-rate); behind a
        # reverse proxy it comes from X-Forwarded-For, trusted from the listed proxies only.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    server = uvicorn.Server(config)

    async def announce() -> None:
        while not server.started:
            await asyncio.sleep(0.01)
        freeze_startup_heap()
        gc.enable()
        log.warning("gateway %s listening on %s", identity.node_id[:12], url)
        if not tls and settings.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("no TLS on %s: API keys, prompts and answers cross the network in clear text; "
                        "use --tls-cert/--tls-key, or a TLS reverse proxy in front (docs/operations.md)",
                        settings.host)
        if settings.ready_file:
            _write_json(settings.ready_file, {"url": url, "port": port, "node_id": identity.node_id, "pid": os.getpid()})

    announcer = asyncio.create_task(announce())
    try:
        await server.serve(sockets=[sock])
    finally:
        announcer.cancel()


def _write_json(path: Path, body: dict[str, object]) -> None:
    """Write `body` to `path` whole (through a temporary file): a reader never sees half of it."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(body, f)
    os.replace(tmp, path)
