"""Circuit breaker transitions (pure, explicit `now`)."""

from __future__ import annotations

from gpupool.routing.breaker import (
    CLOSED,
    BreakerConfig,
    allows,
    is_probe,
    on_dispatch,
    phase_at,
    record_failure,
    record_success,
)

CFG = BreakerConfig(failure_threshold=3, cooldown_s=10.0, max_cooldown_s=35.0, probe_timeout_s=5.0)


def fail(state, now, n=1):
    for _ in range(n):
        state = record_failure(state, now, CFG)
    return state


def test_stays_closed_below_threshold_and_a_success_resets_the_count() -> None:
    s = fail(CLOSED, 0.0, 2)
    assert s.phase == "closed" and s.failures == 2 and allows(s, 0.0)
    s = record_success(s, 1.0)
    assert s == CLOSED
    s = fail(s, 2.0, 2)
    assert s.phase == "closed"  # not 4 in a row: the success broke the streak


def test_opens_after_consecutive_failures_and_blocks_until_the_cooldown() -> None:
    s = fail(CLOSED, 100.0, 3)
    assert s.phase == "open" and s.retry_at == 110.0
    assert not allows(s, 100.0) and not allows(s, 109.99)
    assert not is_probe(s, 105.0)
    assert allows(s, 110.0) and is_probe(s, 110.0)
    assert phase_at(s, 109.0) == "open" and phase_at(s, 110.0) == "half_open"


def test_half_open_admits_exactly_one_probe_and_closes_on_its_success() -> None:
    s = fail(CLOSED, 0.0, 3)
    probe = on_dispatch(s, 10.0, CFG)
    assert probe.phase == "half_open"
    assert not allows(probe, 10.1) and not allows(probe, 14.9)  # the probe is in flight
    assert record_success(probe, 11.0) == CLOSED


def test_a_failed_probe_reopens_with_a_doubled_capped_cooldown() -> None:
    s = fail(CLOSED, 0.0, 3)  # open until 10
    s = record_failure(on_dispatch(s, 10.0, CFG), 11.0, CFG)
    assert s.phase == "open" and s.retry_at == 11.0 + 20.0 and s.trips == 2
    s = record_failure(on_dispatch(s, 31.0, CFG), 31.0, CFG)
    assert s.retry_at == 31.0 + 35.0  # 40 s capped at max_cooldown_s


def test_a_lost_probe_lets_another_one_go_after_the_probe_timeout() -> None:
    s = on_dispatch(fail(CLOSED, 0.0, 3), 10.0, CFG)
    assert not allows(s, 14.0)
    assert allows(s, 15.0) and is_probe(s, 15.0)
    again = on_dispatch(s, 15.0, CFG)
    assert again.phase == "half_open" and again.retry_at == 20.0


def test_late_failures_while_open_do_not_extend_the_cooldown() -> None:
    s = fail(CLOSED, 0.0, 3)
    later = record_failure(s, 5.0, CFG)
    assert later.phase == "open" and later.retry_at == s.retry_at and later.trips == s.trips


def test_on_dispatch_leaves_closed_and_cooling_states_alone() -> None:
    assert on_dispatch(CLOSED, 1.0, CFG) is CLOSED
    s = fail(CLOSED, 0.0, 3)
    assert on_dispatch(s, 5.0, CFG) is s
