"""Many provider sessions on one gateway: what each one costs it (issue 17, item 5).

    .venv/bin/python bench/scale/run.py                     # 3 (baseline), 1,000, 3,000 sessions
    .venv/bin/python bench/scale/run.py --sizes 1000 --no-restart
    .venv/bin/python bench/scale/run.py --sizes 1000,3000,10000 --join-timeout 300

For each size a fresh gateway (`devnet.Network`, SQLite) and a light swarm
(bench/scale/swarm.py: several processes, many `GatewayLink` sessions each, the real
protocol: handshake, signed offer of --models echo models, hardware proofs, pings,
echo runs with receipts and signed statements). Measured per size:

- join: seconds from starting the swarm until every session is welcomed (and until
  every hardware proof is answered);
- idle: the gateway's CPU over --idle-s (share of one core, from /proc) and its RSS
  growth per session;
- latency: a client's p50/p99 over --requests sequential non-streaming echo chats
  (httpx), against the 3-session baseline: measured alone first, then kept running, each
  request at a size paired with one to the baseline (alternating order), and the ratios
  taken against those paired requests (the host's speed drifts over minutes);
- restart: SIGKILL the gateway, start it again on the same port and database, and
  time until every session is back; meanwhile a client keeps asking for a model that
  was served, and the answers' HTTP statuses are counted (404s are refusals).

Prints a table, says how each cost grows with sessions, writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (Missing, cpu_seconds, free_port, need_gpupool, percentile,  # noqa: E402
                    print_table, raise_fd_limit, ratio, rss_kib, write_json)

HERE = Path(__file__).resolve().parent
BASELINE = 3


class Swarm:
    """The swarm's processes and the sum of their latest counters."""

    def __init__(self, url: str, sessions: int, procs: int, args: argparse.Namespace, log_dir: Path):
        self.latest: dict[int, dict[str, Any]] = {}
        self.popens: list[subprocess.Popen[str]] = []
        procs = max(1, min(procs, sessions))
        per, extra = divmod(sessions, procs)
        first = 0
        for i in range(procs):
            count = per + (1 if i < extra else 0)
            cmd = [sys.executable, str(HERE / "swarm.py"), "--url", url, "--count", str(count), "--first",
                   str(first), "--models", str(args.models), "--reconnect-max-s", str(args.reconnect_max_s),
                   "--ramp-s", str(args.ramp_s)]
            err = open(log_dir / f"swarm-{i}.log", "ab")
            nice = args.swarm_nice
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True,
                                 start_new_session=True, preexec_fn=(lambda: os.nice(nice)) if nice else None)
            err.close()
            self.popens.append(p)
            threading.Thread(target=self._read, args=(i, p), daemon=True).start()
            first += count

    def _read(self, i: int, p: subprocess.Popen[str]) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            try:
                self.latest[i] = json.loads(line)
            except ValueError:
                pass

    def total(self, key: str) -> int:
        return sum(int(v.get(key, 0)) for v in list(self.latest.values()))

    def fresh(self, since: float) -> bool:
        """Every process has reported after `since` (wall clock)."""
        return len(self.latest) == len(self.popens) and all(v["t"] > since for v in self.latest.values())

    def dead(self) -> list[int]:
        return [p.pid for p in self.popens if p.poll() is not None]

    def pids(self) -> list[int]:
        return [p.pid for p in self.popens]

    def stop(self) -> None:
        for p in self.popens:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.popens:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


def wait_until(cond: Any, timeout: float, swarm: Swarm | list[Swarm], what: str) -> float | None:
    """Seconds until cond() held (polled every 50 ms), or None after `timeout` (or an error if a
    process of `swarm`, or of any of several, exited)."""
    swarms = swarm if isinstance(swarm, list) else [swarm]
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        if any(s.dead() for s in swarms):
            raise RuntimeError(f"a swarm process exited while waiting for {what}")
        time.sleep(0.05)
    return None


def chat(client: Any, url: str, key: str, model: str) -> tuple[int, float]:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}
    t0 = time.perf_counter()
    r = client.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    dt = (time.perf_counter() - t0) * 1000
    if r.status_code == 200 and r.json()["choices"][0]["message"]["content"] != "hello":
        raise RuntimeError(f"wrong echo answer: {r.text[:200]}")
    return r.status_code, dt


def routing_decisions(client: Any, urls: list[str]) -> dict[str, float]:
    """The gateways' routing decisions so far (`gpupool_routing_decisions_total` by decision, summed)."""
    out: dict[str, float] = {}
    for url in urls:
        for line in client.get(url + "/metrics").text.splitlines():
            if line.startswith("gpupool_routing_decisions_total{"):
                label, _, value = line.partition("} ")
                decision = label.split('"')[1]
                out[decision] = out.get(decision, 0.0) + float(value)
    return out


def latency(urls: list[str], key: str, model: str, n: int, budget_s: float,
            base: tuple[str, str] | None = None) -> dict[str, Any]:
    """`n` sequential chats after a warm-up, round-robin over `urls` (several: replicas behind a
    balancer); stops early after `budget_s` (a saturated gateway).
    Also counts the routing decisions they caused: at 10,000 sessions just joined, a request
    drawn to a provider that never answered before also runs as its trial (a second copy).

    `base`: the 3-session baseline gateway's (url, key), still running: each request here is
    paired with one there, in alternating order, so both see the same moments of a shared
    host whose speed drifts by 2-3x over minutes (measured: the baseline's own steps, run
    minutes apart, took 2.1-3.3x longer in one run). Its figures come back as `paired_base`."""
    import httpx

    t_end = time.monotonic() + budget_s
    with httpx.Client(timeout=max(1.0, budget_s / 2)) as client, httpx.Client(timeout=max(1.0, budget_s / 2)) as bc:
        warm: list[float] = []  # reported when the budget ends during the warm-up (a saturated gateway)
        for _ in range(max(10, n // 10)):  # warm-up: connections, the gateway's caches, the tab
            t0 = time.perf_counter()
            try:
                chat(client, urls[len(warm) % len(urls)], key, model)
                if base is not None:
                    chat(bc, base[0], base[1], model)
            except httpx.HTTPError:
                pass
            warm.append((time.perf_counter() - t0) * 1000)
            if time.monotonic() > t_end:
                break
        codes: dict[int, int] = {}
        times: list[float] = []
        base_times: list[float] = []
        before = routing_decisions(client, urls)
        for i in range(n):
            if time.monotonic() > t_end:
                break
            if base is not None and i % 2:
                base_times.append(chat(bc, base[0], base[1], model)[1])
            try:
                code, ms = chat(client, urls[i % len(urls)], key, model)
            except httpx.HTTPError:
                code, ms = 0, 0.0  # no answer within the client's timeout
            codes[code] = codes.get(code, 0) + 1
            if code == 200:
                times.append(ms)
            if base is not None and not i % 2:
                base_times.append(chat(bc, base[0], base[1], model)[1])
        after = routing_decisions(client, urls)
    decisions = {d: int(after[d] - before.get(d, 0.0)) for d in after if after[d] - before.get(d, 0.0)}
    out = {"routing_decisions": decisions, "requests": sum(codes.values()),
           "stopped_by_budget": sum(codes.values()) < n, "statuses": codes,
           "warmup_ms": [round(w, 1) for w in warm], "p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
           "mean_ms": sum(times) / len(times) if times else float("nan"), "times_ms": [round(t, 2) for t in times]}
    if base is not None:
        out["paired_base"] = {"requests": len(base_times), "p50_ms": percentile(base_times, 50),
                              "p99_ms": percentile(base_times, 99), "times_ms": [round(t, 2) for t in base_times]}
    return out


def latency_with_cpu(procs_of: dict[str, list[int]], urls: list[str], key: str, model: str, n: int,
                     budget_s: float, base: tuple[str, str] | None) -> dict[str, Any]:
    """`latency`, plus each role's CPU a request over it (`procs_of`: role -> its processes' pids).
    Each side's own: wall times on a shared host drift, CPU per request much less; and the swarm's
    share says how much of the 2 cores the stand-ins took."""
    def cpu_by_role() -> dict[str, float]:
        return {k: sum(cpu_seconds(p, children=False) for p in ps) for k, ps in procs_of.items()}
    before = cpu_by_role()
    lat = latency(urls, key, model, n, budget_s, base)
    lat["cpu_us_per_request"] = {k: round((v - before[k]) * 1e6 / max(1, lat["requests"]))
                                 for k, v in cpu_by_role().items()}
    return lat


def measure(size: int, args: argparse.Namespace, tmp: Path, base: tuple[str, str] | None = None,
            keep: list[Any] | None = None, base_procs: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """One size, start to finish. `base`: the baseline's (url, key) to pair latency with, `base_procs`
    its processes' pids (`base_gateway`, `base_swarm`: their CPU is counted over the paired requests);
    `keep`: leave this network running and append (net, swarm, url, key) to it (the baseline's)."""
    from gpupool.devnet import Network

    home = tmp / f"n{size}"
    net = Network(home=home)
    port = free_port()
    extra = ["--max-provider-sessions", str(max(size + 100, 10_000))]
    if args.no_hardware_proofs:
        extra += ["--hardware-proof-max-n", "0"]
    out: dict[str, Any] = {"sessions": size}
    swarm: Swarm | None = None
    try:
        url = net.start_gateway(port=port, extra=extra)
        key = net.dev_key()
        time.sleep(2.0)  # let the fresh gateway's start-up work settle before the RSS reading
        assert net.gateway is not None
        rss0 = rss_kib(net.gateway.popen.pid)
        procs = 1 if size <= 50 else args.procs
        print(f"[{size}] gateway up ({url}, RSS {rss0 / 1024:.0f} MiB); starting {size:,} sessions in "
              f"{procs} processes", flush=True)
        gw_pid = net.gateway.popen.pid
        cpu_gw0 = cpu_seconds(gw_pid, children=False)
        swarm = Swarm(net.ws_url, size, procs, args, home / "logs")
        t_join = wait_until(lambda: swarm.total("connected") >= size, args.join_timeout, swarm, "joins")
        out["join_s"] = t_join
        out["joined"] = swarm.total("connected")
        # CPU per join: on a shared machine the wall time says how much CPU the gateway got,
        # this says how much a join needs (the swarm's processes are measured apart).
        out["join_cpu_s"] = cpu_seconds(gw_pid, children=False) - cpu_gw0
        out["swarm_join_cpu_s"] = sum(cpu_seconds(p) for p in swarm.pids())
        out["join_cpu_ms_per_session"] = out["join_cpu_s"] * 1000 / max(1, out["joined"])
        out["loadavg_at_join"] = os.getloadavg()
        out["handshake_failures_during_join"] = swarm.total("errors")
        if t_join is None:
            # Measured anyway, at the sessions that did join: the point where the gateway saturates.
            print(f"[{size}] only {out['joined']:,} of {size:,} joined within {args.join_timeout:g} s "
                  f"({out['handshake_failures_during_join']:,} failed handshakes); measuring what joined",
                  flush=True)
        else:
            print(f"[{size}] all {size:,} joined in {t_join:.1f} s", flush=True)
        print(f"[{size}] join CPU: gateway {out['join_cpu_s']:.1f} s ({out['join_cpu_ms_per_session']:.2f} ms a "
              f"session), swarm {out['swarm_join_cpu_s']:.1f} s; load average {out['loadavg_at_join'][0]:.1f}",
              flush=True)
        if not args.no_hardware_proofs and t_join is not None:
            t_proof = wait_until(lambda: swarm.total("proofs") >= size, args.join_timeout, swarm, "proofs")
            out["proved_s"] = None if t_proof is None else t_join + t_proof
            print(f"[{size}] hardware proofs answered: {swarm.total('proofs'):,}"
                  + (f" (all by {t_join + t_proof:.1f} s)" if t_proof is not None else ""), flush=True)
        if not args.skip_idle:
            time.sleep(args.settle_s)
            gw = net.gateway.popen.pid
            c0, s0, t0 = cpu_seconds(gw, children=False), sum(cpu_seconds(p) for p in swarm.pids()), time.monotonic()
            time.sleep(args.idle_s)
            c1, s1, t1 = cpu_seconds(gw, children=False), sum(cpu_seconds(p) for p in swarm.pids()), time.monotonic()
            rss1 = rss_kib(gw)
            out.update(idle_cpu_core=(c1 - c0) / (t1 - t0), swarm_idle_cpu_core=(s1 - s0) / (t1 - t0),
                       gateway_rss_mib=rss1 / 1024, rss_kib_per_session=(rss1 - rss0) / max(1, out["joined"]),
                       swarm_rss_kib_per_session=sum(rss_kib(p) for p in swarm.pids()) / max(1, out["joined"]))
            print(f"[{size}] idle: gateway {out['idle_cpu_core']:.3f} core, swarm "
                  f"{out['swarm_idle_cpu_core']:.3f} core; RSS {rss1 / 1024:.0f} MiB "
                  f"({out['rss_kib_per_session']:.1f} KiB/session)", flush=True)
        if not args.skip_latency:
            procs_of = {"gateway": [gw_pid], "swarm": swarm.pids(), **(base_procs or {}), "client": [os.getpid()]}
            lat = latency_with_cpu(procs_of, [url], key, f"{args.prefix}0", args.requests, args.latency_budget_s,
                                   base)
            out["latency"] = lat
            paired = lat.get("paired_base")
            print(f"[{size}] client p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms over "
                  f"{lat['requests']} requests (statuses {lat['statuses']}; 0: timed out; routing decisions "
                  f"{lat['routing_decisions']})"
                  + (f"; the baseline, paired: p50 {paired['p50_ms']:.2f} ms, p99 {paired['p99_ms']:.2f} ms"
                     if paired else "")
                  + (f"; warm-up requests took {[round(w) for w in lat['warmup_ms']]} ms" if lat["stopped_by_budget"]
                     else ""), flush=True)
            print(f"[{size}] CPU a request (µs, by process): {lat['cpu_us_per_request']}", flush=True)
        if not args.no_restart and t_join is not None:
            out["restart"] = restart(net, port, extra, swarm, size, key, args)
        if keep is not None:
            keep.append((net, swarm, url, key))
        return out
    finally:
        if not keep:  # kept (the baseline's, for pairing): the caller stops it
            if swarm is not None:
                swarm.stop()
            net.stop()


def restart(net: Any, port: int, extra: list[str], swarm: Swarm, size: int, key: str,
            args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    assert net.gateway is not None
    t_kill = time.monotonic()
    os.killpg(net.gateway.popen.pid, signal.SIGKILL)
    net.gateway.popen.wait(10)
    since = time.time()
    dropped = wait_until(lambda: swarm.fresh(since) and swarm.total("connected") == 0, 30, swarm, "the drop")
    url = net.start_gateway(port=port, extra=extra)
    t_ready = time.monotonic()
    print(f"[{size}] gateway SIGKILLed and restarted in {t_ready - t_kill:.1f} s; waiting for sessions", flush=True)
    codes: dict[int, int] = {}
    errors: dict[str, int] = {}  # status 0: what the client met instead of an answer
    first_ok: float | None = None
    done_at: float | None = None
    with httpx.Client(timeout=10) as client:
        while time.monotonic() - t_ready < args.join_timeout:
            if swarm.fresh(time.time() - 0.3) and swarm.total("connected") >= size:
                done_at = time.monotonic()
                break
            t0 = time.monotonic()
            try:
                code, _ = chat(client, url, key, f"{args.prefix}0")
            except httpx.HTTPError as exc:
                code = 0  # no answer at all
                what = f"{type(exc).__name__} after {time.monotonic() - t0:.1f} s at {t0 - t_ready:.1f} s"
                errors[what] = errors.get(what, 0) + 1
            codes[code] = codes.get(code, 0) + 1
            if code == 200 and first_ok is None:
                first_ok = time.monotonic() - t_ready
            time.sleep(0.05)
    res = {"drop_seen_s": dropped, "gateway_restart_s": t_ready - t_kill,
           "all_back_after_ready_s": None if done_at is None else done_at - t_ready,
           "all_back_after_kill_s": None if done_at is None else done_at - t_kill,
           "first_200_after_ready_s": first_ok, "statuses_meanwhile": codes, "client_errors": errors,
           "back": swarm.total("connected")}
    print(f"[{size}] all back {fmt_s(res['all_back_after_kill_s'])} after the kill "
          f"({fmt_s(res['all_back_after_ready_s'])} after the new gateway was ready); client statuses "
          f"meanwhile {codes}" + (f"; no answer: {errors}" if errors else ""), flush=True)
    return res


def fmt_s(v: float | None) -> str:
    return "not within the timeout" if v is None else f"{v:.1f} s"


def added_p50(r: dict[str, Any]) -> float | None:
    """p50 over the baseline's requests paired with these (None: not measured or not paired)."""
    lat = r.get("latency") or {}
    paired = lat.get("paired_base")
    return lat["p50_ms"] - paired["p50_ms"] if paired and "p50_ms" in lat else None


def growth(results: list[dict[str, Any]]) -> list[str]:
    """How each cost grows: the exponent k in cost ~ sessions^k between the two largest sizes, over baseline."""
    base = results[0]
    big = [r for r in results[1:] if r.get("join_s") is not None]
    lines: list[str] = []
    if len(big) < 1:
        return lines
    metrics = [("idle CPU", lambda r: r.get("idle_cpu_core"), "core"),
               ("p50 latency", added_p50, "ms"),
               ("join time", lambda r: r.get("join_s"), "s")]
    for name, get, unit in metrics:
        pts = [(r["sessions"], get(r)) for r in big if get(r) is not None]
        b = (get(base) or 0.0) if get is not added_p50 else 0.0
        if not pts:
            continue
        per_k = [f"{(v - b) / n * 1000:.3g} {unit} per 1,000 at {n:,}" for n, v in pts]
        line = f"{name}: {', '.join(per_k)}"
        if len(pts) >= 2 and pts[-2][1] - b > 0 and pts[-1][1] - b > 0:
            k = math.log((pts[-1][1] - b) / (pts[-2][1] - b)) / math.log(pts[-1][0] / pts[-2][0])
            kind = "linear" if 0.8 <= k <= 1.25 else ("sublinear" if k < 0.8 else "superlinear")
            line += f"; grows as sessions^{k:.2f} ({kind})"
        lines.append(line)
    return lines


def add_swarm_and_client_args(ap: argparse.ArgumentParser) -> None:
    """The options run.py and fleet.py share: the swarm's sessions and the client's measurements."""
    ap.add_argument("--models", type=int, default=8, help="echo models each session offers [8]")
    ap.add_argument("--prefix", default="echo-", help=argparse.SUPPRESS)
    ap.add_argument("--requests", type=int, default=1000, help="sequential client requests per size "
                    "(p99: the tenth slowest) [1000]")
    ap.add_argument("--latency-budget-s", type=float, default=60.0, help="stop the latency measurement after "
                    "this long (each request times out at half of it) [60]")
    ap.add_argument("--idle-s", type=float, default=20.0, help="seconds of idle CPU measurement [20]")
    ap.add_argument("--settle-s", type=float, default=5.0, help="wait after joins before measuring idle [5]")
    ap.add_argument("--join-timeout", type=float, default=240.0, help="give up on joins (and reconnects) "
                    "after this long [240]")
    ap.add_argument("--reconnect-max-s", type=float, default=30.0, help="sessions' longest reconnect backoff "
                    "[30, the provider's default]")
    ap.add_argument("--swarm-nice", type=int, default=0, help="niceness of the swarm's processes: they stand in "
                    "for 10,000 machines elsewhere, and share this one's 2 cores with the gateway [0]")
    ap.add_argument("--ramp-s", type=float, default=0.0, help="spread the sessions' first dials over this long "
                    "(an arrival rate of sessions/ramp a second; reconnects after the restart are not spread) [0: "
                    "all at once]. At 10,000 on a shared 2-core machine the swarm's own processes could not "
                    "complete their dials in time when all started at once")


def main() -> int:
    ap = argparse.ArgumentParser(description="gpupool: provider sessions on one gateway (join, idle cost, "
                                 "latency, restart)")
    ap.add_argument("--sizes", default="1000,3000", help="comma list of session counts; the 3-session "
                    "baseline is always measured first [1000,3000]")
    ap.add_argument("--procs", type=int, default=4, help="swarm processes for sizes over 50 [4]")
    add_swarm_and_client_args(ap)
    ap.add_argument("--no-hardware-proofs", action="store_true", help="run the gateway with hardware proofs "
                    "off (--hardware-proof-max-n 0)")
    ap.add_argument("--skip-idle", action="store_true", help="skip the idle CPU and RSS measurement")
    ap.add_argument("--skip-latency", action="store_true", help="skip the client latency measurement")
    ap.add_argument("--no-restart", action="store_true", help="skip the SIGKILL-and-restart measurement")
    ap.add_argument("--out", default="scale", help="results name: bench/results/<out>.json [scale]")
    args = ap.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--sizes must be a comma list of integers, not {args.sizes!r}")
    if any(s < 1 for s in sizes):
        ap.error("every size must be at least 1")
    try:
        need_gpupool()
    except Missing as exc:
        print(exc, file=sys.stderr)
        return 2
    fd = raise_fd_limit(65536)  # the gateway and the swarm inherit it: one socket per session each
    need = max(sizes) + 1000
    if fd < need:
        print(f"warning: open-file limit is {fd}, under the {need:,} the largest size needs "
              f"(ulimit -Hn); joins may fail", file=sys.stderr)
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="gpupool-scale-"))
    print(f"logs in {tmp}", flush=True)
    # The baseline stays up: each size's latency is paired with it request by request.
    kept: list[Any] = []
    try:
        results = [measure(BASELINE, args, tmp, keep=kept)]
        pair = (kept[0][2], kept[0][3]) if kept else None
        pair_procs = {"base_gateway": [kept[0][0].gateway.popen.pid], "base_swarm": kept[0][1].pids()} \
            if kept else None
        for size in [s for s in sizes if s != BASELINE]:
            results.append(measure(size, args, tmp, base=pair, base_procs=pair_procs))
    finally:
        for net, swarm, _, _ in kept:
            swarm.stop()
            net.stop()
    base = results[0]
    rows = []
    for r in results:
        lat = r.get("latency") or {}
        rs = r.get("restart") or {}
        # Against the baseline's requests paired with these (same moments); the first row is the baseline.
        bl = lat.get("paired_base") or (base.get("latency") or {})
        rows.append([r["sessions"], r.get("joined"), r.get("join_s"), r.get("proved_s"),
                     r.get("join_cpu_ms_per_session"), r.get("idle_cpu_core"),
                     r.get("rss_kib_per_session") if r["sessions"] > BASELINE else None,
                     lat.get("p50_ms"), ratio(lat.get("p50_ms", math.nan), bl.get("p50_ms", math.nan)),
                     lat.get("p99_ms"), ratio(lat.get("p99_ms", math.nan), bl.get("p99_ms", math.nan)),
                     rs.get("all_back_after_kill_s"), (rs.get("statuses_meanwhile") or {}).get(404, 0)
                     if rs else None])
    print()
    text = print_table(["sessions", "joined", "join s", "proved s", "join CPU ms/session", "idle CPU (core)", "RSS KiB/session", "p50 ms",
                        "p50 ×base", "p99 ms", "p99 ×base", "reconnect s", "404s in restart"], rows,
                       title=f"bench/scale: {args.models} models per session, hardware proofs "
                             f"{'off' if args.no_hardware_proofs else 'on'}")
    lines = growth(results)
    for line in lines:
        print(line)
    doc = {"config": {**{k: v for k, v in vars(args).items()}, "baseline_sessions": BASELINE,
                      "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "fd_limit": fd},
           "results": results, "growth": lines, "table": text}
    path = write_json(args.out, doc)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
