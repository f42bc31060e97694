"""Expected completion time and price of one request on one candidate.

    from gpupool.routing.estimate import Estimator, estimate_seconds, estimated_cost

    t = estimate_seconds(candidate, request)     # RTT + queue wait + service, seconds
    cost = estimated_cost(candidate, request)    # µcr, at the request's max output
    est = Estimator(request, weights)            # the same, with per-request work done once:
    est.seconds(c), est.service(c), est.cost(c)
    seconds_parts, cost = closures(request, weights)  # an Estimator's two closures, no object:
    total, service = seconds_parts(c)                 # what `policy.pick` calls per candidate

Model (kept simple on purpose; the error it makes is measured and used by hedging):
- service time: generation = input/prefill_tps + output/decode_tps; embeddings =
  items/items_per_s. Speed is the measured estimate, else the provider's claim
  (capped at `max_claim_factor` x the prior), else the prior. A busy provider is
  a little slower per request (`load_slowdown`: batching shares the GPU).
- queue wait: the provider runs `max_concurrency` requests at once. If all slots
  are taken (in_flight + queued >= concurrency), this request waits for
  (excess + 1) / concurrency service times of the work ahead: its average size is
  `backlog_s / in_flight` when the gateway tracks it, else this request's own
  service time. (The size matters: big requests favour fast providers, so the
  queue at a fast provider is full of them, and a small request that assumed
  "like me" would under-estimate its wait there.)
- RTT: the smoothed round trip gateway<->provider, once (request out, answer back).
"""

from __future__ import annotations

from collections.abc import Callable

from gpupool.routing.candidate import Candidate, RouteRequest
from gpupool.routing.speed import SpeedEstimate
from gpupool.routing.weights import DEFAULT_WEIGHTS, RoutingWeights

TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are per 1M tokens


def _inv(x: float) -> float:
    return 1.0 / x if x > 0 else 0.0


_WeightConstants = tuple[float, float, SpeedEstimate, float, float, float, float, float, float]
# id(weights) -> (weights, constants), for the last few weights objects: a caller may alternate
# between several (the simulator has one per gateway and task). Keeping the object pins its id.
_cache: dict[int, tuple[RoutingWeights, _WeightConstants]] = {}
_CACHE_MAX = 64


def _constants(weights: RoutingWeights) -> _WeightConstants:
    """What the estimate needs from the weights; cached per weights object (usually the default)."""
    hit = _cache.get(id(weights))
    if hit is not None and hit[0] is weights:
        return hit[1]
    prior, cap = weights.prior_speed, weights.max_claim_factor
    consts = (
        weights.default_rtt_s, weights.load_slowdown, prior,
        # Seconds per unit a claim may imply at the least (the cap)...
        _inv(prior.prefill_tps * cap), _inv(prior.decode_tps * cap), _inv(prior.items_per_s * cap),
        # ...and the prior's.
        _inv(prior.prefill_tps), _inv(prior.decode_tps), _inv(prior.items_per_s),
    )
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[id(weights)] = (weights, consts)
    return consts


class Estimator:
    """Estimates for one request across many candidates (routing's hot path).

    Everything that depends only on the request and the weights is computed once
    here; `seconds_parts` and `cost` are closures over those constants, so a call
    per candidate is a handful of arithmetic operations and no attribute lookups.
    """

    __slots__ = ("seconds_parts", "cost")

    def __init__(self, request: RouteRequest, weights: RoutingWeights = DEFAULT_WEIGHTS) -> None:
        self.seconds_parts: Callable[[Candidate], tuple[float, float]]
        self.cost: Callable[[Candidate], int]
        self.seconds_parts, self.cost = closures(request, weights)

    def seconds(self, c: Candidate) -> float:
        """Expected seconds from sending the request to having the whole answer."""
        return self.seconds_parts(c)[0]

    def service(self, c: Candidate) -> float:
        """Seconds the provider needs once the request starts."""
        return self.seconds_parts(c)[1]


def closures(request: RouteRequest, weights: RoutingWeights = DEFAULT_WEIGHTS) -> tuple[
        Callable[[Candidate], tuple[float, float]], Callable[[Candidate], int]]:
    """`(seconds_parts, cost)` for one request: `seconds_parts(c)` is (expected seconds to the whole
    answer, of which service), `cost(c)` the estimated max cost in µcr (`estimated_cost`)."""
    embed = request.task == "embeddings"
    n_in = request.input_tokens
    n_out = request.output_tokens_for_time
    n_out_max = 0 if embed else request.max_output_tokens
    items = request.items
    default_rtt, slowdown, prior, floor_in, floor_out, floor_item, spt_in, spt_out, spt_item = _constants(weights)
    prior_svc = items * spt_item if embed else n_in * spt_in + n_out * spt_out

    def seconds_parts(c: Candidate) -> tuple[float, float]:
        # Service time at the believed speed: measured > claimed (capped) > prior.
        sp = c.speed
        if sp is not None and sp.samples > 0:
            if embed:
                service = items / sp.items_per_s if sp.items_per_s > 0 else prior_svc
            elif sp.prefill_tps > 0 and sp.decode_tps > 0:
                service = n_in / sp.prefill_tps + n_out / sp.decode_tps
            else:
                service = prior_svc
        elif c.claimed_speed is None:
            service = prior_svc
        else:
            # Seconds per unit of the claim, at least the cap's: max(_inv(claimed or prior), floor), with
            # the calls written out (the same floats; this runs for every unmeasured claimer drawn).
            claim = c.claimed_speed
            if embed:
                x = claim.items_per_s or prior.items_per_s
                spu = 1.0 / x if x > 0 else 0.0
                service = items * (floor_item if floor_item > spu else spu)
            else:
                x = claim.prefill_tps or prior.prefill_tps
                spu_in = 1.0 / x if x > 0 else 0.0
                x = claim.decode_tps or prior.decode_tps
                spu_out = 1.0 / x if x > 0 else 0.0
                service = (n_in * (floor_in if floor_in > spu_in else spu_in)
                           + n_out * (floor_out if floor_out > spu_out else spu_out))
        conc = c.max_concurrency
        load = c.in_flight + c.queued
        if slowdown and conc > 0:
            service *= 1.0 + slowdown * (load if load < conc else conc) / conc
        # Queue wait (see the module docstring), then the round trip.
        slots = conc if conc > 0 else 1
        total = service
        if load >= slots:
            backlog = c.backlog_s
            typical = backlog / c.in_flight if backlog is not None and c.in_flight > 0 else service
            total += (load - slots + 1) / slots * typical
        rtt = c.rtt_s
        return total + (default_rtt if rtt is None else rtt), service

    def cost(c: Candidate) -> int:
        return -(-(n_in * c.price_in + n_out_max * c.price_out) // TOKENS_PER_PRICE_UNIT)

    return seconds_parts, cost


def effective_speed(c: Candidate, weights: RoutingWeights = DEFAULT_WEIGHTS) -> SpeedEstimate:
    """The speed routing believes: measured > claimed (capped) > prior."""
    if c.speed is not None and c.speed.samples > 0:
        return c.speed
    prior = weights.prior_speed
    claim = c.claimed_speed
    if claim is None:
        return prior
    cap = weights.max_claim_factor

    def capped(claimed: float, base: float) -> float:
        return min(claimed, base * cap) if claimed > 0 else base

    return SpeedEstimate(prefill_tps=capped(claim.prefill_tps, prior.prefill_tps),
                         decode_tps=capped(claim.decode_tps, prior.decode_tps),
                         items_per_s=capped(claim.items_per_s, prior.items_per_s))


def service_seconds(c: Candidate, req: RouteRequest, weights: RoutingWeights = DEFAULT_WEIGHTS) -> float:
    """Time the provider needs for this request once it starts, at the believed speed."""
    return Estimator(req, weights).service(c)


def queue_wait_seconds(c: Candidate, service_s: float) -> float:
    """Expected wait for a free slot; `service_s` is this request's own service time.

    (The same formula is inlined in `Estimator` for speed; tests check they agree.)
    """
    slots = c.max_concurrency if c.max_concurrency > 0 else 1
    excess = c.in_flight + c.queued - slots
    if excess < 0:
        return 0.0
    backlog = c.backlog_s
    typical = backlog / c.in_flight if backlog is not None and c.in_flight > 0 else service_s
    return (excess + 1) / slots * typical


def rtt_seconds(c: Candidate, weights: RoutingWeights = DEFAULT_WEIGHTS) -> float:
    return c.rtt_s if c.rtt_s is not None else weights.default_rtt_s


def estimate_seconds(c: Candidate, req: RouteRequest, weights: RoutingWeights = DEFAULT_WEIGHTS) -> float:
    """Expected seconds from sending the request to having the whole answer."""
    return Estimator(req, weights).seconds(c)


def estimated_cost(c: Candidate, req: RouteRequest) -> int:
    """The most this request can cost on this candidate, in µcr (rounded up).

    Uses the request's max output tokens, like the hold the gateway places, so a
    candidate under `max_price` can never charge more than the client allowed.
    """
    total = req.input_tokens * c.price_in
    if req.task != "embeddings":
        total += req.max_output_tokens * c.price_out
    return -(-total // TOKENS_PER_PRICE_UNIT)
