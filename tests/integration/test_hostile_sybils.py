"""Sybil providers that take work and never answer it must not cost an honest client its answers.

Issue 18 (bench/hostile `sybil_silent`): fresh keys offering the honest provider's model
take every Run they are sent and sit on it, while answering Pings so that liveness keeps
them. Against a real gateway and a real echo provider (proven by answering before the
Sybils arrive), with raw protocol peers as the Sybils and the official client as the
bystander. Before: a request whose serving sample was all Sybils with open breakers got
a 503 (about one in ten).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gpupool import protocol
from gpupool.devnet import Network
from gpupool.identity import Identity
from gpupool.protocol import ModelOffer, Run
from tests.integration.conftest import client_for
from tests.integration.test_hostile_peers import joined, serve_runs

SYBILS = 12
BREAKER_FAILURES = 5  # the gateway's default --breaker-failures
REQUESTS = 80


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = Network(Path(tmp_path_factory.mktemp("sybils")) / "net")
    try:
        network.start_gateway()
        network.start_provider(["echo=echo:chat"], max_concurrency=16)
        network.wait_for_models({"echo": 1}, timeout=60)
        yield network
    finally:
        network.stop(timeout=10)


async def sit_on_runs(ws: Any, taken: Counter[str]) -> None:
    """A Sybil's loop: answer Pings, take every Run and never answer it."""
    def take(run: Run) -> list[protocol.Message]:
        taken[ws.id] += 1
        return []
    await serve_runs(ws, take)


async def test_sybils_that_sit_on_work_cost_a_client_no_answers(net: Network) -> None:
    client = client_for(net, timeout=30)

    def ask(i: int) -> str:
        out = client.chat.completions.create(model="echo", max_tokens=8,
                                             messages=[{"role": "user", "content": f"bystander {i}"}])
        return out.choices[0].message.content or ""

    for i in range(5):  # the honest provider answers first: it is proven
        assert await asyncio.to_thread(ask, i) == f"bystander {i}"
    taken: Counter[str] = Counter()
    sybils = [await joined(net, Identity.generate(), [ModelOffer("echo", "generate", "echo")]) for _ in range(SYBILS)]
    loops = [asyncio.create_task(sit_on_runs(ws, taken)) for ws in sybils]
    try:
        failed: list[str] = []
        for i in range(REQUESTS):
            try:
                assert await asyncio.to_thread(ask, i) == f"bystander {i}"
            except openai.APIStatusError as exc:
                failed.append(f"{exc.status_code}: {exc.message[:120]}")
        assert not failed, f"{len(failed)} of {REQUESTS} failed, e.g. {failed[0]}"
        # A lost hedge race counts against a Sybil like any provider's (its breaker opens after the
        # usual 5 in a row: tripping at the first one also shut out honest newcomers slower than the
        # pool's fastest, tests/integration/test_redteam.py); within the first cooldown (10 s) no
        # Sybil is handed more than that, and each such request was hedged, not lost.
        assert max(taken.values(), default=0) <= BREAKER_FAILURES, dict(taken)
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for ws in sybils:
            await ws.close()
