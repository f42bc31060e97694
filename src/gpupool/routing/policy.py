"""Choose a provider: filter, estimate, score, over a sample of the pool.

    from gpupool.routing import Candidate, RouteRequest, pick, pick_with_reasons

    choice = pick(candidates, now, rng, exclude=tried, request=req)   # Candidate | None
    d = pick_with_reasons(candidates, now, rng, exclude=tried, request=req)
    if d.choice is None:
        raise NoProvider(d.explain())   # "3 excluded by max_price (1,200 µcr would clear)"
    if d.probe:                          # the choice's breaker was open: this is its probe
        state = breaker.on_dispatch(state, now)

Steps per request:
1. Filter, in this order, counting why each examined candidate was dropped:
   "excluded" (already tried for this request), "draining", "model" (does not
   serve it), "breaker" (open, cooldown not over), "region" (client required
   another region), "price" (estimated max cost over the client's max_price).
   Price is checked last, so `cheapest_excluded_price` names a price that would
   really have cleared.
2. Score = (estimated seconds + cost / micro_credits_per_second)
           * (1 + reputation_weight * (1 - reputation)) * off-region factor
   (see `weights.RoutingWeights`); lower is better.
3. Selection: pools of at most `scan_below` are scanned completely (exact best,
   ties broken at random). Larger pools: draw candidates uniformly at random
   until `sample_k` eligible ones were scored (power-of-k choices), at most
   `max_draws` draws; a decision costs O(k), not O(n), at 10,000 or 100,000
   candidates. Only if no draw was eligible is the pool scanned, so that a
   request is never refused while some candidate could serve it.

Why sampling rather than always the global best: it is cheap, and it spreads
load. Every gateway replica sees slightly stale load; an argmin over stale
numbers sends everyone to the same "best" provider at once, while the best of a
few random ones stays close to optimal without herding.

Without a `request`, the score is the candidate's load (in_flight + queued):
the least-loaded behaviour the gateway had before it passed requests.

`candidates` only needs `len()` and indexing, so a caller with a huge pool can
pass a lazy sequence that builds each `Candidate` when it is drawn.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from gpupool.routing.breaker import is_probe
from gpupool.routing.candidate import Candidate, RouteRequest
from gpupool.routing.estimate import closures
from gpupool.routing.weights import DEFAULT_WEIGHTS, RoutingWeights

REASONS = ("excluded", "draining", "model", "breaker", "region", "price")


@dataclass(slots=True)
class Decision:
    choice: Candidate | None
    score: float | None = None  # the choice's score (lower is better)
    estimate_s: float | None = None  # the choice's expected completion time
    service_s: float | None = None  # ...of which service (add to the provider's backlog_s while it runs)
    cost: int | None = None  # the choice's estimated max cost, µcr
    probe: bool = False  # the choice's breaker is open: the caller must call breaker.on_dispatch
    # reason -> number of examined candidates dropped for it. Complete (every
    # candidate examined) when `scanned` is True, which is always the case when
    # `choice` is None; otherwise counts only the sampled ones.
    excluded: dict[str, int] = field(default_factory=dict)
    examined: int = 0
    scanned: bool = False
    # Lowest estimated cost among candidates dropped *only* for price: a max_price
    # of at least this would have let one through.
    cheapest_excluded_price: int | None = None

    def explain(self) -> str:
        """One line for an error message, e.g. '3 excluded by max_price (1,200 µcr would clear); 1 draining'."""
        parts = []
        for reason in REASONS:
            n = self.excluded.get(reason, 0)
            if not n:
                continue
            if reason == "price":
                text = f"{n} excluded by max_price"
                if self.cheapest_excluded_price is not None:
                    text += f" ({self.cheapest_excluded_price:,} µcr would clear)"
            elif reason == "excluded":
                text = f"{n} already tried"
            elif reason == "breaker":
                text = f"{n} failing (circuit open)"
            elif reason == "region":
                text = f"{n} outside the required region"
            elif reason == "model":
                text = f"{n} not serving the model"
            else:
                text = f"{n} draining"
            parts.append(text)
        if self.choice is None and not parts:
            return "no provider available"
        return "; ".join(parts)


def pick(
    candidates: Sequence[Candidate],
    now: float,
    rng: random.Random,
    exclude: Collection[str] = (),
    *,
    request: RouteRequest | None = None,
    weights: RoutingWeights = DEFAULT_WEIGHTS,
) -> Candidate | None:
    """The chosen candidate, or None if no candidate is eligible."""
    return pick_with_reasons(candidates, now, rng, exclude, request=request, weights=weights).choice


def pick_with_reasons(
    candidates: Sequence[Candidate],
    now: float,
    rng: random.Random,
    exclude: Collection[str] = (),
    *,
    request: RouteRequest | None = None,
    weights: RoutingWeights = DEFAULT_WEIGHTS,
) -> Decision:
    """Like `pick`, with the choice's estimates and why candidates were dropped."""
    ev = _Evaluator(now, exclude, request, weights)
    n = len(candidates)
    if n <= weights.scan_below:
        return _scan(candidates, rng, ev)
    evaluate = ev.evaluate
    # Draws are with replacement; in a small pool a repeat is skipped so it is
    # neither scored twice nor counted twice. In a big one repeats are so rare
    # (6 draws from 10,000: ~0.2%) that the bookkeeping is not worth its time.
    seen: set[int] | None = set() if n < 4096 else None
    best: Candidate | None = None
    best_score = 0.0
    best_cost = found = draws = 0
    best_parts: tuple[float, float] | None = None
    k, max_draws = weights.sample_k, weights.max_draws
    rand = rng.random
    while found < k and draws < max_draws:
        draws += 1
        i = int(rand() * n)
        if seen is not None:
            if i in seen:
                continue
            seen.add(i)
        c = candidates[i]
        s, cost, parts = evaluate(c)
        if s is None:
            continue
        found += 1
        if best is None or s < best_score:
            best, best_score, best_cost, best_parts = c, s, cost, parts
    if best is None:
        return _scan(candidates, rng, _Evaluator(now, exclude, request, weights))
    return ev.decision(best, best_score, best_cost, best_parts, draws if seen is None else len(seen), False)


def rank(candidates: Sequence[Candidate], now: float, exclude: Collection[str] = (), *,
         request: RouteRequest | None = None, weights: RoutingWeights = DEFAULT_WEIGHTS,
         k: int = 2) -> list[Candidate]:
    """The `k` best eligible candidates, best first (every one is examined: for short lists)."""
    ev = _Evaluator(now, exclude, request, weights)
    scored = [(s, i) for i, c in enumerate(candidates) if (s := ev.evaluate(c)[0]) is not None]
    scored.sort()
    return [candidates[i] for _, i in scored[:k]]


def score(c: Candidate, request: RouteRequest | None, weights: RoutingWeights = DEFAULT_WEIGHTS) -> float:
    """The objective for one candidate (lower is better), ignoring the filters."""
    ev = _Evaluator(0.0, (), request, weights, with_objective=True)
    if request is None:
        return float(c.in_flight + c.queued)
    assert ev.cost_of is not None
    return ev.objective(c, ev.cost_of(c))


# ---------------------------------------------------------------- internals


class _Evaluator:
    """Filter and objective for one decision, with the per-request work done once.

    `evaluate(c) -> (score or None if filtered, estimated cost, seconds parts)` is a closure
    over the request's constants: it runs for every sampled candidate. The seconds parts are
    `estimate.closures`' `seconds_parts(c)` as the score used them (None without a request or when filtered), so
    the decision takes its choice's estimate from there instead of computing it again.
    """

    __slots__ = ("now", "cost_of", "counts", "_cheapest", "evaluate", "objective")

    def __init__(self, now: float, exclude: Collection[str], request: RouteRequest | None,
                 weights: RoutingWeights, with_objective: bool = False) -> None:
        self.now = now
        counts: dict[str, int] = {}
        self.counts = counts
        # The closures below hold this list, never `self`: a decision must not be a reference
        # cycle, or every request leaves garbage only the cyclic collector can free.
        cheapest: list[int] = []
        self._cheapest = cheapest
        seconds_parts: Callable[[Candidate], tuple[float, float]] | None = None
        cost_of: Callable[[Candidate], int] | None = None
        model: str | None = None
        region: str | None = None
        max_price: int | None = None
        if request is None:
            require = prefer = False
        else:
            # An `Estimator`'s closures without the object (this runs per request).
            seconds_parts, cost_of = closures(request, weights)
            model, region, max_price = request.model, request.region, request.max_price
            require = bool(region) and request.region_policy == "require"
            prefer = bool(region) and request.region_policy == "prefer"
        self.cost_of = cost_of
        vot = weights.micro_credits_per_second
        per_ucr = 1.0 / vot if vot > 0 else 0.0
        rep_w = weights.reputation_weight
        off_factor = weights.off_region_factor

        if with_objective:  # only `score` asks: a pick (per request) does not build this closure

            def objective(c: Candidate, cost: int) -> float:
                assert seconds_parts is not None
                s = seconds_parts(c)[0] + cost * per_ucr
                rep = c.reputation
                s *= 1.0 + rep_w * (1.0 - (0.0 if rep < 0.0 else 1.0 if rep > 1.0 else rep))
                if prefer and c.region != region:
                    s *= off_factor
                return s

            self.objective = objective

        def evaluate(c: Candidate) -> tuple[float | None, int, tuple[float, float] | None]:
            if exclude and c.provider_id in exclude:
                reason = "excluded"
            elif c.draining:
                reason = "draining"
            elif model is not None and c.models is not None and model not in c.models:
                reason = "model"
            elif c.breaker.phase != "closed" and now < c.breaker.retry_at:
                reason = "breaker"
            elif cost_of is None:
                return float(c.in_flight + c.queued), 0, None
            elif require and c.region != region:
                reason = "region"
            else:
                cost = cost_of(c)
                if max_price is None or cost <= max_price:
                    # = objective(c, cost), inlined: this line runs for every sampled candidate
                    parts = seconds_parts(c)  # type: ignore[misc]
                    s = parts[0] + cost * per_ucr
                    rep = c.reputation
                    s *= 1.0 + rep_w * (1.0 - (0.0 if rep < 0.0 else 1.0 if rep > 1.0 else rep))
                    if prefer and c.region != region:
                        s *= off_factor
                    return s, cost, parts
                if not cheapest:
                    cheapest.append(cost)
                elif cost < cheapest[0]:
                    cheapest[0] = cost
                reason = "price"
            counts[reason] = counts.get(reason, 0) + 1
            return None, 0, None

        self.evaluate = evaluate

    @property
    def cheapest(self) -> int | None:
        """The lowest price among candidates dropped for their price (None: none was)."""
        return self._cheapest[0] if self._cheapest else None

    def decision(self, c: Candidate, s: float, cost: int, parts: tuple[float, float] | None, examined: int,
                 scanned: bool) -> Decision:
        """`parts`: `evaluate(c)`'s seconds parts (None without a request)."""
        probe = is_probe(c.breaker, self.now)
        if parts is None:
            return Decision(c, s, probe=probe, excluded=self.counts, examined=examined,
                            scanned=scanned, cheapest_excluded_price=self.cheapest)
        total, service = parts
        return Decision(c, s, total, service, cost, probe, self.counts, examined, scanned, self.cheapest)


def _scan(candidates: Sequence[Candidate], rng: random.Random, ev: _Evaluator) -> Decision:
    """Examine every candidate: exact best (random among ties) and complete exclusion counts."""
    best: list[tuple[Candidate, int, tuple[float, float] | None]] = []
    best_score = 0.0
    n = 0
    evaluate = ev.evaluate
    for c in candidates:
        n += 1
        s, cost, parts = evaluate(c)
        if s is None:
            continue
        if not best or s < best_score:
            best, best_score = [(c, cost, parts)], s
        elif s == best_score:
            best.append((c, cost, parts))
    if not best:
        return Decision(None, excluded=ev.counts, examined=n, scanned=True, cheapest_excluded_price=ev.cheapest)
    c, cost, parts = best[0] if len(best) == 1 else best[rng.randrange(len(best))]
    return ev.decision(c, best_score, cost, parts, n, True)
