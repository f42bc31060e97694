"""HTTP edge helpers for the gateway's routes: JSON responses, the body limit, client
disconnects, server-sent events, query and routing options, background tasks.

Kept apart from the route handlers (gateway/web/) so they read as what the API does; nothing here
knows about providers, money or routing policy.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import pydantic
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpupool import errors
from gpupool.routing.options import REGION_POLICIES, RouteOptions

log = logging.getLogger("gpupool.gateway")
T = TypeVar("T")

JSON_ENCODER = msgspec.json.Encoder()
# Options a client may set in a body's `"gpupool": {...}` object; anything else is refused
# (400 naming it), so a typo never silently routes differently. A new option goes here.
GPUPOOL_OPTIONS = frozenset({"region", "region_policy", "max_price", "allow_fallback", "require_verified"})


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return JSON_ENCODER.encode(content)


def error_response(exc: errors.GpupoolError) -> JSON:
    retry_after = getattr(exc, "retry_after_s", None)
    # Whole seconds, rounded up: a client that waits this long finds the limit open again.
    headers = {"retry-after": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return JSON(exc.body(), status_code=exc.status, headers=headers)


def request_timeout(request: Request, default_s: float) -> float:
    """Seconds this request may take: the gateway's default, lowered by `X-Gpupool-Timeout`.

    The header must be a finite number of seconds above zero: `-1`, `0`, `nan` and `inf`
    are mistakes (or probes), refused with a 400 naming the header rather than read as
    "no deadline" or "expire at once".
    """
    header = request.headers.get("x-gpupool-timeout")
    if header is None:
        return default_s
    try:
        value = float(header)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise errors.InvalidRequest(f"X-Gpupool-Timeout must be a positive number of seconds, not {header[:32]!r}",
                                    param="X-Gpupool-Timeout")
    return min(default_s, value)


class BodyLimit:
    """Refuse bodies over the limit with 413 before any of it is parsed or buffered.

    `limit_for(path)`, where given, may lower the limit for a route and says why: a prompt
    that cannot fit any served model's context is refused from its Content-Length instead
    of costing the event loop a parse of megabytes of JSON."""

    def __init__(self, app: ASGIApp, max_bytes: int, limit_for: Callable[[str], tuple[int, str]] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, why = self.max_bytes, ""
        if self.limit_for is not None:
            lower, reason = self.limit_for(scope["path"])
            if lower < limit:
                limit, why = lower, reason
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit():
                if int(value) > limit:
                    return await error_response(self._too_large(limit, why))(scope, receive, send)
                # The server reads exactly content-length bytes, so the body cannot exceed
                # the limit: pass it through untouched (no per-request wrapper to allocate).
                return await self.app(scope, receive, send)
        # No content-length (e.g. chunked): read the body here, up to the limit, then
        # replay it. The routes buffer the whole body anyway, so this costs nothing.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away before sending the body
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > limit:
                return await error_response(self._too_large(limit, why))(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _too_large(limit: int, why: str) -> errors.BodyTooLarge:
        return errors.BodyTooLarge(f"request body exceeds the limit of {limit} bytes" + (f": {why}" if why else ""))


def route_options(request: Request, body: pydantic.BaseModel) -> RouteOptions:
    """Client routing options: headers `X-Gpupool-Region`, `X-Gpupool-Region-Policy`,
    `X-Gpupool-Max-Price` (µcr per request), or the same in a body field
    `"gpupool": {"region": ..., "region_policy": ..., "max_price": ...}`; headers win."""
    extra = getattr(body, "gpupool", None) or {}
    if not isinstance(extra, dict):
        raise errors.InvalidRequest("gpupool must be an object", param="gpupool")
    unknown = set(extra) - GPUPOOL_OPTIONS
    if unknown:
        name = sorted(unknown)[0]
        raise errors.InvalidRequest(f"unknown gpupool option {name!r}", param=f"gpupool.{name}")
    h = request.headers
    region = h.get("x-gpupool-region") or extra.get("region")
    policy = h.get("x-gpupool-region-policy") or extra.get("region_policy") or "prefer"
    if policy not in REGION_POLICIES:
        raise errors.InvalidRequest(f"region_policy must be one of {', '.join(REGION_POLICIES)}",
                                    param="gpupool.region_policy")
    raw_price = h.get("x-gpupool-max-price") or extra.get("max_price")
    max_price = None
    if raw_price is not None:
        try:
            max_price = int(raw_price)
        except (TypeError, ValueError):
            raise errors.InvalidRequest("max_price must be an integer number of micro-credits",
                                        param="gpupool.max_price") from None
        if max_price < 0:
            raise errors.InvalidRequest("max_price must not be negative", param="gpupool.max_price")
    if region is None and policy == "require":
        raise errors.InvalidRequest("region_policy=require needs a region", param="gpupool.region")
    return RouteOptions(region=str(region) if region else None, region_policy=policy, max_price=max_price,
                        require_verified=_require_verified(h.get("x-gpupool-require-verified"),
                                                           extra.get("require_verified")))


def _require_verified(header: str | None, body: object) -> bool:
    """`X-Gpupool-Require-Verified: true|false` or `"gpupool": {"require_verified": bool}`; anything
    else is refused, never read as false (a client asking for audited models must get them)."""
    if header is not None:
        value = header.strip().lower()
        if value not in ("true", "false", "1", "0"):
            raise errors.InvalidRequest("X-Gpupool-Require-Verified must be true or false",
                                        param="X-Gpupool-Require-Verified")
        return value in ("true", "1")
    if body is None:
        return False
    if not isinstance(body, bool):
        raise errors.InvalidRequest("require_verified must be a boolean", param="gpupool.require_verified")
    return body


def query_limit(request: Request, default: int = 100, most: int = 10_000) -> int:
    try:
        return max(1, min(most, int(request.query_params.get("limit", str(default)))))
    except ValueError:
        raise errors.InvalidRequest("limit must be an integer", param="limit") from None


async def json_object(request: Request, param_hint: str) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying what was expected (never a 500)."""
    raw = await request.body()
    try:
        body = msgspec.json.decode(raw) if raw else {}
    except msgspec.DecodeError:
        raise errors.InvalidRequest(f"request body is not valid JSON; expected {param_hint}") from None
    if not isinstance(body, dict):
        raise errors.InvalidRequest(f"request body must be a JSON object: {param_hint}")
    return body


SLOT = "\x00gpupool-slot\x00"


def sse_template(obj: Any) -> tuple[bytes, bytes]:
    """Split an SSE event at the slot string: event = head + json(text) + tail."""
    head, _, tail = sse(obj).partition(JSON_ENCODER.encode(SLOT))
    return head, tail


def sse(obj: Any) -> bytes:
    return b"data: " + JSON_ENCODER.encode(obj) + b"\n\n"


_background: set[asyncio.Task[None]] = set()


def spawn(coro: Awaitable[None]) -> None:
    """Run `coro` in the background, keeping a reference so it is not collected mid-way."""
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    task.add_done_callback(lambda t: t.cancelled() or t.exception() is None
                           or log.error("background task failed", exc_info=t.exception()))


# Where `with_server_send` puts the server's own `send` in each HTTP request's scope.
SERVER_SEND = "gpupool.server_send"


def with_server_send(app: ASGIApp) -> ASGIApp:
    """The outermost middleware: remembers the server's `send` for `EventStream`'s tokens."""
    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        scope[SERVER_SEND] = send
        try:
            await app(scope, receive, send)
        finally:
            # `send` is bound to the server's per-request object, which holds `scope`: left
            # here, every request would end as a reference cycle for the collector to find.
            del scope[SERVER_SEND]

    return asgi


class EventStream(StreamingResponse):
    """A streaming response that stops when the client hangs up, then runs `on_close`.

    Starlette's StreamingResponse watches for the disconnect with an anyio task group:
    about 30 objects per open stream that every full garbage collection must walk, and
    at 1,000 open streams those passes stall every stream (bench/streaming). One plain
    watcher task does the same job.

    The start of the response and its end go through every middleware's `send` (they
    record the status and whether the body was finished); the events in between go
    straight to the server's (`with_server_send`): four wrapper calls per token were
    ~8% of the gateway's busy time with 1,000 streams open.
    """

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]], **kw: Any):
        super().__init__(content, **kw)
        self._on_close = on_close
        self._also: list[Callable[[], None]] = []

    def add_close_callback(self, callback: Callable[[], None]) -> None:
        """Also run `callback` when the stream ends, however it ends (e.g. a per-key quota release)."""
        self._also.append(callback)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await until_disconnect(receive, self.stream_response(send, scope.get(SERVER_SEND)))
        except ClientGone:
            pass  # nobody is left to read the rest
        finally:
            for callback in self._also:
                callback()
            await self._on_close()

    async def stream_response(self, send: Send, server_send: Send | None = None) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        direct = server_send or send
        async for chunk in self.body_iterator:
            await direct({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it (and so the provider's work) if the client hangs up first.

    `receive` is the request's ASGI receive (`request.receive`). Raises ClientGone in
    that case; the caller's response is never read by anyone.
    """
    task = asyncio.ensure_future(work)
    gone = False

    async def watch() -> None:
        nonlocal gone
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
                task.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if gone and not _cancelling():
            raise ClientGone() from None
        raise
    finally:
        watcher.cancel()


def _cancelling() -> bool:
    """Whether the *current* task is being cancelled (shutdown), as opposed to the work task."""
    current = asyncio.current_task()
    return bool(current and current.cancelling())


class ClientGone(Exception):
    """The client disconnected before its answer was ready (logged as status 499)."""
