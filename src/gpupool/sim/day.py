"""One simulated day of the internet-scale pool, with the gateway's own policy code.

    earth = build(load_bundled("small"))
    run = Day(earth, progress=print).run()      # -> DayResult: per-request latencies, money, trust

Per request: the user's regional gateway routes it with `routing.pick_with_reasons` over a
lazy view of the providers online now (its own in-flight counts, learned speeds per
`routing.speed.observe`, breakers from `routing.breaker`, reputation from `verify`), holds
`market.pricing.hold_bound`, charges `charge_for`, hedges non-streaming chat after
`routing.hedge.hedge_delay_s`, fails over or continues a broken stream on another
provider, audits with `verify.sampling.decide`, suspends with `verify.suspension_rule`,
and when the pool cannot serve asks `routing.fallback.choose_lanes` whether the cloud
lane takes it (the hybrid). Batch jobs wait for free slots picked by `batch.policy`.
The same arrivals also go to the centralized cloud (`cloud.py`), the baseline.

"pool" and "hybrid" are one run: a lane never changes the pool's state, so the pool
alone is the same run with the lane's requests counted as failed.
"""

from __future__ import annotations

import gc
import heapq
import math
import random
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from gpupool import frozen_records as records
from gpupool.batch import policy as batch_policy
from gpupool.market import pricing
from gpupool.routing import breaker as brk
from gpupool.routing import fallback, hedge
from gpupool.routing import policy as routing_policy
from gpupool.routing.candidate import Candidate, RouteRequest
from gpupool.routing.speed import SpeedEstimate, SpeedSample, observe, pool_prior
from gpupool.routing.weights import DEFAULT_WEIGHTS
from gpupool.sim import geo, serving
from gpupool.sim.cloud import Cloud, baseline
from gpupool.sim.day_result import DayResult
from gpupool.sim.earth import KINDS, STRATEGIES, Earth
from gpupool.sim.engine import Engine
from gpupool.sim.trust import Trust
from gpupool.sim.view import Fixed, View

CHAT, EMBED = "llama-3-8b-instruct", "minilm-embed"
STREAM, CHATK, EMBEDK, BATCH = range(4)
_CHUNK = 1 << 16  # arrivals turned into Python numbers at a time
S_SMALL, S_TRUNC, S_RANDOM, S_FRACTION, S_SYBIL = (STRATEGIES.index(s) for s in STRATEGIES[1:])


class _Req:
    __slots__ = ("j", "g", "kind", "tin", "tout", "req", "hold", "tried", "live", "done", "hedged",
                 "attempts", "arrival", "continued", "sent_tokens")

    def __init__(self, j: int, g: int, kind: int, tin: int, tout: int, req: RouteRequest, arrival: float) -> None:
        self.j, self.g, self.kind, self.tin, self.tout, self.req = j, g, kind, tin, tout, req
        self.hold, self.tried, self.live, self.done, self.hedged = 0, set(), 0, False, False
        self.attempts, self.arrival, self.continued, self.sent_tokens = 0, arrival, False, 0


_request = records.builder(RouteRequest)  # every field, in order: (model, task, input_tokens,
# max_output_tokens, items, max_price, region, region_policy, stream, expected_output_tokens)
_sample = records.builder(SpeedSample)  # (elapsed_s, rtt_s, first_token_s, input_tokens, output_tokens,
# items, waited)
# The defaults the gateway's requests get for the fields the simulator leaves alone.
_NO_MAX_PRICE, _REGION_POLICY = RouteRequest("").max_price, RouteRequest("").region_policy


class Day:
    def __init__(self, earth: Earth, progress: Callable[[int, int, float], None] | None = None,
                 progress_every: int = 200_000, *, cloud: bool = True, lane_share: float = 1.0,
                 seed: int = 1) -> None:
        """`cloud`: also run the cloud baseline (False: the caller does, `sim/shards.py`);
        `lane_share`: this day's share of the fallback lane's capacity."""
        e = self.earth = earth
        sc = self.sc = earth.sc
        self.pol = sc.policies  # read on every request: one attribute less
        self.n = e.n
        self.with_cloud = cloud
        self.rng = random.Random(sc.seed + seed)
        self.eng = Engine()
        self.verdicts = self.eng.lane()  # every verdict comes `audit_delay_s` after its answer: in order
        self.now = 0.0
        self.gateways = e.gateways
        self.ids = [f"p{i}" for i in range(self.n)]  # `_route` reads i back from the id
        self.index = {p: i for i, p in enumerate(self.ids)}
        self.conc = e.conc.tolist()
        self.region_name = [geo.REGIONS[r] for r in e.region.tolist()]
        self.price_in, self.price_out, self.price_embed = e.price_in.tolist(), e.price_out.tolist(), e.price_embed.tolist()
        prefill, decode, embed_speed = e.prefill.tolist(), e.decode.tolist(), e.embed.tolist()
        self.claims = [None if c == 0 else SpeedEstimate(p * c, dd * c, em * c)
                       for c, p, dd, em in zip(e.claim.tolist(), prefill, decode, embed_speed)]
        # What `_dispatch` reads of the provider it sends to, packed (the same doubles): its true
        # speeds, 3 per provider (prefill, decode, embeddings), one cache line where three lists
        # of float objects were six places in memory; its strategy as one byte.
        self.speeds = array("d", [x for row in zip(prefill, decode, embed_speed) for x in row])
        self.strategy = bytearray(e.strategy.tolist())
        # Per gateway, packed (memoryviews read like lists; one cache line per random provider).
        self.rtt = [memoryview(row) for row in np.ascontiguousarray(e.gw_rtt, dtype=np.float64)]
        self.own = [[0] * self.n for _ in self.gateways]
        # As the gateway's `ProviderRecord.backlog_s`; packed, so an update allocates no float object.
        self.backlog = [array("d", [0.0]) * self.n for _ in self.gateways]
        self.total = [0] * self.n
        self.slots = [[0.0] * c for c in self.conc]
        # What never changes per provider, for the views of chat and of embeddings (`View.at`).
        self.fixed = (list(zip(range(self.n), self.ids, self.conc, self.region_name, self.price_in, self.price_out,
                               self.claims)),
                      list(zip(range(self.n), self.ids, self.conc, self.region_name, self.price_embed, [0] * self.n,
                               self.claims)))
        self.online_fixed: tuple[list[Fixed], list[Fixed]] = ([], [])  # of the providers online now
        self.views = [(View(self, g, False), View(self, g, True)) for g in range(len(self.gateways))]
        self.weights = [[DEFAULT_WEIGHTS, DEFAULT_WEIGHTS] for _ in self.gateways]
        self.trust = Trust(sc, e, secret=b"sim-%d" % sc.seed)
        for pair in self.views:
            for view in pair:
                view.bind()
        # This step's online providers, departure times and crash flags: memoryviews of the world's
        # arrays, read like lists (see `_step`).
        self.online_ids: Sequence[int] = []
        self.leave_now: Sequence[float] = []
        self.crash_now: Sequence[bool] = []
        self.step = -1
        self.progress, self.progress_every = progress, progress_every
        lane_price = pricing.Price(sc.cloud.lane_price_in, sc.cloud.lane_price_out)
        self.lanes = [fallback.Lane("cloud", "https://cloud.invalid/v1",
                                    {CHAT: fallback.LaneModel(CHAT, lane_price),
                                     EMBED: fallback.LaneModel(EMBED, pricing.Price(lane_price.per_m_in, 0))})]
        self.lane_cloud = Cloud(sc, geo.city_rtt_s(), share=sc.cloud.lane_capacity_share * 0.1 * lane_share)
        self.max_price = {False: pricing.Price(), True: pricing.Price()}
        N = len(e.arrival)
        nan = np.full(N, np.nan, dtype=np.float32)
        hours = int(math.ceil(sc.hours))
        self.res = DayResult(nan.copy(), nan.copy(), nan.copy(), np.zeros(N, dtype=bool), np.full(N, -1, np.int32),
                             {"chat": 0.0, "embed": 0.0}, {"chat": 0.0, "embed": 0.0}, {"chat": 0.0, "embed": 0.0},
                             {"chat": 0, "embed": 0}, np.zeros(self.n), np.zeros(self.n), self.trust,
                             {"broken": 0, "continued": 0, "failed_after_break": 0}, np.zeros(hours + 1),
                             np.zeros(hours + 1), np.zeros(hours + 1), {"items": 0, "done": 0, "late": 0})
        # Per-request outcomes written through memoryviews of the result's arrays: a store or a read of
        # one element costs about half of numpy's scalar indexing (the same C cast to float32).
        res = self.res
        self.out_pool, self.out_hybrid = memoryview(res.pool_latency), memoryview(res.hybrid_latency)
        self.out_served, self.out_fallback = memoryview(res.served_by), memoryview(res.fallback)
        self.out_busy, self.n_hours = memoryview(res.util_busy), len(res.util_busy)
        self.user_rtt = memoryview(np.ascontiguousarray(e.user_gw_rtt, dtype=np.float64))
        self.earn = array("q", [0]) * self.n  # µcr; packed, as `busy`: one cache line per update
        self.busy = array("d", [0.0]) * self.n
        self.fee = sc.market.fee_bps
        self.usd = sc.market.usd_per_credit / 1e6
        self.batch_queue: list[tuple[float, int]] = []  # (deadline, request index)
        self.batch_seen = [0] * self.n
        self.prices = ([pricing.Price(a, b) for a, b in zip(self.price_in, self.price_out)],  # static per provider
                       [pricing.Price(a, 0) for a in self.price_embed])

    # ------------------------------------------------------------------ the loop

    def run(self) -> DayResult:
        t0 = time.perf_counter()
        # Millions of long-lived small objects (estimates, records, events) and no reference cycles
        # (a test checks that a day leaves none): the cyclic collector would only rescan them.
        was_enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        try:
            return self._run(t0)
        finally:
            if was_enabled:
                gc.enable()

    def _run(self, t0: float) -> DayResult:
        e, eng, sc = self.earth, self.eng, self.sc
        # The periodic work, each schedule in a lane of its own (sim/engine.py: the same order as
        # one heap, without thousands of events in it).
        steps, refreshes, ticks = eng.lane(), eng.lane(), eng.lane()
        for k in range(e.steps):
            steps.at(k * sc.churn.step_s, self._step, k)
        t = 0.0
        while t < sc.hours * 3600:
            refreshes.at(t, self._refresh)
            t += sc.policies.prior_refresh_s
        t = sc.policies.batch_tick_s
        while t < sc.hours * 3600 + sc.demand.batch_deadline_h * 3600:
            ticks.at(t, self._batch_tick)
            t += sc.policies.batch_tick_s
        if self.with_cloud:
            self.res.cloud_latency, self.res.cloud_cost_usd = baseline(e)
        max_out = sc.demand.max_output_tokens
        expected_out = sc.demand.chat_output_median if sc.policies.expected_output_known else None
        gateways, batch_wait, res, max_price = self.gateways, sc.demand.batch_deadline_h * 3600, self.res, self.max_price
        n_req = len(e.arrival)
        # The arrivals as Python numbers a chunk at a time: all of them at once would be ~1.5 GB of
        # Python objects per process at 10M requests, and a smaller heap keeps the caches warmer.
        for lo in range(0, n_req, _CHUNK):
            hi = min(lo + _CHUNK, n_req)
            for j, t, g, k, n_in, n_out in zip(range(lo, hi), e.arrival[lo:hi].tolist(), e.req_gw[lo:hi].tolist(),
                                               e.kind[lo:hi].tolist(), e.tokens_in[lo:hi].tolist(),
                                               e.tokens_out[lo:hi].tolist()):
                eng.run(until=t)
                self.now = t
                if k == BATCH:
                    self.batch_queue.append((t + batch_wait, j))
                    res.batch["items"] += 1
                else:
                    embed = k == EMBEDK
                    if embed:
                        req = _request(EMBED, "embeddings", n_in, 0, n_out, _NO_MAX_PRICE, gateways[g],
                                       _REGION_POLICY, False, None)
                    else:
                        req = _request(CHAT, "generate", n_in, max_out, 1, _NO_MAX_PRICE, gateways[g],
                                       _REGION_POLICY, k == STREAM, expected_out)
                    r = _Req(j, g, k, n_in, n_out, req, t)
                    r.hold = pricing.hold_bound([max_price[embed]], n_in, req.max_output_tokens, None)
                    self._route(r)
                if self.progress and j % self.progress_every == 0 and j:
                    self.progress(j, n_req, time.perf_counter() - t0)
        eng.run()
        self._finish()
        self.res.wall_s = time.perf_counter() - t0
        return self.res

    def _step(self, k: int) -> None:
        e = self.earth
        self.step = k
        # Memoryviews, not lists: every routing draw reads one random provider's entries, and an
        # element of a packed array is one cache line away, where a list's points to an object
        # somewhere else (a second miss). The values read are the same Python numbers.
        self.online_ids = memoryview(np.flatnonzero(e.online[k]))
        # The views read the k-th online provider's fixed fields from these (one memory read less per
        # routing draw than through its index); ~25 ms per step at 100,000 providers, 144 steps a day.
        self.online_fixed = tuple([fixed[i] for i in self.online_ids] for fixed in self.fixed)  # type: ignore[assignment]
        self.leave_now = memoryview(e.leave_at[k])
        self.crash_now = memoryview(e.crash[k])
        for pair in self.views:
            for view in pair:
                view.step()
        h = int(k * self.sc.churn.step_s // 3600)
        self.res.util_online[h] += float((e.conc * e.online[k]).sum()) * self.sc.churn.step_s
        for when, i in [x for x in self.trust.rejoins if x[0] <= self.eng.now]:
            self.trust.rejoin(i, when)
        self.trust.rejoins = [x for x in self.trust.rejoins if x[0] > self.eng.now]

    def _refresh(self) -> None:
        """What each gateway does every few seconds: the pool's median measured speed becomes
        its prior (`speed.pool_prior`), and the hold bound uses the dearest live price."""
        ids = self.online_ids
        if not ids:
            return
        sample = ids if len(ids) <= 100 else [ids[int(self.rng.random() * len(ids))] for _ in range(100)]
        for g, (chat, emb) in enumerate(self.views):
            for t, view in ((0, chat), (1, emb)):
                w = self.weights[g][t]
                # min_measured=1: what the gateway's router passes (gateway/dispatch/router.py).
                prior = pool_prior([view.speed[i] for i in sample], DEFAULT_WEIGHTS.prior_speed, min_measured=1)
                self.weights[g][t] = replace(w, prior_speed=prior)
        self.max_price[False] = pricing.Price(max(self.price_in[i] for i in sample),
                                              max(self.price_out[i] for i in sample))
        self.max_price[True] = pricing.Price(max(self.price_embed[i] for i in sample), 0)

    # ------------------------------------------------------------------ one request

    def _route(self, r: _Req) -> None:
        now = self.eng.now
        self.now = now
        embed = r.kind == EMBEDK
        view = self.views[r.g][embed]
        cands = serving.draw(self, view, k) if 0 < (k := self.pol.route_sample) < len(view) else view
        tried = {self.ids[i] for i in r.tried} if r.tried else ()
        d = routing_policy.pick_with_reasons(cands, now, self.rng, tried,
                                             request=r.req, weights=self.weights[r.g][embed])
        if d.choice is None:
            if not r.live:  # a hedge that found no second provider leaves the first copy running
                self._give_up(r, "no_provider" if not r.tried else "failed")
            return
        # = self.index[id]: the ids are f"p{i}", and the number parses faster than a dict of every provider.
        i = int(d.choice.provider_id[1:])
        if d.probe:
            view.breakers[i] = brk.on_dispatch(view.breakers[i], now)
        self._dispatch(r, i, d.choice, now, d.service_s or 0.0, d.estimate_s)

    def _dispatch(self, r: _Req, i: int, cand: Candidate | None, now: float, service_s: float = 0.0,
                  expected_s: float | None = None) -> None:
        """`expected_s`: the router's estimate of the whole answer's time (`Decision.estimate_s`)."""
        g, embed = r.g, r.kind == EMBEDK
        self.backlog[g][i] += service_s
        r.tried.add(i)
        r.attempts += 1
        r.live += 1
        self.own[g][i] += 1
        total = self.total[i] + 1
        self.total[i] = total
        rng = self.rng
        owd = self.rtt[g][i] / 2
        cheated, s = None, self.strategy[i]
        tout = r.tout - r.sent_tokens
        factor = 1.0
        if s:
            if embed and s in (S_RANDOM, S_SYBIL):
                cheated, factor = "random_vectors", 0.05
            elif not embed and (s in (S_SMALL, S_SYBIL) or (s == S_FRACTION and rng.random() < self.sc.cheaters.fraction)):
                cheated, factor = "smaller_model", 0.5
            elif not embed and s == S_TRUNC:
                cheated, tout = "truncated", max(1, tout // 3)
        e = self.earth
        noise = math.exp(rng.gauss(0, e.service_sigma)) * (e.straggler_x if rng.random() < e.straggler_p else 1.0) * factor
        speeds, row = self.speeds, 3 * i
        if embed:
            prefill, service = 0.0, r.tout / speeds[row + 2] * noise
        else:
            decode = speeds[row + 1]
            prefill = (r.tin + r.sent_tokens) / speeds[row] * noise
            service = prefill + tout / decode * noise
        slots = self.slots[i]
        if slots[0] - (now + owd) > self.pol.max_queue_s:
            # Its admission queue is full: it refuses at once (no slot taken, no failure held against it).
            self.eng.at(now + 2 * owd, self._refused, r, i, service_s)
            return
        waited = total > self.conc[i]  # the gateway's "sent while every slot was busy", not the truth
        start = max(now + owd, slots[0])
        end = start + service
        heapq.heapreplace(slots, end)
        self.busy[i] += service
        h = int(start // 3600)
        if h < self.n_hours:
            self.out_busy[h] += service
        ok, at = True, end
        leave = self.leave_now[i]
        if leave < end and self.crash_now[i]:
            ok, at = False, max(leave, now + owd)
        first = start + prefill + (0.0 if embed else noise / decode)  # `service` has `tout` steps
        copy = (r, i, now, first, ok, cheated, tout, waited, self.trust.identity[i], service_s)
        self.eng.at(at + owd, self._done, copy)
        if (cand is not None and r.kind == CHATK and not r.hedged
                and self.pol.hedge_percentile > 0):
            # The pick's own estimate: the same request, candidate and weights (`self.weights[g][0]`).
            delay = hedge.hedge_delay_s(cand, r.req, self.pol.hedge_percentile, self.weights[g][0],
                                        expected_s=expected_s)
            if delay is not None and now + delay < at + owd:
                self.eng.at(now + delay, self._hedge, r)

    def _hedge(self, r: _Req) -> None:
        if r.done or r.hedged or r.attempts >= self.pol.max_attempts:
            return
        r.hedged = True
        self.counts_add("hedges")
        self._route(r)

    def counts_add(self, name: str, n: int = 1) -> None:
        self.res.counts[name] = self.res.counts.get(name, 0) + n

    def _done(self, copy: tuple) -> None:  # type: ignore[type-arg]
        r, i, sent, first_at, ok, cheated, tout, waited, identity, service_s = copy
        now = self.eng.now
        g, embed = r.g, r.kind == EMBEDK
        self._release(g, i, service_s)
        r.live -= 1
        view = self.views[g][embed]
        if not ok:
            view.breakers[i] = brk.record_failure(view.breakers[i], now)
            if r.done or r.live:
                return
            if r.kind == STREAM and first_at + self.rtt[g][i] / 2 < now and not r.continued:
                # The user already has part of the answer: continue it on another provider.
                self.res.streams["broken"] += 1
                self.res.stream_breaks_by_hour[min(int(now // 3600), len(self.res.util_busy) - 1)] += 1
                r.continued = True
                done_share = min(1.0, max(0.0, (now - first_at) / max(now - sent, 1e-6)))
                r.sent_tokens = int(r.tout * done_share * 0.5)
            if r.attempts < self.pol.max_attempts:
                self._route(r)
            else:
                self._give_up(r, "failed")
            return
        view.breakers[i] = brk.record_success(view.breakers[i], now)
        if view.speed[i] is None and self.pol.prior_soon_s > 0:
            self.eng.after(self.pol.prior_soon_s, self._refresh)
        rtt = self.rtt[g][i]
        if embed:
            sample = _sample(now - sent, rtt, None, 0, 0, r.tout, waited)
        else:
            sample = _sample(now - sent, rtt, first_at + rtt / 2 - sent if r.kind == STREAM else None,
                             r.tin, tout, 0, waited)
        view.speed[i] = observe(view.speed[i], sample, now)
        price = self.prices[embed][i]
        charge = pricing.charge_for(price, r.tin, 0 if embed else tout, r.hold or 1 << 62)
        self.earn[i] += charge - charge * self.fee // fallback.BPS
        if identity == self.trust.identity[i] and self.trust.served(i, f"r{r.j}.{r.attempts}.{i}", now):
            v = self.trust.judge(cheated, self.rng.random())
            # Straight to the trust's verdict, `audit_delay_s` from now (`Lane.after`'s sum, one call less).
            when = now + max(self.pol.audit_delay_s, 0.0)
            self.verdicts.at(when, self.trust.verdict, i, identity, v, when)
        if r.done:
            return
        r.done = True
        self.out_served[r.j] = i
        what = "embed" if embed else "chat"
        self.res.pool_charge_usd[what] += charge * self.usd
        self.res.tokens[what] += r.tout if embed else r.tin + r.tout
        if r.kind == BATCH:
            self.res.batch["done"] += 1
            self.batch_seen[i] += 1
            return
        lat = now - r.arrival + self.user_rtt[r.j]
        self.out_pool[r.j] = lat
        self.out_hybrid[r.j] = lat
        if r.continued:
            self.res.streams["continued"] += 1

    def _release(self, g: int, i: int, service_s: float) -> None:
        """A request sent to provider i by gateway g is over (answered, lost or refused)."""
        own, backlog = self.own[g], self.backlog[g]
        own[i] -= 1
        left = backlog[i] - service_s
        backlog[i] = (left if left > 0.0 else 0.0) if own[i] else 0.0  # = max(0.0, left), without the call
        self.total[i] -= 1

    def _refused(self, r: _Req, i: int, service_s: float) -> None:
        self._release(r.g, i, service_s)
        r.live -= 1
        self.counts_add("refused")
        if r.done or r.live:
            return
        if r.attempts < self.pol.max_attempts:
            self._route(r)
        else:
            self._give_up(r, "capacity")

    def _give_up(self, r: _Req, reason: str) -> None:
        r.done = True
        if r.continued:
            self.res.streams["failed_after_break"] += 1
        if r.kind == BATCH:
            self.batch_queue.append((r.arrival + self.sc.demand.batch_deadline_h * 3600, r.j))
            return
        embed = r.kind == EMBEDK
        need = fallback.Need(r.req.model, r.tin, r.req.max_output_tokens, region=self.gateways[r.g])
        d = fallback.choose_lanes(self.lanes, reason, need, self.fee)
        if not d.lanes:
            return
        now = self.eng.now
        gw_city = int(self.earth.gw_city[r.g])
        done, _ = self.lane_cloud.serve(now, gw_city, embed, r.tin, r.tout, 1.0)
        self.out_hybrid[r.j] = done - r.arrival + self.user_rtt[r.j]
        self.out_fallback[r.j] = True
        price = self.lanes[0].models[r.req.model].price
        self.res.lane_charge_usd["embed" if embed else "chat"] += fallback.lane_cost(
            price, r.tin, 0 if embed else r.tout, self.fee) * self.usd

    # ------------------------------------------------------------------ batch jobs

    def _batch_tick(self) -> None:
        """The batch runner: items wait for slots interactive traffic leaves free (`batch.policy`)."""
        if not self.batch_queue or not self.online_ids:
            return
        now = self.eng.now
        self.now = now
        ids = self.online_ids
        sample = {ids[int(self.rng.random() * len(ids))] for _ in range(min(len(ids), 64))}
        slots = [batch_policy.Slot(self.ids[i], batch_policy.batch_slots(self.conc[i], self.total[i],
                                                                          self.pol.batch_reserve),
                                   self.batch_seen[i]) for i in sample
                 if not self.trust.suspended[i] and now < self.leave_now[i]]
        total = max(1, len(self.batch_queue))
        queue, self.batch_queue = self.batch_queue, []
        queue.sort()
        e, max_out = self.earth, self.sc.demand.max_output_tokens
        for n, (deadline, j) in enumerate(queue):
            if deadline < now:
                self.res.batch["late"] += 1
                continue
            s = batch_policy.pick_provider(slots, total, None, set(), self.rng)
            if s is None:
                self.batch_queue.extend(queue[n:])
                return
            # The picked slot itself (by identity: the providers are distinct, so it is `slots.index(s)`
            # without comparing records field by field), one item busier.
            k = next(k for k, x in enumerate(slots) if x is s)
            slots[k] = batch_policy.Slot(s.provider, s.free - 1, s.seen + 1, s.items_per_s)
            tin, tout = int(e.tokens_in[j]), int(e.tokens_out[j])
            req = _request(CHAT, "generate", tin, max_out, 1, _NO_MAX_PRICE, None, _REGION_POLICY, False, None)
            r = _Req(j, int(e.req_gw[j]), BATCH, tin, tout, req, float(e.arrival[j]))
            r.hold = pricing.hold_bound([self.max_price[False]], tin, max_out, None)
            self._dispatch(r, self.index[s.provider], None, now)

    def _finish(self) -> None:
        e, res, sc = self.earth, self.res, self.sc
        res.earnings_usd = np.array(self.earn, dtype=float) * self.usd
        online_s = e.online.sum(axis=0) * sc.churn.step_s
        busy_gpu_s = np.minimum(np.array(self.busy) / e.conc, online_s)
        kwh = (online_s * e.watts_idle + busy_gpu_s * (e.watts_busy - e.watts_idle)) / 3.6e6
        res.electricity_usd = kwh * e.kwh_usd
        res.counts["lane_cost_usd_operator"] = int(self.lane_cloud.cost_usd(sc.hours * 3600))
        res.counts["audits"] = self.trust.audits
        res.counts["kinds"] = len(KINDS)
