"""When a node's link checks a silent gateway (provider/silence.Silence, pure).

The link sends no keep-alives; it checks only once the gateway has been silent for
SILENCE_FACTOR of its own ping gaps (between SILENCE_MIN_S and the configured limit), so a
gateway pinging on schedule is never checked, and a silent one is within the bound.
"""

from __future__ import annotations

from gpupool.provider.silence import PROBE_TIMEOUT_S, SILENCE_FACTOR, SILENCE_MIN_S, Silence


def pinged_every(gap: float, times: int = 5, limit_s: float = 60.0) -> Silence:
    s = Silence(limit_s)
    s.heard(0.0)
    for i in range(1, times + 1):
        s.heard(i * gap, ping=True)
    return s


def test_until_a_gap_is_known_the_limit_applies() -> None:
    s = Silence(60.0)
    s.heard(100.0)
    assert s.due_in(100.0) == 60.0
    s.heard(101.0, ping=True)  # one Ping: no gap yet
    assert s.due_in(101.0) == 60.0


def test_a_gateway_pinging_on_schedule_is_never_due_for_a_check() -> None:
    for gap in (2.0, 12.0, 40.0):  # small pool, 3,000 sessions, 10,000 sessions at the gateway's defaults
        s = pinged_every(gap)
        last = s.heard_at
        # The next Ping is jittered by ±10% and the interval may grow with the pool: not yet due.
        assert s.due_in(last + 1.1 * gap) > 0


def test_silence_is_checked_after_a_few_missed_pings_within_the_floor_and_the_limit() -> None:
    assert pinged_every(2.0).allowed_s() == SILENCE_MIN_S  # 3 × 2 s is below the floor
    assert pinged_every(5.0).allowed_s() == SILENCE_FACTOR * 5.0
    assert pinged_every(40.0).allowed_s() == 60.0  # the limit caps it
    s = pinged_every(5.0)
    assert s.due_in(s.heard_at + SILENCE_FACTOR * 5.0) <= 0


def test_any_frame_resets_the_silence_but_only_pings_set_the_cadence() -> None:
    s = pinged_every(5.0)
    s.heard(s.heard_at + 12.0)  # a Run, say
    assert s.gap_s == 5.0
    assert s.due_in(s.heard_at) == SILENCE_FACTOR * 5.0


def test_the_bound_is_the_limit_plus_the_probe() -> None:
    s = pinged_every(40.0)
    assert s.allowed_s() + s.probe_timeout_s() == 60.0 + PROBE_TIMEOUT_S
    short = pinged_every(0.5, limit_s=2.0)  # a test's setting: the probe is no longer than the limit
    assert short.allowed_s() == 2.0 and short.probe_timeout_s() == 2.0
