"""Hardware proof through real processes: honest providers earn a verified speed, wrong answers are thrown out.

The gateway challenges every provider at admission and then at jittered intervals
(short here) with a seeded matrix product; see gateway/trust/hardware_checks.py. The
cheater is a raw WebSocket peer speaking the wire protocol itself.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import numpy as np
import websockets

from gpupool import protocol
from gpupool.devnet import Network
from gpupool.identity import Identity
from gpupool.protocol import HardwareAnswer, HardwareChallenge, ModelOffer
from gpupool.verify import hardware
from tests.integration.conftest import client_for
from tests.integration.test_bad_peers import events, handshake


def verified(net: Network) -> dict[str, Any]:
    return {p["node_id"]: p["verified_gflops"] for p in net.admin("/admin/providers")}


def proofs_passed(net: Network) -> float:
    """The gateway's count of passed hardware proofs (its /metrics)."""
    for line in httpx.get(net.gateway_url + "/metrics", timeout=10).text.splitlines():
        if line.startswith('gpupool_hardware_proofs_total{result="passed"}'):
            return float(line.split()[-1])
    return 0.0


async def wrong_prover(ws: Any, seen: list[HardwareChallenge]) -> None:
    """Answer hardware challenges with C = A·B + 1: committed consistently, so only Freivalds can tell."""
    solved: dict[str, np.ndarray] = {}
    while True:
        msg = protocol.decode(await ws.recv())
        if isinstance(msg, protocol.Ping):
            await ws.send(protocol.encode(protocol.Pong(msg.nonce, msg.sent_at)))
        elif isinstance(msg, HardwareChallenge):
            seen.append(msg)
            if not msg.open_rows:
                spec = hardware.Challenge(seed=msg.seed, n=msg.n, value_range=msg.value_range, claimed_memory_mb=1)
                sol = hardware.solve(spec)
                wrong = hardware.Solution(sol.product + 1, sol.elapsed_s, "numpy", "cpu")
                solved[msg.challenge_id] = wrong.product
                com = hardware.commit(wrong)
                await ws.send(protocol.encode(HardwareAnswer(msg.challenge_id, list(com.row_digests), 0.001)))
            else:
                c = solved[msg.challenge_id]
                rows = [np.rint(c[i]).astype("<i8").tobytes() for i in msg.open_rows]
                await ws.send(protocol.encode(HardwareAnswer(msg.challenge_id, rows=rows)))


async def test_honest_provider_passes_and_its_speed_is_verified(network: Network) -> None:
    network.start_gateway(extra=["--hardware-proof-interval-s", "0.5"])
    network.start_provider(["echo=echo:chat"])
    network.wait_for_models({"echo": 1}, timeout=60)
    deadline = time.monotonic() + 30
    while not any(verified(network).values()):
        assert time.monotonic() < deadline, f"no verified speed after 30s: {verified(network)}"
        await asyncio.sleep(0.2)
    (node, gflops), = verified(network).items()
    assert gflops > 0
    # Several re-proofs later (every 0.25-0.75 s) it is still connected, still serving, never failed:
    # each proof schedules the next (a timer, not a sleeping task per session), so they keep coming.
    first = proofs_passed(network)
    await asyncio.sleep(3)
    assert list(verified(network)) == [node] and verified(network)[node] > 0
    assert proofs_passed(network) >= first + 3, (first, proofs_passed(network))
    out = await asyncio.to_thread(client_for(network, timeout=30).chat.completions.create, model="echo",
                                  messages=[{"role": "user", "content": "proven"}])
    assert out.choices[0].message.content == "proven"
    assert not events(network, "hardware_proof_failed")


async def test_a_wrong_product_disconnects_the_provider_and_is_recorded(network: Network) -> None:
    network.start_gateway(extra=["--hardware-proof-max-n", "256"])
    network.start_provider(["echo=echo:chat"])
    network.wait_for_models({"echo": 1}, timeout=60)
    cheat = Identity.generate()
    ws = await handshake(network, cheat, [ModelOffer("echo", "generate", "echo")])
    seen: list[HardwareChallenge] = []
    prover = asyncio.create_task(wrong_prover(ws, seen))
    reason = await asyncio.wait_for(_closed(prover), 30)
    assert reason.code == protocol.CLOSE_PROTOCOL_ERROR and "hardware proof failed" in reason.reason, reason
    # It was challenged at admission (at most max_n), asked to open rows, and judged on them.
    assert seen[0].n <= 256 and not seen[0].open_rows and seen[1].open_rows
    await asyncio.sleep(0.3)  # the store writes events in small batches
    failed = events(network, "hardware_proof_failed")
    assert failed and failed[0]["peer"] == cheat.node_id and "Freivalds" in failed[0]["detail"]
    # The honest provider was untouched and passed its own proof.
    assert cheat.node_id not in verified(network)
    assert network.health()["providers"] == 1
    deadline = time.monotonic() + 30
    while not any(verified(network).values()):
        assert time.monotonic() < deadline, "the honest provider never passed"
        await asyncio.sleep(0.2)


async def _closed(prover: asyncio.Task[None]) -> Any:
    """The close frame the gateway sent, once the prover's connection ends."""
    try:
        await prover
    except websockets.ConnectionClosed as exc:
        return exc.rcvd
    raise AssertionError("the prover returned without the connection closing")
