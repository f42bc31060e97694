"""The simulated world: providers with real (hidden) speeds, regions, and a workload.

    rng = random.Random(7)
    world = build_world(10_000, rng)                       # providers over 6 regions
    jobs = make_jobs(world, 50_000, load=0.7, rng=rng)     # Poisson arrivals at 70% of capacity

Everything a policy must *learn* lives here as ground truth: each provider's
true prefill/decode speed (GPU tier times a per-machine factor), its concurrency,
its last-mile latency, whether it lies about its speed in its offer, whether it
is broken (fails every request). Policies only get what a gateway would have:
offers (claims, prices, region, concurrency), pings and the answers they receive.
The oracle policy is the exception: it reads this truth directly.

Numbers are plausible, not measured: RTTs between regions are typical public
cloud figures; GPU speeds are per-request speeds of an 8B chat model at the
tier's concurrency.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from gpupool.routing.speed import SpeedEstimate

REGIONS = ("us-east", "us-west", "eu-west", "eu-central", "ap-southeast", "ap-northeast")

# Round-trip times between regions in ms (symmetric); same region: 15 ms.
_RTT_MS = {
    ("us-east", "us-west"): 65, ("us-east", "eu-west"): 75, ("us-east", "eu-central"): 90,
    ("us-east", "ap-southeast"): 215, ("us-east", "ap-northeast"): 150,
    ("us-west", "eu-west"): 135, ("us-west", "eu-central"): 150,
    ("us-west", "ap-southeast"): 170, ("us-west", "ap-northeast"): 100,
    ("eu-west", "eu-central"): 25, ("eu-west", "ap-southeast"): 165, ("eu-west", "ap-northeast"): 215,
    ("eu-central", "ap-southeast"): 155, ("eu-central", "ap-northeast"): 225,
    ("ap-southeast", "ap-northeast"): 70,
}
SAME_REGION_RTT_MS = 15


def region_rtt_s(a: str, b: str) -> float:
    if a == b:
        return SAME_REGION_RTT_MS / 1000
    return _RTT_MS.get((a, b), _RTT_MS.get((b, a), 200)) / 1000


# Where providers are and where clients are (shares); they differ on purpose, so
# some regions must borrow capacity from others.
PROVIDER_SHARE = {"us-east": 0.22, "us-west": 0.15, "eu-west": 0.18, "eu-central": 0.17,
                  "ap-southeast": 0.13, "ap-northeast": 0.15}
CLIENT_SHARE = {"us-east": 0.28, "us-west": 0.14, "eu-west": 0.20, "eu-central": 0.14,
                "ap-southeast": 0.12, "ap-northeast": 0.12}


@dataclass(frozen=True)
class Tier:
    name: str
    share: float
    prefill_tps: float
    decode_tps: float  # per request, at the tier's concurrency
    concurrency: int
    price_out: int  # µcr per 1M output tokens (input costs a quarter)


TIERS = (
    Tier("gtx1080", 0.05, 500, 15, 1, 60_000),
    Tier("rtx3060", 0.20, 1500, 35, 2, 100_000),
    Tier("rtx3090", 0.25, 3000, 60, 4, 180_000),
    Tier("rtx4090", 0.25, 5000, 80, 4, 250_000),
    Tier("a100", 0.15, 8000, 90, 8, 400_000),
    Tier("h100", 0.10, 12000, 130, 8, 600_000),
)


@dataclass(slots=True)
class Provider:
    idx: int
    provider_id: str
    region: str
    tier: str
    prefill_tps: float  # true speeds
    decode_tps: float
    concurrency: int
    price_in: int
    price_out: int
    reputation: float
    last_mile_s: float  # extra RTT of its own connection
    claimed_speed: SpeedEstimate | None  # what its offer says (may be a lie)
    liar: bool = False
    broken: bool = False  # fails every request (e.g. a misloaded model)
    # Times at which each of its slots frees up (a min-heap, one entry per slot).
    slots: list[float] = field(default_factory=list)

    def rtt_s(self, region: str) -> float:
        return region_rtt_s(region, self.region) + self.last_mile_s

    def mean_service_s(self, input_tokens: float, output_tokens: float) -> float:
        return input_tokens / self.prefill_tps + output_tokens / self.decode_tps


@dataclass(frozen=True)
class WorldConfig:
    liar_share: float = 0.05  # claim 3x their real speed
    claim_share: float = 0.60  # honest claims (+-10%); the rest claim nothing
    broken_share: float = 0.01
    machine_sigma: float = 0.15  # per-machine speed spread within a tier (lognormal)
    request_sigma: float = 0.20  # per-request service time noise (lognormal)
    straggler_prob: float = 0.01  # a request hits a pause (thermal, swap, GC)...
    straggler_factor: float = 4.0  # ...and takes this many times longer


@dataclass
class World:
    providers: list[Provider]
    config: WorldConfig

    def by_region(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {r: [] for r in REGIONS}
        for p in self.providers:
            out[p.region].append(p.idx)
        return out


def build_world(n: int, rng: random.Random, config: WorldConfig = WorldConfig()) -> World:
    regions, region_w = list(PROVIDER_SHARE), list(PROVIDER_SHARE.values())
    tier_w = [t.share for t in TIERS]
    providers = []
    for i in range(n):
        tier = rng.choices(TIERS, tier_w)[0]
        f = math.exp(rng.gauss(0, config.machine_sigma))
        prefill, decode = tier.prefill_tps * f, tier.decode_tps * f
        price_out = int(tier.price_out * rng.uniform(0.7, 1.4))
        u = rng.random()
        liar = u < config.liar_share
        if liar:
            claim: SpeedEstimate | None = SpeedEstimate(prefill_tps=prefill * 3, decode_tps=decode * 3)
        elif u < config.liar_share + config.claim_share:
            g = rng.uniform(0.9, 1.1)
            claim = SpeedEstimate(prefill_tps=prefill * g, decode_tps=decode * g)
        else:
            claim = None
        providers.append(Provider(
            idx=i, provider_id=f"p{i}", region=rng.choices(regions, region_w)[0], tier=tier.name,
            prefill_tps=prefill, decode_tps=decode, concurrency=tier.concurrency,
            price_in=price_out // 4, price_out=price_out,
            reputation=0.5 if rng.random() < 0.3 else rng.uniform(0.4, 1.0),
            last_mile_s=min(math.exp(rng.gauss(math.log(0.015), 0.6)), 0.2),
            claimed_speed=claim, liar=liar, broken=rng.random() < config.broken_share,
            slots=[0.0] * tier.concurrency,
        ))
    return World(providers, config)


# ---------------------------------------------------------------- workload


@dataclass(slots=True)
class Job:
    idx: int
    arrival: float
    region: str  # the client's region = the gateway it reaches
    input_tokens: int
    output_tokens: int  # what the answer will really be
    max_output_tokens: int
    stream: bool


MAX_OUTPUT_TOKENS = 512


def make_jobs(world: World, n: int, load: float, rng: random.Random, stream_share: float = 0.5) -> list[Job]:
    """`n` chat requests with Poisson arrivals at `load` x the pool's true capacity."""
    regions, region_w = list(CLIENT_SHARE), list(CLIENT_SHARE.values())
    sizes = [(_lognormal_int(rng, 300, 0.8, 16, 4000), _lognormal_int(rng, 120, 0.7, 1, MAX_OUTPUT_TOKENS))
             for _ in range(n)]
    mean_in = sum(s[0] for s in sizes) / n
    mean_out = sum(s[1] for s in sizes) / n
    rate = load * capacity_per_s(world, mean_in, mean_out)
    t, jobs = 0.0, []
    for i, (n_in, n_out) in enumerate(sizes):
        t += rng.expovariate(rate)
        jobs.append(Job(i, t, rng.choices(regions, region_w)[0], n_in, n_out, MAX_OUTPUT_TOKENS,
                        rng.random() < stream_share))
    return jobs


def capacity_per_s(world: World, mean_in: float, mean_out: float) -> float:
    """Requests per second the healthy providers complete when all their slots are busy."""
    return sum(p.concurrency / p.mean_service_s(mean_in, mean_out) for p in world.providers if not p.broken)


def _lognormal_int(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return int(min(max(round(median * math.exp(rng.gauss(0, sigma))), lo), hi))
