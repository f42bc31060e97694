"""What one simulated day hands back (`Day.run`): per-request outcomes, money, trust, utilisation.

Its own module so that `sim/day.py` (the loop) stays one idea of a few hundred lines; import it
from either place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gpupool.sim.trust import Trust, TrustTally


@dataclass
class DayResult:
    pool_latency: np.ndarray  # per request, seconds at the user; NaN: not served
    hybrid_latency: np.ndarray
    cloud_latency: np.ndarray
    fallback: np.ndarray  # served by the hybrid's lane
    served_by: np.ndarray  # per request, the provider whose answer the user got; -1: none
    pool_charge_usd: dict[str, float]  # "chat", "embed": what clients paid the pool
    lane_charge_usd: dict[str, float]
    cloud_cost_usd: dict[str, float]
    tokens: dict[str, int]  # "chat" tokens (in + out) and "embed" items, of served requests
    earnings_usd: np.ndarray  # per provider
    electricity_usd: np.ndarray
    trust: Trust | TrustTally
    streams: dict[str, int]
    util_busy: np.ndarray  # per hour: busy slot-seconds, and online slot-seconds
    util_online: np.ndarray
    stream_breaks_by_hour: np.ndarray
    batch: dict[str, int]
    wall_s: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
