"""How long one routing decision takes among 10,000 and 100,000 candidates.

    .venv/bin/python bench/routing/run.py            # full run (a minute or two)
    .venv/bin/python bench/routing/run.py --quick    # fewer decisions

Times `gpupool.routing.pick_with_reasons` per decision (median and p99, µs) on a
realistic pool (measured, claimed and unknown speeds; 6 regions; prices; some
draining and open breakers; requests with and without price caps), against two
baselines measured in the same run on the same pool:
- "full-scan argmin": the same objective over every candidate (what sampling avoids);
- "least-in-flight scan": the pre-routing-issue policy (one full pass, min in_flight).
Also a hard case: the client *requires* one region (1/6 of the pool eligible),
which sampling handles with extra draws.

Targets: median <= 20 µs at 10,000 and p99 <= 50 µs at 100,000 candidates.
Writes bench/results/routing.json.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import percentile, print_table, write_json  # noqa: E402

from gpupool.routing import (  # noqa: E402
    DEFAULT_WEIGHTS,
    BreakerState,
    Candidate,
    RouteRequest,
    RoutingWeights,
    SpeedEstimate,
    pick_with_reasons,
)

REGIONS = ("us-east", "us-west", "eu-west", "eu-central", "ap-southeast", "ap-northeast")


def make_pool(n: int, rng: random.Random) -> list[Candidate]:
    pool = []
    for i in range(n):
        decode = rng.choice((15, 35, 60, 80, 90, 130)) * rng.uniform(0.8, 1.2)
        u = rng.random()
        speed = SpeedEstimate(decode * 50, decode, 0.0, rng.randint(1, 200), 0.0) if u < 0.8 else None
        claim = SpeedEstimate(decode * 60, decode * 1.1) if 0.8 <= u < 0.9 else None
        price_out = rng.randint(60_000, 800_000)
        conc = rng.choice((1, 2, 4, 4, 8))
        pool.append(Candidate(
            provider_id=f"node-{i:06d}", in_flight=rng.randint(0, conc + 2), max_concurrency=conc,
            draining=rng.random() < 0.01, region=rng.choice(REGIONS), rtt_s=rng.uniform(0.01, 0.25),
            price_in=price_out // 4, price_out=price_out, reputation=rng.random(), speed=speed,
            claimed_speed=claim, backlog_s=rng.uniform(0, 10),
            breaker=BreakerState("open", 3, 1e9, 1) if rng.random() < 0.01 else BreakerState(),
        ))
    return pool


def make_requests(n: int, rng: random.Random, require_region: bool = False) -> list[RouteRequest]:
    out = []
    for _ in range(n):
        region = rng.choice(REGIONS)
        out.append(RouteRequest(
            "llama-3-8b", "generate", input_tokens=rng.randint(20, 3000), max_output_tokens=512,
            max_price=rng.choice((None, None, 800, 400)),  # some caps exclude the priciest providers
            region=region, region_policy="require" if require_region else "prefer",
            expected_output_tokens=150,
        ))
    return out


def time_decisions(make_fn: Callable[[random.Random], Callable[[RouteRequest], Any]],
                   requests: list[RouteRequest], seed: int, passes: int) -> tuple[list[float], list[float]]:
    """Per-decision wall time in µs: (first pass, per-decision minimum over `passes` passes).

    Every pass replays the same decisions (same requests, same rng seed). The first
    pass is the plain measurement. This machine is a small shared VM whose stalls
    (steal, interrupts) land on random decisions; the minimum over replays of the
    *same* decision removes them and leaves what the code itself costs.
    GC stays enabled: the gateway runs with it too.
    """
    clock = time.perf_counter_ns
    runs = []
    for _ in range(passes):
        fn = make_fn(random.Random(seed))
        times = []
        for req in requests:
            t0 = clock()
            fn(req)
            times.append((clock() - t0) / 1000)
        runs.append(times)
    return runs[0], [min(ts) for ts in zip(*runs)]


def least_in_flight_scan(pool: list[Candidate]) -> Candidate | None:
    best = None
    for c in pool:
        if not c.draining and (best is None or c.in_flight < best.in_flight):
            best = c
    return best


def bench_pool(n: int, seed: int, sampled_n: int, scan_n: int, passes: int) -> list[dict[str, Any]]:
    """Time every case on one pool of `n` candidates."""
    pool = make_pool(n, random.Random(seed))
    gc.collect()
    gc.freeze()  # the pool is long-lived: keep it out of the collector's generations, as a gateway would
    reqs = make_requests(sampled_n, random.Random(seed + 2))
    reqs_region = make_requests(sampled_n, random.Random(seed + 3), require_region=True)
    k2 = RoutingWeights(sample_k=2)
    full = RoutingWeights(scan_below=10**9)
    Maker = Callable[[random.Random], Callable[[RouteRequest], Any]]

    def with_weights(w: RoutingWeights) -> Maker:
        return lambda rng: lambda r: pick_with_reasons(pool, 0.0, rng, request=r, weights=w)

    cases: list[tuple[str, Maker, list[RouteRequest]]] = [
        (f"pick, k={DEFAULT_WEIGHTS.sample_k} (default)", with_weights(DEFAULT_WEIGHTS), reqs),
        ("pick, k=2", with_weights(k2), reqs),
        ("pick, region required (1/6 eligible)", with_weights(DEFAULT_WEIGHTS), reqs_region),
        ("baseline: full-scan argmin, same objective", with_weights(full), reqs[:scan_n]),
        ("baseline: least-in-flight scan (old policy)", lambda rng: lambda r: least_in_flight_scan(pool),
         reqs[:scan_n]),
    ]
    out = []
    for name, make_fn, rs in cases:
        warm = make_fn(random.Random(seed))
        for r in rs[: min(200, len(rs))]:  # warm up caches and the interpreter
            warm(r)
        raw, best = time_decisions(make_fn, rs, seed + 1, passes if len(rs) > scan_n else 1)
        out.append({"candidates": n, "case": name, "decisions": len(rs),
                    "median_us": round(percentile(raw, 50), 2), "p99_us": round(percentile(raw, 99), 2),
                    "mean_us": round(sum(raw) / len(raw), 2),
                    "replayed_median_us": round(percentile(best, 50), 2),
                    "replayed_p99_us": round(percentile(best, 99), 2)})
    gc.unfreeze()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer decisions (a few seconds)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--passes", type=int, default=3, help="replays of the same decisions (see time_decisions)")
    args = ap.parse_args()
    sampled_n = 5_000 if args.quick else 30_000
    scan_n = 20 if args.quick else 100

    results: list[dict[str, Any]] = []
    for n in (10_000, 100_000):
        results += bench_pool(n, args.seed, sampled_n, scan_n, args.passes)
        gc.collect()
    rows = [[r["candidates"], r["case"], r["decisions"], r["median_us"], r["p99_us"],
             r["replayed_median_us"], r["replayed_p99_us"]] for r in results]
    print_table(["candidates", "case", "decisions", "median µs", "p99 µs",
                 f"median, min of {args.passes} µs", f"p99, min of {args.passes} µs"], rows,
                title="routing decision time (one core, CPython %s)" % sys.version.split()[0])
    by = {(r["candidates"], r["case"]): r for r in results}
    default_case = f"pick, k={DEFAULT_WEIGHTS.sample_k} (default)"
    targets = {
        "median_us_at_10k<=20": by[(10_000, default_case)]["median_us"] <= 20,
        "p99_us_at_100k<=50": by[(100_000, default_case)]["p99_us"] <= 50,
        f"p99_us_at_100k<=50 (min of {args.passes} replays)": by[(100_000, default_case)]["replayed_p99_us"] <= 50,
    }
    print("targets:", ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in targets.items()))
    path = write_json("routing", {"weights": {"sample_k": DEFAULT_WEIGHTS.sample_k,
                                              "scan_below": DEFAULT_WEIGHTS.scan_below,
                                              "max_draws": DEFAULT_WEIGHTS.max_draws},
                                  "quick": args.quick, "results": results, "targets": targets})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
