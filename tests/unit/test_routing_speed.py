"""Learning service speed from measured answers, RTT smoothing, the pool prior."""

from __future__ import annotations

import math
import random

import pytest

from gpupool.routing import Candidate, RouteRequest, SpeedEstimate, SpeedSample, estimate_seconds, observe, pick
from gpupool.routing.speed import PREFILL_TO_DECODE, SpeedConfig, hardware_speed, pool_prior, smooth_rtt


def test_a_streamed_answer_splits_prefill_from_decode() -> None:
    # 0.1 s RTT; first chunk after 0.6 s (0.5 s prefill of 1000 tokens); 101 tokens by 2.6 s.
    est = observe(None, SpeedSample(elapsed_s=2.6, rtt_s=0.1, first_token_s=0.6,
                                    input_tokens=1000, output_tokens=101), now=5.0)
    assert est.prefill_tps == pytest.approx(2000)
    assert est.decode_tps == pytest.approx(50)
    assert est.samples == 1 and est.updated_at == 5.0


def test_a_non_streamed_first_answer_uses_the_default_split_then_scales_it() -> None:
    est = observe(None, SpeedSample(elapsed_s=2.0, input_tokens=400, output_tokens=80), now=0.0)
    assert est.prefill_tps / est.decode_tps == pytest.approx(PREFILL_TO_DECODE)
    assert est.generate_seconds(400, 80) == pytest.approx(2.0)
    # A second answer twice as slow moves both rates by the same factor (ratio kept).
    slower = observe(est, SpeedSample(elapsed_s=4.0, input_tokens=400, output_tokens=80), now=0.0)
    assert slower.prefill_tps / slower.decode_tps == pytest.approx(PREFILL_TO_DECODE)
    assert 2.0 < slower.generate_seconds(400, 80) < 4.0


def test_ewma_converges_and_old_knowledge_decays_with_age() -> None:
    cfg = SpeedConfig(alpha=0.2, half_life_s=60.0)
    est = observe(None, SpeedSample(elapsed_s=1.0, items=10), 0.0, cfg)  # 10/s
    for _ in range(60):
        est = observe(est, SpeedSample(elapsed_s=0.5, items=10), 1.0, cfg)  # now 20/s
    assert est.items_per_s == pytest.approx(20, rel=0.01)
    fresh = observe(est, SpeedSample(elapsed_s=1.0, items=10), 1.5, cfg)
    stale = observe(est, SpeedSample(elapsed_s=1.0, items=10), 1000.0, cfg)
    # Right after many samples the new one moves the estimate a little; after a long
    # silence it nearly replaces it.
    assert 15 < fresh.items_per_s < 18
    assert stale.items_per_s == pytest.approx(10, rel=0.01)


def test_samples_that_queued_at_the_provider_do_not_teach_speed() -> None:
    est = observe(None, SpeedSample(elapsed_s=1.0, items=10), 0.0)
    assert observe(est, SpeedSample(elapsed_s=9.0, items=10, waited=True), 1.0) is est
    assert observe(None, SpeedSample(elapsed_s=9.0, items=10, waited=True), 1.0).samples == 0


def test_prediction_error_statistics_follow_the_answers() -> None:
    est = observe(None, SpeedSample(elapsed_s=1.0, items=10), 0.0)
    assert est.log_err_sigma == pytest.approx(0.5)  # default until there is a track record
    steady = est
    for _ in range(100):
        steady = observe(steady, SpeedSample(elapsed_s=1.0, items=10), 0.0)
    assert steady.log_err_sigma < 0.05 and abs(steady.log_err_mean) < 0.01
    noisy, rng = est, random.Random(3)
    for _ in range(300):
        noisy = observe(noisy, SpeedSample(elapsed_s=math.exp(rng.gauss(0, 0.4)), items=10), 0.0)
    assert 0.2 < noisy.log_err_sigma < 0.8


def test_a_provider_that_lies_about_speed_loses_traffic_once_measured() -> None:
    req = RouteRequest("m", input_tokens=200, max_output_tokens=200)
    liar_claim = SpeedEstimate(prefill_tps=10_000, decode_tps=140)  # claims 140 tok/s
    honest = Candidate("honest", 0, 4, rtt_s=0.02, claimed_speed=SpeedEstimate(prefill_tps=4000, decode_tps=60))
    liar = Candidate("liar", 0, 4, rtt_s=0.02, claimed_speed=liar_claim)
    rng = random.Random(1)
    assert pick([honest, liar], 0.0, rng, request=req).provider_id == "liar"  # type: ignore[union-attr]
    # One real answer: 200 tokens took 10 s (20 tok/s). The claim no longer counts.
    measured = observe(None, SpeedSample(elapsed_s=10.5, rtt_s=0.02, first_token_s=0.5,
                                         input_tokens=200, output_tokens=200), 1.0)
    liar = Candidate("liar", 0, 4, rtt_s=0.02, speed=measured, claimed_speed=liar_claim)
    assert estimate_seconds(liar, req) > estimate_seconds(honest, req)
    assert pick([honest, liar], 1.0, rng, request=req).provider_id == "honest"  # type: ignore[union-attr]


def test_smooth_rtt() -> None:
    assert smooth_rtt(None, 0.05) == 0.05
    assert smooth_rtt(0.05, 0.10) == pytest.approx(0.06)
    assert smooth_rtt(0.05, 30.0) == pytest.approx(0.8 * 0.05 + 0.2 * 0.21)  # one stall moves it little
    assert smooth_rtt(0.05, -1.0) == 0.05 and smooth_rtt(None, -1.0) == 0.0


def test_pool_prior_is_the_median_of_measured_estimates_with_a_fallback() -> None:
    fallback = SpeedEstimate(prefill_tps=1.0, decode_tps=2.0, items_per_s=3.0)
    ests = [SpeedEstimate(prefill_tps=1000 * i, decode_tps=10 * i, samples=1) for i in range(1, 42)]
    ests += [None, SpeedEstimate(prefill_tps=1e9, decode_tps=1e9)]  # unmeasured: ignored
    prior = pool_prior(ests, fallback)
    assert prior.prefill_tps == 21_000 and prior.decode_tps == 210
    assert prior.items_per_s == 3.0  # nobody measured embeddings: fallback
    assert pool_prior(ests[:5], fallback) == SpeedEstimate(prefill_tps=1.0, decode_tps=2.0, items_per_s=3.0)


def test_clearly_more_proven_compute_scales_the_prior_within_the_claim_cap() -> None:
    prior = SpeedEstimate(prefill_tps=1000, decode_tps=40, items_per_s=200)
    fast = hardware_speed(prior, 2.5, cap=3.0)
    assert fast is not None and (fast.prefill_tps, fast.decode_tps, fast.items_per_s) == (2500, 100, 500)
    assert hardware_speed(prior, 50.0, cap=3.0).decode_tps == pytest.approx(120)  # capped
    # Noise-sized differences, and less than the pool, change nothing: still explored at the prior.
    assert hardware_speed(prior, 1.6, cap=3.0) is None
    assert hardware_speed(prior, 0.1, cap=3.0) is None
    # Routing prefers the provider that proved clearly more compute, before either is measured.
    req = RouteRequest("m", "generate", input_tokens=100, max_output_tokens=100)
    plain = Candidate("plain", 0, 4)
    quick = Candidate("quick", 0, 4, claimed_speed=fast)
    assert estimate_seconds(quick, req) < estimate_seconds(plain, req)
    picks = [pick([plain, quick], 0.0, random.Random(i), request=req).provider_id for i in range(50)]
    assert picks.count("quick") > 40
