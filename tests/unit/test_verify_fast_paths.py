"""The audit sampler, reputation and suspension rule after their speed-ups: the same results as
the straightforward `dataclasses.replace` versions they replaced, over long random histories."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import replace

import pytest

from gpupool.verify import reputation, sampling, suspension_rule
from gpupool.verify.judgement import PASS, Judgement, fail


def _decide_ref(record: sampling.AuditRecord, secret: bytes, request_id: str,
                policy: sampling.SamplingPolicy) -> tuple[bool, sampling.AuditRecord]:
    rate = sampling.audit_rate(record, policy)
    record = replace(record, served=record.served + 1, since_audit=record.since_audit + 1)
    audit = sampling.should_audit(secret, request_id, rate) or record.since_audit >= policy.max_gap
    if audit:
        record = replace(record, since_audit=0)
    return audit, record


def _verdict_ref(record: sampling.AuditRecord, v: Judgement, policy: sampling.SamplingPolicy) -> sampling.AuditRecord:
    if v.passed:
        return replace(record, audited=record.audited + 1, consecutive_passes=record.consecutive_passes + 1)
    return replace(record, audited=record.audited + 1, failed=record.failed + 1,
                   consecutive_passes=record.consecutive_passes // 2,
                   recheck_until=record.served + policy.recheck_requests)


def _observe_ref(rep: reputation.Reputation, event: reputation.Event, now: float,
                 policy: reputation.ReputationPolicy) -> reputation.Reputation:
    f = 0.5 ** (max(0.0, now - rep.as_of) / policy.half_life_s)
    rep = replace(rep, good=rep.good * f, bad=rep.bad * f, as_of=max(now, rep.as_of))
    da, db = {reputation.Event.AUDIT_PASS: (policy.audit_pass, 0.0),
              reputation.Event.AUDIT_FAIL: (0.0, policy.audit_fail),
              reputation.Event.AUDIT_HARD_FAIL: (0.0, policy.audit_hard_fail),
              reputation.Event.SERVED: (policy.served, 0.0),
              reputation.Event.REQUEST_FAILED: (0.0, policy.request_failed),
              reputation.Event.LATENCY_MISS: (0.0, policy.latency_miss)}[event]
    audit = event in (reputation.Event.AUDIT_PASS, reputation.Event.AUDIT_FAIL, reputation.Event.AUDIT_HARD_FAIL)
    return replace(rep, good=rep.good + da, bad=rep.bad + db, audits=rep.audits + audit,
                   audit_failures=rep.audit_failures + (audit and event != reputation.Event.AUDIT_PASS))


def _suspension_ref(history: list[Judgement], policy: suspension_rule.SuspensionPolicy) -> suspension_rule.Decision:
    window = list(history)[-policy.m:]
    hard = [v for v in window if not v.passed and v.hard]
    failures = sum(1 for v in window if not v.passed)
    if hard:
        return suspension_rule.Decision(True, f"hard failure: {hard[-1].reason}", failures, len(window), hard=True)
    if failures >= policy.k:
        return suspension_rule.Decision(True, f"{failures} failed audits in the last {len(window)}",
                                        failures, len(window))
    return suspension_rule.Decision(False, "ok", failures, len(window))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sampling_and_reputation_match_the_reference_over_a_long_history(seed: int) -> None:
    rng = random.Random(seed)
    policy = sampling.SamplingPolicy(probation_requests=20, recheck_requests=7, max_gap=9)
    rpolicy = reputation.ReputationPolicy(half_life_s=500.0)
    record = ref = sampling.AuditRecord()
    rep = rep_ref = reputation.Reputation.new("p", 0.0)
    now = 0.0
    verdicts = [PASS, fail("token_mismatch"), fail("garbage", hard=True)]
    audits = 0
    for n in range(5_000):
        now += rng.expovariate(1.0) * (-1 if rng.random() < 0.02 else 1)  # now and then a clock going back
        a, record = sampling.decide(record, b"k", f"r{n}", policy)
        b, ref = _decide_ref(ref, b"k", f"r{n}", policy)
        assert (a, record) == (b, ref)
        audits += a
        if a:
            v = verdicts[0] if rng.random() < 0.9 else rng.choice(verdicts[1:])
            record, ref = sampling.record_verdict(record, v, policy), _verdict_ref(ref, v, policy)
            assert record == ref
            rep = reputation.observe_verdict(rep, v, now, rpolicy)
            rep_ref = _observe_ref(rep_ref, reputation.event_for(v), now, rpolicy)
            assert rep == rep_ref
            f = 0.5 ** (max(0.0, now + 100 - rep_ref.as_of) / 500.0)
            a_, b_ = 2.0 + rep_ref.good * f, 2.0 + rep_ref.bad * f
            assert reputation.score(rep, now + 100, rpolicy) == a_ / (a_ + b_)
        event = rng.choice(list(reputation.Event))
        rep, rep_ref = reputation.observe(rep, event, now, rpolicy), _observe_ref(rep_ref, event, now, rpolicy)
        assert rep == rep_ref
        assert sampling.record_served(record) == replace(record, served=record.served + 1,
                                                         since_audit=record.since_audit + 1)
    assert 200 < audits < 5_000  # the history covered probation, rechecks and the ramp
    with pytest.raises(ValueError, match="empty secret"):
        sampling.decide(sampling.AuditRecord(), b"", "r")  # on probation (rate 1) too
    with pytest.raises(KeyError):
        rpolicy.weight("no such event")  # type: ignore[arg-type]


@pytest.mark.parametrize("k, m", [(1, 1), (2, 5), (4, 50)])
def test_the_suspension_rule_matches_the_reference(k: int, m: int) -> None:
    rng = random.Random(k * 100 + m)
    policy = suspension_rule.SuspensionPolicy(k=k, m=m)
    history: deque[Judgement] = deque(maxlen=m + 3)  # longer than the window: only the last m count
    plain: list[Judgement] = []
    for _ in range(2_000):
        u = rng.random()
        v = PASS if u < 0.9 else fail("token_mismatch") if u < 0.99 else fail("garbage", hard=True)
        history.append(v)
        plain.append(v)
        assert suspension_rule.suspension(history, policy) == _suspension_ref(list(history), policy)
        assert suspension_rule.suspension(iter(plain), policy) == _suspension_ref(plain, policy)


@pytest.mark.parametrize("k, m", [(1, 1), (2, 5), (4, 50)])
def test_a_pass_never_makes_a_window_suspend_that_did_not(k: int, m: int) -> None:
    """`may_suspend`: what lets a caller skip the rule after a pass (the simulator's Trust.verdict)."""
    rng = random.Random(k * 7 + m)
    policy = suspension_rule.SuspensionPolicy(k=k, m=m)
    for maxlen in (m, m + 3, None):  # the window as the caller keeps it: exactly m, longer, unbounded
        history: deque[Judgement] = deque(maxlen=maxlen)
        passes_checked = suspended = 0
        for _ in range(3_000):
            u = rng.random()
            v = PASS if u < 0.85 else fail("token_mismatch") if u < 0.99 else fail("garbage", hard=True)
            before = suspension_rule.suspension(history, policy).suspend
            history.append(v)
            after = suspension_rule.suspension(history, policy).suspend
            assert suspension_rule.may_suspend(v) == (not v.passed)
            if not suspension_rule.may_suspend(v) and not before:
                assert not after
                passes_checked += 1
            if after and not before:
                suspended += 1
            if after and rng.random() < 0.3:
                history.clear()  # a fresh start now and then (the simulator's Sybil rejoins)
        assert passes_checked > 1_000 and suspended > 10  # both kinds of step were exercised


def test_a_greedy_pass_on_a_near_tie_is_marked_so_it_never_becomes_a_canary() -> None:
    """The runner-up within the tie margin passes (as an honest provider on other hardware may pick
    it), but the pass says so: the gateway keeps only exact greedy answers as canaries (issue 18)."""
    import numpy as np

    from gpupool.verify.comparators import NEAR_TIE, compare_greedy_report

    logits = np.array([[5.0, 4.8, 0.0], [0.0, 1.0, 9.0]])
    exact = compare_greedy_report([0, 2], logits).verdict
    runner_up = compare_greedy_report([1, 2], logits).verdict  # 0.2 below the favourite
    far = compare_greedy_report([2, 2], logits).verdict
    assert exact.passed and exact.reason != NEAR_TIE
    assert runner_up.passed and runner_up.reason == NEAR_TIE
    assert not far.passed
