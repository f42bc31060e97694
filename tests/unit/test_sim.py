"""The discrete-event simulator and a small policy comparison (kept to a few seconds)."""

from __future__ import annotations

import random

import pytest

from gpupool.sim import Engine, build_world, make_jobs, make_policy, simulate
from gpupool.sim.world import region_rtt_s


def test_engine_runs_events_in_time_order_fifo_on_ties_and_honours_cancel() -> None:
    eng, seen = Engine(), []
    eng.at(2.0, seen.append, "c")
    eng.at(1.0, seen.append, "a")
    eng.at(1.0, seen.append, "b")  # same time: scheduling order
    gone = eng.at(1.5, seen.append, "cancelled")
    eng.cancel(gone)
    eng.at(1.0, lambda: eng.after(5.0, seen.append, "d"))  # scheduled from inside a handler
    assert eng.run(until=3.0) == 4 and eng.now == 3.0
    assert seen == ["a", "b", "c"]
    eng.run()
    assert seen[-1] == "d" and eng.now == 6.0
    eng.at(-1.0, seen.append, "past")  # never into the past
    eng.run()
    assert eng.now == 6.0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lanes_run_events_in_exactly_the_one_heap_order(seed: int) -> None:
    """`Engine.lane`: events scheduled in time order wait in a FIFO, only the earliest in the heap; the
    order they run in (ties included) must be the order of the same events all in the heap."""

    def day(use_lanes: bool) -> list[tuple[float, str]]:
        rng, eng, seen = random.Random(seed), Engine(), []
        ticks = eng.lane() if use_lanes else eng
        soon, late = (eng.lane(), eng.lane()) if use_lanes else (eng, eng)  # one fixed delay each
        for k in range(40):  # a schedule known in advance, on whole seconds: ties with the others
            ticks.at(float(k), lambda k=k: seen.append((eng.now, f"tick{k}")))

        def event(n: int) -> None:
            seen.append((eng.now, f"e{n}"))
            if n < 400:
                late.after(3.0, lambda: seen.append((eng.now, f"late{n}")))
                soon.after(0.0, lambda: seen.append((eng.now, f"soon{n}")))
                eng.after(rng.choice([0.0, 0.5, 1.0, rng.random() * 4]), event, n + 1)
                if rng.random() < 0.2:
                    eng.cancel(late.after(3.0, lambda: seen.append((eng.now, "cancelled"))))

        eng.at(0.0, event, 0)
        for _ in range(10_000):  # in slices, as a day runs up to each arrival
            if not len(eng):
                break
            eng.run(until=eng.now + rng.random() * 3)
        assert not len(eng)
        return seen

    heap, lanes = day(False), day(True)
    assert lanes == heap and len(heap) > 800 and ("cancelled" not in {s for _, s in heap})
    eng = Engine()
    lane = eng.lane()
    lane.at(2.0, print)
    with pytest.raises(ValueError, match="time order"):
        lane.at(1.0, print)


def test_world_is_deterministic_and_plausible() -> None:
    a, b = build_world(200, random.Random(1)), build_world(200, random.Random(1))
    assert [(p.region, p.decode_tps) for p in a.providers] == [(p.region, p.decode_tps) for p in b.providers]
    assert region_rtt_s("eu-west", "eu-west") < region_rtt_s("eu-west", "eu-central") < region_rtt_s(
        "eu-west", "ap-northeast")
    assert region_rtt_s("us-east", "us-west") == region_rtt_s("us-west", "us-east")


def _run(name: str, seed: int = 5, providers: int = 300, requests: int = 6000, hedge: bool = False):
    rng = random.Random(seed)
    world = build_world(providers, rng)
    jobs = make_jobs(world, requests, 0.7, rng)
    policy = make_policy(name, world, random.Random(seed + 1), 150)
    return simulate(world, jobs, policy, seed=seed + 2, hedge=hedge, warmup_share=0.5)


def test_gpupool_beats_round_robin_at_p99_and_avoids_broken_providers() -> None:
    rr, ll, gp = _run("round-robin"), _run("least-loaded"), _run("gpupool")
    assert gp.failed == 0 and gp.completed == 6000
    assert gp.percentile(0.99) * 2 < rr.percentile(0.99), (gp.summary(), rr.summary())
    assert gp.percentile(0.50) < rr.percentile(0.50)
    # Least-connections sends work to broken providers (they "finish" fast); breakers stop that.
    assert gp.broken_hits * 3 < ll.broken_hits


def test_simulation_is_deterministic_given_its_seeds() -> None:
    a, b = _run("gpupool", requests=2000), _run("gpupool", requests=2000)
    assert a.latencies == b.latencies and a.costs == b.costs


def test_hedging_sends_second_copies_and_the_first_answer_wins() -> None:
    r = _run("gpupool+hedge", requests=3000, hedge=True)
    assert r.hedges > 0 and r.failed == 0 and r.completed == 3000
    assert 0 < r.hedge_wins <= r.hedges


def test_oracle_runs_on_the_true_state() -> None:
    pytest.importorskip("numpy")
    r = _run("oracle", requests=3000)
    assert r.broken_hits == 0 and r.failed == 0
