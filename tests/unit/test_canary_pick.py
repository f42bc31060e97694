"""Which provider a canary goes to (gateway/trust/canaries.py): drawn from the hub's model index,
so a pick reads a bounded number of sessions however many are connected (issue 17), and never
goes to the canary's source, a suspended provider or one already sent it."""

from __future__ import annotations

import random
from collections import deque

from gpupool.config import GatewaySettings
from gpupool.gateway.peers.hub import Hub
from gpupool.gateway.peers.session import ProviderSession
from gpupool.gateway.trust.audits import Auditor
from gpupool.gateway.trust.canaries import MAX_DRAWS, Canaries, Canary
from gpupool.identity import Identity
from gpupool.protocol import EmbedPayload, Hardware, ModelOffer, Offer


class CountedList(list[ProviderSession]):
    """The index's session list, counting the reads a pick makes (a measuring instrument)."""

    reads = 0

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        CountedList.reads += 1
        return super().__getitem__(i)


def canaries_with(n: int, model: str = "emb") -> tuple[Canaries, Auditor, list[ProviderSession]]:
    hub = Hub(GatewaySettings(), Identity.generate(), store=None)  # type: ignore[arg-type] - no peer connects
    auditor = Auditor(hub, store=None, ledger=None)  # type: ignore[arg-type] - nothing here moves money
    sessions = []
    for i in range(n):
        o = Offer(node_id=f"n{i}", hardware=Hardware(cpu="x", cpu_cores=1, memory_mb=1), region="eu",
                  max_concurrency=4, issued_at=0.0, models=[ModelOffer(model, "embeddings", "echo")])
        s = ProviderSession(node_id=f"n{i}", public_key=b"k" * 32, offer=o, ws=None,  # type: ignore[arg-type]
                            connected_at=0.0, models={m.name: m for m in o.models})
        hub.sessions[s.node_id] = s
        hub.index.add(s)
        sessions.append(s)
    canaries = Canaries(hub, dispatcher=None, auditor=auditor, interval_s=0,  # type: ignore[arg-type]
                        rng=random.Random(3))
    return canaries, auditor, sessions


def canary(key: str, source: str, model: str = "emb") -> Canary:
    return Canary(key, model, EmbedPayload(["a"]), source)


def test_a_pick_reads_a_bounded_number_of_sessions_in_a_big_pool() -> None:
    canaries, _, _ = canaries_with(5_000)
    canaries.pool["emb"] = deque([canary("c1", "n0")])
    pool = canaries.hub.index.pools["emb"]
    pool.sessions = CountedList(pool.sessions)
    for _ in range(50):
        CountedList.reads = 0
        pick = canaries._pick()
        assert pick is not None and pick[0].node_id != "n0" and pick[1].key == "c1"
        assert CountedList.reads <= MAX_DRAWS


def test_a_small_pool_is_tried_whole_and_nobody_ineligible_is_picked() -> None:
    canaries, auditor, sessions = canaries_with(5)
    canaries.pool["emb"] = deque([canary("c1", "n0")])
    auditor.of("n1").suspended = "hard audit failure"
    sessions[2].draining = True
    canaries.sent["n3"] = {"c1"}
    # n0 answered it, n1 is suspended, n2 is draining, n3 was sent it: only n4 is left, every time.
    assert {canaries._pick()[0].node_id for _ in range(30)} == {"n4"}  # type: ignore[index]
    canaries.sent["n4"] = {"c1"}
    assert canaries._pick() is None
    empty, _, _ = canaries_with(0)  # a canary, and nobody serving its model
    empty.pool["emb"] = deque([canary("c1", "n0")])
    assert empty._pick() is None
