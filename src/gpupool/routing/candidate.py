"""What routing knows: a snapshot per candidate provider, and the request being routed.

    from gpupool.routing import Candidate, RouteRequest, SpeedEstimate

    c = Candidate("node-1", in_flight=2, max_concurrency=4, region="eu-west", rtt_s=0.021,
                  price_in=50_000, price_out=200_000, reputation=0.9,
                  speed=measured_estimate_or_None,
                  claimed_speed=SpeedEstimate(prefill_tps=4000, decode_tps=60))
    req = RouteRequest("llama-3-8b", "generate", input_tokens=600, max_output_tokens=256,
                       max_price=2_000, region="eu-west", region_policy="prefer")

A `Candidate` is one provider *for one model*: speed and prices are that model's.
The gateway builds them from its live sessions (its own in-flight count, the
provider's load report, the smoothed RTT, the learned speed, the breaker state);
the simulator builds them from its virtual world. Both are plain values, so
routing stays pure.

Units: seconds; prices in integer micro-credits (µcr) per 1M tokens, like
`protocol.ModelOffer`; `RouteRequest.max_price` in µcr for the whole request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gpupool.routing.breaker import CLOSED, BreakerState
from gpupool.routing.speed import SpeedEstimate

Task = Literal["embeddings", "generate"]
RegionPolicy = Literal["prefer", "require"]


@dataclass(frozen=True, slots=True)
class Candidate:
    provider_id: str
    in_flight: int  # requests this gateway sent and has no answer for yet
    max_concurrency: int  # requests the provider runs at once (from its offer)
    draining: bool = False  # going away: gets no new work
    region: str = ""
    rtt_s: float | None = None  # smoothed gateway<->provider round trip; None = not measured
    queued: int = 0  # further work known to wait there (e.g. other gateways', from its load report)
    # Sum of `Decision.service_s` over this gateway's unanswered requests there:
    # tells queue estimates how big the work ahead is. None: assume it is like this request.
    backlog_s: float | None = None
    price_in: int = 0  # µcr per 1M input tokens
    price_out: int = 0  # µcr per 1M output tokens
    reputation: float = 0.5  # 0..1, higher is more trusted; 0.5 = unknown
    speed: SpeedEstimate | None = None  # measured (see speed.observe); None = no answer yet
    claimed_speed: SpeedEstimate | None = None  # what its offer says; used only until measured
    breaker: BreakerState = CLOSED
    models: frozenset[str] | None = None  # None: the caller already filtered by model


@dataclass(frozen=True, slots=True)
class RouteRequest:
    model: str
    task: Task = "generate"
    input_tokens: int = 0  # prompt tokens (generation) or total input tokens (embeddings)
    max_output_tokens: int = 0  # the request's max_tokens (generation)
    items: int = 1  # embeddings: number of inputs
    max_price: int | None = None  # µcr the client accepts for this request at most
    region: str | None = None  # the client's region, or the one it asked for
    region_policy: RegionPolicy = "prefer"
    stream: bool = False  # streaming requests are never hedged
    # Typical output length, if the gateway knows it (e.g. a running mean for the
    # model); time estimates use it instead of the max. Price caps always use the max.
    expected_output_tokens: int | None = None

    @property
    def output_tokens_for_time(self) -> int:
        if self.expected_output_tokens is not None:
            return min(self.expected_output_tokens, self.max_output_tokens or self.expected_output_tokens)
        return self.max_output_tokens
