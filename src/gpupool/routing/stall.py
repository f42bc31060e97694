"""Stalls: when a provider that is still connected has gone silent for too long.

A dropped connection is seen at once; a provider whose engine stops sending words
mid-answer, or whose process is stopped (SIGSTOP, a swapped-out VM), is not: the
socket stays open. These pure rules turn silence into a verdict, so the gateway can
continue the work elsewhere long before its deadline or the liveness timeout:

    limit = silence_limit_s(mean_gap_s, factor=8, floor_s=1.0)   # one stream
    if now - last_token_at > limit: ...continue the stream on another provider

    if session_silent(now, last_seen, ping_interval_s=2.0, rtt_s=0.01, factor=8, floor_s=1.0): ...

Why k times the measured gap: an engine's inter-token time is steady for one stream
(a batch that grows slows every stream a little, not by 8x), so a silence many gaps
long is a stall; the floor keeps a fast stream (5 ms a token) from being called
stalled by a scheduler hiccup on a loaded machine. A session is silent when not even
the Pong to a Ping came back: a live provider answers every `ping_interval_s`.
"""

from __future__ import annotations


def mean_gap_s(first_at: float | None, last_at: float | None, events: int) -> float | None:
    """Mean time between a stream's events so far (None until two arrived)."""
    if first_at is None or last_at is None or events < 2:
        return None
    return max(0.0, last_at - first_at) / (events - 1)


def silence_limit_s(gap_s: float | None, factor: float, floor_s: float, cap_s: float = float("inf")) -> float:
    """How long a stream may stay silent before it counts as stalled: `factor` times its
    measured (or expected) gap between tokens, never below `floor_s` nor above `cap_s`."""
    limit = floor_s if gap_s is None else max(floor_s, factor * gap_s)
    return min(limit, cap_s)


def session_silent(now: float, last_seen: float, ping_interval_s: float, rtt_s: float | None, factor: float,
                   floor_s: float) -> bool:
    """Whether a provider session with work in flight has stopped talking altogether: no frame
    (not even a Pong) for a ping interval plus the stall limit of one round trip."""
    return now - last_seen > ping_interval_s + silence_limit_s(rtt_s, factor, floor_s)
