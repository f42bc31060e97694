"""Audit sampling: HMAC decisions are deterministic, unpredictable without the secret,
hit the requested rate, and the adaptive rate follows the documented formula; audit jobs
go to one randomly drawn checker per time slot."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupool.verify import (
    PASS,
    AuditRecord,
    SamplingPolicy,
    audit_draw,
    audit_rate,
    checker_for_slot,
    decide,
    fail,
    record_served,
    record_verdict,
    should_audit,
)

SECRET = b"gateway-secret-0123456789abcdef"


def test_rate_is_met_and_decision_depends_on_secret() -> None:
    ids = [f"req-{i}" for i in range(20_000)]
    a = sum(should_audit(SECRET, i, 0.05) for i in ids)
    # Binomial(20000, 0.05): mean 1000, sd ~31; 5 sd either side.
    assert 845 < a < 1155
    other = {i for i in ids if should_audit(b"another-secret", i, 0.05)}
    mine = {i for i in ids if should_audit(SECRET, i, 0.05)}
    # Without the secret, a provider's guess overlaps only by chance (~5% of 1000).
    assert len(mine & other) < 120


@given(st.text(min_size=0, max_size=40), st.floats(0, 1), st.floats(0, 1))
def test_deterministic_and_monotone_in_rate(request_id: str, r1: float, r2: float) -> None:
    lo, hi = sorted((r1, r2))
    assert should_audit(SECRET, request_id, lo) == should_audit(SECRET, request_id, lo)
    if should_audit(SECRET, request_id, lo):
        assert should_audit(SECRET, request_id, hi)
    assert should_audit(SECRET, request_id, 1.0)
    assert not should_audit(SECRET, request_id, 0.0)
    assert 0.0 <= audit_draw(SECRET, request_id) < 1.0


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError):
        should_audit(b"", "x", 0.5)
    with pytest.raises(ValueError):
        should_audit(SECRET, "x", 1.5)
    with pytest.raises(ValueError):
        SamplingPolicy(floor=0.0)


def test_rate_schedule_matches_formula() -> None:
    pol = SamplingPolicy()
    rec = AuditRecord()
    # Probation: every one of the first 50 requests.
    for _ in range(49):
        rec = record_served(rec)
        assert audit_rate(rec, pol) == 1.0
    rec = record_served(rec)
    assert audit_rate(rec, pol) == pol.ramp_rate == 0.25
    # Track record: passes up to 100 keep the ramp rate, then 0.25 * (100 / c)**2 to the floor.
    for _ in range(100):
        rec = record_verdict(rec, PASS)
    assert audit_rate(rec, pol) == pytest.approx(0.25)
    for _ in range(100):
        rec = record_verdict(rec, PASS)
    assert audit_rate(rec, pol) == pytest.approx(0.0625)
    for _ in range(10_000):
        rec = record_verdict(rec, PASS)
    assert audit_rate(rec, pol) == pol.floor == 0.03
    # One failure: full audit for the next 20 requests, and half the streak.
    rec = record_verdict(rec, fail("token_mismatch"))
    assert rec.consecutive_passes == 10_200 // 2 and rec.failed == 1
    for _ in range(pol.recheck_requests):
        assert audit_rate(rec, pol) == 1.0
        rec = record_served(rec)
    assert audit_rate(rec, pol) == pol.floor  # a long honest record survives one false positive
    # Repeated failures bring the rate back up.
    for _ in range(8):
        rec = record_verdict(rec, fail("token_mismatch"))
    rec = replace(rec, served=rec.recheck_until)
    assert rec.consecutive_passes < 100 and audit_rate(rec, pol) == pol.ramp_rate


def test_never_more_than_max_gap_requests_in_a_row_unaudited() -> None:
    pol = SamplingPolicy(floor=0.001, ramp_rate=0.001, probation_requests=0)
    rec = AuditRecord(consecutive_passes=10**6)
    gaps, since = [], 0
    for i in range(5_000):
        audit, rec = decide(rec, SECRET, f"r{i}", pol)
        since += 1
        if audit:
            gaps.append(since)
            since = 0
    assert max(gaps) == pol.max_gap and len(gaps) >= 5_000 // pol.max_gap
    # The draw still counts: at a high rate, audits come far more often than the cap.
    rec = AuditRecord(consecutive_passes=10**6)
    half = SamplingPolicy(floor=0.5, ramp_rate=0.5, probation_requests=0)
    hits = sum(decide(rec, SECRET, f"q{i}", half)[0] for i in range(2_000))
    assert 850 < hits < 1150


@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_rate_never_zero_and_bounded(served: int, passes: int) -> None:
    rate = audit_rate(AuditRecord(served=served, consecutive_passes=passes))
    assert 0.03 <= rate <= 1.0


@given(st.integers(0, 10**5), st.integers(0, 10**5))
def test_rate_non_increasing_in_passes(served: int, passes: int) -> None:
    a = audit_rate(AuditRecord(served=served, consecutive_passes=passes))
    b = audit_rate(AuditRecord(served=served, consecutive_passes=passes + 1))
    assert b <= a


def test_steady_state_cost_within_budget() -> None:
    # An honest provider, all passes: after the decay, the floor plus the gap cap,
    # 0.03 / (1 - 0.97**50) = 3.8%.
    pol = SamplingPolicy()
    rec = AuditRecord()
    audited = 0
    for i in range(20_000):
        audit, rec = decide(rec, SECRET, f"r{i}", pol)
        if audit:
            audited += 1
            rec = record_verdict(rec, PASS)
        if i == 4_999:
            audited_at_5k = audited
    late = (audited - audited_at_5k) / 15_000
    assert 0.03 <= late <= 0.045


def test_audits_stick_to_one_checker_per_slot_drawn_at_random() -> None:
    rng = random.Random(5)
    checkers = ["a", "b", "c"]
    held = checker_for_slot(checkers, None, now=100.1, rng=rng, slot_s=2.0)
    assert held is not None and held[0] == 50
    # Every job in the same slot goes to the same checker, so it can batch them.
    for now in (100.2, 100.9, 101.99):
        assert checker_for_slot(checkers, held, now, rng, slot_s=2.0) == held
    # A checker that left is replaced at once.
    others = [c for c in checkers if c != held[1]]
    moved = checker_for_slot(others, held, 101.0, rng, slot_s=2.0)
    assert moved is not None and moved[1] in others
    # Each slot is a fresh draw: over many slots every checker gets its share, none more.
    counts = {c: 0 for c in checkers}
    held = None
    for slot in range(3000):
        held = checker_for_slot(checkers, held, slot * 2.0 + 0.5, rng, slot_s=2.0)
        assert held is not None
        counts[held[1]] += 1
    assert all(900 < n < 1100 for n in counts.values()), counts
    assert checker_for_slot([], held, 0.0, rng) is None
