"""The centralized baseline: on-demand GPUs in a few hyperscale regions, with a reactive autoscaler.

    cloud = Cloud(sc, earth)                  # or Cloud(sc, earth, share=0.1) for a fallback lane
    done_at = cloud.serve(t, user_city, kind, tokens_in, tokens_out)   # virtual time of the answer
    cloud.cost_usd()                          # GPU-hours billed so far times the hourly prices
    lat, cost = baseline(earth)               # the whole day's arrivals, served by the cloud alone

Each region holds GPUs of the scenario's cloud tier (its concurrency, speeds); a request
goes to the region nearest its user, spilling to the next nearest when that one is at
its GPU limit and busy. Every minute the autoscaler sizes each region to the slot-seconds
the last minute needed at 70% utilisation: new GPUs serve after `cold_start_s`, idle ones
stop after `idle_shutdown_s`; billing runs from start to stop.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from gpupool.sim import geo
from gpupool.sim.earth import KINDS, Earth
from gpupool.sim.scenario import Scenario

TARGET_UTIL = 0.7
SCALE_S = 60.0


class Cloud:
    def __init__(self, sc: Scenario, cities_rtt: np.ndarray, share: float = 1.0) -> None:
        c = sc.cloud
        self.tier = sc.tier(c.gpu_tier)
        self.prices = [r.usd_per_gpu_hour for r in c.regions]
        self.max_gpus = max(1, int(c.max_gpus_per_region * share))
        self.cold_start_s, self.idle_s = c.cold_start_s, c.idle_shutdown_s
        warm = min(self.max_gpus, max(1, int(c.warm_gpus_per_region * share)))
        conc = self.tier.concurrency
        self.slots = [[0.0] * (warm * conc) for _ in c.regions]  # free-at times, one heap per region
        self.gpus = [warm] * len(c.regions)
        self.billed_s = [0.0] * len(c.regions)
        self.need_s = [0.0] * len(c.regions)  # slot-seconds asked in this autoscaler minute
        self.idle_since = [math.inf] * len(c.regions)
        self.tick = 0.0
        region_city = [geo.city(r.city) for r in c.regions]
        # For each user city, the regions nearest first, and the RTT to each.
        self.rtt = cities_rtt[:, region_city]
        self.order = np.argsort(self.rtt, axis=1).tolist()
        self.rtt_l = self.rtt.tolist()
        self.busy_s = 0.0

    def _scale(self, now: float) -> None:
        conc = self.tier.concurrency
        while self.tick + SCALE_S <= now:
            self.tick += SCALE_S
            for r, slots in enumerate(self.slots):
                self.billed_s[r] += self.gpus[r] * SCALE_S
                want = min(self.max_gpus, max(1, math.ceil(self.need_s[r] / SCALE_S / conc / TARGET_UTIL)))
                self.need_s[r] = 0.0
                if want > self.gpus[r]:
                    ready = self.tick + self.cold_start_s
                    for _ in range((want - self.gpus[r]) * conc):
                        heapq.heappush(slots, ready)
                    self.gpus[r] = want
                    self.idle_since[r] = math.inf
                elif want < self.gpus[r]:
                    if self.idle_since[r] == math.inf:
                        self.idle_since[r] = self.tick
                    elif self.tick - self.idle_since[r] >= self.idle_s:
                        drop = (self.gpus[r] - want) * conc
                        free = [s for s in slots if s <= self.tick]
                        drop = min(drop, len(free)) // conc * conc
                        if drop:
                            keep = sorted(slots)[drop:]
                            heapq.heapify(keep)
                            self.slots[r] = keep
                            self.gpus[r] -= drop // conc
                        self.idle_since[r] = math.inf
                else:
                    self.idle_since[r] = math.inf

    def serve(self, now: float, user_city: int, embed: bool, tokens_in: int, tokens_out: int,
              noise: float) -> tuple[float, int]:
        """When the answer reaches the user (virtual seconds), and the region that served it."""
        if now >= self.tick + SCALE_S:
            self._scale(now)
        t = self.tier
        service = (tokens_out / t.embed_items_per_s if embed else
                   tokens_in / t.prefill_tps + tokens_out / t.decode_tps) * noise
        order = self.order[user_city]
        r = order[0]
        for cand in order:  # spill when the nearest region is full and queued
            if self.slots[cand][0] <= now + 1.0 or self.gpus[cand] < self.max_gpus:
                r = cand
                break
        rtt = self.rtt_l[user_city][r]
        slots = self.slots[r]
        start = max(now + rtt / 2, slots[0])
        heapq.heapreplace(slots, start + service)
        self.need_s[r] += service
        self.busy_s += service
        return start + service + rtt / 2, r

    def cost_usd(self, until: float) -> float:
        self._scale(until)
        return sum(b / 3600 * p for b, p in zip(self.billed_s, self.prices))


def baseline(earth: Earth) -> tuple[np.ndarray, dict[str, float]]:
    """The centralized cloud alone on every arrival of the day: each request's latency at the
    user, and the billed cost split between chat and embeddings by their share of GPU time.
    It shares nothing with the pool, so it runs apart from it (in its own process when the
    pool's day is split, `sim/shards.py`)."""
    sc = earth.sc
    cloud = Cloud(sc, geo.city_rtt_s())
    arrival, ucity, kind = earth.arrival.tolist(), earth.req_city.tolist(), earth.kind.tolist()
    tin, tout = earth.tokens_in.tolist(), earth.tokens_out.tolist()
    noise = np.exp(np.random.default_rng(sc.seed + 2).normal(0, 0.2, len(arrival))).tolist()
    lat = np.full(len(arrival), np.nan, dtype=np.float32)
    embed_k = KINDS.index("embed")
    busy = {"chat": 0.0, "embed": 0.0}
    serve = cloud.serve
    for j, t in enumerate(arrival):
        embed = kind[j] == embed_k
        done, _ = serve(t, ucity[j], embed, tin[j], tout[j], noise[j])
        lat[j] = done - t
        busy["embed" if embed else "chat"] += done - t
    total = cloud.cost_usd(sc.hours * 3600)
    all_busy = sum(busy.values()) or 1.0
    return lat, {k: total * v / all_busy for k, v in busy.items()}
