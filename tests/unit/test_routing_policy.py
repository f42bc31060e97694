"""Filtering, the objective, sampled selection and its reasons."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gpupool.routing import (
    BreakerState,
    Candidate,
    RouteRequest,
    RoutingWeights,
    SpeedEstimate,
    estimate_seconds,
    estimated_cost,
    pick,
    pick_with_reasons,
    score,
)

FAST = SpeedEstimate(prefill_tps=8000, decode_tps=100, samples=5)
SLOW = SpeedEstimate(prefill_tps=1000, decode_tps=20, samples=5)
REQ = RouteRequest("m", input_tokens=500, max_output_tokens=200)


def cand(pid: str, **kw) -> Candidate:
    kw.setdefault("speed", FAST)
    kw.setdefault("rtt_s", 0.05)
    return Candidate(pid, kw.pop("in_flight", 0), kw.pop("max_concurrency", 4), **kw)


def big_pool(n: int, **kw) -> list[Candidate]:
    return [cand(f"p{i}", **kw) for i in range(n)]


def test_without_a_request_it_is_least_loaded_and_spreads_ties() -> None:
    cands = [Candidate("a", 3, 4), Candidate("b", 1, 4, queued=0), Candidate("c", 0, 4, queued=2)]
    assert pick(cands, 0.0, random.Random(1)).provider_id == "b"  # type: ignore[union-attr]
    even = [Candidate(x, 0, 4) for x in "abcd"]
    counts = Counter(pick(even, 0.0, random.Random(i)).provider_id for i in range(2000))  # type: ignore[union-attr]
    assert all(400 < v < 600 for v in counts.values()), counts


@pytest.mark.parametrize("n", [5, 5000])  # scanned and sampled pools
def test_draining_excluded_and_open_breakers_are_never_picked(n: int) -> None:
    rng = random.Random(2)
    pool = big_pool(n, draining=True)
    pool[n - 1] = cand("ok")
    pool[1] = cand("tried")
    pool[2] = cand("broken", breaker=BreakerState("open", 3, retry_at=100.0, trips=1))
    for _ in range(300):
        d = pick_with_reasons(pool, 50.0, rng, exclude={"tried"}, request=REQ)
        assert d.choice is not None and d.choice.provider_id == "ok"
    d = pick_with_reasons(pool, 50.0, rng, exclude={"tried", "ok"}, request=REQ)
    assert d.choice is None and d.scanned
    assert d.excluded == {"draining": n - 3, "excluded": 2, "breaker": 1}
    assert "failing (circuit open)" in d.explain()


def test_a_breaker_past_its_cooldown_is_picked_as_a_probe() -> None:
    c = cand("a", breaker=BreakerState("open", 3, retry_at=10.0, trips=1))
    assert pick([c], 9.0, random.Random(1), request=REQ) is None
    d = pick_with_reasons([c], 10.0, random.Random(1), request=REQ)
    assert d.choice is c and d.probe


def test_price_cap_excludes_and_says_what_would_clear() -> None:
    pool = [cand("cheap", price_out=1_000_000), cand("mid", price_out=2_000_000),
            cand("dear", price_out=5_000_000), cand("gone", price_out=1, draining=True)]
    costs = {c.provider_id: estimated_cost(c, REQ) for c in pool}
    assert costs["cheap"] == 200
    req = RouteRequest("m", input_tokens=500, max_output_tokens=200, max_price=150)
    d = pick_with_reasons(pool, 0.0, random.Random(1), request=req)
    assert d.choice is None
    assert d.excluded == {"price": 3, "draining": 1}
    assert d.cheapest_excluded_price == 200  # the draining one is cheaper but would not clear
    assert "3 excluded by max_price (200 µcr would clear)" in d.explain()
    ok = pick_with_reasons(pool, 0.0, random.Random(1),
                           request=RouteRequest("m", input_tokens=500, max_output_tokens=200, max_price=400))
    assert ok.choice is not None and ok.cost is not None and ok.cost <= 400
    assert ok.excluded.get("price") == 1


def test_required_region_filters_and_preferred_region_only_weighs() -> None:
    home, away = cand("home", region="eu-west", speed=SLOW), cand("away", region="us-east")
    rng = random.Random(1)
    req = RouteRequest("m", input_tokens=500, max_output_tokens=200, region="eu-west", region_policy="require")
    d = pick_with_reasons([away, home], 0.0, rng, request=req)
    assert d.choice is home and d.excluded == {"region": 1}
    assert pick([away], 0.0, rng, request=req) is None
    # "prefer": the far one still wins if it is enough faster...
    prefer = RouteRequest("m", input_tokens=500, max_output_tokens=200, region="eu-west")
    assert pick([away, home], 0.0, rng, request=prefer) is away
    # ...but not when they are alike.
    same_speed_home = cand("home2", region="eu-west")
    assert pick([away, same_speed_home], 0.0, rng, request=prefer) is same_speed_home


def test_model_filter() -> None:
    a = cand("a", models=frozenset({"x"}))
    b = cand("b", models=frozenset({"m"}))
    d = pick_with_reasons([a, b], 0.0, random.Random(1), request=REQ)
    assert d.choice is b and d.excluded == {"model": 1}


def test_the_objective_trades_time_against_price_and_reputation() -> None:
    w = RoutingWeights(micro_credits_per_second=1000.0, reputation_weight=0.5, load_slowdown=0.0)
    c = cand("a", price_in=100_000, price_out=400_000, reputation=0.6)
    t, cost = estimate_seconds(c, REQ, w), estimated_cost(c, REQ)
    assert score(c, REQ, w) == pytest.approx((t + cost / 1000.0) * (1 + 0.5 * 0.4))
    # A much cheaper provider that is slightly slower wins; a far slower one does not.
    dear = cand("dear", price_out=50_000_000)  # 10,000 µcr = 10 s at 1,000 µcr/s
    cheap = cand("cheap", speed=SpeedEstimate(prefill_tps=8000, decode_tps=80, samples=1))
    crawl = cand("crawl", speed=SpeedEstimate(prefill_tps=800, decode_tps=10, samples=1))
    assert pick([dear, cheap], 0.0, random.Random(1), request=REQ, weights=w) is cheap
    assert pick([dear, crawl], 0.0, random.Random(1), request=REQ,
                weights=RoutingWeights(micro_credits_per_second=1e6)) is dear
    trusted, unknown = cand("t", reputation=1.0), cand("u", reputation=0.5)
    assert pick([unknown, trusted], 0.0, random.Random(1), request=REQ) is trusted


def test_faster_nearer_and_idler_candidates_win() -> None:
    rng = random.Random(1)
    assert pick([cand("s", speed=SLOW), cand("f")], 0.0, rng, request=REQ).provider_id == "f"  # type: ignore[union-attr]
    assert pick([cand("far", rtt_s=0.3), cand("near", rtt_s=0.01)], 0.0, rng,
                request=REQ).provider_id == "near"  # type: ignore[union-attr]
    assert pick([cand("busy", in_flight=12), cand("idle", in_flight=0)], 0.0, rng,
                request=REQ).provider_id == "idle"  # type: ignore[union-attr]


def test_decision_carries_the_estimates_for_the_gateway() -> None:
    c = cand("a", price_out=1_000_000)
    d = pick_with_reasons([c], 0.0, random.Random(1), request=REQ)
    assert d.estimate_s == pytest.approx(estimate_seconds(c, REQ))
    assert d.service_s is not None and 0 < d.service_s < d.estimate_s
    assert d.cost == 200 and not d.probe and d.scanned and d.examined == 1


def test_sampling_is_deterministic_given_the_rng_seed() -> None:
    rng = random.Random(9)
    pool = [cand(f"p{i}", in_flight=rng.randint(0, 6), rtt_s=rng.random() / 5,
                 speed=SpeedEstimate(3000, rng.uniform(10, 150), samples=1)) for i in range(20_000)]

    def run(seed: int) -> list[str]:
        r = random.Random(seed)
        return [pick(pool, 0.0, r, request=REQ).provider_id for _ in range(50)]  # type: ignore[union-attr]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_sampled_choice_is_much_better_than_random_and_examines_few() -> None:
    rng = random.Random(4)
    pool = [cand(f"p{i}", speed=SpeedEstimate(3000, 10 + (i % 100), samples=1)) for i in range(10_000)]
    picks = [pick_with_reasons(pool, 0.0, rng, request=REQ) for _ in range(400)]
    assert all(d.examined <= RoutingWeights().max_draws and not d.scanned for d in picks)
    mean_speed = sum(d.choice.speed.decode_tps for d in picks) / len(picks)  # type: ignore[union-attr]
    assert mean_speed > 90  # best of 6 draws from 10..109 is ~96 on average; random would be ~60


def test_mostly_filtered_pools_still_find_the_one_eligible_candidate() -> None:
    pool = big_pool(100_000, draining=True)
    pool[77_777] = cand("only")
    d = pick_with_reasons(pool, 0.0, random.Random(1), request=REQ)
    assert d.choice is not None and d.choice.provider_id == "only"
    assert d.scanned and d.excluded == {"draining": 99_999}
    # A sixth of the pool eligible (one required region) is handled by sampling alone.
    regions = ["r0", "r1", "r2", "r3", "r4", "r5"]
    pool = [cand(f"p{i}", region=regions[i % 6]) for i in range(60_000)]
    req = RouteRequest("m", input_tokens=10, max_output_tokens=10, region="r3", region_policy="require")
    rng = random.Random(2)
    for _ in range(200):
        d = pick_with_reasons(pool, 0.0, rng, request=req)
        assert d.choice is not None and d.choice.region == "r3" and not d.scanned


def test_legacy_signature_still_works() -> None:
    assert pick([Candidate("a", 0, 1)], 0.0, random.Random(1), ()) == Candidate("a", 0, 1)
    assert pick([], 0.0, random.Random(1)) is None
    assert pick_with_reasons([], 0.0, random.Random(1)).explain() == "no provider available"


def test_a_decision_leaves_no_reference_cycles() -> None:
    """Routing runs per request: garbage only the cyclic collector can free would pile up
    between its (deliberately rare, gc_tuning) passes and cost a full pass to clear."""
    import gc

    cands = big_pool(3) + [cand("pricey", price_in=10**12)]  # few: all are scanned
    request = RouteRequest("m", input_tokens=500, max_output_tokens=200, max_price=10**6)
    gc.collect()
    gc.disable()
    try:
        for i in range(50):
            d = pick_with_reasons(cands, 0.0, random.Random(i), request=request)
            assert d.choice is not None and d.cheapest_excluded_price is not None
            pick_with_reasons(big_pool(5000), 0.0, random.Random(i), request=REQ)  # sampled, not scanned
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_a_picks_cost_is_the_estimated_cost_of_its_choice() -> None:
    # The cost a decision reports is the bound `estimated_cost` gives its choice: both tasks, random prices.
    rng = random.Random(7)
    for _ in range(300):
        req = RouteRequest("m", rng.choice(["generate", "embeddings"]), input_tokens=rng.randint(0, 4000),
                           max_output_tokens=rng.randint(0, 1000), items=rng.randint(1, 64))
        pool = [Candidate(f"p{j}", rng.randint(0, 4), 4, price_in=rng.randint(0, 10**6),
                          price_out=rng.randint(0, 10**6)) for j in range(rng.choice([3, 40]))]
        d = pick_with_reasons(pool, 0.0, rng, request=req)
        assert d.choice is not None and d.cost == estimated_cost(d.choice, req)


def test_a_decisions_times_are_the_estimates_of_its_choice() -> None:
    # A decision's estimate_s and service_s are what `estimate` gives its choice, to the bit (the pick
    # takes them from the scoring of its choice instead of estimating again): scanned and sampled
    # pools, measured, claimed and unmeasured speeds, queues with and without a known backlog.
    from gpupool.routing.estimate import service_seconds

    rng = random.Random(11)
    claim = SpeedEstimate(prefill_tps=3000, decode_tps=60, items_per_s=400)
    for _ in range(200):
        req = RouteRequest("m", rng.choice(["generate", "embeddings"]), input_tokens=rng.randint(1, 4000),
                           max_output_tokens=rng.randint(1, 1000), items=rng.randint(1, 64),
                           expected_output_tokens=rng.choice([None, 150]))
        pool = [Candidate(f"p{j}", rng.randint(0, 6), rng.choice([1, 2, 4, 8]), queued=rng.randint(0, 3),
                          rtt_s=rng.choice([None, rng.random() / 10]), backlog_s=rng.choice([None, rng.random() * 5]),
                          speed=rng.choice([None, FAST, SLOW]), claimed_speed=rng.choice([None, claim]))
                for j in range(rng.choice([3, 40, 2000]))]
        d = pick_with_reasons(pool, 0.0, rng, request=req)
        assert d.choice is not None
        assert d.estimate_s == estimate_seconds(d.choice, req) and d.service_s == service_seconds(d.choice, req)
