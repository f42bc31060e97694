"""Overhead benchmark: what does a hop through gpupool cost, next to nginx and LiteLLM?

    .venv/bin/python bench/overhead/run.py                 # ~7 min; writes bench/results/overhead.json
    .venv/bin/python bench/overhead/run.py --duration 5 --rounds 1 --no-profile   # quick look

The same small, non-streaming chat completion is sent with `wrk` to:

  direct           the minimal backend (bench/overhead/minimal_backend.py), the baseline
  gpupool          gateway -> provider (WebSocket) -> `echo` backend (devnet.Network)
  nginx            nginx reverse proxy (upstream keepalive) -> minimal backend
  litellm          LiteLLM proxy, one worker, model routed to the minimal backend
  gpupool-upstream gateway -> provider -> `upstream` backend -> minimal backend (same
                   final hop as nginx and LiteLLM; not part of the issue's targets)

For each, per round: latency with 1 connection (`wrk -c1 --latency`) and throughput
with 32 connections (`wrk -c32`). Rounds interleave the targets so drift on this
shared machine hits them alike; the table shows medians over rounds, "added"
latency as the per-round difference to `direct`, and rps ratios. wrk runs one
thread (`-t1`), but it still takes CPU from the servers on a 2-core machine.

Then (unless --no-profile) py-spy samples the gateway and the provider during one
more 32-connection run; top functions go to the JSON and the console, and the raw
collapsed stacks to bench/results/overhead-profile-*.txt.

Needs: wrk and nginx (`apt-get install wrk nginx`); LiteLLM and py-spy in a venv of
their own (`bash bench/overhead/setup.sh`, run automatically if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import (  # noqa: E402
    BENCH_DIR,
    REPO_ROOT,
    RESULTS_DIR,
    Background,
    Missing,
    cpu_seconds,
    free_port,
    median,
    need_gpupool,
    need_tools,
    print_table,
    profile_text,
    pyspy_path,
    start_pyspy,
    summarize_profile,
    ratio,
    system_cpu_busy,
    tool_path,
    wait_port,
    write_json,
)

LITELLM_VENV = BENCH_DIR / ".venv-litellm"
LUA = HERE / "post.lua"
MODEL = "echo"
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16},
                  separators=(",", ":"))
PATH = "/v1/chat/completions"
ALL_TARGETS = ["direct", "gpupool", "nginx", "litellm", "gpupool-upstream"]

TARGETS_ISSUE = {"added_p50_ms": 1.0, "added_p99_ms": 3.0, "rps": 2000.0, "x_litellm": 20.0}


@dataclass
class Target:
    name: str
    url: str  # base URL, no path
    key: str
    # Processes whose CPU is accounted: the proxy's own (the minimal backend only for `direct`).
    pids: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------- servers


def start_minimal(tmp: Path, procs: list[Background]) -> Target:
    port = free_port()
    p = Background("minimal", [sys.executable, str(HERE / "minimal_backend.py"), "--port", str(port)],
                   tmp / "minimal.log")
    procs.append(p)
    wait_port(port, 15, p.popen, "minimal backend", p.log)
    return Target("direct", f"http://127.0.0.1:{port}", "none", {"minimal": p.pid})


NGINX_CONF = """\
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def start_nginx(tmp: Path, backend: Target, procs: list[Background]) -> Target:
    prefix = tmp / "nginx"
    prefix.mkdir()
    port = free_port()
    backend_port = int(backend.url.rsplit(":", 1)[1])
    # As root, nginx's workers would switch to 'nobody' and could not write the temp prefix.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, backend_port=backend_port, user=user))
    nginx = tool_path("nginx")
    args = [nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"]
    if _nginx_has_e(nginx):
        args[1:1] = ["-e", str(prefix / "error.log")]  # else it first opens /var/log/nginx/error.log
    p = Background("nginx", args, tmp / "nginx.log")
    procs.append(p)
    wait_port(port, 15, p.popen, "nginx", p.log)
    return Target("nginx", f"http://127.0.0.1:{port}", "none", {"nginx": p.pid})


def _nginx_has_e(nginx: str) -> bool:
    out = subprocess.run([nginx, "-h"], capture_output=True, text=True).stderr
    return "-e filename" in out


LITELLM_CONF = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {api_base}
      api_key: sk-unused
general_settings:
  master_key: {key}
litellm_settings:
  telemetry: false
  drop_params: true
"""


def ensure_litellm() -> Path:
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.exists():
        print("bench/.venv-litellm is missing: running bench/overhead/setup.sh (a few minutes)", flush=True)
        subprocess.run(["bash", str(HERE / "setup.sh")], check=True)
    return exe


def start_litellm(tmp: Path, backend: Target, procs: list[Background]) -> Target:
    exe = ensure_litellm()
    port = free_port()
    key = "sk-bench-" + os.urandom(8).hex()
    conf = tmp / "litellm.yaml"
    conf.write_text(LITELLM_CONF.format(model=MODEL, api_base=backend.url + "/v1", key=key))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "LITELLM_TELEMETRY": "False", "DISABLE_ADMIN_UI": "True", "NO_DOCS": "True",
           "PYTHONUNBUFFERED": "1"}
    env.pop("DATABASE_URL", None)
    p = Background("litellm", [str(exe), "--config", str(conf), "--host", "127.0.0.1", "--port", str(port),
                               "--num_workers", "1"], tmp / "litellm.log", env=env, cwd=tmp)
    procs.append(p)
    wait_port(port, 180, p.popen, "litellm", p.log)
    return Target("litellm", f"http://127.0.0.1:{port}", key, {"litellm": p.pid})


def start_gpupool(tmp: Path, backend: Target, want_upstream: bool) -> tuple[Any, list[Target]]:
    from gpupool.devnet import Network

    net = Network(home=tmp / "gpupool")
    try:
        url = net.start_gateway()
        # 32 client connections: concurrency well above that, so the provider never refuses.
        net.start_provider(["echo=echo:chat"], max_concurrency=128, extra=["--max-queue", "512"])
        wanted = {"echo": 1}
        if want_upstream:
            net.start_provider([f"echo-up=upstream:{backend.url}/v1?model={MODEL}"], max_concurrency=128,
                               extra=["--max-queue", "512"])
            wanted["echo-up"] = 1
        net.wait_for_models(wanted, timeout=60)
        key = net.dev_key()
    except BaseException:
        net.stop()
        raise
    gw = net.gateway.popen.pid
    targets = [Target("gpupool", url, key, {"gateway": gw, "provider": net.providers[0].popen.pid})]
    if want_upstream:
        targets.append(Target("gpupool-upstream", url, key, {"gateway": gw, "provider": net.providers[1].popen.pid}))
    return net, targets


def body_for(target: Target) -> str:
    return BODY.replace('"model":"echo"', '"model":"echo-up"') if target.name == "gpupool-upstream" else BODY


def check(target: Target) -> None:
    """One request with a real client: the path must answer a valid ChatCompletion saying hello."""
    import httpx

    r = httpx.post(target.url + PATH, content=body_for(target),
                   headers={"Authorization": f"Bearer {target.key}", "Content-Type": "application/json"},
                   timeout=30)
    if r.status_code != 200:
        raise RuntimeError(f"{target.name}: HTTP {r.status_code}: {r.text[:300]}")
    data = r.json()
    content = data["choices"][0]["message"]["content"]
    if data.get("object") != "chat.completion" or content.strip() != "hello":
        raise RuntimeError(f"{target.name}: unexpected answer {r.text[:300]}")


# ---------------------------------------------------------------- wrk


def wrk(target: Target, connections: int, duration: float, latency: bool) -> dict[str, Any]:
    args = [tool_path("wrk"), "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "5s", "-s", str(LUA)]
    if latency:
        args.append("--latency")
    args.append(target.url + PATH)
    env = {**os.environ, "BENCH_BODY": body_for(target), "BENCH_KEY": target.key}
    cpu0 = {name: cpu_seconds(pid) for name, pid in target.pids.items()}
    busy0, total0 = system_cpu_busy()
    t0 = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=duration + 60)
    wall = time.monotonic() - t0
    busy1, total1 = system_cpu_busy()
    cpu = {name: cpu_seconds(target.pids[name]) - c for name, c in cpu0.items()}
    m = re.search(r"^WRK_JSON (.*)$", proc.stderr, re.M)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed for {target.name} ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    out = json.loads(m.group(1))
    errors = sum(out["errors"].values())
    secs = out["duration_us"] / 1e6
    n = max(out["requests"], 1)
    return {
        "connections": connections,
        "requests": out["requests"],
        "errors": errors,
        "error_detail": out["errors"],
        "rps": out["requests"] / secs if secs else 0.0,
        "p50_ms": out["latency_us"]["p50"] / 1000,
        "p90_ms": out["latency_us"]["p90"] / 1000,
        "p99_ms": out["latency_us"]["p99"] / 1000,
        "p999_ms": out["latency_us"]["p999"] / 1000,
        "mean_ms": out["latency_us"]["mean"] / 1000,
        "max_ms": out["latency_us"]["max"] / 1000,
        # CPU time the proxy spent per request (all its processes), in microseconds.
        "server_cpu_us_per_req": sum(cpu.values()) / n * 1e6,
        "cpu_us_per_req_by_process": {name: c / n * 1e6 for name, c in cpu.items()},
        "server_cpu_cores": sum(cpu.values()) / wall,
        "machine_cpu_busy": (busy1 - busy0) / (total1 - total0) if total1 > total0 else float("nan"),
    }


# ---------------------------------------------------------------- profile


def profile(target: Target, gateway_pid: int, provider_pid: int, duration: float) -> dict[str, Any]:
    """py-spy on the gateway and the provider during one more c=32 run (not counted in the table)."""
    if pyspy_path() is None:
        print("py-spy not found: skipping the profile (bash bench/overhead/setup.sh installs it)", flush=True)
        return {}
    time.sleep(2.0)  # the previous wrk run's connections are still being torn down for a moment
    span = max(2.0, duration - 2)
    outs = {"gateway": (gateway_pid, RESULTS_DIR / "overhead-profile-gateway.txt"),
            "provider": (provider_pid, RESULTS_DIR / "overhead-profile-provider.txt")}
    spies = {name: start_pyspy(pid, span, path, RATE) for name, (pid, path) in outs.items()}
    time.sleep(1.0)  # let py-spy attach before the load starts
    run = wrk(target, 32, duration, latency=False)
    result: dict[str, Any] = {"rps_while_profiled": run["rps"], "seconds": span, "rate_hz": RATE}
    for name, spy in spies.items():
        assert spy is not None
        text, _ = spy.communicate(timeout=60)
        path = outs[name][1]
        if spy.returncode != 0 or not path.exists():
            print(f"py-spy on the {name} failed (it needs ptrace: run as root or set "
                  f"kernel.yama.ptrace_scope=0):\n{text[-600:]}", flush=True)
            continue
        result[name] = summarize_profile(path, span, RATE)
        result[name]["raw"] = str(path.relative_to(REPO_ROOT))
    return result


RATE = 250


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description="gpupool overhead vs direct, nginx and LiteLLM (wrk)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run [10]")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported [3]")
    ap.add_argument("--connections", type=int, default=32, help="connections for the rps run [32]")
    ap.add_argument("--targets", default=",".join(ALL_TARGETS), help=f"comma list of {ALL_TARGETS}")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of the gateway")
    ap.add_argument("--out", default="overhead", help="results name: bench/results/<out>.json")
    ap.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (temp dir) afterwards")
    args = ap.parse_args()
    load_start = os.getloadavg()
    names = [t for t in args.targets.split(",") if t]
    if "direct" not in names:
        names.insert(0, "direct")
    unknown = set(names) - set(ALL_TARGETS)
    if unknown:
        ap.error(f"unknown targets {sorted(unknown)}")

    try:
        need_tools("wrk", *(["nginx"] if "nginx" in names else []), install="apt-get install wrk nginx")
        need_gpupool()
        if "litellm" in names or not args.no_profile:
            ensure_litellm()
    except Missing as exc:
        print(exc, file=sys.stderr)
        return 2
    except subprocess.CalledProcessError:
        print("error: bench/overhead/setup.sh failed (LiteLLM venv); run it by hand to see why, "
              "or pass --targets without litellm and --no-profile", file=sys.stderr)
        return 2

    procs: list[Background] = []
    net = None
    tmp = Path(tempfile.mkdtemp(prefix="gpupool-overhead-"))
    try:
        print(f"starting servers (logs in {tmp})", flush=True)
        direct = start_minimal(tmp, procs)
        targets = {"direct": direct}
        if "nginx" in names:
            targets["nginx"] = start_nginx(tmp, direct, procs)
        if "gpupool" in names or "gpupool-upstream" in names:
            net, gts = start_gpupool(tmp, direct, "gpupool-upstream" in names)
            targets.update({t.name: t for t in gts})
        if "litellm" in names:
            print("  starting LiteLLM (slow to import)...", flush=True)
            targets["litellm"] = start_litellm(tmp, direct, procs)
        order = [n for n in ALL_TARGETS if n in names]
        for n in order:
            check(targets[n])
        print("all paths answer a valid ChatCompletion; warming up", flush=True)
        for n in order:
            wrk(targets[n], args.connections, 2, latency=False)

        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in order}
        for r in range(args.rounds):
            rot = order[r % len(order):] + order[:r % len(order)]
            for n in rot:
                lat = wrk(targets[n], 1, args.duration, latency=True)
                thr = wrk(targets[n], args.connections, args.duration, latency=False)
                runs[n].append({"round": r, "latency_c1": lat, "throughput": thr})
                print(f"  round {r + 1}/{args.rounds} {n:17s} p50 {lat['p50_ms']:7.3f} ms  "
                      f"p99 {lat['p99_ms']:7.3f} ms  rps@{args.connections} {thr['rps']:9.0f}"
                      f"{'  ERRORS ' + str(lat['errors'] + thr['errors']) if lat['errors'] + thr['errors'] else ''}",
                      flush=True)

        summary = summarize(runs, order, args.rounds)
        prof: dict[str, Any] = {}
        if not args.no_profile and net is not None and "gpupool" in targets:
            print("profiling the gateway and provider with py-spy during one more "
                  f"{args.connections}-connection run...", flush=True)
            prof = profile(targets["gpupool"], net.gateway.popen.pid, net.providers[0].popen.pid, args.duration)

        print()
        text = report(summary, order, args)
        if prof:
            text += "\n\n" + report_profile(prof)
        doc = {
            "config": {"duration_s": args.duration, "rounds": args.rounds, "connections": args.connections,
                       "wrk_threads": 1, "body": BODY, "targets_from_issue": TARGETS_ISSUE,
                       "gpupool_provider": "echo=echo:chat, max_concurrency=128, max_queue=512",
                       "litellm": _litellm_version(), "nginx": _nginx_version(),
                       "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
            "summary": summary, "runs": runs, "profile": prof, "table": text,
        }
        path = write_json(args.out, doc)
        print(f"\nwrote {path.relative_to(REPO_ROOT)}")
        return 0
    finally:
        if net is not None:
            net.stop()
        for p in reversed(procs):
            p.stop()
        if args.keep_logs:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def summarize(runs: dict[str, list[dict[str, Any]]], order: list[str], rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in order:
        rs = runs[n]
        lat = [x["latency_c1"] for x in rs]
        thr = [x["throughput"] for x in rs]
        base = runs["direct"]
        s = {
            "p50_ms": median(x["p50_ms"] for x in lat),
            "p99_ms": median(x["p99_ms"] for x in lat),
            "rps": median(x["rps"] for x in thr),
            "p50_ms_at_c": median(x["p50_ms"] for x in thr),
            "p99_ms_at_c": median(x["p99_ms"] for x in thr),
            "errors": sum(x["errors"] for x in lat + thr),
            "server_cpu_us_per_req": median(x["server_cpu_us_per_req"] for x in thr),
            "server_cpu_cores": median(x["server_cpu_cores"] for x in thr),
            "cpu_us_per_req_by_process": {k: median(x["cpu_us_per_req_by_process"][k] for x in thr)
                                          for k in thr[0]["cpu_us_per_req_by_process"]},
            "machine_cpu_busy_at_c": median(x["machine_cpu_busy"] for x in thr),
            # Paired per round with the direct run of the same round, then the median.
            "added_p50_ms": median(rs[i]["latency_c1"]["p50_ms"] - base[i]["latency_c1"]["p50_ms"]
                                   for i in range(rounds)),
            "added_p99_ms": median(rs[i]["latency_c1"]["p99_ms"] - base[i]["latency_c1"]["p99_ms"]
                                   for i in range(rounds)),
            "rps_vs_direct": median(ratio(rs[i]["throughput"]["rps"], base[i]["throughput"]["rps"])
                                    for i in range(rounds)),
            "rps_per_round": [x["rps"] for x in thr],
            "p50_ms_per_round": [x["p50_ms"] for x in lat],
            "p99_ms_per_round": [x["p99_ms"] for x in lat],
        }
        out[n] = s
    if "gpupool" in out and "litellm" in out:
        g, li = runs["gpupool"], runs["litellm"]
        out["gpupool"]["rps_vs_litellm"] = median(ratio(g[i]["throughput"]["rps"], li[i]["throughput"]["rps"])
                                                  for i in range(rounds))
    if "gpupool" in out:
        g = out["gpupool"]
        out["verdict"] = {
            "added_p50_le_1ms": g["added_p50_ms"] <= TARGETS_ISSUE["added_p50_ms"],
            "added_p99_le_3ms": g["added_p99_ms"] <= TARGETS_ISSUE["added_p99_ms"],
            "rps_ge_2000": g["rps"] >= TARGETS_ISSUE["rps"],
        }
        if "rps_vs_litellm" in g:
            out["verdict"]["gt_20x_litellm_rps"] = g["rps_vs_litellm"] > TARGETS_ISSUE["x_litellm"]
    return out


def report(summary: dict[str, Any], order: list[str], args: argparse.Namespace) -> str:
    c = args.connections
    rows = []
    for n in order:
        s = summary[n]
        rows.append([n, s["p50_ms"], s["p99_ms"], None if n == "direct" else s["added_p50_ms"],
                     None if n == "direct" else s["added_p99_ms"], s["rps"], s["rps_vs_direct"],
                     s["p99_ms_at_c"], s["server_cpu_us_per_req"], s["errors"]])
    headers = ["path", "p50 ms (c=1)", "p99 ms (c=1)", "added p50 ms", "added p99 ms", f"rps (c={c})",
               "rps / direct", f"p99 ms (c={c})", "proxy CPU µs/req", "errors"]
    title = (f"overhead: median of {args.rounds} rounds x {args.duration:g}s per run, wrk -t1; "
             f"added = path - direct, paired per round")
    text = print_table(headers, rows, title)
    v = summary.get("verdict")
    if v:
        g = summary["gpupool"]
        lines = [
            "",
            "gpupool vs the issue's targets:",
            f"  added p50 {g['added_p50_ms']:.3f} ms (target <= 1 ms): {'PASS' if v['added_p50_le_1ms'] else 'FAIL'}",
            f"  added p99 {g['added_p99_ms']:.3f} ms (target <= 3 ms): {'PASS' if v['added_p99_le_3ms'] else 'FAIL'}",
            f"  {g['rps']:.0f} requests/s at c={c} (target >= 2,000): {'PASS' if v['rps_ge_2000'] else 'FAIL'}",
        ]
        if "gt_20x_litellm_rps" in v:
            lines.append(f"  {g['rps_vs_litellm']:.1f}x LiteLLM's rps (target > 20x): "
                         f"{'PASS' if v['gt_20x_litellm_rps'] else 'FAIL'}")
        extra = "\n".join(lines)
        print(extra, flush=True)
        text += "\n" + extra
    return text


def report_profile(prof: dict[str, Any]) -> str:
    parts = [f"py-spy, {prof['seconds']:g}s at {prof['rate_hz']} Hz during a c=32 run on gpupool "
             f"({prof.get('rps_while_profiled', 0):.0f} rps while sampled); % of main-thread samples"]
    for name in ("gateway", "provider"):
        if prof.get(name):
            parts.append("\n" + profile_text(name, prof[name]))
    text = "\n".join(parts)
    print(text, flush=True)
    return text


def _litellm_version() -> str:
    try:
        out = subprocess.run([str(LITELLM_VENV / "bin" / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or "?"
    except OSError:
        return "not installed"


def _nginx_version() -> str:
    try:
        return subprocess.run([tool_path("nginx"), "-v"], capture_output=True, text=True).stderr.strip()
    except OSError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
