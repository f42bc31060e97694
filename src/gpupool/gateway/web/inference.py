"""The inference routes: `/v1/chat/completions`, `/v1/completions` and `/v1/embeddings`.

Each handler is `handler(gw, request)` over the gateway's context (web/context.py):

1. authenticate the key, validate the body (pydantic, edge/openai_api.py), and look the
   model's serving set up once (`router.serving`): the model's limits, the fair share,
   the hold and the first pick all read that one list;
2. measure the request once (`PayloadSize`), read its routing options and deadline once
   (a bad header is a 400 before anything is counted), and plan a fallback lane;
3. admit it under the key's limits (money/quota.py), hold the most it can cost
   (money/metering.py), dispatch it (dispatch/), charge from the provider's receipt;
4. if the pool cannot serve, a fallback lane may (fallback/lanes.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

import pydantic
from starlette.requests import Request
from starlette.responses import Response

from gpupool import errors
from gpupool.gateway.dispatch.dispatcher import Outcome
from gpupool.gateway.dispatch.stream import Stream, open_stream
from gpupool.gateway.edge import image_inputs, openai_api, openai_responses
from gpupool.gateway.edge.http import (JSON, JSON_ENCODER, SLOT, EventStream, request_timeout, route_options, sse,
                                       sse_template, until_disconnect)
from gpupool.gateway.fallback.lanes import Plan
from gpupool.gateway.money.billing import Hold
from gpupool.gateway.money.metering import price_of
from gpupool.gateway.money.quota import within_quota
from gpupool.gateway.payload_size import PayloadSize, image_count
from gpupool.gateway.peers.hub import Hub
from gpupool.gateway.peers.model_index import Serving
from gpupool.gateway.peers.session import ProviderSession
from gpupool.gateway.probes import note_first_token, note_model
from gpupool.gateway.store import ApiKey
from gpupool.gateway.web.context import Gateway
from gpupool.gateway.web.request_log import log_request
from gpupool.market import pricing
from gpupool.protocol import Done, EmbedPayload, GeneratePayload, ModelOffer, Payload
from gpupool.routing.options import RouteOptions

DEFAULT_MAX_TOKENS = 256
MAX_EMBEDDING_INPUTS = 2048
P = TypeVar("P", bound=Payload)
JSON_BACKENDS = ("ocr",)  # backends that honour response_format json_object (audits compare its JSON)


@dataclass(slots=True)
class Call:
    """One inference request as its route checked it: looked up, measured and timed once."""

    key: ApiKey
    model: str
    payload: Payload
    size: PayloadSize
    route: RouteOptions
    serving: list[ProviderSession]  # who may serve it, as of its start
    deadline: float  # time.monotonic()
    plan: Plan | None  # the fallback lane that may take it if the pool cannot
    rid: str
    started: float

    async def reserve(self, gw: Gateway, stream: bool = False) -> Hold:
        """Hold the most this request can cost on any provider it may go to (402 if unaffordable): the
        best few of its serving set for it (`router.shortlist`), so one dear offer elsewhere in the pool
        does not inflate the hold; a failover beyond them only goes to providers no dearer."""
        if isinstance(self.serving, Serving):
            self.serving = gw.dispatcher.router.shortlist(self.serving, self.model, self.payload, self.route, stream)
        return await gw.metering.reserve(self.key.account, self.serving, self.model, self.size.input_token_bound,
                                         self.size.max_output, self.route.max_price, self.size.images)

    async def complete(self, gw: Gateway, request: Request, hold: Hold) -> Outcome | Response:
        """Serve it on the pool (non-streaming); if the pool cannot, a fallback lane's Response (or the error)."""
        try:
            return await until_disconnect(request.receive, gw.dispatcher.complete(
                self.rid, self.model, self.payload, gw.fallbacks.pool_deadline(self.plan, self.deadline), self.route,
                self.serving, lane_after_s=gw.fallbacks.lane_after_s(self.plan)))
        except errors.GpupoolError as exc:  # the pool cannot serve: a fallback lane may (or exc again)
            hold.release()
            return await gw.fallbacks.take_over(exc, self.plan, request, self.key, self.rid, self.deadline,
                                                self.started)

    def charge(self, gw: Gateway, hold: Hold, session: ProviderSession, done: Done, payload: Payload,
               text: str = "") -> int:
        """Charge a served request from its receipt, and let the auditor consider it for an audit.

        `payload` and `text` are what the receipt covers: for a continued stream, the last
        provider's run (its receipt's request id), not the client's whole request."""
        return gw.metering.charge(hold, self.rid, self.model, session, done, self.key.account, payload, text)

    def charge_delivered(self, hold: Hold, stream: Stream) -> None:
        """The client left (or its deadline passed) before the answer was done: it pays for what it
        was sent, at the price the current provider's run was dispatched under. No receipt covers
        a part, so the count is the gateway's: each chunk is at least one token, and the prompt
        is the ~4-characters-a-token estimate, both capped by the hold. Earlier providers of a
        continued stream failed mid-answer and are not paid."""
        if hold.charged is not None or stream.done is not None:
            return  # settled already (charged from its receipt, or released)
        if stream.run_chunks == 0:
            hold.release()
            return
        try:
            price = price_of(stream.session, self.model, stream.run_id)
        except KeyError:
            hold.release()
            return
        prompt = PayloadSize.of(stream.answer_payload).tokens_estimate
        hold.charge_delivered(self.rid, stream.session.node_id,
                              pricing.charge_for(price, prompt, stream.run_chunks, hold.amount,
                                                 image_count(stream.answer_payload)))

    def log(self, gw: Gateway, provider: str, status: str, attempts: int, prompt: int, completion: int,
            cost: int, hold: Hold | None = None) -> None:
        log_request(gw.store, self.rid, self.key, self.model, provider, status, attempts, prompt, completion,
                    self.started, cost, hold.images if hold else 0, hold.image_cost if hold else 0)


def _call(gw: Gateway, request: Request, key: ApiKey, body: pydantic.BaseModel, kind: str, payload: Payload,
          serving: list[ProviderSession], prefix: str) -> Call:
    model = str(getattr(body, "model"))
    route = route_options(request, body)
    deadline = time.monotonic() + request_timeout(request, gw.settings.request_timeout_s)
    size = PayloadSize.of(payload)
    plan = gw.fallbacks.plan(request, body, kind, size, route, pool_live=bool(serving))
    return Call(key, model, payload, size, route, serving, deadline, plan, prefix + uuid.uuid4().hex,
                time.monotonic())


async def _serving(gw: Gateway, request: Request, model: str) -> Serving:
    """The model's serving set (`router.serving`: one index lookup, a bounded sample). Just after a
    start, a model providers served before it waits for one of them to reconnect (within the
    request's deadline and the grace period) rather than being called unknown; then a 503."""
    serving = gw.dispatcher.router.serving(model)
    if serving or model in gw.hub.known_models:
        return serving
    left = gw.hub.arrivals.grace_left(model)
    if left <= 0:
        return serving  # never served here: routing answers 404
    wait = min(left, request_timeout(request, gw.settings.request_timeout_s))
    if await gw.hub.arrivals.wait(model, wait):
        serving = gw.dispatcher.router.serving(model)
    if not serving:
        raise errors.NoProvider(f"no provider is serving {model!r} yet: the gateway restarted and its providers "
                                "are reconnecting; retry shortly", retry_after_s=max(1.0, min(5.0, left - wait)))
    return serving


def check_task(hub: Hub, model: str, task: str) -> None:
    note_model(model)
    offer = hub.known_models.get(model)
    if offer is not None and offer.task != task:
        route = "/v1/embeddings" if offer.task == "embeddings" else "/v1/chat/completions"
        raise errors.InvalidRequest(f"{model!r} serves {offer.task}; use {route}", param="model")


def _offers(gw: Gateway, model: str, serving: list[ProviderSession]) -> list[ModelOffer]:
    """The live providers' offers of `model`, or the last one known (none: the request goes on to its 404/503)."""
    known = gw.hub.known_models.get(model)
    return [s.models[model] for s in serving] or ([known] if known is not None else [])


def image_readers(gw: Gateway, model: str, serving: list[ProviderSession], param: str) -> list[ProviderSession]:
    """The serving set of a request with images: the providers whose offer reads images (400 if the
    model reads text only; a provider from before images would answer from the text alone)."""
    readers = gw.dispatcher.router.serving(model, images=True)  # drawn among readers: a sample may hold none
    image_inputs.refuse_unless_read(model, _offers(gw, model, readers or serving), param)
    return readers


async def checked_images(build: Callable[[], P], param: str) -> P:
    """`build()` checks the request's images (base64, headers, structure): off the event loop when
    there are any (`param`), inline otherwise (no thread hop for text)."""
    return await asyncio.to_thread(build) if param else build()


def check_json_mode(gw: Gateway, model: str, serving: list[ProviderSession], payload: GeneratePayload) -> None:
    if payload.response_format == "json_object":
        offers = _offers(gw, model, serving)
        if offers and not all(o.backend in JSON_BACKENDS for o in offers):
            raise errors.InvalidRequest(f"response_format: model {model!r} answers in plain text only "
                                        "(json_object is honoured by the ocr backend)",
                                        param="response_format", code="unsupported_parameter")


# ---------------------------------------------------------------- embeddings


async def embeddings(gw: Gateway, request: Request) -> Response:
    key = await gw.client_key(request)
    body = openai_api.parse(openai_api.EmbeddingRequest, await request.body())
    serving = await _serving(gw, request, body.model)
    check_task(gw.hub, body.model, "embeddings")
    if param := body.image_param():
        serving = image_readers(gw, body.model, serving, param)
    limits, images = gw.quotas.model_limits(body.model, serving), gw.image_limits()
    payload = await checked_images(lambda: body.payload(MAX_EMBEDDING_INPUTS, limits, images), param)
    call = _call(gw, request, key, body, "embeddings", payload, serving, "emb-")
    ticket = gw.quotas.admit(key, body.model, call.size, serving)
    return await within_quota(ticket, _embed(gw, request, call, body))


async def _embed(gw: Gateway, request: Request, call: Call, body: openai_api.EmbeddingRequest) -> Response:
    assert isinstance(call.payload, EmbedPayload)
    async with await call.reserve(gw) as hold:
        out = await call.complete(gw, request, hold)
        if isinstance(out, Response):
            return out  # a fallback lane answered
        done = out.done
        if body.dimensions is not None and body.dimensions != done.dimensions:
            raise errors.InvalidRequest(f"{call.model!r} produces {done.dimensions} dimensions", param="dimensions")
        tokens = done.receipt.usage.prompt_tokens
        cost = call.charge(gw, hold, out.session, done, call.payload)
    call.log(gw, out.provider, "ok", out.attempts, tokens, 0, cost, hold)
    return JSON(openai_responses.embedding_response(call.model, done.vectors, done.dimensions, len(call.payload.inputs),
                                              body.encoding_format, tokens, cost),
                headers={"x-gpupool-provider": out.provider, "x-request-id": call.rid, "x-gpupool-cost": str(cost)})


# ---------------------------------------------------------------- generation


async def chat(gw: Gateway, request: Request) -> Response:
    key = await gw.client_key(request)
    body = openai_api.parse(openai_api.ChatCompletionRequest, await request.body())
    serving = await _serving(gw, request, body.model)  # first: after a restart's wait the model's task is known
    check_task(gw.hub, body.model, "generate")
    if param := body.image_param():
        serving = image_readers(gw, body.model, serving, param)
    limits, images = gw.quotas.model_limits(body.model, serving), gw.image_limits()
    payload = await checked_images(lambda: body.payload(DEFAULT_MAX_TOKENS, limits, images), param)
    check_json_mode(gw, body.model, serving, payload)
    return await _admit_generation(gw, request, key, body, "chat", payload, serving, "chatcmpl-")


async def completions(gw: Gateway, request: Request) -> Response:
    key = await gw.client_key(request)
    body = openai_api.parse(openai_api.CompletionRequest, await request.body())
    serving = await _serving(gw, request, body.model)  # first: after a restart's wait the model's task is known
    check_task(gw.hub, body.model, "generate")
    payload = body.payload(gw.quotas.model_limits(body.model, serving))
    return await _admit_generation(gw, request, key, body, "completions", payload, serving, "cmpl-")


async def _admit_generation(gw: Gateway, request: Request, key: ApiKey,
                            body: openai_api.ChatCompletionRequest | openai_api.CompletionRequest, kind: str,
                            payload: Payload, serving: list[ProviderSession], prefix: str) -> Response:
    call = _call(gw, request, key, body, kind, payload, serving, prefix)
    ticket = gw.quotas.admit(key, body.model, call.size, serving)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    respond = (_stream(gw, request, call, kind == "chat", include_usage, ticket.stream_pace_s) if body.stream
               else _complete(gw, request, call, kind == "chat"))
    return await within_quota(ticket, respond)


async def _complete(gw: Gateway, request: Request, call: Call, chat: bool) -> Response:
    async with await call.reserve(gw) as hold:
        out = await call.complete(gw, request, hold)
        if isinstance(out, Response):
            return out  # a fallback lane answered
        cost = call.charge(gw, hold, out.session, out.done, call.payload, out.text)
    u = out.done.receipt.usage
    build = openai_responses.chat_response if chat else openai_responses.completion_response
    call.log(gw, out.provider, "ok", out.attempts, u.prompt_tokens, u.completion_tokens, cost, hold)
    return JSON(build(call.rid, call.model, out.text, out.done.receipt.finish_reason, u.prompt_tokens,
                      u.completion_tokens, out.provider, cost),
                headers={"x-gpupool-provider": out.provider, "x-request-id": call.rid, "x-gpupool-cost": str(cost)})


async def _stream(gw: Gateway, request: Request, call: Call, chat: bool, include_usage: bool,
                  pace_s: float) -> Response:
    rid, model = call.rid, call.model
    hold = await call.reserve(gw, stream=True)
    try:
        opened = await gw.fallbacks.first_event(call.plan, call.deadline, open_stream(
            gw.dispatcher, rid, model, call.payload, call.deadline, call.route, pace_s, call.serving))
    except BaseException as exc:
        hold.release()
        if isinstance(exc, errors.GpupoolError):  # no first token from the pool: a lane may serve
            return await gw.fallbacks.take_over(exc, call.plan, request, call.key, rid, call.deadline, call.started)
        raise
    note_first_token()

    async def events() -> AsyncIterator[bytes]:
        created = int(time.time())
        status = "cancelled"  # unless it ends below: the client went away
        try:
            if chat:
                yield sse(openai_responses.chat_chunk(rid, model, created, {"role": "assistant", "content": ""}, None))
            head, tail = sse_template(openai_responses.chat_chunk(rid, model, created, {"content": SLOT}, None) if chat
                                      else openai_responses.completion_chunk(rid, model, created, SLOT, None))
            async for text in opened:
                # Per token only the text is encoded; the rest of the event is fixed.
                yield head + JSON_ENCODER.encode(text) + tail
            done = opened.done
            assert done is not None
            # Charged before anything else is sent: a client leaving now has had the whole answer.
            cost = call.charge(gw, hold, opened.session, done, opened.answer_payload, opened.answer_text)
            finish = done.receipt.finish_reason or "stop"
            last = (openai_responses.chat_chunk(rid, model, created, {}, finish) if chat
                    else openai_responses.completion_chunk(rid, model, created, "", finish))
            if opened.continued:
                # The client saw one stream; say that several providers produced it.
                last["gpupool"] = {"continued": opened.continued, "providers": opened.providers}
            yield sse(last)
            if include_usage:
                u = done.receipt.usage
                yield sse({"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                           "created": created, "model": model, "choices": [],
                           "usage": openai_responses.usage(u.prompt_tokens, u.completion_tokens, cost)})
            yield b"data: [DONE]\n\n"
            status = "ok"
        except errors.GpupoolError as exc:
            # Headers are gone already: the error travels as an SSE event the client raises on.
            status = "error"
            if isinstance(exc, errors.Timeout):  # the client's deadline, not the provider's failure
                call.charge_delivered(hold, opened)
            yield sse(exc.body())
        finally:
            if status == "cancelled":  # the client went away mid-answer
                call.charge_delivered(hold, opened)
            await opened.aclose()
            hold.release()  # no-op once charged
            u = opened.done.receipt.usage if opened.done else None
            call.log(gw, opened.session.node_id, status, opened.attempts, u.prompt_tokens if u else 0,
                     u.completion_tokens if u else 0, hold.charged or 0, hold)

    async def closed() -> None:
        # Runs even if the client left before the body started: nothing stays held or open.
        call.charge_delivered(hold, opened)  # (the body may not have seen the client leave)
        await opened.aclose()
        hold.release()

    return EventStream(events(), closed, media_type="text/event-stream",
                       headers={"x-gpupool-provider": opened.session.node_id, "x-request-id": rid,
                                "cache-control": "no-cache"})
