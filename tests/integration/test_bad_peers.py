"""Raw WebSocket peers that break the protocol are disconnected and recorded; others keep serving.

These peers speak to a real gateway process with the `websockets` client and our
own wire module, the way a buggy or malicious provider would.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import msgspec
from openai import OpenAI
import pytest
import websockets
from websockets.asyncio.client import connect

from gpupool import protocol
from gpupool.protocol_handshake import answer
from gpupool.devnet import Network
from gpupool.identity import Identity
from gpupool.protocol import Challenge, Hello, ModelOffer, Offer, Run, Welcome, Hardware
from tests.integration.conftest import client_for


def ws_url(net: Network) -> str:
    return net.ws_url + "/v1/providers/ws"


async def expect_close(ws, code: int) -> str:
    with pytest.raises(websockets.ConnectionClosed) as info:
        for _ in range(10):
            await asyncio.wait_for(ws.recv(), 10)
    assert info.value.rcvd is not None and info.value.rcvd.code == code, info.value
    return info.value.rcvd.reason


def signed_offer(ident: Identity, models: list[ModelOffer]) -> Offer:
    offer = Offer(node_id=ident.node_id, models=models, hardware=Hardware("test", 1, 1024),
                  region="test", max_concurrency=4, issued_at=time.time())
    return msgspec.structs.replace(offer, signature=ident.sign(protocol.signed_bytes(offer)))


async def handshake(net: Network, ident: Identity, models: list[ModelOffer]):
    ws = await connect(ws_url(net))
    await ws.send(protocol.encode(Hello(protocol.PROTOCOL_VERSION, ident.public_key)))
    challenge = protocol.decode(await ws.recv())
    assert isinstance(challenge, Challenge)
    await ws.send(protocol.encode(answer(ident, challenge, ws.request.headers["Host"])))
    await ws.send(protocol.encode(signed_offer(ident, models)))
    assert isinstance(protocol.decode(await ws.recv()), Welcome)
    return ws


def events(net: Network, kind: str) -> list[dict]:
    return [e for e in net.admin("/admin/events?limit=1000") if e["kind"] == kind]


async def test_protocol_violations_are_refused_with_reasons(echo_net: Network) -> None:
    ident = Identity.generate()
    # Unknown protocol version.
    async with connect(ws_url(echo_net)) as ws:
        await ws.send(protocol.encode(Hello(99, ident.public_key)))
        reason = await expect_close(ws, protocol.CLOSE_BAD_VERSION)
        assert "version 99" in reason
    # A proof signed by another key.
    async with connect(ws_url(echo_net)) as ws:
        await ws.send(protocol.encode(Hello(protocol.PROTOCOL_VERSION, ident.public_key)))
        ch = protocol.decode(await ws.recv())
        forged = answer(Identity.generate(), ch, ws.request.headers["Host"])
        await ws.send(protocol.encode(forged))
        assert "signature" in await expect_close(ws, protocol.CLOSE_BAD_SIGNATURE)
    # A valid proof but a tampered offer.
    async with connect(ws_url(echo_net)) as ws:
        await ws.send(protocol.encode(Hello(protocol.PROTOCOL_VERSION, ident.public_key)))
        ch = protocol.decode(await ws.recv())
        await ws.send(protocol.encode(answer(ident, ch, ws.request.headers["Host"])))
        offer = signed_offer(ident, [ModelOffer("x", "generate", "echo")])
        await ws.send(protocol.encode(msgspec.structs.replace(offer, max_concurrency=1000)))
        assert "offer signature" in await expect_close(ws, protocol.CLOSE_BAD_SIGNATURE)
    # Garbage bytes, a text frame, and a valid message of the wrong kind.
    for frame in (b"\x00\xffgarbage", "hello as text", protocol.encode(Welcome("s", "n"))):
        async with connect(ws_url(echo_net)) as ws:
            await ws.send(frame)
            await expect_close(ws, protocol.CLOSE_PROTOCOL_ERROR)
    # Garbage after a good handshake.
    ws = await handshake(echo_net, Identity.generate(), [ModelOffer("x", "generate", "echo")])
    await ws.send(b"\xc1\xc1\xc1")
    await expect_close(ws, protocol.CLOSE_PROTOCOL_ERROR)

    await asyncio.sleep(0.3)  # the store writes events in small batches
    assert events(echo_net, "bad_version") and events(echo_net, "bad_signature")
    assert len(events(echo_net, "garbage_frame")) >= 3
    # Honest providers were never affected.
    out = await asyncio.to_thread(
        client_for(echo_net).chat.completions.create, model="echo", messages=[{"role": "user", "content": "still ok"}])
    assert out.choices[0].message.content == "still ok"
    assert echo_net.health()["providers"] == 2


async def test_handshake_timeout_closes_silent_peers(network: Network) -> None:
    network.start_gateway(extra=["--handshake-timeout-s", "0.5"])
    async with connect(ws_url(network)) as ws:
        assert await expect_close(ws, protocol.CLOSE_HANDSHAKE_TIMEOUT)


async def test_lying_receipt_disconnects_provider_and_request_moves(network: Network) -> None:
    """A provider that signs a receipt for output it did not send is thrown out; the client never notices."""
    network.start_gateway()
    # One slow honest provider with a single slot: concurrent requests queue there, so
    # routing sends some to the (instant, idle) liar.
    network.start_provider(["echo=echo:chat?delay_ms=100"], max_concurrency=1)
    network.wait_for_models({"echo": 1}, timeout=60)
    # One key's burst of 8 on a 1-slot pool is over its share while the liar's load is
    # unknown: the 429s carry Retry-After, which the official client honours.
    client = OpenAI(base_url=network.gateway_url + "/v1", api_key=network.dev_key(), timeout=30, max_retries=8)
    liar = Identity.generate()
    ws = await handshake(network, liar, [ModelOffer("echo", "generate", "echo")])

    async def lie() -> str:
        while True:
            msg = protocol.decode(await ws.recv())
            if isinstance(msg, protocol.Ping):  # look healthy and near
                await ws.send(protocol.encode(protocol.Pong(msg.nonce, msg.sent_at)))
            if isinstance(msg, Run):
                text = "cheap fake answer"
                receipt = protocol.Receipt(
                    request_id=msg.request_id, node_id=liar.node_id, model=msg.model,
                    input_hash=protocol.payload_hash(msg.payload), output_hash=protocol.output_hash("something else"),
                    usage=protocol.Usage(1, 3), finish_reason="stop", issued_at=time.time())
                receipt = msgspec.structs.replace(receipt, signature=liar.sign(protocol.signed_bytes(receipt)))
                await ws.send(protocol.encode(protocol.Chunk(msg.request_id, 0, text)))
                await ws.send(protocol.encode(protocol.Done(msg.request_id, receipt, text=text)))
                return msg.request_id

    liar_task = asyncio.create_task(lie())
    await asyncio.sleep(0.3)  # a ping or two: the gateway measures the liar's RTT
    with ThreadPoolExecutor(4) as pool:
        loop = asyncio.get_running_loop()
        outs = await asyncio.gather(*(loop.run_in_executor(pool, lambda i=i: client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": f"q {i}"}])) for i in range(8)))
    assert [o.choices[0].message.content for o in outs] == [f"q {i}" for i in range(8)]
    await asyncio.wait_for(liar_task, 10)
    await expect_close(ws, protocol.CLOSE_PROTOCOL_ERROR)
    await asyncio.sleep(0.3)
    bad = events(network, "bad_receipt")
    assert bad and bad[0]["peer"] == liar.node_id
