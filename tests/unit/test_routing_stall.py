"""routing.stall: when silence means a stalled stream or a stopped provider."""

from __future__ import annotations

from gpupool.routing.stall import mean_gap_s, session_silent, silence_limit_s


def test_the_gap_is_measured_from_the_stream_itself() -> None:
    assert mean_gap_s(None, None, 0) is None
    assert mean_gap_s(10.0, 10.0, 1) is None  # one chunk says nothing about the pace
    assert mean_gap_s(10.0, 11.0, 11) == 0.1


def test_silence_limit_is_k_gaps_with_a_floor_and_a_cap() -> None:
    assert silence_limit_s(None, 8, 1.0) == 1.0  # nothing measured: the floor
    assert silence_limit_s(0.02, 8, 1.0) == 1.0  # a fast stream is not called stalled by a hiccup
    assert silence_limit_s(0.5, 8, 1.0) == 4.0  # a slow engine gets k of its own gaps
    assert silence_limit_s(10.0, 8, 1.0, cap_s=30.0) == 30.0


def test_a_session_is_silent_only_after_a_missed_pong() -> None:
    # Pings every 2 s: a live provider's last frame is never much older than that.
    assert not session_silent(now=102.9, last_seen=100.0, ping_interval_s=2.0, rtt_s=0.01, factor=8, floor_s=1.0)
    assert session_silent(now=103.1, last_seen=100.0, ping_interval_s=2.0, rtt_s=0.01, factor=8, floor_s=1.0)
    # A far-away provider (500 ms round trips) gets k round trips more.
    assert not session_silent(now=105.0, last_seen=100.0, ping_interval_s=2.0, rtt_s=0.5, factor=8, floor_s=1.0)
