"""The model index (gateway/peers/model_index.py) against a full scan, through random joins, leaves,
offer changes and load reports; the ping scheduler's stretch and the handshake gate's pace."""

from __future__ import annotations

import random

from gpupool.config import GatewaySettings
from gpupool.gateway.peers.model_index import ModelIndex, Serving, share_figures
from gpupool.gateway.peers.pacing import HandshakeGate, PingScheduler
from gpupool.gateway.peers.session import ProviderSession
from gpupool.protocol import Hardware, LoadReport, ModelOffer, Offer

MODELS = [f"m{i}" for i in range(6)]


def offer(node: str, rng: random.Random) -> Offer:
    names = rng.sample(MODELS, rng.randint(1, 4))
    return Offer(node_id=node, hardware=Hardware(cpu="x", cpu_cores=1, memory_mb=1), region="eu",
                 max_concurrency=rng.choice([1, 4, 100, 4096]), issued_at=0.0,
                 models=[ModelOffer(n, "generate", "echo", max_output_tokens=rng.choice([256, 2048]),
                                    price_in=rng.randint(0, 9), price_out=rng.randint(0, 9)) for n in names])


def session(node: str, rng: random.Random) -> ProviderSession:
    o = offer(node, rng)
    return ProviderSession(node_id=node, public_key=b"k" * 32, offer=o, ws=None,  # type: ignore[arg-type]
                           connected_at=0.0, models={m.name: m for m in o.models})


def test_the_index_matches_a_full_scan_through_random_changes() -> None:
    rng = random.Random(7)
    index = ModelIndex(slot_cap=64)
    live: dict[str, ProviderSession] = {}
    for step in range(3000):
        what = rng.random()
        node = f"n{rng.randrange(40)}"
        if what < 0.3 and node not in live:
            live[node] = s = session(node, rng)
            index.add(s)
        elif what < 0.45 and node in live:
            s = live.pop(node)
            s.closed = True
            index.remove(s)
        elif what < 0.7 and node in live:
            s = live[node]
            changed = index.reoffer(s, offer(node, rng) if rng.random() < 0.7 else s.offer)
            assert changed or s.models == {m.name: m for m in s.offer.models}
        elif node in live:
            index.set_load(live[node], LoadReport(0, 0, rng.choice([0, 8, 500])))
        assert index.mismatches(live.values()) == [], step
    # What the fair share reads: capped, and equal to counting the sessions themselves.
    for name, pool in index.pools.items():
        sessions = [s for s in live.values() if name in s.models]
        (slots, places, related), scan = share_figures(Serving(sessions, name, pool), name, 64), \
            share_figures(sessions, name, 64)
        assert (slots, places, set(related)) == (scan[0], scan[1], set(scan[2]))
        assert pool.slots <= 64 * len(sessions)


def test_an_unchanged_offer_moves_nothing_and_a_removed_session_leaves_no_trace() -> None:
    rng = random.Random(1)
    index = ModelIndex(slot_cap=8)
    s = session("a", rng)
    index.add(s)
    before = {n: (p.slots, dict(p.also)) for n, p in index.pools.items()}
    assert index.reoffer(s, s.offer) is False
    assert {n: (p.slots, dict(p.also)) for n, p in index.pools.items()} == before
    index.remove(s)
    assert index.pools == {}


def test_a_serving_sets_price_cap_is_its_dearest_offer() -> None:
    rng = random.Random(3)
    a, b = session("a", rng), session("b", rng)
    both = [m for m in a.models if m in b.models] or [next(iter(a.models))]
    name = both[0]
    group = Serving([s for s in (a, b) if name in s.models], name)
    cap = group.price_cap()
    assert cap == (max(s.models[name].price_in for s in group), max(s.models[name].price_out for s in group))
    assert Serving([], name).price_cap() is None


def test_pings_stretch_with_the_pool_and_liveness_with_them() -> None:
    settings = GatewaySettings(ping_interval_s=2.0, max_pings_per_s=500.0, liveness_timeout_s=20.0)
    count = [100]

    async def ping(_s: ProviderSession) -> None:
        return None

    sched = PingScheduler(settings, lambda: count[0], ping, lambda s: None, lambda: None)
    assert sched.interval() == 2.0 and sched.liveness() == 20.0
    count[0] = 10_000
    assert sched.interval() == 20.0 and sched.liveness() == 60.0  # 500 pings a second at most


def test_the_handshake_gate_paces_a_storm_and_refuses_past_its_queue() -> None:
    gate = HandshakeGate(rate=100.0, max_wait_s=2.0)
    waits = [gate.turn(1000.0) for _ in range(400)]
    admitted = [w for w in waits if w is not None]
    assert sum(1 for w in admitted if w == 0.0) == 101  # one second's worth at once
    assert max(admitted) <= 2.0 and len(admitted) == 301  # then 100 a second, up to the queue's 2 s
    assert waits.count(None) == 99 and gate.refused == 99
    # Each refused dial is told a later turn: 99 refusals spread over about 99 / 100 s past the queue.
    told = [gate.retry_after(1000.0) for _ in range(99)]
    assert told == sorted(told) and 2.0 < told[0] < 2.1 and 2.9 < told[-1] < 3.1
    assert gate.turn(1010.0) == 0.0  # quiet again: no wait


def test_proven_sessions_match_a_full_scan_through_random_changes() -> None:
    """The router's per-model list of proven sessions (gateway/dispatch/proven_sessions.py), which
    a new provider's companion is drawn from, against a scan of the live sessions whose provider
    answered before: through answers, leaves, reconnects (a new session for the same node) and
    offer changes."""
    from gpupool.gateway.dispatch.proven_sessions import ProvenSessions

    rng = random.Random(11)
    proven, answered = ProvenSessions(), set()
    live: dict[str, ProviderSession] = {}
    index = ModelIndex(slot_cap=64)
    for step in range(3000):
        what, node = rng.random(), f"n{rng.randrange(40)}"
        s = live.get(node)
        if what < 0.25:  # joins, or reconnects: the old session is replaced
            if s is not None:
                s.closed = True
                index.remove(s)
                proven.remove(s)
            live[node] = s = session(node, rng)
            index.add(s)
            if node in answered:  # what LiveRouter.on_join does
                proven.add(s)
        elif what < 0.4 and s is not None:  # leaves
            del live[node]
            s.closed = True
            index.remove(s)
            proven.remove(s)
        elif what < 0.6 and s is not None:  # offer changes
            if index.reoffer(s, offer(node, rng)):
                proven.update(s)
        elif s is not None:  # answers
            answered.add(node)
            proven.add(s)
        scan: dict[str, set[str]] = {}
        for s in live.values():
            if s.node_id in answered:
                for m in s.models:
                    scan.setdefault(m, set()).add(s.node_id)
        assert proven.mismatches(scan) == [], step
        assert all(x is live[x.node_id] for m in scan for x in proven.of(m)), step
