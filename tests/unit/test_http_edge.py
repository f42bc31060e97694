"""HTTP edge helpers (gateway/edge/http.py) that need no network: the server-send shortcut."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from gpupool.gateway.edge.http import SERVER_SEND, with_server_send


class _ServerCycle:
    """Like uvicorn's per-request object: it holds the scope, and its `send` is a bound method."""

    def __init__(self) -> None:
        self.scope: dict[str, Any] = {"type": "http"}
        self.sent: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def receive(self) -> dict[str, Any]:
        return {"type": "http.disconnect"}


def test_the_server_send_is_offered_during_the_request_and_leaves_no_cycle_after() -> None:
    seen = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope[SERVER_SEND])
        await scope[SERVER_SEND]({"type": "http.response.body", "body": b"x"})

    wrapped = with_server_send(app)
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            cycle = _ServerCycle()
            asyncio.run(wrapped(cycle.scope, cycle.receive, cycle.send))
            assert seen.pop() == cycle.send and cycle.sent == [{"type": "http.response.body", "body": b"x"}]
            assert SERVER_SEND not in cycle.scope
            del cycle
        assert gc.collect() == 0
    finally:
        gc.enable()
