"""What a provider session costs the gateway when idle (issue 17): its offer's strings are shared
with every other session's, its WebSocket skips the HTTP middlewares, and the stall watch sees it
only while it has requests open. Memory and CPU themselves are measured in bench/scale."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.websockets import WebSocket

from gpupool import protocol
from gpupool.gateway.peers.session import ProviderSession, share_strings
from gpupool.gateway.web.app import PROVIDERS_WS, with_provider_socket
from gpupool.identity import Identity
from gpupool.protocol import Hardware, ModelOffer, Offer


def wire_offer(node: Identity) -> Offer:
    """A signed offer as the hub gets it: decoded from its own frame (its strings its own copies)."""
    models = [ModelOffer(f"model-{i}", "generate", "echo", description="a model") for i in range(3)]
    offer = Offer(node_id=node.node_id, models=models, hardware=Hardware(cpu="x", cpu_cores=1, memory_mb=1),
                  region="eu-west", max_concurrency=4, issued_at=0.0)
    decoded = protocol.decode(protocol.encode(protocol.sign_offer(offer, node)))
    assert isinstance(decoded, Offer)
    return decoded


def test_two_sessions_offers_share_their_strings_and_still_verify() -> None:
    a_key, b_key = Identity.generate(), Identity.generate()
    a, b = wire_offer(a_key), wire_offer(b_key)
    assert a.models[0].name == b.models[0].name and a.models[0].name is not b.models[0].name  # two copies
    share_strings(a)
    share_strings(b)
    for ma, mb in zip(a.models, b.models):
        assert ma.name is mb.name and ma.task is mb.task and ma.backend is mb.backend
        assert ma.description is mb.description
    assert a.region is b.region
    # Interned in place, values unchanged: the signatures still hold.
    assert protocol.verify_claim(a, a_key.public_key) and protocol.verify_claim(b, b_key.public_key)


def test_only_the_providers_websocket_goes_straight_to_the_hub() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(("app", scope["type"], scope["path"]))

    async def handle(ws: WebSocket) -> None:
        seen.append(("hub", type(ws).__name__, ws.scope["path"]))

    asgi = with_provider_socket(app, handle)

    async def nothing() -> Any:
        return {}

    async def drop(_message: Any) -> None:
        pass

    async def run() -> None:
        await asgi({"type": "websocket", "path": PROVIDERS_WS}, nothing, drop)
        await asgi({"type": "websocket", "path": "/v1/other"}, nothing, drop)
        await asgi({"type": "http", "path": PROVIDERS_WS}, nothing, drop)

    asyncio.run(run())
    assert seen == [("hub", "WebSocket", PROVIDERS_WS), ("app", "websocket", "/v1/other"),
                    ("app", "http", PROVIDERS_WS)]


def test_a_session_is_in_the_busy_set_only_while_it_has_requests_open() -> None:
    busy: set[ProviderSession] = set()
    offer = wire_offer(Identity.generate())
    s = ProviderSession(node_id=offer.node_id, public_key=b"k" * 32, offer=offer, ws=None,  # type: ignore[arg-type]
                        connected_at=0.0, models={m.name: m for m in offer.models}, busy=busy)

    async def run() -> None:
        s.open_channel("r1")
        s.open_channel("r2")
        assert busy == {s}
        s.close_channel("r1")
        assert busy == {s}  # r2 is still open
        s.close_channel("r2")
        assert busy == set()
        s.closed = True
        s.open_channel("r3")  # a closed session is never watched again
        assert busy == set()

    asyncio.run(run())
