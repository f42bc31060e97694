"""Hostile providers and checkers against a real gateway: each attack is refused or contained,
and an honest bystander (a real echo provider and a client using it) keeps being served.

The attackers are raw WebSocket peers speaking our protocol (`gpupool.protocol`) with
keys of their own, the way a malicious node would; the gateway and the bystander are
real processes (devnet). Issue 9, the peer side.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import openai
import pytest
import websockets
from websockets.asyncio.client import connect

from gpupool import protocol
from gpupool.protocol_handshake import answer
from gpupool.devnet import Network
from gpupool.identity import Identity
from gpupool.protocol import Challenge, Hardware, Hello, ModelOffer, Offer, Run, Welcome
from tests.integration.conftest import client_for, raw, wait_until_async
from tests.integration.raw_peers import judge_jobs
from tests.integration.test_bad_peers import events
from tests.integration.test_billing import FAST_SETTLE, new_account

TTL_S = 1.0  # --known-model-ttl-s: how long a model nobody offers is still "known"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """A gateway with small peer limits and one honest echo provider: the bystander."""
    network = Network(Path(tmp_path_factory.mktemp("hostile")) / "net")
    try:
        network.start_gateway(extra=[*FAST_SETTLE, "--known-model-ttl-s", str(TTL_S), "--ping-interval-s", "0.5",
                                     "--max-queued-events", "64", "--max-statement-digests", "256"])
        network.start_provider(["echo=echo:chat"])
        network.wait_for_models({"echo": 1}, timeout=60)
        yield network
    finally:
        network.stop(timeout=10)


def offer_for(ident: Identity, models: list[ModelOffer], role: str = "provider",
              operator: Identity | None = None) -> Offer:
    offer = Offer(node_id=ident.node_id, models=models, hardware=Hardware("test", 1, 1024), region="test",
                  max_concurrency=4, issued_at=time.time(), role=role)
    return protocol.sign_offer(offer, ident, operator)


async def start_handshake(net: Network, ident: Identity, models: list[ModelOffer], role: str = "provider",
                          operator: Identity | None = None) -> Any:
    """Hello, Proof and Offer sent; the caller reads the Welcome (or the close)."""
    ws = await connect(net.ws_url + "/v1/providers/ws", max_size=None)
    await ws.send(protocol.encode(Hello(protocol.PROTOCOL_VERSION, ident.public_key)))
    challenge = protocol.decode(await ws.recv())
    assert isinstance(challenge, Challenge)
    await ws.send(protocol.encode(answer(ident, challenge, ws.request.headers["Host"])))
    await ws.send(protocol.encode(offer_for(ident, models, role, operator)))
    return ws


async def joined(net: Network, ident: Identity, models: list[ModelOffer], role: str = "provider",
                 operator: Identity | None = None) -> Any:
    ws = await start_handshake(net, ident, models, role, operator)
    assert isinstance(protocol.decode(await ws.recv()), Welcome)
    return ws


async def closed_with(ws: Any, code: int) -> str:
    """Read until the gateway closes the connection; its close code must be `code`. Returns the reason."""
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            msg = protocol.decode(await asyncio.wait_for(ws.recv(), 15))
            if isinstance(msg, protocol.Ping):
                await ws.send(protocol.encode(protocol.Pong(msg.nonce, msg.sent_at)))
    assert info.value.rcvd is not None, "the connection dropped without a close frame"
    assert info.value.rcvd.code == code, info.value.rcvd
    return info.value.rcvd.reason


async def bystander_served(net: Network, n: int = 3) -> float:
    """The honest client still gets right answers from the honest provider; returns the slowest latency."""
    client = client_for(net, timeout=30)
    slowest = 0.0
    for i in range(n):
        started = time.monotonic()
        out = await asyncio.to_thread(client.chat.completions.create, model="echo",
                                      messages=[{"role": "user", "content": f"bystander {i}"}])
        slowest = max(slowest, time.monotonic() - started)
        assert out.choices[0].message.content == f"bystander {i}"
    assert slowest < 5, f"bystander took {slowest:.2f}s"
    return slowest


async def wait_events(net: Network, kind: str, peer: str | None = None) -> list[dict]:
    """Events of `kind` (from `peer` only, if given), once there is one: the store writes them in the
    background, and an earlier test's events of the same kind must not end the wait early."""
    return await wait_until_async(lambda: [e for e in events(net, kind) if peer is None or e["peer"] == peer],
                                  f"a {kind} event" + (f" from {peer[:12]}" if peer else ""), timeout=15)


def echo(name: str = "echo", **kw: Any) -> ModelOffer:
    return ModelOffer(name, "generate", "echo", **kw)


# ---------------------------------------------------------------- checkers


async def test_checkers_are_admitted_by_the_operator_never_self_declared(net: Network) -> None:
    stranger = Identity.generate()
    ws = await start_handshake(net, stranger, [echo()], role="checker")
    reason = await closed_with(ws, protocol.CLOSE_NOT_ADMITTED)
    assert "not admitted" in reason and stranger.node_id[:40] in reason
    (event,) = await wait_events(net, "checker_not_admitted", stranger.node_id)
    assert "--checker" in event["detail"]
    assert (await asyncio.to_thread(raw, net, "GET", "/admin/audits",
                                    net.admin_token)).json()["checkers"] == []
    # A checker whose node id the operator admitted (devnet passes it as --checker) is welcomed.
    admitted = net.checker_identity("checker-3")
    ws = await joined(net, admitted, [echo("only-checked")], role="checker")
    await ws.close()
    await bystander_served(net)


async def test_a_checker_can_be_admitted_by_its_stake(network: Network) -> None:
    """--checker-min-stake: a checker with that much staked in the ledger is admitted; less is refused."""
    from gpupool.ledger import SqlLedger
    from gpupool.ledger import postings

    network.start_gateway(extra=["--checker-min-stake", "5000000"])
    staker = Identity.generate()

    async def stake(amount: int, key: str) -> None:
        ledger = await SqlLedger.open(network.db)
        try:
            await ledger.apply(postings.Entry(f"{key}:earn", "test", (postings.Posting(postings.WORLD, postings.provider_free(staker.node_id),
                                                                           amount),)))
            await ledger.stake(key, staker.node_id, amount)
        finally:
            await ledger.close()

    await stake(1_000_000, "stake-1")
    ws = await start_handshake(network, staker, [echo()], role="checker")
    assert "1000000 µcr staked, 5000000 needed" in await closed_with(ws, protocol.CLOSE_NOT_ADMITTED)
    await stake(4_000_000, "stake-2")
    ws = await joined(network, staker, [echo()], role="checker")
    await ws.close()


async def test_a_node_never_audits_its_own_answers(network: Network) -> None:
    """One key as provider and as (admitted) checker of the same model: its answers go unaudited."""
    network.start_gateway(extra=FAST_SETTLE)
    me = network.checker_identity("checker-0")
    provider_ws = await joined(network, me, [echo("mine")])
    checker_ws = await joined(network, me, [echo("mine")], role="checker")
    jobs: list[protocol.AuditJob] = []
    judging = asyncio.create_task(judge_jobs(checker_ws, me, True, jobs))
    from tests.integration.test_billing import answer_one_run

    client = client_for(network, timeout=30)
    for i in range(3):
        answering = asyncio.create_task(answer_one_run(provider_ws, me.node_id, "x", protocol.Usage(1, 1), me))
        await asyncio.to_thread(client.chat.completions.create, model="mine",
                                messages=[{"role": "user", "content": f"q{i}"}], max_tokens=5)
        await asyncio.wait_for(answering, 10)
    await asyncio.sleep(1.0)
    assert jobs == []  # probation audits every answer, yet none reached the provider's own checker
    stats = (await asyncio.to_thread(raw, network, "GET", "/admin/audits", network.admin_token)).json()
    assert stats["stats"]["no_checker"] >= 3, stats
    judging.cancel()


async def test_nodes_of_one_operator_never_audit_each_other(network: Network) -> None:
    """A provider and an admitted checker with different node keys but one operator key: the
    checker never gets the provider's audits; a checker of another operator does. An offer
    claiming an operator key that did not sign for the node is refused."""
    network.start_gateway(extra=FAST_SETTLE)
    operator, stranger = Identity.generate(), Identity.generate()
    provider = Identity.generate()
    forged = msgspec.structs.replace(offer_for(provider, [echo("ours")], operator=operator),
                                     operator=stranger.public_key)
    ws = await connect(network.ws_url + "/v1/providers/ws", max_size=None)
    await ws.send(protocol.encode(Hello(protocol.PROTOCOL_VERSION, provider.public_key)))
    challenge = protocol.decode(await ws.recv())
    await ws.send(protocol.encode(answer(provider, challenge, ws.request.headers["Host"])))
    await ws.send(protocol.encode(msgspec.structs.replace(forged, signature=provider.sign(protocol.signed_bytes(forged)))))
    assert "operator key" in await closed_with(ws, protocol.CLOSE_BAD_SIGNATURE)

    provider_ws = await joined(network, provider, [echo("ours")], operator=operator)
    ours = network.checker_identity("checker-0")
    ours_ws = await joined(network, ours, [echo("ours")], role="checker", operator=operator)
    ours_jobs: list[protocol.AuditJob] = []
    judging = [asyncio.create_task(judge_jobs(ours_ws, ours, True, ours_jobs))]
    from tests.integration.test_billing import answer_one_run

    client = client_for(network, timeout=30)

    async def ask(i: int) -> None:
        answering = asyncio.create_task(answer_one_run(provider_ws, provider.node_id, "x", protocol.Usage(1, 1),
                                                       provider))
        await asyncio.to_thread(client.chat.completions.create, model="ours",
                                messages=[{"role": "user", "content": f"q{i}"}], max_tokens=5)
        await asyncio.wait_for(answering, 10)

    for i in range(3):
        await ask(i)
    await asyncio.sleep(1.0)
    assert ours_jobs == []  # probation audits every answer, yet none went to the operator's own checker
    theirs = network.checker_identity("checker-1")
    theirs_ws = await joined(network, theirs, [echo("ours")], role="checker", operator=stranger)
    theirs_jobs: list[protocol.AuditJob] = []
    judging.append(asyncio.create_task(judge_jobs(theirs_ws, theirs, True, theirs_jobs)))
    await ask(3)
    await wait_until_async(lambda: theirs_jobs, "an audit job for the other operator's checker", timeout=15)
    assert ours_jobs == []
    for task in judging:
        task.cancel()


async def test_a_checker_overruled_by_a_second_checker_pays_for_it(network: Network) -> None:
    network.start_gateway(extra=FAST_SETTLE)
    network.start_provider(["echo=echo:chat"])
    network.wait_for_models({"echo": 1}, timeout=60)
    liar, honest = network.checker_identity("checker-1"), network.checker_identity("checker-2")
    liar_ws = await joined(network, liar, [echo()], role="checker")
    honest_ws = await joined(network, honest, [echo()], role="checker")
    liar_jobs: list[protocol.AuditJob] = []
    judging = [asyncio.create_task(judge_jobs(liar_ws, liar, False, liar_jobs)),
               asyncio.create_task(judge_jobs(honest_ws, honest, True, []))]
    client = client_for(network, timeout=30)
    # Every answer is audited (probation), each 2 s slot by one checker drawn at random. Once the
    # liar fails one (a hard failure suspends the provider), the fraud needs a second admitted
    # checker to confirm it: the honest one, which passes it.
    for i in range(30):
        try:
            await asyncio.to_thread(client.chat.completions.create, model="echo",
                                    messages=[{"role": "user", "content": f"honest answer {i}"}])
        except openai.APIStatusError as exc:
            assert exc.status_code == 503  # suspended on the liar's word, pending the second opinion
            break
        if liar_jobs:
            break
        await asyncio.sleep(0.7)
    overruled = await wait_events(network, "checker_overruled")
    assert overruled[0]["peer"] == liar.node_id and honest.node_id[:12] in overruled[0]["detail"]
    assert not events(network, "slashed")  # no money moved on the liar's word
    for task in judging:
        task.cancel()


# ---------------------------------------------------------------- bounds before and after the key is proven


async def test_a_huge_hello_is_refused_before_it_is_decoded(net: Network) -> None:
    ident = Identity.generate()
    # A valid Hello (it would decode fine) carrying an 8 MB field: the transport refuses the
    # frame from its header (1009), so the gateway neither buffers nor decodes the 8 MB.
    async with connect(net.ws_url + "/v1/providers/ws", max_size=None) as ws:
        with pytest.raises(websockets.ConnectionClosed) as info:
            await ws.send(protocol.encode(Hello(protocol.PROTOCOL_VERSION, ident.public_key, agent="x" * 8_000_000)))
            await asyncio.wait_for(ws.recv(), 15)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009, info.value
    # One of 100 KB passes the transport (an Offer may be that big) but not the Hello's 4 KiB.
    async with connect(net.ws_url + "/v1/providers/ws", max_size=None) as ws:
        await ws.send(protocol.encode(Hello(protocol.PROTOCOL_VERSION, ident.public_key, agent="x" * 100_000)))
        assert "exceeds the 4096" in await closed_with(ws, protocol.CLOSE_LIMIT)
    await wait_until_async(lambda: len(events(net, "frame_too_large")) >= 2, "both refusals recorded", timeout=15)
    await bystander_served(net)


@pytest.mark.parametrize("models, words", [
    ([echo(price_in=10**15, price_out=10**15)], "outside this gateway's bounds"),
    ([echo(f"fake-{i}") for i in range(1_000)], "at most 64"),
    ([echo("m" * 5000)], "model names must be"),
])
async def test_offers_beyond_the_operators_limits_are_refused(net: Network, models: list[ModelOffer],
                                                              words: str) -> None:
    ws = await start_handshake(net, Identity.generate(), models)
    assert words in await closed_with(ws, protocol.CLOSE_LIMIT)
    # An uncapped client is not priced out (402) by the refused offer, nor routed to it.
    await bystander_served(net)
    listed = (await asyncio.to_thread(raw, net, "GET", "/v1/market")).json()["data"]
    assert [m["price_in"] for m in listed if m["model"] == "echo"] == [{"min": 0, "max": 0}]


async def test_a_resent_offer_with_a_dear_price_is_refused_mid_session(net: Network) -> None:
    ident = Identity.generate()
    ws = await joined(net, ident, [echo("cheap-then-dear")])
    await ws.send(protocol.encode(offer_for(ident, [echo("cheap-then-dear", price_out=10**15)])))
    assert "bounds" in await closed_with(ws, protocol.CLOSE_LIMIT)


async def test_provider_connections_are_bounded(network: Network) -> None:
    network.start_gateway(extra=["--max-provider-sessions", "2"])
    first, second = Identity.generate(), Identity.generate()
    held = [await joined(network, first, [echo()]), await joined(network, second, [echo()])]
    ws = await start_handshake(network, Identity.generate(), [echo()])
    assert "limit of 2 provider connections" in await closed_with(ws, protocol.CLOSE_LIMIT)
    held.append(await joined(network, first, [echo()]))  # a node reconnecting replaces its own session
    assert (await asyncio.to_thread(raw, network, "GET", "/healthz")).json()["providers"] == 2
    for ws in held:
        await ws.close()


async def test_a_huge_statement_disconnects_its_provider(net: Network) -> None:
    ident = Identity.generate()
    ws = await joined(net, ident, [echo("stating")])
    digests = [bytes(32)] * 5_000
    await ws.send(protocol.encode(protocol.Statement(1, digests, ident.sign(protocol.statement_bytes(1, digests)))))
    assert "digests" in await closed_with(ws, protocol.CLOSE_LIMIT)
    # A bigger one (500 KB) is counted from its array header and refused before it is decoded.
    ws = await joined(net, ident, [echo("stating")])
    digests = [bytes(32)] * 15_000
    await ws.send(protocol.encode(protocol.Statement(2, digests, b"\x00" * 64)))
    assert "lists 15000 digests" in await closed_with(ws, protocol.CLOSE_LIMIT)
    # One of 3.4 MB is over the frame size a provider with no big answer due may send: the
    # transport refuses it from its header (1009), so the gateway never even buffers it.
    ws = await joined(net, ident, [echo("stating")])
    digests = [bytes(32)] * 100_000
    try:
        await ws.send(protocol.encode(protocol.Statement(3, digests, b"\x00" * 64)))
    except websockets.ConnectionClosed as exc:  # the refusal can arrive while the frame is still going out
        assert exc.rcvd is not None and exc.rcvd.code == 1009, exc
    else:
        await closed_with(ws, 1009)
    await bystander_served(net)


async def test_a_big_answer_passes_only_while_it_is_due(net: Network) -> None:
    """The frame limit grows with the answers a provider owes: 1,024 embeddings of 384 floats
    (1.5 MiB) come through; the same size unasked for closes the connection."""
    ident = Identity.generate()
    dims = 384
    ws = await joined(net, ident, [ModelOffer("wide-embed", "embeddings", "echo", dimensions=dims)])

    async def serve() -> None:
        async for frame in ws:
            msg = protocol.decode(frame)
            if isinstance(msg, protocol.Ping):
                await ws.send(protocol.encode(protocol.Pong(msg.nonce, msg.sent_at)))
            elif isinstance(msg, Run):
                assert isinstance(msg.payload, protocol.EmbedPayload)
                n = len(msg.payload.inputs)
                vectors = b"\x00\x00\x80\x3f" * (n * dims)  # 1.0f everywhere
                receipt = protocol.Receipt(msg.request_id, ident.node_id, msg.model,
                                           protocol.payload_hash(msg.payload), protocol.output_hash(vectors),
                                           protocol.Usage(n, 0))
                await ws.send(protocol.encode(protocol.Done(msg.request_id, receipt, vectors=vectors,
                                                            dimensions=dims)))

    serving = asyncio.create_task(serve())
    client = client_for(net, timeout=60)
    out = await asyncio.to_thread(client.embeddings.create, model="wide-embed", input=["x"] * 1024)
    assert len(out.data) == 1024 and len(out.data[0].embedding) == dims
    serving.cancel()
    await ws.send(b"\x00" * (1536 * 1024))  # nothing is due now
    await closed_with(ws, 1009)


async def test_a_peer_silent_after_its_upgrade_loses_its_socket(network: Network) -> None:
    """Upgraded, then never a Hello and never an answer to the close frame: the socket goes
    soon after the handshake deadline, not when the peer pleases."""
    network.start_gateway(extra=["--handshake-timeout-s", "1"])
    host, port = network.gateway_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /v1/providers/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    started = time.monotonic()
    got = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 30):
            got += chunk
    finally:
        writer.close()
    held = time.monotonic() - started
    assert got.startswith(b"HTTP/1.1 101") and b"\x88" in got.partition(b"\r\n\r\n")[2], got[:200]
    assert held < 1 + 2 + 2, f"socket held {held:.1f}s"  # handshake deadline + close timeout + slack


async def liar_serving(net: Network, model: str, frames: Any) -> tuple[Identity, Any]:
    """A raw provider, alone serving `model`, answering any Run it gets with `frames(run)`."""
    ident = Identity.generate()
    ws = await joined(net, ident, [echo(model)])
    return ident, asyncio.create_task(serve_runs(ws, frames))


async def serve_runs(ws: Any, frames: Any) -> None:
    """A raw provider's loop: answer Pings, and each Run with the frames `frames(run)` gives."""
    try:
        async for frame in ws:
            msg = protocol.decode(frame)
            if isinstance(msg, protocol.Ping):
                await ws.send(protocol.encode(protocol.Pong(msg.nonce, msg.sent_at)))
            elif isinstance(msg, Run):
                for out in frames(msg):
                    await ws.send(protocol.encode(out))
    except websockets.ConnectionClosed:
        return  # thrown out, as it should be


async def thrown_out_for(net: Network, ident: Identity, model: str, kind: str, serving: Any) -> None:
    """A client asks the liar; it is disconnected for `kind`, and the client never sees what it sent."""
    client = client_for(net, timeout=30)
    with pytest.raises(openai.APIStatusError) as info:
        await asyncio.to_thread(client.chat.completions.create, model=model, max_tokens=4,
                                messages=[{"role": "user", "content": "one two three four five six"}])
    assert info.value.status_code in (502, 503), info.value  # its only provider was thrown out
    assert "spam" not in str(info.value.body)
    assert await wait_events(net, kind, ident.node_id)
    await asyncio.wait_for(serving, 10)  # the gateway closed the liar's connection
    await bystander_served(net)


async def test_output_beyond_max_tokens_disconnects_its_provider(net: Network) -> None:
    def overrun(run: Run) -> list[protocol.Message]:
        text = " ".join(["spam"] * 50)
        receipt = protocol.Receipt(run.request_id, "", run.model, protocol.payload_hash(run.payload),
                                   protocol.output_hash(text), protocol.Usage(5, 50), "length")
        return [*(protocol.Chunk(run.request_id, i, "spam ") for i in range(50)),
                protocol.Done(run.request_id, receipt, text=text)]

    ident, serving = await liar_serving(net, "overrun", overrun)
    await thrown_out_for(net, ident, "overrun", "output_over_max_tokens", serving)


async def test_a_provider_flooding_answer_frames_is_disconnected(net: Network) -> None:
    def flood(run: Run) -> list[protocol.Message]:
        return [protocol.Batch([protocol.Chunk(run.request_id, i, "spam") for i in range(1_000)])]

    ident, serving = await liar_serving(net, "flooded", flood)
    await thrown_out_for(net, ident, "flooded", "flood", serving)


# ---------------------------------------------------------------- sessions that end, tables that expire


async def test_a_peer_leaving_right_after_its_offer_is_not_left_registered(net: Network) -> None:
    before = (await asyncio.to_thread(raw, net, "GET", "/healthz")).json()["providers"]
    for i in range(5):
        ws = await start_handshake(net, Identity.generate(), [echo(), echo(f"ghost-{i}")])
        # Gone right after its Offer, before reading the Welcome. (Before the fix, 4 of 5 such
        # peers stayed registered for good, counting for routing and hold prices.)
        await ws.close()
    await asyncio.sleep(1.0)
    health = (await asyncio.to_thread(raw, net, "GET", "/healthz")).json()
    assert health["providers"] == before, health  # none of the five stayed registered
    assert not [m for m in health["models"] if m.startswith("ghost")]
    await bystander_served(net)


async def test_models_nobody_offers_any_more_are_forgotten(net: Network) -> None:
    ws = await joined(net, Identity.generate(), [echo("fleeting")])
    await ws.close()
    client = client_for(net, timeout=30)

    def status() -> int:
        try:
            client.chat.completions.create(model="fleeting", messages=[{"role": "user", "content": "hi"}])
        except openai.APIStatusError as exc:
            return exc.status_code
        return 200

    assert await asyncio.to_thread(status) == 503  # known, nobody serves it right now
    await asyncio.sleep(TTL_S + 1.5)  # the next ping round sweeps it
    assert await asyncio.to_thread(status) == 404  # forgotten: the table does not keep it forever


async def test_rtt_is_measured_by_the_gateway_not_taken_from_a_forged_pong(net: Network) -> None:
    ident = Identity.generate()
    ws = await joined(net, ident, [echo("far-away")])

    async def forge() -> None:
        async for frame in ws:
            msg = protocol.decode(frame)
            if isinstance(msg, protocol.Ping):
                await asyncio.sleep(0.3)  # really 300 ms away...
                # ...but claims the ping was sent just now, and answers a nonce never sent.
                await ws.send(protocol.encode(protocol.Pong(msg.nonce, msg.sent_at + 0.3)))
                await ws.send(protocol.encode(protocol.Pong(msg.nonce + 10_000, msg.sent_at + 10)))

    forging = asyncio.create_task(forge())

    def rtt_ms() -> float | None:
        row = [p for p in net.admin("/admin/providers") if p["node_id"] == ident.node_id]
        return row[0]["rtt_ms"] if row else None

    measured = await wait_until_async(lambda: (r := rtt_ms()) is not None and r, "an RTT sample", timeout=10)
    assert measured >= 250, f"rtt {measured} ms: the forged timestamp was believed"
    forging.cancel()
    await ws.close()


# ---------------------------------------------------------------- prices fixed at dispatch


async def test_a_resent_offer_does_not_reprice_requests_in_flight(net: Network) -> None:
    ident = Identity.generate()
    cheap = echo("repriced", price_in=1_000_000, price_out=1_000_000)
    ws = await joined(net, ident, [cheap])

    async def answer() -> None:
        while True:
            msg = protocol.decode(await ws.recv())
            if isinstance(msg, Run):
                # Mid-request, the provider raises its price 100-fold (within the operator's bounds).
                await ws.send(protocol.encode(offer_for(ident, [echo("repriced", price_in=10**8, price_out=10**8)])))
                text = "answer"
                receipt = protocol.Receipt(msg.request_id, ident.node_id, msg.model,
                                           protocol.payload_hash(msg.payload), protocol.output_hash(text),
                                           protocol.Usage(100, 200), "stop", time.time())
                receipt = msgspec.structs.replace(receipt, signature=ident.sign(protocol.signed_bytes(receipt)))
                await ws.send(protocol.encode(protocol.Done(msg.request_id, receipt, text=text)))
                return

    answering = asyncio.create_task(answer())
    key = new_account(net, "repriced-client", 10_000_000)
    out = await asyncio.to_thread(client_for(net, key, timeout=30).chat.completions.create, model="repriced",
                                  messages=[{"role": "user", "content": "hi"}], max_tokens=400)
    await asyncio.wait_for(answering, 10)
    assert out.usage.cost_ucr == 300  # 100 + 200 tokens at the 1 µcr/token it was dispatched under
    await ws.close()


# ---------------------------------------------------------------- unaudited models


async def test_unaudited_models_are_marked_and_a_client_can_refuse_them(net: Network) -> None:
    def verified(path: str, field: str) -> bool:
        body = raw(net, "GET", path, net.dev_key()).json()["data"]
        row = [m for m in body if m.get("id", m.get("model")) == "echo"][0]
        return row["gpupool"]["verified"] if field == "models" else row["verified"]

    assert not verified("/v1/models", "models") and not verified("/v1/market", "market")
    strict = {"model": "echo", "messages": [{"role": "user", "content": "audited only"}],
              "gpupool": {"require_verified": True}}
    r = await asyncio.to_thread(raw, net, "POST", "/v1/chat/completions", net.dev_key(), json=strict)
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_verified", r.text
    r = await asyncio.to_thread(raw, net, "POST", "/v1/chat/completions", net.dev_key(),
                                json={**strict, "gpupool": {"require_verified": "yes"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "gpupool.require_verified"
    # An admitted checker holding the model: now it is audited, and the strict client is served.
    checker = net.checker_identity("checker-2")
    ws = await joined(net, checker, [echo()], role="checker")
    judging = asyncio.create_task(judge_jobs(ws, checker, True, []))
    assert await asyncio.to_thread(verified, "/v1/models", "models")
    assert await asyncio.to_thread(verified, "/v1/market", "market")
    r = await asyncio.to_thread(raw, net, "POST", "/v1/chat/completions", net.dev_key(), json=strict)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "audited only"
    judging.cancel()
    await ws.close()
    await wait_until_async(lambda: not verified("/v1/models", "models"), "echo unverified again", timeout=10)
