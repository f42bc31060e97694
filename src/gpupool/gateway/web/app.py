"""The gateway's HTTP surface: OpenAI-compatible routes and the provider WebSocket (admin: admin_api.py).

Routes are thin: authenticate, validate the body (pydantic), hand the work to the
`Dispatcher`, shape the answer. Every error leaves as an OpenAI error body via
one handler. Plain Starlette rather than FastAPI: the hot path is a few routes,
and FastAPI's dependency solver and telemetry middleware cost more per request
than the whole rest of the gateway (measured with py-spy under bench/overhead).

    app = create_app(settings, store, identity, ledger)   # then serve with uvicorn
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import pydantic
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

from gpupool import __version__, errors
from gpupool.gateway.batches.routes import BatchService
from gpupool.config import GatewaySettings
from gpupool.gateway.edge import openai_api as oa
from gpupool.gateway.web.admin_api import admin_check, admin_routes
from gpupool.gateway.money.anonymous_limits import AddressLimiter, AnonymousLimit, HoldBack
from gpupool.gateway.money.billing import Hold, charge_view
from gpupool.gateway.dispatch.dispatcher import Dispatcher
from gpupool.gateway.fallback.lanes import Fallbacks, Plan
from gpupool.gateway.edge.http import (
    JSON,
    JSON_ENCODER,
    SLOT,
    BodyLimit,
    ClientGone,
    request_timeout,
    EventStream,
    error_response,
    query_limit,
    route_options,
    sse,
    sse_template,
    until_disconnect,
    with_server_send,
)
from gpupool.gateway.peers.hub import Hub, ProviderSession
from gpupool.gateway.money.quota import Quotas, within_quota
from gpupool.gateway.money.metering import Metering
from gpupool.gateway.probes import note_first_token, note_model, note_request
from gpupool.gateway.web.metrics import GatewayMetrics
from gpupool.gateway.web.public_api import public_routes
from gpupool.gateway.web.dashboard import dashboard_routes
from gpupool.routing.options import RouteOptions
from gpupool.gateway.web.services import Services
from gpupool.gateway.store import ApiKey, Retention, Store
from gpupool.gc_tuning import hand_back_memory
from gpupool.gateway.dispatch.stream import open_stream
from gpupool.identity import Identity
from gpupool.logs import REQUESTS, request_line
from gpupool.ledger import Ledger
from gpupool.ledger import postings
from gpupool.market import pricing
from gpupool.market.summary import Listing, summarize
from gpupool.protocol import Done, EmbedPayload, Payload

log = logging.getLogger("gpupool.gateway")
REQUEST_LOG = logging.getLogger(REQUESTS)

DEFAULT_MAX_TOKENS = 256
MAX_EMBEDDING_INPUTS = 2048
T = TypeVar("T")
BodyT = TypeVar("BodyT", bound=pydantic.BaseModel)

def create_app(settings: GatewaySettings, store: Store, identity: Identity, ledger: Ledger) -> ASGIApp:
    hub = Hub(settings, identity, store)
    dispatcher = Dispatcher(hub, settings)
    quotas = Quotas(settings, hub)  # per-key limits and fair shares (gateway/limits.py)

    services = Services.wire(settings, hub, store, identity, ledger, dispatcher)
    billing, auditor = services.billing, services.auditor
    metering = Metering(hub, billing, auditor)  # the money path, shared with batches
    batches = BatchService(settings, hub, store, dispatcher, metering, ledger)
    fallbacks = Fallbacks(settings, billing, store, lambda model: bool(hub.serving(model)))
    metrics = GatewayMetrics(hub, services, quotas, fallbacks)  # Prometheus (/metrics) and /v1/stats

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        store.start_writer(Retention(keep_s=settings.retention_days * 86400, max_providers=settings.max_provider_rows,
                                     max_events=settings.max_peer_events, connected=lambda: list(hub.sessions)))
        await services.start([k["account"] for k in await store.list_keys()])
        await batches.start()
        trimmer = asyncio.create_task(hand_back_memory(quiet=metrics.quiet))
        try:
            yield
        finally:
            trimmer.cancel()
            await batches.close()  # before billing closes: its last charges settle with the rest
            await services.close()  # settles and returns tabs while providers are still connected
            await fallbacks.close()
            await store.close()
            await ledger.close()

    # Keyless requests and failed keys: a rate per client address (gateway/anonymous_limits.py).
    holdback = HoldBack()  # refused answers held back from clients that flood or ignore Retry-After
    anonymous = AnonymousLimit(AddressLimiter(settings.anonymous_rate, settings.rate_burst_s), holdback)

    async def on_error(_r: Request, exc: Exception) -> Response:
        if isinstance(exc, (ClientGone, ClientDisconnect)):
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        if isinstance(exc, errors.AuthenticationFailed):
            await anonymous.failed_key(_r.client.host if _r.client else "unknown")
        if isinstance(exc, (errors.RateLimited, errors.NoCapacity)):
            if exc.hold_s > 0:
                # What the refused request read and parsed (its body, its prompt) need not wait
                # with it: a flood of big refused requests would otherwise hold megabytes.
                exc.__traceback__ = None
                _r.__dict__.pop("_body", None)
            await holdback.hold(exc.hold_s)
        if isinstance(exc, errors.GpupoolError):
            # Refused requests get their line too (-v): a 402 or 429 is what an operator looks for.
            request_line(REQUEST_LOG, request_id="-", path=_r.url.path[:100], status=exc.status,
                         error=exc.code or exc.type, param=exc.param)
            return error_response(exc)
        if isinstance(exc, HTTPException):
            return JSON({"error": {"message": str(exc.detail), "type": "invalid_request_error",
                                   "param": None, "code": None}}, status_code=exc.status_code)
        log.exception("unhandled error", exc_info=exc)
        return error_response(errors.GpupoolError("internal gateway error"))

    def parse(model: type[BodyT], raw: bytes) -> BodyT:
        return oa.parse(model, raw)  # type: ignore[type-var]

    # ---------------------------------------------------------------- auth

    async def client_key(request: Request) -> ApiKey:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.AuthenticationFailed(
                "Missing API key: send 'Authorization: Bearer <key>' (create one with `gpupool keys create`)")
        key = await store.authenticate(token.strip())
        if key is None:
            raise errors.AuthenticationFailed("Incorrect API key provided")
        quotas.refuse_if_ignoring_retry_after(key)
        return key

    admin = admin_check(settings)

    def deadline_for(request: Request) -> float:
        return time.monotonic() + request_timeout(request, settings.request_timeout_s)

    # ---------------------------------------------------------------- money

    async def reserve(key: ApiKey, model: str, tokens_in: int, max_tokens_out: int, route: RouteOptions) -> Hold:
        """Hold the most this request can cost on any provider it may go to (402 if unaffordable)."""
        return await metering.reserve(key.account, model, tokens_in, max_tokens_out, route.max_price)

    def charge(hold: Hold, rid: str, model: str, session: ProviderSession, done: Done, key: ApiKey,
               payload: Payload, text: str = "") -> int:
        """Charge a served request from its receipt, and let the auditor consider it for an audit.

        `payload` and `text` are what the receipt covers: for a continued stream, the last
        provider's run (its receipt's request id), not the client's whole request."""
        return metering.charge(hold, rid, model, session, done, key.account, payload, text)

    # ---------------------------------------------------------------- routes

    async def healthz(_r: Request) -> JSON:
        return JSON({"status": "ok", "version": __version__, "providers": len(hub.sessions),
                     "models": sorted(hub.live_models())})

    async def list_models(request: Request) -> JSON:
        await client_key(request)
        data = []
        for name, sessions in sorted(hub.live_models().items()):
            offer = sessions[0].models[name]
            data.append({
                "id": name, "object": "model", "created": int(sessions[0].offer.issued_at),
                "owned_by": "gpupool",
                "gpupool": {"task": offer.task, "description": offer.description,
                            "providers": len(sessions),
                            "regions": sorted({s.offer.region for s in sessions}),
                            # False: no admitted checker holds it, so its answers are never audited.
                            "verified": hub.model_verified(name)},
            })
        return JSON({"object": "list", "data": data})

    async def embeddings(request: Request) -> Response:
        key = await client_key(request)
        body = parse(oa.EmbeddingRequest, await request.body())
        payload = body.payload(MAX_EMBEDDING_INPUTS, quotas.model_limits(body.model))
        _check_task(hub, body.model, "embeddings")
        deadline_for(request)  # a bad X-Gpupool-Timeout is a 400 before anything is counted
        ticket = quotas.admit(key, body.model, payload)
        return await within_quota(ticket, _embeddings(request, key, body, payload))

    async def _embeddings(request: Request, key: ApiKey, body: oa.EmbeddingRequest,
                          payload: EmbedPayload) -> Response:
        rid = "emb-" + uuid.uuid4().hex
        started = time.monotonic()
        route = route_options(request, body)
        plan, deadline = fallbacks.plan(request, body, "embeddings", payload, route), deadline_for(request)
        tokens_in = pricing.input_token_bound(sum(len(x.encode()) for x in payload.inputs), len(payload.inputs))
        async with await reserve(key, body.model, tokens_in, 0, route) as hold:
            try:
                out = await until_disconnect(request.receive, dispatcher.complete(
                    rid, body.model, payload, fallbacks.pool_deadline(plan, deadline), route))
            except errors.GpupoolError as exc:  # the pool cannot serve: a fallback lane may (or exc again)
                hold.release()
                return await fallbacks.take_over(exc, plan, request, key, rid, deadline, started)
            done = out.done
            if body.dimensions is not None and body.dimensions != done.dimensions:
                raise errors.InvalidRequest(f"{body.model!r} produces {done.dimensions} dimensions",
                                            param="dimensions")
            tokens = done.receipt.usage.prompt_tokens
            cost = charge(hold, rid, body.model, out.session, done, key, payload)
        _log(store, rid, key, body.model, out.provider, "ok", out.attempts, tokens, 0, started, cost)
        return JSON(oa.embedding_response(body.model, done.vectors, done.dimensions, len(payload.inputs),
                                          body.encoding_format, tokens, cost),
                    headers={"x-gpupool-provider": out.provider, "x-request-id": rid, "x-gpupool-cost": str(cost)})

    async def chat(request: Request) -> Response:
        key = await client_key(request)
        body = parse(oa.ChatCompletionRequest, await request.body())
        _check_task(hub, body.model, "generate")
        payload = body.payload(DEFAULT_MAX_TOKENS, quotas.model_limits(body.model))
        route = route_options(request, body)
        deadline_for(request)
        ticket = quotas.admit(key, body.model, payload)
        return await within_quota(ticket, _generate(
            request, key, body.model, payload, "chatcmpl-", bool(body.stream),
            bool(body.stream_options and body.stream_options.include_usage), chat=True,
            route=route, plan=fallbacks.plan(request, body, "chat", payload, route), pace_s=ticket.stream_pace_s))

    async def completions(request: Request) -> Response:
        key = await client_key(request)
        body = parse(oa.CompletionRequest, await request.body())
        _check_task(hub, body.model, "generate")
        payload, route = body.payload(quotas.model_limits(body.model)), route_options(request, body)
        deadline_for(request)
        ticket = quotas.admit(key, body.model, payload)
        return await within_quota(ticket, _generate(
            request, key, body.model, payload, "cmpl-", bool(body.stream),
            bool(body.stream_options and body.stream_options.include_usage), chat=False,
            route=route, plan=fallbacks.plan(request, body, "completions", payload, route),
            pace_s=ticket.stream_pace_s))

    async def _generate(request: Request, key: ApiKey, model: str, payload: Payload, prefix: str,
                        stream: bool, include_usage: bool, chat: bool, route: RouteOptions,
                        plan: Plan | None = None, pace_s: float = 0.0) -> Response:
        rid = prefix + uuid.uuid4().hex
        started = time.monotonic()
        deadline = deadline_for(request)
        text_bytes = (len(payload.prompt.encode()) + len(payload.continue_text.encode())
                      + sum(len(m.content.encode()) for m in payload.messages))
        tokens_in = pricing.input_token_bound(text_bytes, len(payload.messages))
        hold = await reserve(key, model, tokens_in, payload.max_tokens, route)
        if not stream:
            async with hold:
                try:
                    out = await until_disconnect(request.receive, dispatcher.complete(
                        rid, model, payload, fallbacks.pool_deadline(plan, deadline), route))
                except errors.GpupoolError as exc:  # the pool cannot serve: a fallback lane may (or exc again)
                    hold.release()
                    return await fallbacks.take_over(exc, plan, request, key, rid, deadline, started)
                cost = charge(hold, rid, model, out.session, out.done, key, payload, out.text)
            u = out.done.receipt.usage
            build = oa.chat_response if chat else oa.completion_response
            _log(store, rid, key, model, out.provider, "ok", out.attempts, u.prompt_tokens, u.completion_tokens,
                 started, cost)
            return JSON(build(rid, model, out.text, out.done.receipt.finish_reason, u.prompt_tokens,
                              u.completion_tokens, out.provider, cost),
                        headers={"x-gpupool-provider": out.provider, "x-request-id": rid,
                                 "x-gpupool-cost": str(cost)})

        try:
            opened = await fallbacks.first_event(plan, deadline,
                                                 open_stream(dispatcher, rid, model, payload, deadline, route,
                                                                         pace_s))
        except BaseException as exc:
            hold.release()
            if isinstance(exc, errors.GpupoolError):  # no first token from the pool: a lane may serve
                return await fallbacks.take_over(exc, plan, request, key, rid, deadline, started)
            raise
        note_first_token()

        async def events() -> AsyncIterator[bytes]:
            created = int(time.time())
            status = "cancelled"  # unless it ends below: the client went away
            try:
                if chat:
                    yield sse(oa.chat_chunk(rid, model, created, {"role": "assistant", "content": ""}, None))
                head, tail = sse_template(oa.chat_chunk(rid, model, created, {"content": SLOT}, None) if chat
                                           else oa.completion_chunk(rid, model, created, SLOT, None))
                async for text in opened:
                    # Per token only the text is encoded; the rest of the event is fixed.
                    yield head + JSON_ENCODER.encode(text) + tail
                done = opened.done
                assert done is not None
                finish = done.receipt.finish_reason or "stop"
                last = (oa.chat_chunk(rid, model, created, {}, finish) if chat
                        else oa.completion_chunk(rid, model, created, "", finish))
                if opened.continued:
                    # The client saw one stream; say that several providers produced it.
                    last["gpupool"] = {"continued": opened.continued, "providers": opened.providers}
                yield sse(last)
                cost = charge(hold, rid, model, opened.session, done, key, opened.answer_payload, opened.answer_text)
                if include_usage:
                    u = done.receipt.usage
                    yield sse({"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                                "created": created, "model": model, "choices": [],
                                "usage": oa.usage(u.prompt_tokens, u.completion_tokens, cost)})
                yield b"data: [DONE]\n\n"
                status = "ok"
            except errors.GpupoolError as exc:
                # Headers are gone already: the error travels as an SSE event the client raises on.
                status = "error"
                yield sse(exc.body())
            finally:
                await opened.aclose()
                hold.release()  # no-op once charged
                u = opened.done.receipt.usage if opened.done else None
                _log(store, rid, key, model, opened.session.node_id, status, opened.attempts,
                     u.prompt_tokens if u else 0,
                     u.completion_tokens if u else 0, started, hold.charged or 0)

        async def closed() -> None:
            # Runs even if the client left before the body started: nothing stays held or open.
            await opened.aclose()
            hold.release()

        return EventStream(events(), closed, media_type="text/event-stream",
                            headers={"x-gpupool-provider": opened.session.node_id, "x-request-id": rid,
                                     "cache-control": "no-cache"})

    # ---------------------------------------------------------------- providers and admin

    async def market(request: Request) -> JSON:
        listings = []
        for session in list(hub.sessions.values()):
            rec = hub.router.records.get(session.node_id)
            for name, offer in session.models.items():
                sp = rec.speed.get(name) if rec else None
                speed = None
                if sp is not None and sp.samples:
                    speed = sp.items_per_s if offer.task == "embeddings" else sp.decode_tps
                listings.append(Listing(name, offer.task, session.node_id, session.offer.region, offer.price_in,
                                        offer.price_out, session.offer.max_concurrency, len(session.channels),
                                        session.draining or session.closed, speed))
        data = [{**row, "verified": hub.model_verified(str(row["model"]))} for row in summarize(listings)]
        return JSON({"object": "list", "fee_bps": settings.fee_bps, "unit": "µcr per 1M tokens", "data": data})

    async def account(request: Request) -> JSON:
        key = await client_key(request)
        limit, after = query_limit(request, 20, most=100), request.query_params.get("after") or None
        try:
            charges = await store.recent_charges(key.account, limit + 1, after)
        except KeyError:
            raise errors.InvalidRequest("after must be a request id from this account's charges",
                                        param="after") from None
        body = await billing.account(key.account)
        # Paged like OpenAI's lists: pass the last id as `after` while has_more is true.
        body["recent_charges"], body["has_more"] = [charge_view(c) for c in charges[:limit]], len(charges) > limit
        body["last_id"] = charges[:limit][-1]["request_id"] if charges[:limit] else None
        return JSON(body)

    async def earnings(request: Request) -> JSON:
        node_id = request.path_params["node_id"]
        if ":" in node_id:
            raise errors.InvalidRequest("not a node id", param="node_id")
        return JSON({"object": "gpupool.earnings", "provider": node_id,
                     "held": await ledger.balance(postings.provider_held(node_id)),
                     "withdrawable": await ledger.balance(postings.provider_free(node_id)),
                     "staked": await ledger.balance(postings.stake(node_id)),
                     "audit_window_s": settings.audit_window_s})

    async def reputation(request: Request) -> JSON:
        node_id = request.path_params["node_id"]
        # Only nodes this gateway knows get a record: an unknown id must not create (and make
        # the gateway sign) state for it, or anyone could grow the gateway's memory at will.
        known = node_id in hub.sessions or node_id in auditor.providers or await store.provider_known(node_id)
        if not known:
            raise errors.ModelNotFound(f"no provider {node_id[:80]!r} is known to this gateway", param="node_id",
                                       code="provider_not_found")
        return JSON(auditor.signed_record(node_id, identity))

    async def provider_ws(ws: WebSocket) -> None:
        await hub.handle(ws)


    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/v1/models", list_models),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/market", market),
            Route("/v1/account", account),
            Route("/v1/providers/{node_id}/earnings", earnings),
            Route("/v1/providers/{node_id}/reputation", reputation),
            WebSocketRoute("/v1/providers/ws", provider_ws),
            *admin_routes(settings, hub, services),
            *fallbacks.routes(admin),
            *batches.routes(client_key),
            Route("/metrics", metrics.endpoint),
            *public_routes(hub, services, metrics),
            *dashboard_routes(),
        ],
        # ClientDisconnect by name: the catch-all `Exception` handler runs in Starlette's
        # ServerErrorMiddleware, which logs a traceback and re-raises even after answering.
        exception_handlers={Exception: on_error, HTTPException: on_error, errors.GpupoolError: on_error,
                            ClientGone: on_error, ClientDisconnect: on_error},
        lifespan=lifespan,
    )
    body_limit = BodyLimit(app, settings.max_body_bytes,
                           lambda path: oa.generation_body_limit(path, hub.largest_context()))
    return with_server_send(metrics.middleware(anonymous.middleware(batches.upload_limit(body_limit, app))))


def _check_task(hub: Hub, model: str, task: str) -> None:
    note_model(model)
    offer = hub.known_models.get(model)
    if offer is not None and offer.task != task:
        route = "/v1/embeddings" if offer.task == "embeddings" else "/v1/chat/completions"
        raise errors.InvalidRequest(f"{model!r} serves {offer.task}; use {route}", param="model")


def _log(store: Store, rid: str, key: ApiKey, model: str, provider: str, status: str, attempts: int,
         prompt: int, completion: int, started: float, cost: int) -> None:
    note_request(model, status, prompt, completion, cost)
    latency_ms = (time.monotonic() - started) * 1000
    store.record_request(request_id=rid, at=time.time(), key_id=key.id, account=key.account, model=model,
                         provider=provider, status=status, attempts=attempts, prompt_tokens=prompt,
                         completion_tokens=completion, latency_ms=latency_ms, cost=cost)
    # One line per request with -v / --log-requests (gpupool/logs.py); a no-op otherwise.
    request_line(REQUEST_LOG, request_id=rid, key=key.name, model=model, provider=provider[:14], status=status,
                 attempts=attempts, tokens=f"{prompt}+{completion}", latency_ms=round(latency_ms, 1), cost_ucr=cost)


def _price(session: ProviderSession, model: str) -> pricing.Price:
    offer = session.models[model]
    return pricing.Price(offer.price_in, offer.price_out)
