"""Routing policies compared in the simulator: latency and cost at 10,000 providers.

    .venv/bin/python bench/policies/run.py             # 10,000 providers, 150,000 requests (~2 min on 2 cores)
    .venv/bin/python bench/policies/run.py --quick     # 2,000 providers, 30,000 requests (~20 s)
    .venv/bin/python bench/policies/run.py --providers 5000 --requests 60000 --load 0.8 --procs 1

The world (`gpupool.sim.world`): providers in 6 regions with inter-region RTTs
of 15-225 ms plus their own last mile; six GPU tiers from a GTX 1080 (15 tok/s,
1 slot) to an H100 (130 tok/s, 8 slots), +-15% per machine; prices rising with
speed; 5% of providers claim 3x their real speed, 1% are broken (every request
fails). Chat requests (median 300 prompt / 120 output tokens, half streamed)
arrive as a Poisson process at `--load` x the pool's real capacity, from clients
whose regions do not match where the providers are.

Every policy runs the same requests on the same world. Statistics skip the first
half of the requests (gpupool starts knowing nothing but offers and pings and has
to learn speeds). Policies: see `gpupool.sim.policies`; "gpupool+hedge" adds a
second copy for non-streaming requests unanswered at the 95th percentile of their
expected time. Queues are unbounded, so a policy that overloads slow providers
shows it as a very long tail (round-robin, random).

Targets: gpupool p99 <= round-robin p99 / 2, and <= 1.2 x the oracle's p99.
Writes bench/results/policies.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import random
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import print_table, write_json  # noqa: E402

from gpupool.routing import DEFAULT_WEIGHTS  # noqa: E402
from gpupool.sim import POLICIES, build_world, make_jobs, make_policy, simulate  # noqa: E402


def run_one(args: tuple[str, int, int, float, int, int]) -> dict[str, Any]:
    """Build the (deterministic) world and workload, run one policy; runs in a worker process."""
    name, providers, requests, load, seed, sample_k = args
    rng = random.Random(seed)
    world = build_world(providers, rng)
    jobs = make_jobs(world, requests, load, rng)
    # The gateway's running mean of output length for the model (gpupool and the oracle use it).
    expected_out = round(sum(j.output_tokens for j in jobs) / len(jobs))
    weights = dataclasses.replace(DEFAULT_WEIGHTS, sample_k=sample_k)
    policy = make_policy(name, world, random.Random(seed + 1), expected_out, weights)
    result = simulate(world, jobs, policy, seed=seed + 2, hedge=name.endswith("+hedge"), warmup_share=0.5)
    out = result.summary()
    out["exhaustive_scans"] = getattr(policy, "exhaustive_scans", None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 providers, 30,000 requests")
    ap.add_argument("--providers", type=int)
    ap.add_argument("--requests", type=int)
    ap.add_argument("--load", type=float, default=0.7, help="arrival rate as a share of real capacity")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--procs", type=int, default=2, help="policies simulated in parallel")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--sample-k", type=int, default=DEFAULT_WEIGHTS.sample_k, help="gpupool's k (default: the default)")
    args = ap.parse_args()
    providers = args.providers or (2_000 if args.quick else 10_000)
    requests = args.requests or (30_000 if args.quick else 150_000)
    names = [n.strip() for n in args.policies.split(",") if n.strip()]

    t0 = time.perf_counter()
    work = [(n, providers, requests, args.load, args.seed, args.sample_k) for n in names]
    if args.procs > 1:
        with mp.get_context("fork").Pool(min(args.procs, len(work))) as pool:
            results = pool.map(run_one, work, chunksize=1)
    else:
        results = [run_one(w) for w in work]
    wall = time.perf_counter() - t0

    by = {r["policy"]: r for r in results}
    oracle = by.get("oracle", {}).get("p99_s")
    rr = by.get("round-robin", {}).get("p99_s")
    rows = []
    for r in results:
        rows.append([
            r["policy"], r["p50_s"], r["p99_s"], r["mean_s"], r["mean_cost_ucr"],
            round(r["p99_s"] / oracle, 2) if oracle else None,
            round(rr / r["p99_s"], 2) if rr else None,
            r["retries"], r["hedges"], r["failed"], r["wall_s"],
        ])
    print_table(
        ["policy", "p50 s", "p99 s", "mean s", "mean cost µcr", "p99 / oracle", "rr p99 / p99",
         "retries", "hedges", "failed", "sim wall s"],
        rows,
        title=(f"{providers:,} providers, {requests:,} requests (last {requests // 2:,} measured), "
               f"load {args.load:.0%}, seed {args.seed}, gpupool k={args.sample_k}"),
    )
    targets: dict[str, bool] = {}
    g = by.get("gpupool")
    if g and rr:
        targets["gpupool_p99_at_least_2x_better_than_round_robin"] = rr >= 2 * g["p99_s"]
    if g and oracle:
        targets["gpupool_p99_within_1.2x_of_oracle"] = g["p99_s"] <= 1.2 * oracle
    print("targets:", ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in targets.items()) or "n/a")
    print(f"total wall time {wall:.0f} s")
    path = write_json("policies", {
        "config": {"providers": providers, "requests": requests, "measured": requests - requests // 2,
                   "load": args.load, "seed": args.seed, "quick": args.quick,
                   "sample_k": args.sample_k},
        "results": results, "targets": targets, "wall_s": round(wall, 1),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
