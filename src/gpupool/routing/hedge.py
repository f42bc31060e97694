"""Hedged requests: when to send a second copy of a slow non-streaming request.

    from gpupool.routing.hedge import hedge_delay_s, should_hedge

    delay = hedge_delay_s(first, request)          # None: never hedge (streaming)
    # ... schedule a timer; when it fires and the first provider has not answered:
    if should_hedge(now - sent_at, first, request):
        second = pick(candidates, now, rng, exclude={first.provider_id}, request=request)
        # send the copy; the first complete answer wins, cancel the other

Why a percentile of the candidate's own expected time: a fixed timeout is either
too short for big requests or useless for small ones. The expected time comes
from `estimate.estimate_seconds`; how far real answers stray from it is learned
per provider (`SpeedEstimate.log_err_mean/var`, log of actual/predicted), so the
delay is exp(mean + z_p * sigma) times the estimate. If the learned spread is
right, a healthy provider is hedged on only about (1 - percentile) of requests,
which bounds the extra load, while one that stalls is covered after a delay
proportional to what it should have taken.

Streaming requests are not hedged: their first bytes are already on the way to
the client, and a second stream cannot be merged into the first.
"""

from __future__ import annotations

import math
from statistics import NormalDist

from gpupool.routing.candidate import Candidate, RouteRequest
from gpupool.routing.estimate import estimate_seconds
from gpupool.routing.speed import DEFAULT_LOG_SIGMA
from gpupool.routing.weights import DEFAULT_WEIGHTS, RoutingWeights

MIN_HEDGE_DELAY_S = 0.05  # below this a hedge is a duplicate, not a rescue

_Z_CACHE: dict[float, float] = {}


def _z(percentile: float) -> float:
    z = _Z_CACHE.get(percentile)
    if z is None:
        if not 0.0 < percentile < 1.0:
            raise ValueError("percentile must be between 0 and 1 (exclusive)")
        z = _Z_CACHE[percentile] = NormalDist().inv_cdf(percentile)
    return z


def hedge_delay_s(
    candidate: Candidate, request: RouteRequest, percentile: float = 0.95,
    weights: RoutingWeights = DEFAULT_WEIGHTS, min_delay_s: float = MIN_HEDGE_DELAY_S,
    *, expected_s: float | None = None,
) -> float | None:
    """Seconds after sending at which a second copy should go; None for streaming requests.

    `expected_s`: `estimate_seconds(candidate, request, weights)` when the caller has it already
    (a pick's `Decision.estimate_s` for its choice, with the same request and weights)."""
    if request.stream:
        return None
    expected = estimate_seconds(candidate, request, weights) if expected_s is None else expected_s
    speed = candidate.speed
    if speed is not None and speed.samples > 0:
        mean, sigma = speed.log_err_mean, speed.log_err_sigma
    else:
        mean, sigma = 0.0, DEFAULT_LOG_SIGMA
    return max(expected * math.exp(mean + _z(percentile) * sigma), min_delay_s)


def should_hedge(
    elapsed_s: float, candidate: Candidate, request: RouteRequest, percentile: float = 0.95,
    weights: RoutingWeights = DEFAULT_WEIGHTS, already_hedged: bool = False,
) -> bool:
    """True when no answer arrived within the percentile of the expected time (at most one hedge)."""
    if already_hedged:
        return False
    delay = hedge_delay_s(candidate, request, percentile, weights)
    return delay is not None and elapsed_s >= delay
