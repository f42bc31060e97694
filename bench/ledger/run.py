"""Ledger benchmark: settlement throughput, and what billing costs the gateway's request rate.

    .venv/bin/python bench/ledger/run.py                  # ~4 min; writes bench/results/ledger.json
    .venv/bin/python bench/ledger/run.py --quick          # a short look

1. Settlements/s of the SQL backend on SQLite and PostgreSQL (127.0.0.1:5432, skipped if
   unreachable): receipts settled per second in `settle_batch` batches of 1, 100 and
   1,000, next to the per-request path (`hold` + `settle`, two writes per request)
   as the baseline measured in the same run.
2. Gateway request rate with billing vs without: one gateway, two echo providers on it,
   one serving a free model (no ledger work at all) and one a priced model (tabs,
   receipt signature checks, batched settlement). `wrk -c32` alternates between the two
   models round by round; the table shows medians and the ratio. The issue's target:
   settlement cuts the request rate by at most 10% (ratio >= 0.90).
3. EVM: receipts per transaction and gas per receipt (bench/ledger/evm.py, in-process chain).

Needs `wrk` (`apt-get install wrk`) for part 2; the others run without it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import median, print_table, ratio, tool_path, write_json  # noqa: E402

LUA = HERE.parent / "overhead" / "post.lua"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET_RPS_RATIO = 0.90


# ---------------------------------------------------------------- 1. settlements/s


async def _pg_url() -> tuple[str | None, str]:
    try:
        import asyncpg

        conn = await asyncpg.connect(PG_ADMIN, timeout=3)
    except Exception:  # noqa: BLE001 - PostgreSQL not reachable: that row is skipped
        return None, ""
    name = f"gpupool_bench_{uuid.uuid4().hex[:8]}"
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}", name


async def _drop(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN, timeout=3)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


async def settle_rates(url: str, receipts: int, sizes: list[int]) -> dict[str, float]:
    """Receipts settled per second: per request (hold + settle), and in batches of each size."""
    from gpupool.ledger import Charge, SqlLedger

    led = await SqlLedger.open(url)
    out: dict[str, float] = {}
    try:
        await led.deposit("bench-deposit", "client", 10**15)
        n = 300 if receipts >= 10_000 else 100  # the slow path: fewer requests, same rate
        t0 = time.perf_counter()
        for i in range(n):
            await led.hold(f"one-{i}", "client", 1_000)
            await led.settle(f"one-{i}", provider=f"gp{i % 8}", cost=700, fee_bps=500)
        out["per_request"] = n / (time.perf_counter() - t0)
        await led.hold("tab", "client", 10**14, holder="bench")
        for size in sizes:
            batches = max(2, min(receipts // size, 300))  # small batches are slow: a bounded number of them
            t0 = time.perf_counter()
            for b in range(batches):
                charges = [Charge(f"b{size}-{b}-{i}", "client", f"gp{i % 8}", 700) for i in range(size)]
                result = await led.settle_batch(f"batch-{size}-{b}", charges, 500, holder="bench")
                assert len(result.paid) == size, result.rejected
            out[f"batch_{size}"] = batches * size / (time.perf_counter() - t0)
        problems = await led.verify()
        assert problems == [], problems
    finally:
        await led.close()
    return out


# ---------------------------------------------------------------- 2. gateway rps with and without billing


def _wrk(url: str, key: str, model: str, seconds: float) -> dict[str, float]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16})
    proc = subprocess.run([tool_path("wrk"), "-t1", "-c32", f"-d{seconds:g}s", "--timeout", "5s", "-s", str(LUA),
                           url + "/v1/chat/completions"], capture_output=True, text=True, timeout=seconds + 60,
                          env={**os.environ, "BENCH_BODY": body, "BENCH_KEY": key})
    m = re.search(r"^WRK_JSON (.*)$", proc.stderr, re.M)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    out = json.loads(m.group(1))
    return {"rps": out["requests"] / (out["duration_us"] / 1e6), "p50_ms": out["latency_us"]["p50"] / 1000,
            "p99_ms": out["latency_us"]["p99"] / 1000, "errors": sum(out["errors"].values()),
            "requests": out["requests"]}


def billing_cost(rounds: int, seconds: float) -> dict[str, Any]:
    import httpx

    from gpupool.devnet import Network

    tmp = Path(tempfile.mkdtemp(prefix="gpupool-ledger-bench-"))
    net = Network(tmp)
    try:
        url = net.start_gateway()
        for serve, extra in (("free=echo:chat", []), ("paid=echo:chat", ["--price", "paid=100000/400000"])):
            net.start_provider([serve], max_concurrency=128, extra=["--max-queue", "512", *extra])
        net.wait_for_models({"free": 1, "paid": 1}, timeout=60)
        key = net.dev_key()
        for model in ("free", "paid"):  # warm up, and check both answer
            r = httpx.post(url + "/v1/chat/completions", timeout=30, headers={"Authorization": f"Bearer {key}"},
                           json={"model": model, "messages": [{"role": "user", "content": "hello"}]})
            r.raise_for_status()
            print(f"  {model}: usage {r.json()['usage']}", flush=True)
        runs: dict[str, list[dict[str, float]]] = {"free": [], "paid": []}
        for i in range(rounds):
            order = ("free", "paid") if i % 2 == 0 else ("paid", "free")
            for model in order:
                runs[model].append(_wrk(url, key, model, seconds))
                print(f"  round {i + 1}/{rounds} {model}: {runs[model][-1]['rps']:,.0f} req/s", flush=True)
        time.sleep(1.0)
        account = httpx.get(url + "/v1/account", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
    finally:
        net.stop()
    rps_ratio = median(ratio(p["rps"], f["rps"]) for f, p in zip(runs["free"], runs["paid"]))
    return {"rounds": runs, "rps_free": median(r["rps"] for r in runs["free"]),
            "rps_paid": median(r["rps"] for r in runs["paid"]), "rps_ratio_paid_vs_free": rps_ratio,
            "p50_free_ms": median(r["p50_ms"] for r in runs["free"]),
            "p50_paid_ms": median(r["p50_ms"] for r in runs["paid"]),
            "recent_charges_seen": len(account.get("recent_charges", [])),
            "errors": {m: sum(r["errors"] for r in rs) for m, rs in runs.items()},
            "target_ratio": TARGET_RPS_RATIO, "met": rps_ratio >= TARGET_RPS_RATIO}


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer receipts, rounds and seconds")
    ap.add_argument("--skip", nargs="*", default=[], choices=["sql", "gateway", "evm"])
    args = ap.parse_args()
    receipts = 2_000 if args.quick else 20_000
    sizes = [1, 100, 1000]
    results: dict[str, Any] = {}

    if "sql" not in args.skip:
        tmp = Path(tempfile.mkdtemp(prefix="gpupool-ledger-"))
        rows = []
        results["sql"] = {"sqlite": asyncio.run(settle_rates(f"sqlite+aiosqlite:///{tmp / 'l.db'}", receipts, sizes))}
        pg, name = asyncio.run(_pg_url())
        if pg:
            try:
                results["sql"]["postgresql"] = asyncio.run(settle_rates(pg, receipts, sizes))
            finally:
                asyncio.run(_drop(name))
        for backend, r in results["sql"].items():
            rows.append([backend, f"{r['per_request']:,.0f}"] + [f"{r[f'batch_{s}']:,.0f}" for s in sizes]
                        + [f"{r['batch_100'] / r['per_request']:.0f}x"])
        print_table(["backend", "hold+settle /s"] + [f"batch {s} /s" for s in sizes] + ["batch100 vs per-req"],
                    rows, "receipts settled per second (SQL ledger)")

    if "gateway" not in args.skip:
        print("gateway request rate, free model vs priced model (wrk -c32):", flush=True)
        g = results["gateway"] = billing_cost(rounds=2 if args.quick else 5, seconds=4 if args.quick else 8)
        print_table(["model", "req/s (median)", "p50 ms", "errors (all rounds)"],
                    [["free (no billing)", f"{g['rps_free']:,.0f}", f"{g['p50_free_ms']:.2f}", g["errors"]["free"]],
                     ["priced (billing)", f"{g['rps_paid']:,.0f}", f"{g['p50_paid_ms']:.2f}", g["errors"]["paid"]]],
                    f"billing keeps {g['rps_ratio_paid_vs_free']:.1%} of the request rate "
                    f"(target >= {TARGET_RPS_RATIO:.0%}: {'met' if g['met'] else 'NOT met'})")

    if "evm" not in args.skip:
        from evm import run_evm_bench  # bench/ledger/evm.py

        evm_rows = asyncio.run(run_evm_bench([1, 10, 100]))
        results["evm"] = evm_rows
        print_table(list(evm_rows[0].keys()), [list(r.values()) for r in evm_rows],
                    "EVM batch settlement (in-process chain)")

    path = write_json("ledger", results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
