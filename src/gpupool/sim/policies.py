"""Routing policies the simulator compares, behind one small interface.

    policy = make_policy("gpupool", world, random.Random(1), expected_output_tokens=150)
    i = policy.choose(job, now, exclude={3, 17})     # provider index or None
    policy.on_dispatch(i, job, now)
    policy.on_result(i, job, now, ok=True, sent_at=t0, first_token_at=t1)

- random:         uniform over the pool.
- round-robin:    the pool in a fixed shuffled order, one after the other.
- least-loaded:   fewest requests in flight from this gateway (least connections), ties random.
- nearest-region: uniform over providers in the client's region (what geo-DNS does).
- gpupool:        `gpupool.routing.pick_with_reasons` on candidates built from what a
                  gateway would know: offers (claims, prices, concurrency), smoothed
                  RTT pings from the client's regional gateway, in-flight counts and
                  backlog, speeds learned with `routing.speed.observe` (skipping
                  answers that queued), per-provider breakers, and a prior refreshed
                  from the pool's median measured speed (`routing.speed.pool_prior`).
                  The very code the gateway runs. The six regional gateways share
                  one view of in-flight work (as if they exchanged it instantly).
- gpupool+hedge:  the same, plus a second copy of a non-streaming request when the
                  first has not answered at the 95th percentile of its expected time.
- oracle:         full scan with the same objective as gpupool, but on the world's
                  truth: real speeds, real slot occupancy (exact wait), real RTT, and
                  it never picks a broken provider. A bound, not a deployable policy.

All baselines see draining and the per-request exclusions (already tried), nothing else.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Collection, Sequence

from gpupool.routing import breaker as brk
from gpupool.routing.candidate import Candidate, RouteRequest
from gpupool.routing.hedge import hedge_delay_s
from gpupool.routing.policy import pick_with_reasons
from gpupool.routing.speed import SpeedEstimate, SpeedSample, observe, pool_prior, smooth_rtt
from gpupool.routing.weights import DEFAULT_WEIGHTS, RoutingWeights
from gpupool.sim.world import REGIONS, Job, World

MODEL = "llama-3-8b-instruct"


class Policy:
    name = "base"

    def __init__(self, world: World, rng: random.Random) -> None:
        self.world = world
        self.n = len(world.providers)
        self.rng = rng

    def choose(self, job: Job, now: float, exclude: Collection[int]) -> int | None:
        raise NotImplementedError

    def on_dispatch(self, i: int, job: Job, now: float) -> None:
        pass

    def on_result(self, i: int, job: Job, now: float, ok: bool, sent_at: float,
                  first_token_at: float | None, cancelled: bool = False) -> None:
        pass

    def on_slots_changed(self, i: int) -> None:
        """The simulator changed provider i's slot occupancy (only the oracle looks)."""

    def hedge_delay(self, i: int, job: Job, now: float) -> float | None:
        return None

    def _random_not_in(self, pool: Sequence[int], exclude: Collection[int]) -> int | None:
        for _ in range(64):
            i = pool[int(self.rng.random() * len(pool))]
            if i not in exclude:
                return i
        rest = [i for i in pool if i not in exclude]
        return self.rng.choice(rest) if rest else None


class RandomPolicy(Policy):
    name = "random"

    def __init__(self, world: World, rng: random.Random) -> None:
        super().__init__(world, rng)
        self.all = range(self.n)

    def choose(self, job: Job, now: float, exclude: Collection[int]) -> int | None:
        return self._random_not_in(self.all, exclude)


class RoundRobinPolicy(Policy):
    name = "round-robin"

    def __init__(self, world: World, rng: random.Random) -> None:
        super().__init__(world, rng)
        self.order = list(range(self.n))
        rng.shuffle(self.order)
        self.next = 0

    def choose(self, job: Job, now: float, exclude: Collection[int]) -> int | None:
        for _ in range(self.n):
            i = self.order[self.next]
            self.next = (self.next + 1) % self.n
            if i not in exclude:
                return i
        return None


class NearestRegionPolicy(Policy):
    name = "nearest-region"

    def __init__(self, world: World, rng: random.Random) -> None:
        super().__init__(world, rng)
        self.pools = world.by_region()
        self.all = range(self.n)

    def choose(self, job: Job, now: float, exclude: Collection[int]) -> int | None:
        i = self._random_not_in(self.pools[job.region] or self.all, exclude)
        return i if i is not None else self._random_not_in(self.all, exclude)


class LeastLoadedPolicy(Policy):
    """Least connections with O(1) updates: providers bucketed by their in-flight count."""

    name = "least-loaded"

    def __init__(self, world: World, rng: random.Random) -> None:
        super().__init__(world, rng)
        self.buckets: list[list[int]] = [list(range(self.n))]
        self.load = [0] * self.n
        self.pos = list(range(self.n))  # index of provider i inside its bucket

    def _move(self, i: int, delta: int) -> None:
        old = self.load[i]
        bucket = self.buckets[old]
        j, last = self.pos[i], bucket[-1]
        bucket[j], self.pos[last] = last, j  # swap-remove
        bucket.pop()
        new = old + delta
        if new == len(self.buckets):
            self.buckets.append([])
        self.buckets[new].append(i)
        self.pos[i], self.load[i] = len(self.buckets[new]) - 1, new

    def choose(self, job: Job, now: float, exclude: Collection[int]) -> int | None:
        for bucket in self.buckets:
            if bucket:
                i = self._random_not_in(bucket, exclude)
                if i is not None:
                    return i
        return None

    def on_dispatch(self, i: int, job: Job, now: float) -> None:
        self._move(i, +1)

    def on_result(self, i: int, job: Job, now: float, ok: bool, sent_at: float,
                  first_token_at: float | None, cancelled: bool = False) -> None:
        self._move(i, -1)


class GpupoolPolicy(Policy):
    """Drives the production routing code with what a gateway could know."""

    name = "gpupool"

    def __init__(self, world: World, rng: random.Random, expected_output_tokens: int | None = None,
                 weights: RoutingWeights = DEFAULT_WEIGHTS, hedge_percentile: float | None = None,
                 breaker_config: brk.BreakerConfig = brk.DEFAULT_BREAKER_CONFIG,
                 prior_refresh_s: float | None = 1.0) -> None:
        super().__init__(world, rng)
        self.weights = weights
        self.expected_out = expected_output_tokens
        self.hedge_percentile = hedge_percentile
        if hedge_percentile is not None:
            self.name = "gpupool+hedge"
        self.breaker_config = breaker_config
        self.in_flight = [0] * self.n
        self.backlog = [0.0] * self.n  # sum of Decision.service_s of unanswered requests
        self._service: dict[tuple[int, int], float] = {}  # (job, provider) -> its service_s
        self.speed: list[SpeedEstimate | None] = [None] * self.n
        self.breakers = [brk.CLOSED] * self.n
        # Each regional gateway pinged every provider once when it connected.
        self.rtt = {r: [smooth_rtt(None, p.rtt_s(r) * rng.uniform(0.95, 1.15)) for p in world.providers]
                    for r in REGIONS}
        self.views = {r: _PoolView(self, r) for r in REGIONS}
        self.index = {p.provider_id: p.idx for p in world.providers}
        self.ids = [p.provider_id for p in world.providers]
        self._chosen: dict[int, Candidate] = {}  # job idx -> candidate snapshot at its last pick
        self._waited: set[tuple[int, int]] = set()  # (job, provider) sent while all its slots were busy
        self.exhaustive_scans = 0
        self.base_prior = weights.prior_speed
        # A gateway refreshes the prior every 10-30 s; a simulated run spans only tens of
        # virtual seconds, so the simulator refreshes every virtual second.
        self.prior_refresh_s = prior_refresh_s
        self._prior_at = 0.0

    def request(self, job: Job) -> RouteRequest:
        return RouteRequest(MODEL, "generate", input_tokens=job.input_tokens,
                            max_output_tokens=job.max_output_tokens, stream=job.stream,
                            expected_output_tokens=self.expected_out)

    def choose(self, job: Job, now: float, exclude: Collection[int]) -> int | None:
        if self.prior_refresh_s is not None and now - self._prior_at >= self.prior_refresh_s:
            self._refresh_prior(now)
        d = pick_with_reasons(self.views[job.region], now, self.rng, {self.ids[i] for i in exclude},
                              request=self.request(job), weights=self.weights)
        if d.choice is None:
            return None
        self.exhaustive_scans += d.scanned
        self._chosen[job.idx] = d.choice
        self._service[(job.idx, self.index[d.choice.provider_id])] = d.service_s or 0.0
        return self.index[d.choice.provider_id]

    def _refresh_prior(self, now: float) -> None:
        """What a gateway does every few seconds: the pool's median measured speed becomes the prior."""
        self._prior_at = now
        sample = [self.speed[int(self.rng.random() * self.n)] for _ in range(min(self.n, 1000))]
        prior = pool_prior(sample, self.base_prior)
        self.weights = dataclasses.replace(self.weights, prior_speed=prior)

    def on_dispatch(self, i: int, job: Job, now: float) -> None:
        if self.in_flight[i] >= self.world.providers[i].concurrency:
            self._waited.add((job.idx, i))
        self.in_flight[i] += 1
        self.backlog[i] += self._service.get((job.idx, i), 0.0)
        self.breakers[i] = brk.on_dispatch(self.breakers[i], now, self.breaker_config)

    def on_result(self, i: int, job: Job, now: float, ok: bool, sent_at: float,
                  first_token_at: float | None, cancelled: bool = False) -> None:
        self.in_flight[i] -= 1
        self.backlog[i] = max(self.backlog[i] - self._service.pop((job.idx, i), 0.0), 0.0)
        waited = (job.idx, i) in self._waited
        self._waited.discard((job.idx, i))
        if cancelled:
            return
        p = self.world.providers[i]
        rtt = self.rtt[job.region]
        # Pings keep running in the background; take one sample per answer.
        rtt[i] = smooth_rtt(rtt[i], p.rtt_s(job.region) * self.rng.uniform(0.95, 1.15))
        if not ok:
            self.breakers[i] = brk.record_failure(self.breakers[i], now, self.breaker_config)
            return
        self.breakers[i] = brk.record_success(self.breakers[i], now)
        self.speed[i] = observe(self.speed[i], SpeedSample(
            elapsed_s=now - sent_at, rtt_s=rtt[i] or 0.0,
            first_token_s=None if first_token_at is None else first_token_at - sent_at,
            input_tokens=job.input_tokens, output_tokens=job.output_tokens, waited=waited), now)

    def hedge_delay(self, i: int, job: Job, now: float) -> float | None:
        if self.hedge_percentile is None:
            return None
        c = self._chosen.get(job.idx)
        if c is None:
            return None
        return hedge_delay_s(c, self.request(job), self.hedge_percentile, self.weights)

    def forget(self, job: Job) -> None:
        self._chosen.pop(job.idx, None)


class _PoolView(Sequence[Candidate]):
    """The pool as one regional gateway sees it; builds a Candidate only when routing draws it."""

    def __init__(self, policy: GpupoolPolicy, region: str) -> None:
        self.policy = policy
        self.rtt = policy.rtt[region]
        self.providers = policy.world.providers

    def __len__(self) -> int:
        return len(self.providers)

    def __getitem__(self, i: int) -> Candidate:  # type: ignore[override]
        p, pol = self.providers[i], self.policy
        return Candidate(p.provider_id, pol.in_flight[i], p.concurrency, False, p.region, self.rtt[i], 0,
                         pol.backlog[i], p.price_in, p.price_out, p.reputation, pol.speed[i], p.claimed_speed,
                         pol.breakers[i])


class OraclePolicy(Policy):
    """Full scan of the gpupool objective over the world's true state (numpy if available)."""

    name = "oracle"

    def __init__(self, world: World, rng: random.Random, expected_output_tokens: int | None = None,
                 weights: RoutingWeights = DEFAULT_WEIGHTS) -> None:
        super().__init__(world, rng)
        import numpy as np  # the oracle alone needs it: a full scan per request in pure Python is too slow

        self.np = np
        ps = world.providers
        self.weights = weights
        self.expected_out = expected_output_tokens
        self.rtt = {r: np.array([p.rtt_s(r) for p in ps]) for r in REGIONS}
        self.spt_in = np.array([1 / p.prefill_tps for p in ps])
        self.spt_out = np.array([1 / p.decode_tps for p in ps])
        self.price_in = np.array([p.price_in for p in ps], dtype=float)
        self.price_out = np.array([p.price_out for p in ps], dtype=float)
        rep = np.clip(np.array([p.reputation for p in ps]), 0, 1)
        self.rep_mult = 1 + weights.reputation_weight * (1 - rep)
        self.forbidden = np.array([p.broken for p in ps])
        self.free_at = np.array([min(p.slots) for p in ps])

    def on_slots_changed(self, i: int) -> None:
        self.free_at[i] = self.world.providers[i].slots[0]

    def choose(self, job: Job, now: float, exclude: Collection[int]) -> int | None:
        np, w = self.np, self.weights
        n_out = job.max_output_tokens if self.expected_out is None else min(self.expected_out, job.max_output_tokens)
        rtt = self.rtt[job.region]
        wait = np.maximum(self.free_at - (now + rtt / 2), 0.0)
        t = rtt + wait + (job.input_tokens * self.spt_in + n_out * self.spt_out)
        if w.micro_credits_per_second > 0:
            cost = (job.input_tokens * self.price_in + job.max_output_tokens * self.price_out) / 1e6
            t += cost / w.micro_credits_per_second
        s = t * self.rep_mult
        s[self.forbidden] = np.inf
        if exclude:
            s[list(exclude)] = np.inf
        i = int(np.argmin(s))
        return None if s[i] == np.inf else i


POLICIES = ("random", "round-robin", "least-loaded", "nearest-region", "gpupool", "gpupool+hedge", "oracle")


def make_policy(name: str, world: World, rng: random.Random, expected_output_tokens: int | None = None,
                weights: RoutingWeights = DEFAULT_WEIGHTS) -> Policy:
    if name == "random":
        return RandomPolicy(world, rng)
    if name == "round-robin":
        return RoundRobinPolicy(world, rng)
    if name == "least-loaded":
        return LeastLoadedPolicy(world, rng)
    if name == "nearest-region":
        return NearestRegionPolicy(world, rng)
    if name == "gpupool":
        return GpupoolPolicy(world, rng, expected_output_tokens, weights)
    if name == "gpupool+hedge":
        return GpupoolPolicy(world, rng, expected_output_tokens, weights, hedge_percentile=0.95)
    if name == "oracle":
        return OraclePolicy(world, rng, expected_output_tokens, weights)
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
