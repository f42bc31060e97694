"""HTTP transports that send each request to the first gateway that can take it.

A request moves to the next gateway when the current one cannot be reached,
answers 502/503 (it has no provider for the model right now) or 404
model_not_found (no provider ever offered the model there) — all before any of
the answer reached the caller, so nothing is duplicated. A gateway that
failed is tried last for the next few seconds; the one that worked is preferred.
Once response headers arrived the request belongs to that gateway (streams that
lose their provider are continued by the gateway itself).

The decisions are made once, without I/O, by `GatewayList.attempts` (a generator in
the manner of httpx's `Auth.auth_flow`); `FailoverTransport` and
`AsyncFailoverTransport` only carry out its steps, blocking or awaiting.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field

import httpx
import openai

# Statuses that mean "this gateway can't serve it now" rather than "your request is bad".
FAILOVER_STATUSES = frozenset({502, 503})
NOT_FOUND = 404
# Connection-level errors that happen before any byte of the answer.
FAILOVER_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError)
PENALTY_S = 5.0


# What `GatewayList.attempts` yields: a request to send to a gateway (send back its response,
# or throw in the connection error), or an error response whose body to read (send it back).
Step = httpx.Request | httpx.Response


@dataclass
class GatewayList:
    """Pure bookkeeping of which gateway to try first, and the failover decisions; shared by the
    sync and async transports."""

    urls: list[httpx.URL]
    failed_at: dict[int, float] = field(default_factory=dict)
    preferred: int = 0

    @classmethod
    def of(cls, gateways: list[str]) -> GatewayList:
        if not gateways:
            raise ValueError("at least one gateway URL is needed")
        return cls([httpx.URL(g.rstrip("/")) for g in gateways])

    def order(self, now: float) -> list[int]:
        rest = [i for i in range(len(self.urls)) if i != self.preferred]
        ranked = [self.preferred, *rest]
        # Recently failed gateways go last, in the same relative order.
        return sorted(ranked, key=lambda i: now - self.failed_at.get(i, -1e9) < PENALTY_S)

    def route(self, request: httpx.Request, index: int) -> httpx.Request:
        base = self.urls[index]
        url = request.url.copy_with(scheme=base.scheme, host=base.host, port=base.port)
        request.url = url
        request.headers["host"] = url.netloc.decode()
        return request

    @staticmethod
    def unservable(response: httpx.Response) -> bool:
        """Whether another gateway might serve what this one could not (body already read)."""
        if response.status_code in FAILOVER_STATUSES:
            return True
        return response.status_code == NOT_FOUND and b'"model_not_found"' in response.content

    def failed(self, index: int, now: float) -> None:
        self.failed_at[index] = now

    def worked(self, index: int) -> None:
        self.preferred = index
        self.failed_at.pop(index, None)

    def attempts(self, request: httpx.Request) -> Generator[Step, httpx.Response, httpx.Response]:
        """One request's walk over the gateways, sans I/O; returns the response the caller gets.

        Yields the request routed to each gateway in turn: the transport sends it back that
        gateway's response, or throws in the connection error (`FAILOVER_ERRORS`), which is
        re-raised from the last gateway. Yields an error response whose body must be read
        before it can be judged (the transport reads it, which also releases its connection).
        """
        order = self.order(time.monotonic())
        for n, index in enumerate(order):
            last = n == len(order) - 1
            try:
                response = yield self.route(request, index)
            except FAILOVER_ERRORS:
                self.failed(index, time.monotonic())
                if last:
                    raise
                continue
            # The last gateway's answer goes back as it is, body unread (it may be a stream).
            if response.status_code >= 400 and not last:
                yield response  # error bodies are small
                if self.unservable(response):
                    self.failed(index, time.monotonic())
                    continue
            self.worked(index)
            return response
        raise AssertionError("unreachable")  # the loop returns or raises on the last gateway


class FailoverTransport(httpx.BaseTransport):
    def __init__(self, gateways: list[str], inner: httpx.BaseTransport | None = None):
        self.gateways = GatewayList.of(gateways)
        self.inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        flow = self.gateways.attempts(request)
        try:
            step = next(flow)
            while True:
                if isinstance(step, httpx.Response):
                    step.read()
                    step = flow.send(step)
                    continue
                try:
                    response = self.inner.handle_request(step)
                except FAILOVER_ERRORS as exc:
                    step = flow.throw(exc)
                    continue
                step = flow.send(response)
        except StopIteration as done:
            return done.value

    def close(self) -> None:
        self.inner.close()


class AsyncFailoverTransport(httpx.AsyncBaseTransport):
    def __init__(self, gateways: list[str], inner: httpx.AsyncBaseTransport | None = None):
        self.gateways = GatewayList.of(gateways)
        self.inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        flow = self.gateways.attempts(request)
        try:
            step = next(flow)
            while True:
                if isinstance(step, httpx.Response):
                    await step.aread()
                    step = flow.send(step)
                    continue
                try:
                    response = await self.inner.handle_async_request(step)
                except FAILOVER_ERRORS as exc:
                    step = flow.throw(exc)
                    continue
                step = flow.send(response)
        except StopIteration as done:
            return done.value

    async def aclose(self) -> None:
        await self.inner.aclose()


def connect(gateways: list[str], api_key: str, **kwargs: object) -> openai.OpenAI:
    """An `openai.OpenAI` client that fails over between `gateways` (base URLs without /v1)."""
    http = httpx.Client(transport=FailoverTransport(gateways), timeout=kwargs.pop("timeout", 120.0))  # type: ignore[arg-type]
    return openai.OpenAI(base_url=gateways[0].rstrip("/") + "/v1", api_key=api_key, http_client=http, **kwargs)  # type: ignore[arg-type]


def connect_async(gateways: list[str], api_key: str, **kwargs: object) -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=AsyncFailoverTransport(gateways), timeout=kwargs.pop("timeout", 120.0))  # type: ignore[arg-type]
    return openai.AsyncOpenAI(base_url=gateways[0].rstrip("/") + "/v1", api_key=api_key, http_client=http, **kwargs)  # type: ignore[arg-type]
