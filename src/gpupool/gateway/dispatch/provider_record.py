"""What routing keeps and reads about each provider, apart from its live session.

`ProviderRecord`: what the gateway learned of one provider (its measured speeds, breaker,
unanswered requests, whether it ever answered); `TrustView`: what trust (gateway/trust/)
says of a provider, handed to the router as plain functions so routing imports no trust code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gpupool.routing import CLOSED, BreakerState, SpeedEstimate


@dataclass(frozen=True)
class TrustView:
    """What trust (gateway/trust/) says of a provider, as routing reads it; the defaults trust everyone."""

    is_suspended: Callable[[str], bool] = lambda node_id: False
    # Providers whose answers mostly await audit verdicts wait, unless nobody else can serve.
    is_held_back: Callable[[str], bool] = lambda node_id: False
    reputation_of: Callable[[str], float] = lambda node_id: 0.5
    # Whether a provider's hardware proof has passed: until then its speed claims are ignored.
    hardware_verified: Callable[[str], bool] = lambda node_id: True
    # Its verified GFLOP/s from the last passed proof (None: none yet, or proofs are off).
    hardware_gflops: Callable[[str], float | None] = lambda node_id: None


@dataclass
class ProviderRecord:
    """What the gateway has learned about one provider (by node id)."""

    speed: dict[str, SpeedEstimate] = field(default_factory=dict)  # per model, measured
    breaker: BreakerState = CLOSED
    last_failure: str = ""
    # request id -> (expected service seconds, sent while every slot was busy)
    pending: dict[str, tuple[float, bool]] = field(default_factory=dict)
    backlog_s: float = 0.0
    proven: bool = False  # has answered at least one request of ours
