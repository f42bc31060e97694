"""Scenario files for the internet simulator: TOML with sane defaults for everything.

    sc = load("my.toml")                 # or load_bundled("internet-100k"), or Scenario()
    sc.providers, sc.requests, sc.tiers, sc.cloud.regions ...

Every section and key is optional; a file overrides what it names. An unknown key, a
wrong type or an impossible value raises `ScenarioError` with one line naming the key,
e.g. `scenario small.toml: [demand] mix: shares must add up to 1 (got 1.2)`.
Bundled scenarios live in `gpupool/sim/scenarios/` (`bundled()` lists them).
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gpupool.sim.geo import CITY_INDEX, REGIONS


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message is one line."""


@dataclass(frozen=True)
class Tier:
    """A kind of GPU. Speeds are per request at the tier's concurrency, on an 8B model."""

    name: str
    kind: str = "consumer"  # "consumer" (home, online mostly evenings) or "datacenter" (always)
    share: float = 0.1
    vram_gb: float = 24.0
    watts_busy: float = 350.0
    watts_idle: float = 40.0
    prefill_tps: float = 3000.0
    decode_tps: float = 60.0
    embed_items_per_s: float = 400.0
    concurrency: int = 4
    price_out: int = 200_000  # µcr per 1M output tokens asked by a typical owner (input: a quarter)


DEFAULT_TIERS = (
    Tier("rtx3060", "consumer", 0.22, 12, 170, 25, 1500, 35, 250, 2, 100_000),
    Tier("rtx3090", "consumer", 0.25, 24, 350, 35, 3000, 60, 450, 4, 180_000),
    Tier("rtx4090", "consumer", 0.28, 24, 450, 35, 5000, 80, 700, 4, 250_000),
    Tier("a100", "datacenter", 0.15, 80, 400, 60, 8000, 90, 1200, 8, 400_000),
    Tier("h100", "datacenter", 0.10, 80, 700, 80, 12000, 130, 2000, 8, 600_000),
)


@dataclass(frozen=True)
class Churn:
    # Share of consumer GPUs online at each local hour (0..23): evenings and nights.
    consumer_online: tuple[float, ...] = (0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.2, 0.2, 0.2, 0.2,
                                          0.22, 0.22, 0.22, 0.25, 0.3, 0.4, 0.55, 0.65, 0.7, 0.7, 0.65, 0.6)
    datacenter_online: float = 0.98
    mean_session_h: float = 3.0  # how long a consumer session lasts on average
    crash_share: float = 0.3  # departures that are crashes (in-flight work lost) rather than drains
    step_s: float = 600.0  # churn is decided per step of this many virtual seconds


@dataclass(frozen=True)
class Burst:
    region: str
    at_h: float  # UTC hour
    minutes: float = 20.0
    factor: float = 3.0


@dataclass(frozen=True)
class Demand:
    region_share: dict[str, float] = field(default_factory=lambda: {
        "us-east": 0.22, "us-west": 0.14, "sa-east": 0.08, "eu-west": 0.16, "eu-central": 0.12,
        "ap-south": 0.10, "ap-southeast": 0.08, "ap-northeast": 0.10})
    # Relative request rate at each local hour: retail traffic peaks in the local evening.
    daily: tuple[float, ...] = (0.5, 0.35, 0.25, 0.2, 0.2, 0.25, 0.4, 0.6, 0.8, 0.9, 0.95, 1.0,
                                1.0, 1.0, 0.95, 0.95, 1.0, 1.1, 1.25, 1.4, 1.45, 1.35, 1.1, 0.8)
    mix: dict[str, float] = field(default_factory=lambda: {"chat_stream": 0.5, "chat": 0.2, "embed": 0.25,
                                                            "batch": 0.05})
    chat_input_median: int = 400
    chat_output_median: int = 180
    max_output_tokens: int = 1024
    embed_items_median: int = 8
    embed_tokens_per_item: int = 64
    batch_deadline_h: float = 24.0
    bursts: tuple[Burst, ...] = (Burst("us-east", 15.0, 20, 3.0), Burst("ap-northeast", 11.0, 30, 2.5))


@dataclass(frozen=True)
class Cheaters:
    share: float = 0.05
    # Strategy -> weight. smaller_model / truncated cheat on chat, random_vectors on embeddings,
    # fraction cheats (smaller model) on `fraction` of its chat requests, sybil is a group that
    # joins together and rejoins under new identities when suspended.
    strategies: dict[str, float] = field(default_factory=lambda: {
        "smaller_model": 0.3, "truncated": 0.15, "random_vectors": 0.15, "fraction": 0.25, "sybil": 0.15})
    fraction: float = 0.1
    sybil_group: int = 20
    sybil_rejoin_s: float = 1800.0
    # How often an audit of a cheated answer fails (comparators are not perfect on every answer).
    detect: dict[str, float] = field(default_factory=lambda: {
        "smaller_model": 0.9, "truncated": 0.95, "random_vectors": 1.0})
    honest_false_positive: float = 1e-3  # an honest answer fails its audit (soft) this often


@dataclass(frozen=True)
class CloudRegion:
    name: str
    city: str
    usd_per_gpu_hour: float
    source: str = ""


@dataclass(frozen=True)
class Cloud:
    """The centralized baseline: on-demand GPUs in three hyperscale regions."""

    regions: tuple[CloudRegion, ...] = (
        CloudRegion("aws-us-east-1", "washington", 12.29, "AWS p5.48xlarge $98.32/h / 8 GPUs, on-demand, "
                    "as quoted Q1 2026"),
        CloudRegion("azure-westeurope", "amsterdam", 12.29, "Azure ND96isr H100 v5 $98.32/h / 8 GPUs"),
        CloudRegion("gcp-asia-northeast1", "tokyo", 11.06, "GCP a3-highgpu-8g ~$88.5/h / 8 GPUs"),
    )
    gpu_tier: str = "h100"
    max_gpus_per_region: int = 2000
    warm_gpus_per_region: int = 50
    cold_start_s: float = 120.0  # boot, pull the image, load the weights
    idle_shutdown_s: float = 900.0
    # The fallback lane's API price (what an operator pays a hosted API), µcr per 1M tokens in/out.
    lane_price_in: int = 200_000
    lane_price_out: int = 600_000
    lane_capacity_share: float = 1.0  # the lane uses this share of the cloud's GPUs


@dataclass(frozen=True)
class Market:
    fee_bps: int = 500
    usd_per_credit: float = 1.0
    # How owners set prices: "tier" (the tier's price times a spread) or "electricity"
    # (their electricity cost per token at full load times `markup`, never below `floor_out`).
    price_policy: str = "tier"
    spread: tuple[float, float] = (0.7, 1.4)
    markup: float = 3.0
    floor_out: int = 20_000
    datacenter_kwh_usd: float = 0.08


@dataclass(frozen=True)
class Policies:
    """Knobs of the real policies the run uses (the policies themselves are not configurable here)."""

    hedge_percentile: float = 0.95
    max_attempts: int = 3
    max_queue_s: float = 20.0  # a provider refuses work that would wait longer (its admission queue)
    audit_delay_s: float = 30.0  # from serving to the checker's verdict
    batch_tick_s: float = 60.0
    batch_reserve: int = 1
    prior_refresh_s: float = 30.0
    # Routing's time estimates assume each chat answer is the demand's median length (True), as the
    # gateway does with its running mean of answer lengths (routing/priors.py `AnswerLengths`), or
    # the request's max_tokens (False).
    expected_output_known: bool = True
    # A provider's first measured answer refreshes the prior this soon (the gateway: at once while
    # at most 32 of a model's providers are measured, else 0.25 s: routing/priors.py); 0: only
    # every `prior_refresh_s` (cheaper with thousands of new providers).
    prior_soon_s: float = 0.0
    # Each request looks at a random sample of this many providers online, as the gateway's router
    # does (`route_sample`, default 6; sim/serving.py); 0: at all of them (`routing.policy` still
    # samples `sample_k` of a pool above `scan_below`, as the gateway's would of a big one).
    route_sample: int = 0


@dataclass(frozen=True)
class Scenario:
    name: str = "default"
    seed: int = 7
    providers: int = 2_000
    requests: int = 200_000
    hours: float = 24.0
    last_mile_ms: tuple[float, float] = (15.0, 0.6)  # lognormal median, sigma (consumer lines)
    gateways: dict[str, str] = field(default_factory=lambda: {
        "us-east": "washington", "us-west": "san-francisco", "sa-east": "sao-paulo", "eu-west": "london",
        "eu-central": "frankfurt", "ap-south": "mumbai", "ap-southeast": "singapore", "ap-northeast": "tokyo"})
    electricity_usd_per_kwh: dict[str, float] = field(default_factory=dict)  # region -> override of the city table
    tiers: tuple[Tier, ...] = DEFAULT_TIERS
    churn: Churn = Churn()
    demand: Demand = Demand()
    cheaters: Cheaters = Cheaters()
    cloud: Cloud = Cloud()
    market: Market = Market()
    policies: Policies = Policies()

    def tier(self, name: str) -> Tier:
        return next(t for t in self.tiers if t.name == name)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ScenarioError(f"{where}: expected a table")
        return _build(tp, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, list):
            raise ScenarioError(f"{where}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ScenarioError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ScenarioError(f"{where}: expected a table")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ScenarioError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ScenarioError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, table: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - names)
    if unknown:
        raise ScenarioError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(names))})")
    return cls(**{k: _convert(hints[k], v, _where(where, k, hints[k])) for k, v in table.items()})


def _where(parent: str, key: str, tp: Any) -> str:
    """How an error names a key: `[cloud] cold_start_s`, `[[tiers]][2] vram_gb`, `providers`."""
    if parent:
        return f"{parent} {key}"
    if dataclasses.is_dataclass(tp):
        return f"[{key}]"
    if typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
        return f"[[{key}]]"
    return key


def _share(d: dict[str, float], where: str, allowed: typing.Iterable[str]) -> None:
    allowed = set(allowed)
    bad = [k for k in d if k not in allowed]
    if bad:
        raise ScenarioError(f"{where}: unknown name {bad[0]!r} (known: {', '.join(sorted(allowed))})")
    total = sum(d.values())
    if any(v < 0 for v in d.values()) or abs(total - 1.0) > 1e-6:
        raise ScenarioError(f"{where}: shares must be >= 0 and add up to 1 (got {total:g})")


def validate(sc: Scenario) -> Scenario:
    """Check what types cannot; raises ScenarioError naming the key."""
    if sc.providers < 1 or sc.requests < 1 or not 0 < sc.hours <= 72:
        raise ScenarioError("providers and requests must be >= 1 and hours in (0, 72]")
    if not sc.tiers:
        raise ScenarioError("[[tiers]]: at least one tier")
    for t in sc.tiers:
        if t.kind not in ("consumer", "datacenter"):
            raise ScenarioError(f"[[tiers]] {t.name}: kind must be consumer or datacenter, got {t.kind!r}")
        if t.concurrency < 1 or min(t.prefill_tps, t.decode_tps, t.embed_items_per_s) <= 0:
            raise ScenarioError(f"[[tiers]] {t.name}: concurrency and speeds must be > 0")
    total = sum(t.share for t in sc.tiers)
    if abs(total - 1.0) > 1e-6:
        raise ScenarioError(f"[[tiers]] share: must add up to 1 (got {total:g})")
    _share(sc.demand.region_share, "[demand] region_share", REGIONS)
    _share(sc.demand.mix, "[demand] mix", ("chat_stream", "chat", "embed", "batch"))
    _share(sc.cheaters.strategies, "[cheaters] strategies",
           ("smaller_model", "truncated", "random_vectors", "fraction", "sybil"))
    for name, n in (("[churn] consumer_online", len(sc.churn.consumer_online)), ("[demand] daily", len(sc.demand.daily))):
        if n != 24:
            raise ScenarioError(f"{name}: expected 24 hourly values, got {n}")
    for region, city in sc.gateways.items():
        if region not in REGIONS or city not in CITY_INDEX:
            raise ScenarioError(f"[gateways] {region} = {city!r}: unknown region or city")
    missing = [r for r in sc.demand.region_share if sc.demand.region_share[r] > 0 and r not in sc.gateways]
    if missing:
        raise ScenarioError(f"[gateways]: demand in {missing[0]!r} but no gateway there")
    for b in sc.demand.bursts:
        if b.region not in sc.gateways:
            raise ScenarioError(f"[[demand.bursts]] region {b.region!r}: no gateway there")
    for r in sc.cloud.regions:
        if r.city not in CITY_INDEX:
            raise ScenarioError(f"[[cloud.regions]] {r.name}: unknown city {r.city!r}")
    if sc.cloud.gpu_tier not in {t.name for t in sc.tiers}:
        raise ScenarioError(f"[cloud] gpu_tier {sc.cloud.gpu_tier!r}: not one of the [[tiers]]")
    if sc.market.price_policy not in ("tier", "electricity"):
        raise ScenarioError(f"[market] price_policy: tier or electricity, got {sc.market.price_policy!r}")
    if not 0 <= sc.cheaters.share <= 1 or sc.policies.max_attempts < 1:
        raise ScenarioError("[cheaters] share in [0, 1] and [policies] max_attempts >= 1")
    return sc


def parse(text: str, where: str = "scenario") -> Scenario:
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{where}: not valid TOML: {exc}") from None
    try:
        sc = _build(Scenario, table, "")
    except ScenarioError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    except TypeError as exc:  # a required field of a nested table is missing
        raise ScenarioError(f"{where}: {exc}") from None
    try:
        return validate(sc)
    except ScenarioError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def load(path: str | Path) -> Scenario:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {p}: {exc.strerror or exc}") from None
    return parse(text, f"scenario {p.name}")


def bundled() -> list[str]:
    return sorted(f.name[:-5] for f in resources.files("gpupool.sim.scenarios").iterdir()
                  if f.name.endswith(".toml"))


def load_bundled(name: str) -> Scenario:
    if name not in bundled():
        raise ScenarioError(f"no bundled scenario {name!r} (bundled: {', '.join(bundled())})")
    text = resources.files("gpupool.sim.scenarios").joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return parse(text, f"scenario {name}")
