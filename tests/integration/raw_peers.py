"""Raw WebSocket peers the integration tests share: checkers whose verdicts a test chooses,
providers that lie to canaries, providers that take work and go silent.

A raw checker completes the checker handshake and signs the verdicts a test chooses, so a
test controls exactly what the gateway hears; the real checker process (which re-runs
models) is tested in the red-team suites.

    checker, ws, jobs, judging = await judging_checker(network, ["echo"], passed=True)
    ...
    judging.cancel(); await ws.close()
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec
from websockets.asyncio.client import connect

from gpupool import protocol
from gpupool.devnet import Network
from gpupool.identity import Identity
from gpupool.protocol import AuditJob, Hello, ModelOffer, Welcome
from gpupool.protocol_handshake import answer
from tests.integration.test_bad_peers import events, handshake, signed_offer, ws_url
from tests.integration.test_billing import answer_one_run


async def raw_checker(net: Network, ident: Identity, models: list[str]) -> Any:
    """A WebSocket peer admitted as a checker of `models` (`ident` must be an admitted checker)."""
    ws = await connect(ws_url(net))
    await ws.send(protocol.encode(Hello(protocol.PROTOCOL_VERSION, ident.public_key)))
    challenge = protocol.decode(await ws.recv())
    await ws.send(protocol.encode(answer(ident, challenge, ws.request.headers["Host"])))
    offer = signed_offer(ident, [ModelOffer(m, "generate", "echo") for m in models])
    offer = msgspec.structs.replace(offer, role="checker", signature=b"")
    await ws.send(protocol.encode(msgspec.structs.replace(offer, signature=ident.sign(protocol.signed_bytes(offer)))))
    assert isinstance(protocol.decode(await ws.recv()), Welcome)
    return ws


async def judge_jobs(ws: Any, ident: Identity, passed: bool | Callable[[AuditJob], bool], jobs: list[AuditJob],
                     delay: float = 0.0, hard: bool = True) -> None:
    """Answer every audit job with the same verdict (or `passed(job)`'s), signed; pongs keep the link alive.
    `hard`: whether a failure is hard (suspends at once) or soft (counts towards the suspension rule's k)."""
    async for frame in ws:
        msg = protocol.decode(frame)
        if isinstance(msg, protocol.Ping):
            await ws.send(protocol.encode(protocol.Pong(msg.nonce, msg.sent_at)))
        elif isinstance(msg, AuditJob):
            jobs.append(msg)
            await asyncio.sleep(delay)  # a checker takes a while to re-run the model
            ok = bool(passed(msg)) if callable(passed) else passed
            verdict = protocol.Verdict(msg.job_id, msg.receipt.request_id, msg.receipt.node_id, ident.node_id,
                                       passed=ok, hard=hard and not ok, reason="ok" if ok else "wrong_model",
                                       score=1.0 if ok else 0.05, issued_at=time.time())
            verdict = msgspec.structs.replace(verdict, signature=ident.sign(protocol.signed_bytes(verdict)))
            await ws.send(protocol.encode(verdict))


async def judging_checker(network: Network, models: list[str], passed: bool | Callable[[AuditJob], bool],
                          name: str = "checker") -> tuple[Identity, Any, list[AuditJob], asyncio.Task[None]]:
    """The admitted checker `name` connected raw and judging every job by `passed` (jobs recorded in the list)."""
    checker = network.checker_identity(name)  # admitted: devnet passes its node id as --checker
    ws = await raw_checker(network, checker, models)
    jobs: list[AuditJob] = []
    return checker, ws, jobs, asyncio.create_task(judge_jobs(ws, checker, passed, jobs))


async def lie_until_suspended(network: Network, ws: Any, liar: Identity, text: str, usage: protocol.Usage,
                              timeout: float) -> tuple[str, list[str]]:
    """Answer every run the gateway sends the raw provider `ws` with `text` until the gateway suspends
    it; returns the suspension's detail and the request ids it was sent."""
    runs: list[str] = []

    async def lie() -> None:
        while True:
            receipt = await answer_one_run(ws, liar.node_id, text, usage)
            runs.append(receipt.request_id)

    lying = asyncio.create_task(lie())
    deadline = time.monotonic() + timeout
    try:
        while not any(e["peer"] == liar.node_id for e in events(network, "suspended")):
            assert time.monotonic() < deadline, network.admin("/admin/audits")
            await asyncio.sleep(0.2)
    finally:
        lying.cancel()
    detail = next(e["detail"] for e in events(network, "suspended") if e["peer"] == liar.node_id)
    return detail, runs


async def silent_provider(net: Network, offers: list[ModelOffer], stop: asyncio.Event) -> str:
    """A fresh key that completes the handshake with `offers`, answers pings, takes every Run and
    never answers it, until `stop` is set; returns its node id."""
    ident = Identity.generate()
    ws = await handshake(net, ident, offers)

    async def pong() -> None:
        async for frame in ws:
            msg = protocol.decode(frame)
            if isinstance(msg, protocol.Ping):
                await ws.send(protocol.encode(protocol.Pong(msg.nonce, msg.sent_at)))
            # Run: swallowed. Never answered.

    task = asyncio.create_task(pong())
    await stop.wait()
    task.cancel()
    await ws.close()
    return ident.node_id
