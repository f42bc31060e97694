"""Pure routing policy: candidates, `now` and an RNG in, a choice out.

The gateway builds `Candidate` snapshots from live provider sessions and calls
`pick`; the simulator (`gpupool.sim`) calls the very same functions with a
virtual clock. Nothing here does I/O or reads the wall clock.

    from gpupool.routing import Candidate, RouteRequest, pick_with_reasons
    d = pick_with_reasons(candidates, now, rng, exclude=tried,
                          request=RouteRequest("llama-3-8b", input_tokens=600, max_output_tokens=256))

Modules: candidate (inputs), speed (learned speed, RTT smoothing, pool prior),
breaker (circuit breaker: `from gpupool.routing import breaker`), estimate (time
and cost), weights (knobs), policy (filter + score + sampled selection), hedge
(when to send a second copy).
"""

from gpupool.routing.breaker import CLOSED, BreakerConfig, BreakerState
from gpupool.routing.candidate import Candidate, RouteRequest
from gpupool.routing.estimate import estimate_seconds, estimated_cost
from gpupool.routing.hedge import hedge_delay_s, should_hedge
from gpupool.routing.policy import Decision, pick, pick_with_reasons, rank, score
from gpupool.routing.speed import SpeedEstimate, SpeedSample, hardware_speed, observe, pool_prior, smooth_rtt
from gpupool.routing.weights import DEFAULT_WEIGHTS, RoutingWeights

__all__ = [
    "CLOSED", "BreakerConfig", "BreakerState", "Candidate", "DEFAULT_WEIGHTS", "Decision",
    "RouteRequest", "RoutingWeights", "SpeedEstimate", "SpeedSample", "estimate_seconds",
    "estimated_cost", "hardware_speed", "hedge_delay_s", "observe", "pick", "pick_with_reasons", "rank",
    "pool_prior", "score", "should_hedge", "smooth_rtt",
]
