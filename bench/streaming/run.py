"""Streaming benchmark: 1,000 concurrent SSE streams through the gateway.

    .venv/bin/python bench/streaming/run.py                     # ~1.5 min; bench/results/streaming.json
    .venv/bin/python bench/streaming/run.py --streams 250,500,1000   # a sweep: where does it break?
    .venv/bin/python bench/streaming/run.py --streams 200 --rounds 1 --no-profile   # quick look

Providers run the `echo` backend with `?delay_ms=D`, so each stream's tokens leave
the provider D ms apart. Client processes (bench/streaming/client.py, raw asyncio
sockets, uvloop) open all streams within --ramp-s and time every token on arrival.

Inter-token latency (ITL): every gap between consecutive tokens of a stream, at the
client. "Added" ITL = the gateway phase's percentile minus the baseline's, where the
baseline is the same client with the same streams and the same D straight from
bench/overhead/minimal_backend.py (asyncio.sleep(D) between words, as echo does):
what the client, timers and this machine add with no gateway at all. Phases
alternate baseline, gateway, for --rounds rounds; medians are reported.

Gateway memory per open stream: a separate phase first, on a slow model
(`echo-slow`, 1 token per second) so that all streams are surely open at once and
the CPU is idle: (peak VmRSS - VmRSS before, with providers connected and warmed)
/ the most streams open at once. VmRSS is read from /proc/<gateway pid>/status
every 50 ms. Python rarely returns heap to the OS, so this is the cold cost: the
first time the gateway holds that many streams.

Then (unless --no-profile) py-spy samples the gateway during one more gateway
phase at the largest stream count; the summary goes to the JSON and the console.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import (  # noqa: E402
    REPO_ROOT,
    accept_queue,
    RESULTS_DIR,
    Background,
    Missing,
    cpu_seconds,
    free_port,
    median,
    need_gpupool,
    percentile,
    print_table,
    profile_text,
    pyspy_path,
    raise_fd_limit,
    rss_kib,
    start_pyspy,
    summarize_profile,
    system_cpu_busy,
    wait_port,
    write_json,
)

MINIMAL = HERE.parent / "overhead" / "minimal_backend.py"
CLIENT = HERE / "client.py"
TARGET_ADDED_P99_MS = 5.0
SLOW_DELAY_MS = 1000
SLOW_TOKENS = 8


class Sampler(threading.Thread):
    """VmRSS (KiB) of some processes every `period` seconds, and their CPU over the whole span."""

    def __init__(self, pids: dict[str, int], period: float = 0.05, listen_port: int = 0):
        super().__init__(daemon=True)
        self.pids = pids
        self.listen_port = listen_port
        self.accept_queue: list[int] = []
        self.period = period
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        self.cpu1: dict[str, float] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.monotonic(), {k: rss_kib(p) for k, p in self.pids.items()}))
            if self.listen_port:
                self.accept_queue.append(accept_queue(self.listen_port))
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.cpu1 = {k: cpu_seconds(p) for k, p in self.pids.items()}


def run_clients(url: str, key: str, model: str, procs_n: int, tmp: Path, tag: str, streams: int,
                tokens: int, ramp: float, timeout: float) -> list[dict[str, Any]]:
    procs = []
    per = [streams // procs_n + (1 if i < streams % procs_n else 0) for i in range(procs_n)]
    start_at = time.monotonic() + 1.5  # the client processes' own start-up (imports)
    for i, n in enumerate(per):
        out = tmp / f"{tag}-{i}.json"
        procs.append((out, subprocess.Popen(
            [sys.executable, str(CLIENT), "--url", url, "--key", key, "--model", model, "--streams", str(n),
             "--tokens", str(tokens), "--start-at", repr(start_at), "--ramp-s", str(ramp),
             "--procs", str(procs_n), "--index", str(i), "--timeout", str(timeout), "--out", str(out)])))
    results: list[dict[str, Any]] = []
    for out, p in procs:
        if p.wait() != 0:
            raise RuntimeError(f"client process failed ({p.returncode})")
        results += json.loads(out.read_text())["streams"]
    return results


def max_open(streams: list[dict[str, Any]]) -> tuple[int, float]:
    """Most streams open at once (first token received, not yet ended), and when."""
    events = []
    for s in streams:
        if "t_first" in s:
            events += [(s["t_first"], 1), (s["t_end"], -1)]
    events.sort()
    best, at, cur = 0, 0.0, 0
    for t, d in events:
        cur += d
        if cur > best:
            best, at = cur, t
    return best, at


def analyse(streams: list[dict[str, Any]], tokens: int) -> dict[str, Any]:
    gaps = [g for s in streams for g in s.get("gaps_ms", [])]
    ttft = [(s["t_first"] - s["t_open"]) * 1000 for s in streams if "t_first" in s]
    # Connected (the kernel completed the handshake) to response headers: includes the time a
    # connection waits in the server's accept queue and, for the gateway, the first event.
    headers = [(s["t_headers"] - s["t_connected"]) * 1000 for s in streams if "t_headers" in s]
    errors = [s["error"] for s in streams if s.get("error")]
    n_open, at = max_open(streams)
    # Gaps that ended once every stream had its first token: the steady phase, without
    # the ramp's connection set-up (where garbage-collection pauses showed up).
    all_open = max((s["t_first"] for s in streams if "t_first" in s), default=math.inf)
    steady = []
    for s in streams:
        t = s.get("t_first", 0.0)
        for g in s.get("gaps_ms", []):
            t += g / 1000
            if t >= all_open:
                steady.append(g)
    return {
        "streams": len(streams),
        "complete": sum(1 for s in streams if s.get("completed") and s.get("tokens") == tokens),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "gaps": len(gaps),
        "itl_ms": {"p50": percentile(gaps, 50), "p90": percentile(gaps, 90), "p99": percentile(gaps, 99),
                   "p999": percentile(gaps, 99.9), "max": max(gaps, default=math.nan)},
        "itl_ms_after_all_open": {"gaps": len(steady), "p50": percentile(steady, 50),
                                  "p99": percentile(steady, 99)},
        "ttft_ms": {"p50": percentile(ttft, 50), "p99": percentile(ttft, 99), "max": max(ttft, default=math.nan)},
        "connected_to_headers_ms": {"p50": percentile(headers, 50), "p99": percentile(headers, 99)},
        "max_open": n_open,
        "max_open_at": at,
    }


def phase(name: str, url: str, key: str, model: str, args: argparse.Namespace, tmp: Path, tag: str,
          streams: int, tokens: int, ramp: float, watch: dict[str, int]) -> dict[str, Any]:
    sampler = Sampler(watch, listen_port=int(url.rsplit(":", 1)[1]))
    busy0, total0 = system_cpu_busy()
    sampler.start()
    t0 = time.monotonic()
    result = run_clients(url, key, model, args.client_procs, tmp, tag, streams, tokens, ramp, args.timeout)
    wall = time.monotonic() - t0
    sampler.stop()
    busy1, total1 = system_cpu_busy()
    res = analyse(result, tokens)
    res["name"] = name
    res["wall_s"] = wall
    res["machine_cpu_busy"] = (busy1 - busy0) / (total1 - total0) if total1 > total0 else math.nan
    res["accept_queue_max"] = max(sampler.accept_queue, default=-1)
    res["tokens"] = sum(s.get("tokens", 0) for s in result)
    # CPU per token delivered: for the gateway phase, the gateway's (connection set-up included).
    res["cpu_us_per_token"] = {k: (sampler.cpu1[k] - sampler.cpu0[k]) / max(1, res["tokens"]) * 1e6 for k in watch}
    res["cpu_cores"] = {k: (sampler.cpu1[k] - sampler.cpu0[k]) / wall for k in watch}
    res["rss_kib"] = {}
    for k in watch:
        series = [(t, v[k]) for t, v in sampler.samples]
        res["rss_kib"][k] = {
            "first": series[0][1] if series else 0,
            "peak": max((v for _, v in series), default=0),
            "at_max_open": min(series, key=lambda tv: abs(tv[0] - res["max_open_at"]))[1] if series else 0,
            "last": series[-1][1] if series else 0,
        }
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description="1,000 concurrent SSE streams through the gateway")
    ap.add_argument("--streams", default="1000", help="concurrent streams; a comma list runs a sweep [1000]")
    ap.add_argument("--tokens", type=int, default=100, help="tokens per stream [100]")
    ap.add_argument("--delay-ms", type=float, default=50.0, help="provider spacing between tokens [50]")
    ap.add_argument("--ramp-s", type=float, default=1.5, help="open all streams within this long [1.5]")
    ap.add_argument("--providers", type=int, default=2, help="echo providers [2]")
    ap.add_argument("--max-concurrency", type=int, default=0,
                    help="per provider [default: the largest stream count, so one provider could take all]")
    ap.add_argument("--client-procs", type=int, default=2, help="client processes [2]")
    ap.add_argument("--rounds", type=int, default=2, help="baseline+gateway rounds per stream count [2]")
    ap.add_argument("--timeout", type=float, default=120.0, help="per stream, seconds")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory-per-stream phase")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of the gateway")
    ap.add_argument("--out", default="streaming", help="results name: bench/results/<out>.json")
    ap.add_argument("--keep-logs", action="store_true", help="keep logs and per-stream data (temp dir)")
    args = ap.parse_args()
    load_start = os.getloadavg()
    counts = [int(x) for x in args.streams.split(",") if x.strip()]
    top = max(counts)
    if args.tokens * args.delay_ms / 1000 <= args.ramp_s + 1:
        print(f"warning: streams last {args.tokens * args.delay_ms / 1000:.1f}s, not much longer than the "
              f"{args.ramp_s}s ramp: they will not all be open at once", file=sys.stderr)
    try:
        need_gpupool()
    except Missing as exc:
        print(exc, file=sys.stderr)
        return 2
    fds = raise_fd_limit(65536)  # inherited by the gateway, providers and clients
    if fds < top + 200:
        print(f"error: open-file limit {fds} < {top + 200}; raise it (ulimit -n)", file=sys.stderr)
        return 2

    from gpupool.devnet import Network

    maxc = args.max_concurrency or top
    serve = [f"echo=echo:chat?delay_ms={args.delay_ms:g}", f"echo-slow=echo:chat?delay_ms={SLOW_DELAY_MS}"]
    tmp = Path(tempfile.mkdtemp(prefix="gpupool-streaming-"))
    procs: list[Background] = []
    print(f"starting minimal backend and gateway + {args.providers} providers serving {serve} "
          f"(max_concurrency={maxc}, max_queue={maxc} each); logs in {tmp}", flush=True)
    port = free_port()
    backend = Background("minimal", [sys.executable, str(MINIMAL), "--port", str(port),
                                     "--stream-delay-ms", str(args.delay_ms)], tmp / "minimal.log")
    procs.append(backend)
    net = Network(home=tmp / "gpupool")
    try:
        wait_port(port, 15, backend.popen, "minimal backend", backend.log)
        base_url = f"http://127.0.0.1:{port}"
        gw_url = net.start_gateway()
        for _ in range(args.providers):
            net.start_provider(serve, max_concurrency=maxc, extra=["--max-queue", str(maxc)])
        net.wait_for_models({"echo": args.providers, "echo-slow": args.providers}, timeout=60)
        key = net.dev_key()
        gw_pid = net.gateway.popen.pid
        watch_gw = {"gateway": gw_pid, **{f"provider-{i + 1}": p.popen.pid for i, p in enumerate(net.providers)}}

        # Warm both paths (imports, first allocations) with a few short streams.
        for url in (base_url, gw_url):
            warm = run_clients(url, key, "echo", 1, tmp, "warm", 20, 5, 0.2, 30)
            bad = [s for s in warm if s.get("error") or not s.get("completed")]
            if bad:
                raise RuntimeError(f"warm-up streams failed against {url}: {bad[0]}")
        time.sleep(1.0)
        rss_idle = rss_kib(gw_pid)
        print(f"gateway VmRSS idle (providers connected, warmed): {rss_idle / 1024:.1f} MiB", flush=True)

        memory: dict[str, Any] = {}
        if not args.no_memory:
            ramp = min(3.0, SLOW_TOKENS * SLOW_DELAY_MS / 1000 / 3)
            m = phase("memory", gw_url, key, "echo-slow", args, tmp, "mem", top, SLOW_TOKENS, ramp,
                      {"gateway": gw_pid})
            rss = m["rss_kib"]["gateway"]
            memory = {"streams": top, "model": f"echo-slow ({SLOW_DELAY_MS} ms x {SLOW_TOKENS} tokens)",
                      "max_open": m["max_open"], "complete": m["complete"], "errors": m["errors"],
                      "rss_idle_kib": rss_idle, "rss_peak_kib": rss["peak"], "rss_at_max_open_kib": rss["at_max_open"],
                      "per_open_stream_kib": (rss["peak"] - rss_idle) / m["max_open"] if m["max_open"] else math.nan,
                      "gateway_cpu_cores": m["cpu_cores"]["gateway"]}
            print(f"  memory: {m['max_open']}/{top} streams open at once, gateway VmRSS {rss_idle / 1024:.1f} -> "
                  f"{rss['peak'] / 1024:.1f} MiB = {memory['per_open_stream_kib']:.1f} KiB per open stream", flush=True)
            time.sleep(1.0)

        sweep: dict[int, list[dict[str, Any]]] = {}
        for n in counts:
            sweep[n] = []
            for r in range(args.rounds):
                base = phase("baseline", base_url, "none", "echo", args, tmp, f"base{n}-{r}", n, args.tokens,
                             args.ramp_s, {"backend": backend.pid})
                _line(n, r, args.rounds, base)
                time.sleep(1.0)
                gw = phase("gateway", gw_url, key, "echo", args, tmp, f"gw{n}-{r}", n, args.tokens, args.ramp_s,
                           watch_gw)
                gw["added_itl_ms"] = {p: gw["itl_ms"][p] - base["itl_ms"][p] for p in ("p50", "p90", "p99", "p999")}
                _line(n, r, args.rounds, gw)
                sweep[n].append({"baseline": base, "gateway": gw})
                time.sleep(2.0)

        prof: dict[str, Any] = {}
        if not args.no_profile:
            prof = profile(gw_url, key, args, tmp, top, gw_pid, watch_gw)

        summary = summarize(sweep, memory, rss_idle, rss_kib(gw_pid))
        print()
        text = report(summary, args, maxc)
        if prof.get("gateway"):
            ptext = (f"py-spy on the gateway during one more {top}-stream phase "
                     f"({prof['seconds']:g}s at {prof['rate_hz']} Hz; % of main-thread samples)\n"
                     + profile_text("gateway", prof["gateway"]))
            print("\n" + ptext, flush=True)
            text += "\n\n" + ptext
        doc = {"config": {**vars(args), "stream_counts": counts, "max_concurrency_per_provider": maxc,
                          "max_queue_per_provider": maxc, "provider_serve": serve,
                          "target_added_itl_p99_ms": TARGET_ADDED_P99_MS,
                          "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
               "summary": summary, "memory": memory, "sweep": {str(k): v for k, v in sweep.items()},
               "profile": prof, "table": text, "gateway_log_errors": _log_errors(net.gateway.log_path)}
        path = write_json(args.out, doc)
        print(f"\nwrote {path.relative_to(REPO_ROOT)}")
        return 0
    finally:
        net.stop()
        for p in procs:
            p.stop()
        if args.keep_logs:
            print(f"logs and per-stream data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def profile(url: str, key: str, args: argparse.Namespace, tmp: Path, n: int, gw_pid: int,
            watch: dict[str, int]) -> dict[str, Any]:
    if pyspy_path() is None:
        print("py-spy not found: skipping the profile (bash bench/overhead/setup.sh installs it)", flush=True)
        return {}
    rate = 250
    seconds = args.tokens * args.delay_ms / 1000 + args.ramp_s
    out = RESULTS_DIR / "streaming-profile-gateway.txt"
    print(f"profiling the gateway with py-spy during one more {n}-stream phase...", flush=True)
    spy = start_pyspy(gw_pid, seconds, out, rate)
    assert spy is not None
    time.sleep(1.0)
    res = phase("gateway (profiled)", url, key, "echo", args, tmp, "prof", n, args.tokens, args.ramp_s, watch)
    text, _ = spy.communicate(timeout=120)
    if spy.returncode != 0 or not out.exists():
        print(f"py-spy failed (it needs ptrace: run as root or set kernel.yama.ptrace_scope=0):\n{text[-600:]}")
        return {}
    return {"seconds": seconds, "rate_hz": rate, "itl_p99_ms_while_profiled": res["itl_ms"]["p99"],
            "gateway": summarize_profile(out, seconds, rate), "raw": str(out.relative_to(REPO_ROOT))}


def _line(n: int, r: int, rounds: int, res: dict[str, Any]) -> None:
    extra = ""
    if res["name"] == "gateway":
        extra = (f"  gw CPU {res['cpu_cores']['gateway']:.2f} cores, "
                 f"RSS peak {res['rss_kib']['gateway']['peak'] / 1024:.1f} MiB")
    print(f"  {n} streams, round {r + 1}/{rounds} {res['name']:8s} complete {res['complete']}/{n} "
          f"errors {res['errors']} max open {res['max_open']}  ITL p50 {res['itl_ms']['p50']:.2f} "
          f"p99 {res['itl_ms']['p99']:.2f} (all open: {res['itl_ms_after_all_open']['p99']:.2f}) "
          f"max {res['itl_ms']['max']:.1f} ms  TTFT p99 {res['ttft_ms']['p99']:.1f} ms  accept queue max {res['accept_queue_max']}{extra}", flush=True)


def summarize(sweep: dict[int, list[dict[str, Any]]], memory: dict[str, Any], rss_idle: int,
              rss_after: int) -> dict[str, Any]:
    out: dict[str, Any] = {"by_streams": {}}
    for n, rounds in sweep.items():
        def med(side: str, *path: str) -> float:
            vals = []
            for r in rounds:
                v: Any = r[side]
                for k in path:
                    v = v[k]
                vals.append(v)
            return median(vals)

        row: dict[str, Any] = {}
        for side in ("baseline", "gateway"):
            row[side] = {
                "itl_p50_ms": med(side, "itl_ms", "p50"), "itl_p90_ms": med(side, "itl_ms", "p90"),
                "itl_p99_ms": med(side, "itl_ms", "p99"), "itl_p999_ms": med(side, "itl_ms", "p999"),
                "itl_max_ms": med(side, "itl_ms", "max"),
                "ttft_p50_ms": med(side, "ttft_ms", "p50"), "ttft_p99_ms": med(side, "ttft_ms", "p99"),
                "headers_p99_ms": med(side, "connected_to_headers_ms", "p99"),
                "accept_queue_max": med(side, "accept_queue_max"),
                "max_open": med(side, "max_open"), "complete": med(side, "complete"),
                "errors": med(side, "errors"), "machine_cpu_busy": med(side, "machine_cpu_busy"),
            }
        g, b = row["gateway"], row["baseline"]
        for p in ("p50", "p99", "p999"):
            g[f"added_itl_{p}_ms"] = med("gateway", "added_itl_ms", p)
        g["gateway_cpu_cores"] = med("gateway", "cpu_cores", "gateway")
        g["gateway_cpu_us_per_token"] = med("gateway", "cpu_us_per_token", "gateway")
        g["providers_cpu_us_per_token"] = median(
            sum(v for k, v in r["gateway"]["cpu_us_per_token"].items() if k != "gateway") for r in rounds)
        b["server_cpu_us_per_token"] = med("baseline", "cpu_us_per_token", "backend")
        g["providers_cpu_cores"] = median(sum(v for k, v in r["gateway"]["cpu_cores"].items() if k != "gateway")
                                          for r in rounds)
        g["rss_peak_mib"] = max(r["gateway"]["rss_kib"]["gateway"]["peak"] for r in rounds) / 1024
        g["pass_added_itl_p99"] = g["added_itl_p99_ms"] <= TARGET_ADDED_P99_MS
        out["by_streams"][n] = row
    out["memory"] = memory
    out["rss_idle_mib"] = rss_idle / 1024
    out["rss_after_mib"] = rss_after / 1024
    top = max(sweep)
    out["verdict"] = {"streams": top,
                      "added_itl_p99_ms": out["by_streams"][top]["gateway"]["added_itl_p99_ms"],
                      "added_itl_p99_le_5ms": out["by_streams"][top]["gateway"]["pass_added_itl_p99"]}
    return out


def report(s: dict[str, Any], args: argparse.Namespace, maxc: int) -> str:
    rows = []
    for n, row in s["by_streams"].items():
        b, g = row["baseline"], row["gateway"]
        rows.append([n, "baseline (minimal SSE server)", int(b["complete"]), int(b["errors"]), int(b["max_open"]),
                     b["itl_p50_ms"], b["itl_p99_ms"], b["itl_p999_ms"], b["itl_max_ms"], None, b["ttft_p99_ms"],
                     int(b["accept_queue_max"]), b["server_cpu_us_per_token"], b["machine_cpu_busy"] * 100])
        rows.append([n, "gateway -> echo providers", int(g["complete"]), int(g["errors"]), int(g["max_open"]),
                     g["itl_p50_ms"], g["itl_p99_ms"], g["itl_p999_ms"], g["itl_max_ms"], g["added_itl_p99_ms"],
                     g["ttft_p99_ms"], int(g["accept_queue_max"]), g["gateway_cpu_us_per_token"],
                     g["machine_cpu_busy"] * 100])
    title = (f"streaming: concurrent SSE streams x {args.tokens} tokens, provider spacing {args.delay_ms:g} ms; "
             f"{args.providers} providers (max_concurrency {maxc} each), {args.client_procs} client processes; "
             f"median of {args.rounds} rounds")
    text = print_table(["streams", "path", "complete", "errors", "max open", "ITL p50 ms", "ITL p99", "ITL p99.9",
                        "ITL max", "added p99", "TTFT p99 ms", "accept queue max", "server CPU µs/token", "machine CPU %"], rows, title)
    m = s["memory"]
    if m:
        mem = print_table(["gateway memory", "value"], [
            ["streams open at once (echo-slow, of)", f"{m['max_open']} of {m['streams']}"],
            ["VmRSS idle (providers connected, warmed), MiB", m["rss_idle_kib"] / 1024],
            ["VmRSS peak with the streams open, MiB", m["rss_peak_kib"] / 1024],
            ["per open stream, KiB", m["per_open_stream_kib"]],
            ["VmRSS at the end of the run, MiB", s["rss_after_mib"]],
        ], "")
        text += "\n\n" + mem
    v = s["verdict"]
    verdict = (f"\nadded inter-token latency p99 at {v['streams']} streams: {v['added_itl_p99_ms']:.2f} ms "
               f"(target <= {TARGET_ADDED_P99_MS:g} ms): {'PASS' if v['added_itl_p99_le_5ms'] else 'FAIL'}")
    print(verdict, flush=True)
    return text + "\n" + verdict


def _log_errors(path: Path) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [ln for ln in lines if "ERROR" in ln or "Traceback" in ln][:20]


if __name__ == "__main__":
    sys.exit(main())
