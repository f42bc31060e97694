"""The SDK's failover decisions, through both transports: the sync and async twins must agree.

Gateways are faked with httpx.MockTransport (one handler, told apart by port), so each
case runs the same script through `FailoverTransport` and `AsyncFailoverTransport`.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from gpupool.sdk.failover import AsyncFailoverTransport, FailoverTransport

GATEWAYS = ["http://gw:1", "http://gw:2", "http://gw:3"]
Behaviour = Callable[[httpx.Request], httpx.Response]


def down(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("refused", request=request)


def status(code: int, body: bytes = b"{}") -> Behaviour:
    return lambda request: httpx.Response(code, content=body)


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"served_by": request.url.port})


NO_MODEL = status(404, b'{"error": {"code": "model_not_found"}}')


class Gateways:
    """Fake gateways by port, recording which were asked, in order."""

    def __init__(self, *behaviours: Behaviour):
        self.behaviours = dict(enumerate(behaviours, 1))
        self.asked: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        port = request.url.port
        assert port is not None and request.headers["host"] == f"gw:{port}"
        self.asked.append(port)
        return self.behaviours[port](request)


def sync_send(gateways: Gateways) -> Callable[[], httpx.Response]:
    client = httpx.Client(transport=FailoverTransport(GATEWAYS, httpx.MockTransport(gateways)))
    return lambda: client.post("http://gw:1/v1/chat/completions", json={})


def async_send(gateways: Gateways) -> Callable[[], httpx.Response]:
    import asyncio

    client = httpx.AsyncClient(transport=AsyncFailoverTransport(GATEWAYS, httpx.MockTransport(gateways)))
    return lambda: asyncio.run(client.post("http://gw:1/v1/chat/completions", json={}))


TWINS = pytest.mark.parametrize("make", [sync_send, async_send], ids=["sync", "async"])


@TWINS
def test_unreachable_and_unservable_gateways_are_skipped(make: Callable[[Gateways], Callable[[], httpx.Response]]
                                                         ) -> None:
    gateways = Gateways(down, status(503), ok)
    send = make(gateways)
    response = send()
    assert response.status_code == 200 and response.json() == {"served_by": 3}
    assert gateways.asked == [1, 2, 3]
    # The gateway that worked is preferred; the ones that failed just now are tried last.
    send()
    assert gateways.asked[3:] == [3]


@TWINS
def test_model_not_found_fails_over_but_a_bad_request_does_not(
        make: Callable[[Gateways], Callable[[], httpx.Response]]) -> None:
    gateways = Gateways(NO_MODEL, status(400, b'{"error": {"code": "invalid_request"}}'), ok)
    response = make(gateways)()
    assert response.status_code == 400 and b"invalid_request" in response.content
    assert gateways.asked == [1, 2]


@TWINS
def test_the_last_gateways_answer_or_error_reaches_the_caller(
        make: Callable[[Gateways], Callable[[], httpx.Response]]) -> None:
    gateways = Gateways(status(502), NO_MODEL, status(503, b"busy"))
    response = make(gateways)()
    assert response.status_code == 503 and response.read() == b"busy"
    assert gateways.asked == [1, 2, 3]
    gateways = Gateways(down, down, down)
    with pytest.raises(httpx.ConnectError):
        make(gateways)()
    assert gateways.asked == [1, 2, 3]


@TWINS
@pytest.mark.parametrize(("wait_s", "then_asked"), [(1.0, [2, 3]), (10.0, [2, 1])])
def test_a_failed_gateway_is_tried_last_until_its_penalty_is_over(
        make: Callable[[Gateways], Callable[[], httpx.Response]], wait_s: float, then_asked: list[int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000.0]
    monkeypatch.setattr("gpupool.sdk.failover.time.monotonic", lambda: now[0])
    gateways = Gateways(down, ok, ok)
    send = make(gateways)
    send()  # 1 fails, 2 serves and is preferred
    assert gateways.asked == [1, 2]
    gateways.behaviours[1] = ok
    gateways.behaviours[2] = status(503)
    now[0] += wait_s
    send()  # 2 (preferred) cannot serve; then 1, unless it failed within the last 5 s
    assert gateways.asked[2:] == then_asked
