"""Per-provider circuit breaker as a pure state machine over immutable states.

    from gpupool.routing.breaker import CLOSED, BreakerConfig, allows, on_dispatch, \
        record_failure, record_success

    state = CLOSED
    state = record_failure(state, now, cfg)      # x3 (cfg.failure_threshold) -> open
    allows(state, now)                           # False until the cooldown is over
    # routing picked it anyway after the cooldown: this request is the probe
    state = on_dispatch(state, now, cfg)         # open -> half_open, no second probe
    state = record_success(state, now)           # half_open -> closed
    # or: state = record_failure(state, now, cfg)  # half_open -> open, longer cooldown

Transitions:
    closed    --failure (consecutive failures reach threshold)--> open
    open      --cooldown over, routed a request (on_dispatch)---> half_open (one probe)
    half_open --probe succeeds--> closed
    half_open --probe fails-----> open, cooldown doubled (up to max_cooldown_s)
    half_open --probe unanswered for probe_timeout_s--> another probe may go

Why: a dead or broken provider should stop costing every request a failed try
(the failover is invisible but adds a round trip), yet must get back in by itself
once it recovers, without a flood: exactly one request probes it at a time.

What counts as a failure is the caller's call: connection lost, provider errors,
timeouts, lying receipts. *Not* client faults (bad input) and not `over_capacity`
(that is load, which routing already sees and avoids).

`allows(state, now)` needs no config: an open state carries the time from which
it may be retried, so routing can filter with only the snapshot and `now`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Phase = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_threshold: int = 3  # consecutive failures that open the breaker
    cooldown_s: float = 10.0  # first open period; doubles with each failed probe
    max_cooldown_s: float = 300.0  # cap on the doubled cooldown
    probe_timeout_s: float = 30.0  # a probe unanswered this long lets another one go


@dataclass(frozen=True, slots=True)
class BreakerState:
    phase: Phase = "closed"
    failures: int = 0  # consecutive failures
    retry_at: float = 0.0  # open: when a probe may go; half_open: when the probe counts as lost
    trips: int = 0  # consecutive openings without a success in between (sets the cooldown)


CLOSED = BreakerState()
DEFAULT_BREAKER_CONFIG = BreakerConfig()


def allows(state: BreakerState, now: float) -> bool:
    """May routing send a request to this provider now?"""
    return state.phase == "closed" or now >= state.retry_at


def is_probe(state: BreakerState, now: float) -> bool:
    """True when a request sent now would be the recovery probe (the caller must then call on_dispatch)."""
    return state.phase != "closed" and now >= state.retry_at


def on_dispatch(state: BreakerState, now: float, config: BreakerConfig = DEFAULT_BREAKER_CONFIG) -> BreakerState:
    """Record that a request was sent; turns an expired open state into half-open (the probe)."""
    if state.phase == "closed" or now < state.retry_at:
        return state
    return BreakerState("half_open", state.failures, now + config.probe_timeout_s, state.trips)


def record_success(state: BreakerState, now: float) -> BreakerState:
    """Any answer proves the provider works again: back to closed with a clean record."""
    del now  # part of the uniform signature; a success needs no timing
    return CLOSED


def record_failure(state: BreakerState, now: float, config: BreakerConfig = DEFAULT_BREAKER_CONFIG) -> BreakerState:
    failures = state.failures + 1
    if state.phase == "closed":
        if failures >= config.failure_threshold:
            return _open(failures, 1, now, config)
        return BreakerState("closed", failures, 0.0, state.trips)
    if state.phase == "open":
        # A late failure of a request sent before the breaker opened: already open,
        # do not extend the cooldown for it.
        return BreakerState("open", failures, state.retry_at, state.trips)
    return _open(failures, state.trips + 1, now, config)  # the probe failed


def phase_at(state: BreakerState, now: float) -> Phase:
    """The phase as routing sees it now (an open breaker whose cooldown ended reads half_open)."""
    if state.phase == "open" and now >= state.retry_at:
        return "half_open"
    return state.phase


def _open(failures: int, trips: int, now: float, config: BreakerConfig) -> BreakerState:
    cooldown = min(config.cooldown_s * 2 ** (trips - 1), config.max_cooldown_s)
    return BreakerState("open", failures, now + cooldown, trips)
