"""Raw protocol peers for the hostile benchmark: the handshake and a keep-alive loop.

A hostile provider or checker is just a WebSocket client speaking our wire module
with a fresh key, as anyone on the internet could. These helpers do the honest
parts (Hello, Proof, signed Offer, answering Pings) so each attack in attacks.py
only writes the dishonest part.

    ws = await handshake(ws_url, Identity.generate(), [ModelOffer("x", "generate", "echo")])
    await keep_alive(ws, on_message=lambda ws, msg: ...)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection, connect

from gpupool import protocol
from gpupool.protocol_handshake import answer
from gpupool.identity import Identity
from gpupool.protocol import Challenge, Fail, Hardware, Hello, ModelOffer, Offer, Ping, Pong, Run, Welcome

PROVIDERS_PATH = "/v1/providers/ws"
# Our own frame limit is the gateway's: the attacks choose frame sizes, websockets must not refuse them first.
CLIENT_MAX_SIZE = 64 * 1024 * 1024


class Refused(Exception):
    """The gateway closed the connection (or answered something else) during the handshake."""


# What a hostile peer's connection can end with, short of a bug in the attack.
WS_ERRORS = (Refused, OSError, websockets.WebSocketException, TimeoutError)


def signed_offer(ident: Identity, models: list[ModelOffer], role: str = "provider", **fields: Any) -> Offer:
    """A signed Offer; `fields` override any Offer field, in or out of the protocol's bounds (msgspec
    checks bounds when decoding, not when encoding, so a raw peer can send anything)."""
    base: dict[str, Any] = {"node_id": ident.node_id, "models": models, "hardware": Hardware("hostile", 1, 1024),
                            "region": "hostile", "max_concurrency": 4, "issued_at": time.time(), "role": role}
    offer = Offer(**{**base, **fields})
    return msgspec.structs.replace(offer, signature=ident.sign(protocol.signed_bytes(offer)))


async def decline_runs(ws: ClientConnection, msg: Any) -> None:
    """A peer that never serves: every Run it is sent fails at once (retryable, so it moves on)."""
    if isinstance(msg, Run):
        await ws.send(protocol.encode(Fail(msg.request_id, "overloaded", "hostile peer", retryable=True)))


async def open_ws(ws_url: str) -> ClientConnection:
    return await connect(ws_url + PROVIDERS_PATH, max_size=CLIENT_MAX_SIZE, open_timeout=30,
                         ping_interval=None, compression=None)


async def prove(ws: ClientConnection, ident: Identity, agent: str = "") -> None:
    """Hello and Proof: the peer shows it holds the key."""
    await ws.send(protocol.encode(Hello(protocol.PROTOCOL_VERSION, ident.public_key, agent)))
    challenge = protocol.decode(await asyncio.wait_for(ws.recv(), 30))
    if not isinstance(challenge, Challenge):
        raise Refused(f"expected a challenge, got {type(challenge).__name__}")
    await ws.send(protocol.encode(answer(ident, challenge, ws.request.headers["Host"])))


async def handshake(ws_url: str, ident: Identity, models: list[ModelOffer], role: str = "provider",
                    offer: Offer | None = None) -> ClientConnection:
    """A registered session (Welcome received); raises Refused if the gateway closes it instead."""
    ws = await open_ws(ws_url)
    try:
        await prove(ws, ident)
        await ws.send(protocol.encode(offer or signed_offer(ident, models, role)))
        welcome = protocol.decode(await asyncio.wait_for(ws.recv(), 30))
    except websockets.ConnectionClosed as exc:
        await ws.close()
        raise Refused(close_text(exc)) from None
    except BaseException:
        await ws.close()
        raise
    if not isinstance(welcome, Welcome):
        await ws.close()
        raise Refused(f"expected welcome, got {type(welcome).__name__}")
    return ws


def close_text(exc: websockets.ConnectionClosed) -> str:
    frame = exc.rcvd
    return f"closed {frame.code}: {frame.reason}" if frame is not None else "closed without a close frame"


OnMessage = Callable[[ClientConnection, Any], Awaitable[None]]


async def keep_alive(ws: ClientConnection, on_message: OnMessage | None = None) -> str:
    """Answer Pings (so liveness keeps the session) and hand everything else to `on_message`,
    until the connection closes or the task is cancelled; returns why it ended."""
    try:
        while True:
            msg = protocol.decode(await ws.recv())
            if isinstance(msg, Ping):
                await ws.send(protocol.encode(Pong(msg.nonce, msg.sent_at)))
            elif on_message is not None:
                await on_message(ws, msg)
    except websockets.ConnectionClosed as exc:
        return close_text(exc)
    except asyncio.CancelledError:
        await ws.close()
        return "closed by us"
