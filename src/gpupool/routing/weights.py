"""The knobs of the routing policy, in one documented place.

    from gpupool.routing import RoutingWeights, pick
    weights = RoutingWeights(sample_k=4, micro_credits_per_second=0)   # ignore price
    choice = pick(candidates, now, rng, request=req, weights=weights)

The objective these feed (see `policy.score`):

    score = (estimated_seconds + estimated_cost_µcr / micro_credits_per_second)
            * (1 + reputation_weight * (1 - reputation))
            * (off_region_factor if the client prefers another region else 1)

lower is better. Read it as "seconds, with money converted to seconds at the
client's value of time, inflated for providers we trust less or that sit
outside the preferred region".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpupool.routing.speed import SpeedEstimate


@dataclass(frozen=True, slots=True)
class RoutingWeights:
    # --- selection (cost of a decision) ---
    # Candidates scored per decision in large pools (power-of-k choices), ~1-2 µs
    # each. k=2 avoids the worst provider but not the slow tiers: in the simulator
    # (bench/policies: 10,000 providers of six GPU tiers, 70% load) gpupool's p99
    # was 2.2x the oracle's at k=2, 1.17x at k=4, 1.07x at k=6, 1.04x at k=8.
    sample_k: int = 6
    # Pools this small are scanned completely: the exact best is cheap to find.
    scan_below: int = 16
    # Random draws per decision before settling for fewer than k (or, with none
    # eligible, scanning the whole pool): with a sixth of the pool eligible (one
    # required region) 64 draws find one all but ~1 in 100,000 times.
    max_draws: int = 64

    # --- objective ---
    # What one second of waiting is worth, in µcr: converts price into seconds.
    # 1,000 µcr/s = 3.6 credits per hour of waiting. 0 ignores price (the
    # client's max_price still filters).
    micro_credits_per_second: float = 1000.0
    # How much a lower reputation inflates the score: reputation 0 costs
    # (1 + reputation_weight) times more than reputation 1.
    reputation_weight: float = 0.5
    # RouteRequest.region_policy == "prefer": candidates elsewhere score this many times worse.
    off_region_factor: float = 1.5
    # Per-request slowdown when busy (batching shares the GPU): service time is
    # multiplied by 1 + load_slowdown * min(load, concurrency) / concurrency.
    load_slowdown: float = 0.1

    # --- priors for what is not measured yet ---
    default_rtt_s: float = 0.15
    # Assumed speed of a provider with no measurement and no claim. Keep it near the
    # pool's typical measured speed (`speed.pool_prior`, refreshed every 10-30 s):
    # too low and new providers never get the traffic that would measure them, so
    # the known ones queue up; too high and slow newcomers get more than a few
    # requests. In the simulator (10,000 providers, median ~70 tok/s), compared with
    # the refreshed pool median, a fixed prior of 30 tok/s made p99 26% worse and
    # this default (a mid-range consumer GPU on a ~8B model) 12% worse.
    prior_speed: SpeedEstimate = field(
        default_factory=lambda: SpeedEstimate(prefill_tps=3000.0, decode_tps=50.0, items_per_s=200.0)
    )
    # A claimed speed counts at most this many times the prior until measured:
    # enough for a real fast GPU to get traffic, not enough for a liar to flood.
    max_claim_factor: float = 3.0


DEFAULT_WEIGHTS = RoutingWeights()
