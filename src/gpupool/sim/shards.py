"""One simulated day split over processes: each runs an independent half-world of the pool.

    res = run_sharded(earth, shards=2, progress=print)   # a DayResult like Day(earth).run()'s

Shard k gets the providers with index = k (mod shards) and the requests with index = k
(mod shards): a random-looking slice of each (indices are in arrival order; providers are
drawn independently of their index), so every shard is the same world at 1/shards of
its size, at the same load per provider. Each shard runs `Day` unchanged: all the
regional gateways with their own views, the real routing, audit, reputation, market and
batch policies; every provider's whole day (its requests, audits, suspension, earnings)
lives in exactly one shard. What a shard cannot do is route a request to a provider of
another shard: the router samples `sample_k` candidates from the providers online, so
for a pool of thousands this changes nothing but statistics (bench/README.md "sim"
measures one process against two on the same world); a nearly saturated pool of a few
dozen providers should run in one process. The cloud baseline shares nothing with the
pool and runs once, over every arrival, in the parent while the shards run.

Processes are forked (the world is built once and shared copy-on-write); where fork
is not available the shards run one after the other in this process.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gpupool.sim.cloud import baseline
from gpupool.sim.day import Day, DayResult
from gpupool.sim.earth import Earth
from gpupool.sim.trust import Trust, TrustTally

# Earth's per-provider fields (the last axis of the 2-D ones) and per-request fields.
PROVIDER_FIELDS = ("city", "region", "tier", "consumer", "prefill", "decode", "embed", "conc", "price_in",
                   "price_out", "price_embed", "claim", "kwh_usd", "watts_busy", "watts_idle", "strategy",
                   "gw_rtt", "online", "leave_at", "crash")
REQUEST_FIELDS = ("arrival", "req_gw", "req_city", "kind", "tokens_in", "tokens_out", "user_gw_rtt")


def part(earth: Earth, k: int, shards: int) -> tuple[Earth, np.ndarray, np.ndarray]:
    """Shard k of `shards`: its world, and the global indices of its providers and requests."""
    prov = np.arange(k, earth.n, shards)
    reqs = np.arange(k, len(earth.arrival), shards)
    changes: dict[str, Any] = {f: getattr(earth, f)[..., prov] for f in PROVIDER_FIELDS}
    changes.update({f: getattr(earth, f)[reqs] for f in REQUEST_FIELDS})
    return dataclasses.replace(earth, n=len(prov), **changes), prov, reqs


def _shard_day(earth: Earth, k: int, shards: int, done: Any) -> tuple[DayResult, np.ndarray, np.ndarray]:
    sub, prov, reqs = part(earth, k, shards)

    def progress(j: int, total: int, wall: float) -> None:
        done[k] = j

    day = Day(sub, progress=progress if done is not None else None, progress_every=20_000, cloud=False,
              lane_share=1 / shards, seed=1 + 1000 * k)
    res = day.run()
    trust = res.trust
    assert isinstance(trust, Trust)
    # Only what the report reads, with global provider indices (the per-provider state is large).
    res.trust = TrustTally([(t, int(prov[i]), c) for t, i, c in trust.suspensions], trust.cheater_identities,
                           trust.audits)
    return res, prov, reqs


def _child(earth: Earth, k: int, shards: int, done: Any, conn: Any) -> None:
    try:
        conn.send(("ok", _shard_day(earth, k, shards, done)))
    except BaseException as exc:  # noqa: BLE001 - the parent re-raises it
        conn.send(("error", f"shard {k}: {type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_sharded(earth: Earth, shards: int = 2, progress: Callable[[int, int, float], None] | None = None,
                progress_every_s: float = 15.0) -> DayResult:
    t0 = time.perf_counter()
    if "fork" not in mp.get_all_start_methods():
        parts = [_shard_day(earth, k, shards, None) for k in range(shards)]
        cloud = baseline(earth)
    else:
        ctx = mp.get_context("fork")
        done = ctx.Array("q", shards, lock=False)
        pipes, procs = [], []
        for k in range(shards):
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_child, args=(earth, k, shards, done, send), daemon=True)
            p.start()
            send.close()
            pipes.append(recv)
            procs.append(p)
        cloud = baseline(earth)
        last, got = 0.0, {}
        while len(got) < shards:
            for k, conn in enumerate(pipes):
                if k not in got and conn.poll(0.5):
                    got[k] = conn.recv()
            now = time.perf_counter()
            if progress and now - last >= progress_every_s and len(got) < shards and sum(done):
                last = now
                progress(int(sum(done)), len(earth.arrival), now - t0)
        for p in procs:
            p.join()
        errors = [v for s, v in got.values() if s == "error"]
        if errors:
            raise RuntimeError("; ".join(errors))
        parts = [got[k][1] for k in range(shards)]
    res = merge(earth, parts, cloud)
    res.wall_s = time.perf_counter() - t0
    return res


def merge(earth: Earth, parts: list[tuple[DayResult, np.ndarray, np.ndarray]],
          cloud: tuple[np.ndarray, dict[str, float]]) -> DayResult:
    """The shards' results as one day's: per-request and per-provider arrays put back in
    place, sums of the rest."""
    n_req = len(earth.arrival)
    nan = np.full(n_req, np.nan, dtype=np.float32)
    first = parts[0][0]
    out = DayResult(nan.copy(), nan.copy(), cloud[0], np.zeros(n_req, dtype=bool), np.full(n_req, -1, np.int32),
                    {}, {}, cloud[1], {},
                    np.zeros(earth.n), np.zeros(earth.n), TrustTally([], 0, 0), {},
                    np.zeros_like(first.util_busy), np.zeros_like(first.util_online),
                    np.zeros_like(first.stream_breaks_by_hour), {})
    for res, prov, reqs in parts:
        out.pool_latency[reqs] = res.pool_latency
        out.hybrid_latency[reqs] = res.hybrid_latency
        out.fallback[reqs] = res.fallback
        out.served_by[reqs] = np.where(res.served_by >= 0, prov[res.served_by], -1)
        out.earnings_usd[prov] = res.earnings_usd
        out.electricity_usd[prov] = res.electricity_usd
        for mine, theirs in ((out.pool_charge_usd, res.pool_charge_usd), (out.lane_charge_usd, res.lane_charge_usd),
                             (out.tokens, res.tokens), (out.streams, res.streams), (out.batch, res.batch),
                             (out.counts, res.counts)):
            for key, v in theirs.items():
                mine[key] = mine.get(key, 0) + v  # type: ignore[assignment]
        out.util_busy += res.util_busy
        out.util_online += res.util_online
        out.stream_breaks_by_hour += res.stream_breaks_by_hour
        t = res.trust
        assert isinstance(out.trust, TrustTally)
        out.trust.suspensions += t.suspensions
        out.trust.cheater_identities += t.cheater_identities
        out.trust.audits += t.audits
    out.counts["kinds"] = first.counts.get("kinds", 0)
    out.counts["shards"] = len(parts)
    return out
