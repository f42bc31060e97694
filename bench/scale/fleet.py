"""bench/scale across gateway replicas (issue 17, item 5: "the same with 3 gateway replicas").

    .venv/bin/python bench/scale/fleet.py                                # 10,000 sessions, 3 gateways
    .venv/bin/python bench/scale/fleet.py --sessions 300 --requests 200  # quick look

--replicas gateways (each its own `devnet.Network` process) share one PostgreSQL database
and one Redis, as docs/operations.md runs them, and --sessions provider sessions are spread
evenly over them, as a load balancer in front spreads providers' dials (the swarm of
bench/scale/swarm.py: the real protocol, hardware proofs included). Measured as
bench/scale/run.py measures one gateway:

- join: from starting the swarms until every session is welcomed;
- idle: all gateways' CPU together over --idle-s (share of one core), their RSS growth per session;
- latency: --requests sequential echo chats, round-robin over the replicas, each paired with one
  to a 3-session single gateway (SQLite, measured alone first: the first row);
- restart: gateway 1 SIGKILLed and started again on its port; time until its sessions are all
  back, and the statuses a client asking it for a served model got meanwhile (404s are refusals).

Prints a table and writes bench/results/<out>.json. Needs PostgreSQL (--pg) and Redis (--redis).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (Missing, cpu_seconds, free_port, need_gpupool, print_table,  # noqa: E402
                    raise_fd_limit, ratio, rss_kib, write_json)
from replicas import PG, REDIS, reachable  # noqa: E402
from run import (BASELINE, Swarm, add_swarm_and_client_args, latency_with_cpu, measure,  # noqa: E402
                 restart, wait_until)


def measure_fleet(args: argparse.Namespace, tmp: Path, base: tuple[str, str],
                  base_procs: dict[str, list[int]]) -> dict[str, Any]:
    from gpupool.devnet import Network

    n, r = args.sessions, args.replicas
    nets = [Network(tmp / f"replica-{i}", db=args.pg) for i in range(r)]
    extra = ["--max-provider-sessions", str(max(n + 100, 10_000)), "--redis-url", args.redis]
    ports = [free_port() for _ in nets]
    shares = [n // r + (1 if i < n % r else 0) for i in range(r)]
    out: dict[str, Any] = {"sessions": n, "replicas": r, "sessions_per_replica": shares}
    swarms: list[Swarm] = []
    try:
        # One after another: gateways creating one database's tables at once could collide.
        urls = [net.start_gateway(port=port, extra=extra) for net, port in zip(nets, ports)]
        key = nets[0].dev_key()  # one key in the shared database, good on every replica
        time.sleep(2.0)
        gw_pids = [net.gateway.popen.pid for net in nets if net.gateway is not None]
        rss0 = sum(rss_kib(p) for p in gw_pids)
        procs = max(1, args.procs // r)
        print(f"[fleet] {r} gateways up ({', '.join(urls)}); starting {n:,} sessions, {shares[0]:,} a gateway, "
              f"{procs} swarm processes each", flush=True)
        cpu0 = sum(cpu_seconds(p, children=False) for p in gw_pids)
        for i, net in enumerate(nets):
            swarms.append(Swarm(net.ws_url, shares[i], procs, args, net.home / "logs"))

        def connected() -> int:
            return sum(s.total("connected") for s in swarms)
        t_join = wait_until(lambda: connected() >= n, args.join_timeout, swarms, "joins")
        out.update(join_s=t_join, joined=connected(),
                   join_cpu_s=sum(cpu_seconds(p, children=False) for p in gw_pids) - cpu0,
                   swarm_join_cpu_s=sum(cpu_seconds(p) for s in swarms for p in s.pids()),
                   loadavg_at_join=os.getloadavg())
        out["join_cpu_ms_per_session"] = out["join_cpu_s"] * 1000 / max(1, out["joined"])
        if t_join is None:
            print(f"[fleet] only {out['joined']:,} of {n:,} joined within {args.join_timeout:g} s", flush=True)
            return out
        print(f"[fleet] all {n:,} joined in {t_join:.1f} s; join CPU: gateways {out['join_cpu_s']:.1f} s "
              f"({out['join_cpu_ms_per_session']:.2f} ms a session), swarms {out['swarm_join_cpu_s']:.1f} s; "
              f"load average {out['loadavg_at_join'][0]:.1f}", flush=True)

        time.sleep(args.settle_s)
        c0, t0 = [cpu_seconds(p, children=False) for p in gw_pids], time.monotonic()
        time.sleep(args.idle_s)
        c1, t1 = [cpu_seconds(p, children=False) for p in gw_pids], time.monotonic()
        rss1 = sum(rss_kib(p) for p in gw_pids)
        out.update(idle_cpu_core=(sum(c1) - sum(c0)) / (t1 - t0),
                   idle_cpu_core_by_gateway=[round((b - a) / (t1 - t0), 4) for a, b in zip(c0, c1)],
                   gateways_rss_mib=rss1 / 1024, rss_kib_per_session=(rss1 - rss0) / max(1, out["joined"]))
        print(f"[fleet] idle: gateways {out['idle_cpu_core']:.3f} core together "
              f"({out['idle_cpu_core_by_gateway']}); RSS {rss1 / 1024:.0f} MiB "
              f"({out['rss_kib_per_session']:.1f} KiB/session)", flush=True)

        procs_of = {"gateways": gw_pids, "swarms": [p for s in swarms for p in s.pids()], **base_procs,
                    "client": [os.getpid()]}
        lat = latency_with_cpu(procs_of, urls, key, f"{args.prefix}0", args.requests, args.latency_budget_s, base)
        out["latency"] = lat
        paired = lat["paired_base"]
        print(f"[fleet] client p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms over {lat['requests']} "
              f"requests round-robin (statuses {lat['statuses']}); the baseline, paired: p50 "
              f"{paired['p50_ms']:.2f} ms, p99 {paired['p99_ms']:.2f} ms", flush=True)
        print(f"[fleet] CPU a request (µs, by process): {lat['cpu_us_per_request']}", flush=True)

        if not args.no_restart:
            # Gateway 1 dies; its sessions come back to it (they were dialled to it), the others stay.
            out["restart"] = restart(nets[0], ports[0], extra, swarms[0], shares[0], key, args)
            out["restart"]["others_connected_after"] = sum(s.total("connected") for s in swarms[1:])
        return out
    finally:
        for s in swarms:
            s.stop()
        for net in nets:
            net.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description="gpupool: provider sessions over several gateway replicas")
    ap.add_argument("--sessions", type=int, default=10_000, help="provider sessions in all [10000]")
    ap.add_argument("--replicas", type=int, default=3, help="gateways [3]")
    ap.add_argument("--procs", type=int, default=6, help="swarm processes in all, split over the gateways [6]")
    add_swarm_and_client_args(ap)
    ap.add_argument("--no-restart", action="store_true", help="skip the SIGKILL-and-restart of gateway 1")
    ap.add_argument("--pg", default=PG, help=f"the shared database [{PG}]")
    ap.add_argument("--redis", default=REDIS, help=f"the shared Redis [{REDIS}]")
    ap.add_argument("--out", default="fleet", help="results name: bench/results/<out>.json [fleet]")
    args = ap.parse_args()
    if args.sessions < args.replicas or args.replicas < 1:
        ap.error("--sessions must be at least --replicas, and --replicas at least 1")
    try:
        need_gpupool()
        reachable(args.pg, args.redis)
    except Missing as exc:
        print(exc, file=sys.stderr)
        return 2
    fd = raise_fd_limit(65536)
    if fd < args.sessions + 1000:
        print(f"warning: open-file limit is {fd}, under the {args.sessions + 1000:,} needed; joins may fail",
              file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="gpupool-fleet-"))
    print(f"logs in {tmp}", flush=True)
    # The baseline as bench/scale/run.py measures it (one gateway, 3 sessions), kept up for pairing.
    base_args = copy.copy(args)
    base_args.no_hardware_proofs = base_args.skip_idle = base_args.skip_latency = False
    base_args.no_restart = True
    kept: list[Any] = []
    try:
        base = measure(BASELINE, base_args, tmp, keep=kept)
        net, swarm, url, key = kept[0]
        fleet = measure_fleet(args, tmp, (url, key), {"base_gateway": [net.gateway.popen.pid],
                                                        "base_swarm": swarm.pids()})
    finally:
        for net, swarm, _, _ in kept:
            swarm.stop()
            net.stop()
    rows = []
    for label, r in (("1 (baseline)", base), (str(args.replicas), fleet)):
        lat = r.get("latency") or {}
        bl = lat.get("paired_base") or (base.get("latency") or {})
        rs = r.get("restart") or {}
        rows.append([label, r["sessions"], r.get("joined"), r.get("join_s"), r.get("join_cpu_ms_per_session"),
                     r.get("idle_cpu_core"), r.get("rss_kib_per_session") if r is fleet else None,
                     lat.get("p50_ms"), ratio(lat.get("p50_ms", math.nan), bl.get("p50_ms", math.nan)),
                     lat.get("p99_ms"), ratio(lat.get("p99_ms", math.nan), bl.get("p99_ms", math.nan)),
                     rs.get("all_back_after_kill_s"), (rs.get("statuses_meanwhile") or {}).get(404, 0) if rs else None])
    print()
    text = print_table(["gateways", "sessions", "joined", "join s", "join CPU ms/session", "idle CPU (core)",
                        "RSS KiB/session", "p50 ms", "p50 ×base", "p99 ms", "p99 ×base",
                        "gateway 1 back s", "404s in restart"], rows,
                       title=f"bench/scale/fleet: {args.models} models per session, PostgreSQL + Redis shared")
    path = write_json(args.out, {"config": dict(vars(args)), "results": [base, fleet], "table": text})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
