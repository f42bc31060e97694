"""Failover benchmark: every answer exact, and what each fault costs over a no-fault run.

    .venv/bin/python bench/failover/run.py                # ~3 min; bench/results/failover.json
    .venv/bin/python bench/failover/run.py --requests 96 --scenarios none,stall

Real processes, failoverbench-style: a gateway and 4 providers, each fronting its own
OpenAI-compatible engine (`tests/fake_engine.py`, through the `upstream` backend: a
greedy echo "model", 21 tokens `--delay-ms` apart); `--clients` threads stream chat
completions through the official `openai` client until `--requests` are done. After a
quarter of them one fault starts, on the provider with the most work in flight then (routing
favours the fastest, so a fixed one may have none), and lasts to the end of the scenario:

| scenario  | fault                                                                         |
| --------- | ----------------------------------------------------------------------------- |
| none      | no fault: the baseline, measured in the same run                              |
| stall     | its engine stops sending after 5 tokens of every answer, connection kept open |
| drop      | its engine cuts every answer's connection after 5 tokens                      |
| 500s      | its engine answers every request with HTTP 500                                |
| sigstop   | its process is stopped (SIGSTOP), its socket open                             |
| restart   | the gateway is killed (SIGKILL) and started again on the same port            |

Every answer is checked against the exact no-fault text. A client retries (from
scratch, as an SDK would) only when its stream broke off (an error, or no finish
reason), every 0.25 s for up to `--retry-for` seconds; a complete but wrong answer is counted `wrong`, never retried. Latency is
per request at the client, retries included; the table shows p50/p99/worst and the
p99 and worst added over the no-fault run (targets: +2 s p99, +5 s worst).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))  # the repository root: tests.fake_engine

import openai  # noqa: E402
from common import percentile, print_table, write_json  # noqa: E402

from gpupool.devnet import Network  # noqa: E402
from tests.fake_engine import EngineProc  # noqa: E402

SCENARIOS = ("none", "stall", "drop", "500s", "sigstop", "restart")
WORDS = " ".join(f"w{i}" for i in range(20))
P99_TARGET_S, WORST_TARGET_S = 2.0, 5.0


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    wrong: int = 0
    failed: int = 0  # still broken after the client's retries
    retries: int = 0
    continued: int = 0  # answers the gateway continued on another provider
    lock: threading.Lock = field(default_factory=threading.Lock)


def one_stream(client: openai.OpenAI, text: str) -> tuple[str, bool, bool]:
    """(text, finished, continued) of one streamed chat."""
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}], stream=True)
    parts, finished, continued = [], False, False
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finished = finished or bool(chunk.choices[0].finish_reason)
        continued = continued or bool(((chunk.model_extra or {}).get("gpupool") or {}).get("continued"))
    return "".join(parts), finished, continued


def ask(client: openai.OpenAI, i: int, run: Run, retry_for_s: float) -> None:
    expected = f"{WORDS} r{i}"
    started = time.monotonic()
    while True:
        try:
            text, finished, continued = one_stream(client, expected)
        except openai.APIError:
            finished = False
        if finished or time.monotonic() - started > retry_for_s:
            break
        with run.lock:
            run.retries += 1
        time.sleep(0.25)
    took = time.monotonic() - started
    with run.lock:
        if not finished:
            run.failed += 1
            return
        run.latencies.append(took)
        run.continued += continued
        run.wrong += text != expected


def start_pool(home: Path, engines: list[EngineProc], port: int = 0) -> Network:
    net = Network(home)
    net.start_gateway(port=port)
    for engine in engines:
        net.start_provider([f"m=upstream:{engine.url}?model=fake"], max_concurrency=8)
    net.wait_for_models({"m": len(engines)}, timeout=90)
    return net


def busiest(net: Network) -> int:
    """Index of the provider with the most requests in flight now (routing favours some)."""
    index = {p.node_id: i for i, p in enumerate(net.providers)}
    rows = net.admin("/admin/providers")
    return index[max(rows, key=lambda r: r["in_flight"])["node_id"]]


def restart_gateway(net: Network) -> None:
    port = int(net.gateway_url.rsplit(":", 1)[1])
    assert net.gateway is not None
    net.gateway.popen.send_signal(signal.SIGKILL)
    net.gateway.popen.wait(10)
    net.start_gateway(port=port)


def scenario(name: str, home: Path, args: argparse.Namespace) -> dict[str, Any]:
    engines = [EngineProc(delay_ms=args.delay_ms) for _ in range(args.providers)]
    net: Network | None = None
    try:
        net = start_pool(home / name, engines)
        # The SDK's own retries (connection refused, 503 while providers reconnect) stay on.
        client = openai.OpenAI(base_url=net.gateway_url + "/v1", api_key=net.dev_key(), max_retries=2,
                               timeout=args.client_timeout)
        for i in range(8):  # warm: connections, first measurements of each provider's speed
            one_stream(client, f"warm {i}")
        run = Run()
        done = threading.Event()
        fault_at = max(1, args.requests // 4)
        fault_t: float | None = None
        victim = [0]
        restarted = [0.0]  # seconds the restarted gateway took to be ready  # the provider (and its engine) the fault hits: the busiest when it starts

        def inject() -> None:
            nonlocal fault_t
            while len(run.latencies) + run.failed < fault_at and not done.is_set():
                time.sleep(0.01)
            fault_t = time.monotonic()
            victim[0] = busiest(net)
            if name == "stall":
                engines[victim[0]].fault("stall", after=5)
            elif name == "drop":
                engines[victim[0]].fault("drop", after=5)
            elif name == "500s":
                engines[victim[0]].fault("error")
            elif name == "sigstop":
                net.kill_provider(net.providers[victim[0]], signal.SIGSTOP)
            elif name == "restart":
                restart_gateway(net)
                restarted[0] = time.monotonic() - fault_t

        started = time.monotonic()
        injector = threading.Thread(target=inject, daemon=True)
        if name != "none":
            injector.start()
        with cf.ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(lambda i: ask(client, i, run, args.retry_for), range(args.requests)))
        done.set()
        wall = time.monotonic() - started
        if name == "sigstop":
            net.kill_provider(net.providers[victim[0]], signal.SIGCONT)
        faulted = engines[victim[0]].stats()["faulted"] if name in ("stall", "drop", "500s") else None
    finally:
        if net is not None:
            for p in net.providers:
                net.kill_provider(p, signal.SIGCONT)
            net.stop(timeout=10)
        for engine in engines:
            engine.stop()
    lat = run.latencies
    return {"requests": args.requests, "exact": len(lat) - run.wrong, "wrong": run.wrong, "failed": run.failed,
            "client_retries": run.retries, "continued": run.continued, "engine_faulted": faulted,
            "fault_after_s": None if fault_t is None else fault_t - started, "wall_s": wall,
            "gateway_ready_after_restart_s": restarted[0] if name == "restart" else None,
            "p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99), "worst_s": max(lat) if lat else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=240, help="streams per scenario")
    ap.add_argument("--clients", type=int, default=12, help="concurrent client threads")
    ap.add_argument("--providers", type=int, default=4)
    ap.add_argument("--delay-ms", type=float, default=20.0, help="the engines' time per token")
    ap.add_argument("--retry-for", type=float, default=30.0,
                    help="seconds a client keeps retrying a stream that broke off (every 0.25 s)")
    ap.add_argument("--client-timeout", type=float, default=30.0)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = ap.parse_args()
    names = [s for s in args.scenarios.split(",") if s]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    if "none" not in names:
        names.insert(0, "none")  # the baseline is always measured in the same run
    home = Path(tempfile.mkdtemp(prefix="gpupool-bench-failover-"))
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        print(f"scenario {name} ...", flush=True)
        results[name] = scenario(name, home, args)
    base = results["none"]
    rows = []
    for name, r in results.items():
        added_p99, added_worst = r["p99_s"] - base["p99_s"], r["worst_s"] - base["worst_s"]
        r["added_p99_s"], r["added_worst_s"] = added_p99, added_worst
        r["meets_targets"] = (r["exact"] == r["requests"] and added_p99 <= P99_TARGET_S
                              and added_worst <= WORST_TARGET_S)
        rows.append([name, f"{r['exact']}/{r['requests']}", r["wrong"], r["failed"], r["client_retries"],
                     r["continued"], r["p50_s"], r["p99_s"], r["worst_s"], added_p99, added_worst,
                     "yes" if r["meets_targets"] else "NO"])
    print_table(["scenario", "exact", "wrong", "failed", "client retries", "continued", "p50 s", "p99 s", "worst s",
                 "+p99 s", "+worst s", "targets"], rows,
                title=f"failover: {args.clients} concurrent streams, {args.providers} providers fronting engines "
                      f"({args.delay_ms:.0f} ms/token), fault after a quarter of {args.requests} requests")
    print(f"results: {write_json('failover', {'settings': vars(args), 'scenarios': results})}")


if __name__ == "__main__":
    main()
