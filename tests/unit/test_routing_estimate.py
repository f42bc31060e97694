"""Completion-time and cost estimates."""

from __future__ import annotations

import random

import pytest

from gpupool.routing import Candidate, RouteRequest, RoutingWeights, SpeedEstimate, estimate_seconds, estimated_cost
from gpupool.routing.estimate import Estimator, effective_speed, queue_wait_seconds, rtt_seconds, service_seconds

NO_SLOWDOWN = RoutingWeights(load_slowdown=0.0)
MEASURED = SpeedEstimate(prefill_tps=2000, decode_tps=50, items_per_s=100, samples=3)
GEN = RouteRequest("m", "generate", input_tokens=1000, max_output_tokens=100)


def test_estimate_is_rtt_plus_queue_wait_plus_service() -> None:
    idle = Candidate("a", 1, 4, rtt_s=0.2, speed=MEASURED)
    assert service_seconds(idle, GEN, NO_SLOWDOWN) == pytest.approx(0.5 + 2.0)
    assert estimate_seconds(idle, GEN, NO_SLOWDOWN) == pytest.approx(0.2 + 2.5)
    # All 4 slots busy and 2 more queued: wait (2 + 1) / 4 service times.
    full = Candidate("a", 4, 4, rtt_s=0.2, queued=2, speed=MEASURED)
    assert queue_wait_seconds(full, 2.5) == pytest.approx(3 / 4 * 2.5)
    assert estimate_seconds(full, GEN, NO_SLOWDOWN) == pytest.approx(0.2 + 3 / 4 * 2.5 + 2.5)


def test_queue_wait_uses_the_size_of_the_work_ahead_when_known() -> None:
    c = Candidate("a", 4, 2, speed=MEASURED, backlog_s=40.0)  # 4 requests of ~10 s each
    assert queue_wait_seconds(c, 1.0) == pytest.approx(3 / 2 * 10.0)


def test_unmeasured_rtt_and_speed_fall_back_to_claims_capped_and_then_the_prior() -> None:
    w = RoutingWeights(prior_speed=SpeedEstimate(prefill_tps=1000, decode_tps=20, items_per_s=10),
                       max_claim_factor=2.0, default_rtt_s=0.3, load_slowdown=0.0)
    bare = Candidate("a", 0, 1)
    assert rtt_seconds(bare, w) == 0.3
    assert effective_speed(bare, w).decode_tps == 20
    modest = Candidate("b", 0, 1, claimed_speed=SpeedEstimate(prefill_tps=1500, decode_tps=30))
    assert effective_speed(modest, w).decode_tps == 30
    bold = Candidate("c", 0, 1, claimed_speed=SpeedEstimate(prefill_tps=1e6, decode_tps=1e6))
    assert effective_speed(bold, w).decode_tps == 40 and effective_speed(bold, w).prefill_tps == 2000
    assert service_seconds(bold, GEN, w) == pytest.approx(1000 / 2000 + 100 / 40)
    measured = Candidate("d", 0, 1, speed=MEASURED, claimed_speed=SpeedEstimate(decode_tps=1e6))
    assert effective_speed(measured, w) is MEASURED  # a measurement beats any claim


def test_embeddings_use_items_per_second_and_input_price_only() -> None:
    req = RouteRequest("e", "embeddings", input_tokens=3000, items=20, max_output_tokens=999)
    c = Candidate("a", 0, 2, rtt_s=0.0, speed=MEASURED, price_in=1_000, price_out=10**9)
    assert estimate_seconds(c, req, NO_SLOWDOWN) == pytest.approx(0.2)
    assert estimated_cost(c, req) == 3  # 3000 tokens at 1,000 µcr / 1M tokens


def test_cost_is_the_max_cost_rounded_up_to_whole_micro_credits() -> None:
    c = Candidate("a", 0, 1, price_in=100_000, price_out=400_000)
    assert estimated_cost(c, GEN) == 100 + 40
    assert estimated_cost(Candidate("b", 0, 1, price_in=1), RouteRequest("m", input_tokens=1)) == 1
    assert estimated_cost(Candidate("free", 0, 1), GEN) == 0


def test_time_estimates_use_the_expected_output_when_known() -> None:
    c = Candidate("a", 0, 1, rtt_s=0.0, speed=MEASURED)
    typical = RouteRequest("m", input_tokens=0, max_output_tokens=1000, expected_output_tokens=100)
    assert estimate_seconds(c, typical, NO_SLOWDOWN) == pytest.approx(2.0)
    assert estimated_cost(Candidate("p", 0, 1, price_out=1_000_000), typical) == 1000  # price: the max


def test_busy_providers_are_a_little_slower_per_request() -> None:
    w = RoutingWeights(load_slowdown=0.2)
    idle, busy = Candidate("a", 0, 4, speed=MEASURED), Candidate("a", 4, 4, speed=MEASURED)
    assert service_seconds(busy, GEN, w) == pytest.approx(1.2 * service_seconds(idle, GEN, w))


def test_the_fast_estimator_agrees_with_the_documented_formula() -> None:
    rng = random.Random(5)
    w = RoutingWeights()
    for _ in range(500):
        speed = rng.choice([None, SpeedEstimate(rng.uniform(100, 9000), rng.uniform(5, 150), rng.uniform(1, 500),
                                                rng.randint(0, 3))])
        claim = rng.choice([None, SpeedEstimate(rng.uniform(0, 20000), rng.uniform(0, 300), rng.uniform(0, 900))])
        c = Candidate("x", rng.randint(0, 12), rng.randint(0, 8), rtt_s=rng.choice([None, rng.random()]),
                      queued=rng.randint(0, 3), speed=speed, claimed_speed=claim,
                      backlog_s=rng.choice([None, rng.uniform(0, 50)]), price_in=rng.randint(0, 10**6),
                      price_out=rng.randint(0, 10**6))
        req = RouteRequest("m", rng.choice(["generate", "embeddings"]), input_tokens=rng.randint(0, 4000),
                           max_output_tokens=rng.randint(0, 1000), items=rng.randint(1, 64),
                           expected_output_tokens=rng.choice([None, 100]))
        sp = effective_speed(c, w)
        prior = w.prior_speed
        if req.task == "embeddings":
            bare = req.items / (sp.items_per_s or prior.items_per_s)
        else:
            p, d = (sp.prefill_tps, sp.decode_tps) if sp.prefill_tps > 0 and sp.decode_tps > 0 else \
                (prior.prefill_tps, prior.decode_tps)
            bare = req.input_tokens / p + req.output_tokens_for_time / d
        conc = c.max_concurrency
        service = bare * (1 + w.load_slowdown * min(c.in_flight + c.queued, conc) / conc) if conc else bare
        expected = rtt_seconds(c, w) + queue_wait_seconds(c, service) + service
        total, svc = Estimator(req, w).seconds_parts(c)
        assert svc == pytest.approx(service) and total == pytest.approx(expected)
        assert Estimator(req, w).cost(c) == estimated_cost(c, req)
