"""Reputation (Beta with decay, portable records) and suspension, including the check
that the default (k, m) meets the issue's targets by the exact suspension math."""

from __future__ import annotations

import random
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpupool.verify import (
    DEFAULT_SUSPENSION,
    DESIGN_FALSE_POSITIVE_RATE,
    PASS,
    Event,
    Reputation,
    ReputationPolicy,
    SamplingPolicy,
    SuspensionPolicy,
    fail,
    from_record,
    lower_bound,
    observe,
    observe_verdict,
    p_honest_suspended,
    p_honest_suspended_bound,
    record_bytes,
    requests_until_suspension,
    score,
    suspension,
    suspension_cdf,
    to_record,
)

DAY = 86400.0


def test_prior_is_unknown_and_evidence_moves_it() -> None:
    rep = Reputation.new("p1", now=0.0)
    assert score(rep, 0.0) == 0.5
    good = rep
    for i in range(50):
        good = observe(good, Event.AUDIT_PASS, float(i))
    assert score(good, 50.0) > 0.9
    bad = observe_verdict(good, fail("token_mismatch"), 51.0)
    hard = observe_verdict(good, fail("wrong_model", hard=True), 51.0)
    assert score(hard, 51.0) < score(bad, 51.0) < score(good, 51.0)
    assert score(hard, 51.0) < 0.5
    # Smaller weights for operational trouble than for a failed audit.
    slow = observe(good, Event.LATENCY_MISS, 51.0)
    broken = observe(good, Event.REQUEST_FAILED, 51.0)
    assert score(bad, 51.0) < score(broken, 51.0) < score(slow, 51.0) < score(good, 51.0)


def test_decay_halves_evidence_per_half_life() -> None:
    pol = ReputationPolicy(half_life_s=7 * DAY)
    rep = Reputation.new("p", 0.0)
    for _ in range(100):
        rep = observe(rep, Event.AUDIT_PASS, 0.0, pol)
    rec = to_record(rep, 7 * DAY, pol)
    assert rec["good"] == pytest.approx(50.0)
    # Long after, the reputation returns to the prior.
    assert score(rep, 365 * DAY, pol) == pytest.approx(0.5, abs=1e-6)
    # A clock going backwards never grows evidence.
    assert to_record(rep, -DAY, pol)["good"] == pytest.approx(100.0)


def test_lower_bound_penalises_thin_evidence() -> None:
    few = Reputation("a", good=3.0, as_of=0.0)
    many = Reputation("b", good=300.0, as_of=0.0)
    assert lower_bound(few, 0.0) < lower_bound(many, 0.0) < score(many, 0.0)
    assert 0.0 <= lower_bound(Reputation("c"), 0.0) < 0.5


@given(st.lists(st.sampled_from(list(Event)), max_size=60),
       st.lists(st.floats(0, 30 * DAY), max_size=60))
def test_score_in_unit_interval(events: list[Event], times: list[float]) -> None:
    rep = Reputation.new("p", 0.0)
    for e, t in zip(events, sorted(times), strict=False):
        rep = observe(rep, e, t)
        assert 0.0 < score(rep, t) < 1.0
        assert 0.0 <= lower_bound(rep, t) <= score(rep, t)


def test_record_round_trip_and_discount() -> None:
    rep = Reputation.new("prov-xyz", 0.0)
    for i in range(20):
        rep = observe(rep, Event.AUDIT_PASS, float(i))
    rep = observe(rep, Event.AUDIT_FAIL, 20.0)
    rec = to_record(rep, 100.0)
    assert rec["provider_id"] == "prov-xyz" and rec["issued_at"] == 100.0
    assert rec["audits"] == 21 and rec["audit_failures"] == 1
    assert record_bytes(rec) == record_bytes(dict(reversed(list(rec.items()))))
    back = from_record(rec)
    assert score(back, 100.0) == pytest.approx(score(rep, 100.0), abs=1e-6)
    half = from_record(rec, trust=0.5)
    assert half.bad == back.bad and half.good == pytest.approx(back.good / 2)
    with pytest.raises(ValueError):
        from_record({**rec, "v": 99})
    with pytest.raises(ValueError):
        from_record({**rec, "good": -1})


def test_suspension_window_and_hard_failures() -> None:
    pol = SuspensionPolicy(k=4, m=50)
    soft = fail("embedding_mismatch")
    hist: deque = deque(maxlen=50)
    for _ in range(3):
        hist.append(soft)
    assert not suspension(hist, pol).suspend
    hist.append(soft)
    d = suspension(hist, pol)
    assert d.suspend and d.failures == 4 and not d.hard
    # Failures that left the window no longer count.
    hist.extend([PASS] * 47)
    assert not suspension(hist, pol).suspend
    # One hard failure suspends at once.
    d = suspension([PASS] * 10 + [fail("wrong_model", hard=True)], pol)
    assert d.suspend and d.hard and "wrong_model" in d.reason


def test_exact_chain_matches_simulation() -> None:
    # The exact DP against a direct Monte Carlo of the window rule (small k, m).
    k, m, n, q = 3, 10, 60, 0.08
    exact = suspension_cdf(q, k, m, n)[-1]
    rng = random.Random(3)
    hits = 0
    trials = 6000
    for _ in range(trials):
        hist: deque = deque(maxlen=m)
        for _ in range(n):
            hist.append(fail("x") if rng.random() < q else PASS)
            if suspension(hist, SuspensionPolicy(k, m)).suspend:
                hits += 1
                break
    assert abs(hits / trials - exact) < 4 * (exact * (1 - exact) / trials) ** 0.5 + 1e-3
    # k = 1: suspended at the first failure, a geometric law.
    assert suspension_cdf(0.1, 1, 5, 10)[-1] == pytest.approx(1 - 0.9**10)


@settings(max_examples=25, deadline=None)
@given(st.floats(1e-4, 0.05), st.integers(2, 4), st.integers(4, 20))
def test_bound_is_an_upper_bound(p: float, k: int, m: int) -> None:
    if k > m:
        return
    assert p_honest_suspended(p, k, m, 500) <= p_honest_suspended_bound(p, k, m, 500) + 1e-12


def test_defaults_meet_the_targets() -> None:
    k, m = DEFAULT_SUSPENSION.k, DEFAULT_SUSPENSION.m
    ramp = SamplingPolicy().ramp_rate
    # Honest: design FP rate 1e-3 per audit, 10,000 audits → essentially never.
    p_honest = p_honest_suspended(DESIGN_FALSE_POSITIVE_RATE, k, m, 10_000)
    assert p_honest < 1e-3
    # Cheating on every request, audited at the ramp rate: suspended within 100
    # requests at 99% (probation, at rate 1, suspends after k requests).
    n_all = requests_until_suspension(1.0, ramp, k, m)
    assert n_all is not None and n_all <= 100
    assert requests_until_suspension(1.0, 1.0, k, m) == k
    # Cheating on 10% (detected every time it cheats), plus false positives.
    n_10 = requests_until_suspension(0.1 + DESIGN_FALSE_POSITIVE_RATE, ramp, k, m)
    assert n_10 is not None and n_10 <= 1000
    # And the neighbours are worse: k-1 risks honest providers, k+1 (m=50) is slower.
    assert p_honest_suspended_bound(DESIGN_FALSE_POSITIVE_RATE, k - 1, m, 10_000) > 5e-3
    assert requests_until_suspension(0.1, ramp, k + 1, m) > n_10
