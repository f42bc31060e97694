"""The gateway's HTTP surface: the route table, the middlewares and the lifespan, wired in one place.

    app = create_app(settings, store, identity, ledger)   # then serve with uvicorn (web/server.py)

Routes are module-level handlers `handler(gw, request)` over one context object (the
`Gateway`, web/context.py, which builds and wires the parts): inference in
web/inference.py, accounts and the market in web/client_api.py, public views in
web/public_api.py, the operator's in web/admin_api.py, batches in gateway/batches/.
Every error leaves as an OpenAI error body via one handler (web/error_handler.py).
Plain Starlette rather than FastAPI: the hot path is a few routes, and FastAPI's
dependency solver and telemetry middleware cost more per request than the whole rest
of the gateway (measured with py-spy under bench/overhead).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from gpupool import errors
from gpupool.config import GatewaySettings
from gpupool.gateway.edge import openai_api
from gpupool.gateway.edge.http import BodyLimit, ClientGone, with_server_send
from gpupool.gateway.store import Store
from gpupool.gateway.web import client_api, inference
from gpupool.gateway.web.admin_api import admin_routes
from gpupool.gateway.web.context import Gateway
from gpupool.gateway.web.dashboard import dashboard_routes
from gpupool.gateway.web.error_handler import on_error
from gpupool.gateway.web.public_api import public_routes
from gpupool.gc_tuning import hand_back_memory
from gpupool.identity import Identity
from gpupool.ledger import Ledger


def create_app(settings: GatewaySettings, store: Store, identity: Identity, ledger: Ledger) -> ASGIApp:
    gw = Gateway.build(settings, store, identity, ledger)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await gw.start()
        trimmer = asyncio.create_task(hand_back_memory(quiet=gw.metrics.quiet))
        try:
            yield
        finally:
            trimmer.cancel()
            await gw.close()  # batches, then billing settles while providers are still connected

    def route(path: str, handler: object, methods: list[str] | None = None) -> Route:
        return Route(path, partial(handler, gw), methods=methods)  # type: ignore[call-overload]

    app = Starlette(
        routes=[
            route("/healthz", client_api.healthz),
            route("/v1/gateways", client_api.gateways),
            route("/v1/models", client_api.list_models),
            route("/v1/embeddings", inference.embeddings, ["POST"]),
            route("/v1/chat/completions", inference.chat, ["POST"]),
            route("/v1/completions", inference.completions, ["POST"]),
            route("/v1/market", client_api.market),
            route("/v1/account", client_api.account),
            route("/v1/providers/{node_id}/earnings", client_api.earnings),
            route("/v1/providers/{node_id}/reputation", client_api.reputation),
            *admin_routes(gw),
            *gw.batches.routes(),
            Route("/metrics", gw.metrics.endpoint),
            *public_routes(gw),
            *dashboard_routes(),
        ],
        # ClientDisconnect by name: the catch-all `Exception` handler runs in Starlette's
        # ServerErrorMiddleware, which logs a traceback and re-raises even after answering.
        exception_handlers={kind: partial(on_error, gw) for kind in (Exception, HTTPException, errors.GpupoolError,
                                                                     ClientGone, ClientDisconnect)},
        lifespan=lifespan,
    )
    body_limit = BodyLimit(app, settings.max_body_bytes,
                           lambda path: openai_api.generation_body_limit(path, gw.hub.largest_context(),
                                                                         gw.hub.generation_reads_images()))
    http = with_server_send(gw.metrics.middleware(gw.anonymous.middleware(gw.batches.upload_limit(body_limit, app))))
    return with_provider_socket(http, gw.hub.handle)


PROVIDERS_WS = "/v1/providers/ws"


def with_provider_socket(app: ASGIApp, handle: Callable[[WebSocket], Awaitable[None]]) -> ASGIApp:
    """Providers' WebSocket goes straight to the hub; everything else to `app`.

    A provider's connection lives for hours, and every ASGI layer it passes through stays
    suspended in it for as long: through the middlewares, Starlette, its router and route
    (which only pass WebSockets on): 16 of a session's 24 coroutines and 22 closure cells,
    held for the connection's life (bench/README.md, scale: "Footprint per session")."""
    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == PROVIDERS_WS:
            return await handle(WebSocket(scope, receive, send))
        return await app(scope, receive, send)

    return asgi
