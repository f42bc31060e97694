"""Run one policy over one workload in virtual time and measure what clients saw.

    rng = random.Random(7)
    world = build_world(2_000, rng)
    jobs = make_jobs(world, 20_000, load=0.7, rng=rng)
    result = simulate(world, jobs, make_policy("gpupool", world, random.Random(1)), seed=3)
    result.summary()   # {'p50_s': ..., 'p99_s': ..., 'mean_cost_ucr': ..., ...}

What happens to a request (the gateway's life cycle, reduced to its timing):
- it arrives at the gateway of its client's region; the policy picks a provider;
- it travels half the (jittered) round trip; the provider runs it in a free slot
  or queues it FIFO behind the slots' current work (each provider: `concurrency`
  slots, per-request service = input/prefill + output/decode, times lognormal
  noise, rarely a straggler pause);
- the answer travels back; the gateway records latency and feeds the policy what
  it measured (time to first token for streams, total time, a ping sample);
- a broken provider answers every request with an error after a round trip: the
  request is retried on another provider (at most `max_attempts` tries);
- with hedging, a non-streaming request still unanswered after the policy's hedge
  delay gets a second copy elsewhere; the first answer wins and the other copy is
  cancelled (a running copy frees its slot at once).

Latency = arrival at the gateway to the complete answer at the gateway, including
retries and hedges; the client<->gateway leg is the same for every policy and left out.
Cost = what the client pays for the winning answer (actual tokens x that provider's prices).
"""

from __future__ import annotations

import heapq
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

from gpupool.sim.engine import Engine, Handle
from gpupool.sim.policies import Policy
from gpupool.sim.world import Job, World

BROKEN_REPLY_S = 0.02  # a broken provider's time to say "error"


@dataclass(slots=True)
class _Try:
    job_state: _JobState
    provider: int
    sent_at: float
    start: float = 0.0  # when its slot starts it (provider clock)
    end: float = 0.0  # when its slot is done with it
    first_at: float | None = None  # first chunk back at the gateway
    event: Handle | None = None
    live: bool = True


@dataclass(slots=True)
class _JobState:
    job: Job
    tried: set[int] = field(default_factory=set)
    tries: list[_Try] = field(default_factory=list)
    done: bool = False
    hedged: bool = False


@dataclass
class SimResult:
    policy: str
    latencies: list[float]
    costs: list[float]
    completed: int = 0
    failed: int = 0  # no provider answered within max_attempts
    retries: int = 0
    hedges: int = 0
    hedge_wins: int = 0
    broken_hits: int = 0  # tries that went to a broken provider
    wall_s: float = 0.0
    virtual_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        xs = self.latencies
        if not xs:
            return math.nan
        k = min(max(int(math.ceil(q * len(xs))) - 1, 0), len(xs) - 1)
        return xs[k]

    def summary(self) -> dict[str, Any]:
        n = len(self.latencies)
        return {
            "policy": self.policy,
            "measured_requests": n,
            "p50_s": round(self.percentile(0.50), 4),
            "p99_s": round(self.percentile(0.99), 4),
            "mean_s": round(sum(self.latencies) / n, 4) if n else math.nan,
            "mean_cost_ucr": round(sum(self.costs) / len(self.costs), 2) if self.costs else math.nan,
            "failed": self.failed,
            "retries": self.retries,
            "hedges": self.hedges,
            "hedge_wins": self.hedge_wins,
            "broken_hits": self.broken_hits,
            "virtual_s": round(self.virtual_s, 2),
            "wall_s": round(self.wall_s, 2),
            **self.extra,
        }


def simulate(world: World, jobs: list[Job], policy: Policy, *, seed: int = 0, hedge: bool = False,
             warmup_share: float = 0.2, max_attempts: int = 4) -> SimResult:
    """Run `jobs` through `policy`; stats cover jobs after the first `warmup_share` of arrivals."""
    sim = _Sim(world, jobs, policy, random.Random(seed), hedge, warmup_share, max_attempts)
    return sim.run()


class _Sim:
    def __init__(self, world: World, jobs: list[Job], policy: Policy, rng: random.Random,
                 hedge: bool, warmup_share: float, max_attempts: int) -> None:
        self.world, self.jobs, self.policy, self.rng = world, jobs, policy, rng
        self.hedge, self.max_attempts = hedge, max_attempts
        self.engine = Engine()
        self.measure_from = int(len(jobs) * warmup_share)
        self.result = SimResult(policy.name, [], [])
        for p in world.providers:  # every run starts from idle providers
            p.slots = [0.0] * p.concurrency
            policy.on_slots_changed(p.idx)

    def run(self) -> SimResult:
        t0 = time.perf_counter()
        for job in self.jobs:
            self.engine.at(job.arrival, self._arrive, job)
        self.engine.run()
        r = self.result
        r.latencies.sort()
        r.wall_s = time.perf_counter() - t0
        r.virtual_s = self.engine.now
        return r

    # ------------------------------------------------------------ events

    def _arrive(self, job: Job) -> None:
        self._route(_JobState(job))

    def _route(self, js: _JobState) -> bool:
        now = self.engine.now
        i = self.policy.choose(js.job, now, js.tried)
        if i is None:
            return False
        self._dispatch(js, i, now)
        return True

    def _dispatch(self, js: _JobState, i: int, now: float) -> None:
        job, p, rng = js.job, self.world.providers[i], self.rng
        cfg = self.world.config
        js.tried.add(i)
        tr = _Try(js, i, now)
        js.tries.append(tr)
        owd = p.rtt_s(job.region) * rng.uniform(0.95, 1.15) / 2
        arrive = now + owd
        self.policy.on_dispatch(i, job, now)
        if p.broken:
            self.result.broken_hits += 1
            tr.event = self.engine.at(arrive + BROKEN_REPLY_S + owd, self._failed, tr)
            return
        noise = math.exp(rng.gauss(0, cfg.request_sigma))
        if rng.random() < cfg.straggler_prob:
            noise *= cfg.straggler_factor
        prefill = job.input_tokens / p.prefill_tps * noise
        decode = job.output_tokens / p.decode_tps * noise
        tr.start = max(arrive, p.slots[0])
        tr.end = tr.start + prefill + decode
        heapq.heapreplace(p.slots, tr.end)
        self.policy.on_slots_changed(i)
        tr.first_at = tr.start + prefill + owd if job.stream else None
        tr.event = self.engine.at(tr.end + owd, self._answered, tr)
        if self.hedge and not job.stream and not js.hedged and len(js.tries) == 1:
            delay = self.policy.hedge_delay(i, job, now)
            if delay is not None:
                self.engine.after(delay, self._hedge, js)

    def _answered(self, tr: _Try) -> None:
        js, now = tr.job_state, self.engine.now
        tr.live = False
        self.policy.on_result(tr.provider, js.job, now, True, tr.sent_at, tr.first_at)
        if js.done:
            return
        js.done = True
        job = js.job
        for other in js.tries:
            if other.live:
                self._cancel(other, now)
        if js.hedged and tr is not js.tries[0]:
            self.result.hedge_wins += 1
        self.result.completed += 1
        self._forget(job)
        if job.idx >= self.measure_from:
            p = self.world.providers[tr.provider]
            self.result.latencies.append(now - job.arrival)
            self.result.costs.append((job.input_tokens * p.price_in + job.output_tokens * p.price_out) / 1e6)

    def _failed(self, tr: _Try) -> None:
        js, now = tr.job_state, self.engine.now
        tr.live = False
        self.policy.on_result(tr.provider, js.job, now, False, tr.sent_at, None)
        if js.done or any(t.live for t in js.tries):
            return  # a hedge copy is still running
        if len(js.tried) < self.max_attempts:
            self.result.retries += 1
            if self._route(js):
                return
        js.done = True
        self.result.failed += 1
        self._forget(js.job)

    def _hedge(self, js: _JobState) -> None:
        if js.done or js.hedged:
            return
        js.hedged = True
        if len(js.tried) < self.max_attempts and self._route(js):
            self.result.hedges += 1

    def _cancel(self, tr: _Try, now: float) -> None:
        """The gateway cancels a losing copy: a running one frees its slot now, a queued one never runs."""
        tr.live = False
        self.engine.cancel(tr.event)
        p = self.world.providers[tr.provider]
        if not p.broken:
            try:
                k = p.slots.index(tr.end)
            except ValueError:
                k = -1
            if k >= 0:
                p.slots[k] = max(now, tr.start)
                heapq.heapify(p.slots)
                self.policy.on_slots_changed(tr.provider)
        self.policy.on_result(tr.provider, tr.job_state.job, now, False, tr.sent_at, None, cancelled=True)

    def _forget(self, job: Job) -> None:
        forget = getattr(self.policy, "forget", None)
        if forget is not None:
            forget(job)
