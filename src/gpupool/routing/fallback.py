"""Fallback lanes: when, and to which OpenAI-compatible upstream, a request leaves the pool.

A gateway operator may configure *lanes*: any OpenAI-compatible server (a cloud
API, a company's own vLLM) with a price per model and a model-name mapping. The
pool always comes first; a lane serves a request only when the pool cannot serve
it within the request's constraints, and only if the client allows it and the
lane's estimated cost stays within the client's price cap.

Pure: the gateway turns what happened in the pool into a `reason`, the request
into a `Need`, and calls `choose_lanes`; the I/O lives in `gateway/fallback/lanes.py`.

    d = choose_lanes(lanes, "no_provider", Need("llama-3-8b", input_tokens=600, max_output_tokens=256),
                     fee_bps=500)
    if d.lanes: ...serve on d.lanes[0], then the next if it fails before its first byte
    else: ...the pool's own error stands; d.why_not says why no lane took it
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from gpupool.market.pricing import Price, cost

# Why the pool could not serve a request, as counted in the gateway's stats:
REASONS = (
    "no_provider",  # no live provider serves the model (or the gateway never saw it)
    "price",  # every provider is above the client's max_price
    "region",  # no provider in the region the client required
    "capacity",  # every provider tried was at capacity
    "failed",  # every attempt failed (lost, bad receipt, error)
    "deadline",  # the pool did not answer within its share of the deadline
    "stalled",  # a stream had no first token within the fallback budget
)
BPS = 10_000


@dataclass(frozen=True)
class LaneModel:
    upstream: str  # the upstream's name for the model
    price: Price  # what the upstream costs the operator, µcr per 1M tokens in/out


@dataclass(frozen=True)
class Lane:
    """One configured upstream. Its API key is not here: the gateway keeps it (never logged)."""

    name: str
    base_url: str
    models: dict[str, LaneModel] = field(default_factory=dict)  # our model name -> upstream's
    region: str | None = None  # where it serves; None: it does not say (never meets a required region)
    api_key_env: str = ""
    timeout_s: float = 120.0


@dataclass(frozen=True)
class Need:
    """What the request asks of whoever serves it."""

    model: str
    input_tokens: int  # an estimate (about 4 characters per token), as routing uses
    max_output_tokens: int = 0
    max_price: int | None = None  # µcr for the whole request, the client's cap
    region: str | None = None
    region_policy: str = "prefer"
    allow: bool = True  # the client may forbid fallback per request


@dataclass(frozen=True)
class LaneDecision:
    lanes: tuple[Lane, ...]  # best first; empty: no lane takes the request
    reason: str  # why the pool could not serve (one of REASONS), or "" when it never failed
    why_not: str = ""  # when `lanes` is empty: one line for the log or the error

    def cost_of(self, lane: Lane, need: Need, fee_bps: int) -> int:
        return lane_cost(lane.models[need.model].price, need.input_tokens, need.max_output_tokens, fee_bps)


def with_fee(amount: int, fee_bps: int) -> int:
    """A lane's price is what the upstream costs; the client pays it plus the gateway's fee."""
    return amount + amount * fee_bps // BPS


def lane_cost(price: Price, input_tokens: int, output_tokens: int, fee_bps: int) -> int:
    """What the client is charged for these tokens on a lane: its price plus the gateway fee, in µcr."""
    return with_fee(cost(price, input_tokens, output_tokens), fee_bps)


def serves(lanes: Sequence[Lane], model: str) -> bool:
    return any(model in lane.models for lane in lanes)


def choose_lanes(lanes: Sequence[Lane], reason: str | None, need: Need, fee_bps: int) -> LaneDecision:
    """The lanes that may serve this request after the pool failed for `reason`, best first.

    Rules: nothing unless the pool really could not serve (`reason` in REASONS) and
    the client allows it; a lane must map the model, be in the client's region when
    the client *requires* one, and cost (estimated like routing does, fee included)
    no more than the client's cap. Lanes in a preferred region come first, then the
    cheapest, then configuration order.
    """
    if reason not in REASONS:
        return LaneDecision((), reason or "", "the pool did not fail in a way a fallback can help with")
    if not need.allow:
        return LaneDecision((), reason, "the client forbade fallback (allow_fallback: false)")
    mapped = [(i, lane) for i, lane in enumerate(lanes) if need.model in lane.models]
    if not mapped:
        return LaneDecision((), reason, f"no fallback lane serves {need.model!r}")
    ok: list[tuple[bool, int, int, Lane]] = []
    too_dear: list[int] = []
    wrong_region = 0
    for i, lane in mapped:
        if need.region_policy == "require" and need.region is not None and lane.region != need.region:
            wrong_region += 1
            continue
        price = lane_cost(lane.models[need.model].price, need.input_tokens, need.max_output_tokens, fee_bps)
        if need.max_price is not None and price > need.max_price:
            too_dear.append(price)
            continue
        off_region = need.region is not None and lane.region != need.region
        ok.append((off_region, price, i, lane))
    if not ok:
        parts = []
        if too_dear:
            parts.append(f"{len(too_dear)} over max_price (cheapest would cost {min(too_dear):,} µcr)")
        if wrong_region:
            parts.append(f"{wrong_region} outside required region {need.region!r}")
        return LaneDecision((), reason, "fallback lanes excluded: " + "; ".join(parts))
    ok.sort(key=lambda t: (t[0], t[1], t[2]))
    return LaneDecision(tuple(t[3] for t in ok), reason)


def pool_deadline(now: float, deadline: float, reserve_s: float) -> float:
    """The deadline the pool gets when a lane could take over: `reserve_s` is kept back for the
    lane, but never more than half the time left (a short deadline still tries the pool first)."""
    left = max(0.0, deadline - now)
    return deadline - min(reserve_s, left / 2)
