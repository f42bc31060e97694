"""Hostile benchmark: does an honest client keep being served while others attack the gateway?

    .venv/bin/python bench/hostile/run.py                      # ~7 min; bench/results/hostile.json
    .venv/bin/python bench/hostile/run.py --attacks huge_numbers,stream_flood --duration 10

One gateway and two honest echo providers (`echo` chat at 2 ms per token, `echo-embed`
embeddings; no models, so the 2-core machine measures the gateway, not inference).
A bystander process (bystander.py) sends 20 requests/s from its own API key, open loop,
cycling a short chat completion, an embedding, the chat completion streamed and another
embedding (--no-streams: no streams, as before 2026-12-07), from start to end. First a
baseline window with no attack, then each attack of attacks.py in turn, for
--duration seconds each, from an attacker key of its own (or fresh peer keys), each
after a quiet window of --quiet-s seconds. The baseline is the first window and every
quiet window pooled: other jobs on a shared machine load the baseline as they load the
attacks, and the p99 of a few thousand requests is steadier than that of 150.

Per attack: the bystander's success rate (HTTP 200; a stream must end cleanly) and p50/p99
latency over the requests it started during the attack (also per kind in the JSON), p99 as a ratio of the baseline's, its success
rate in the --after-s seconds after the attack (damage that outlasts the attack, e.g.
open circuit breakers), and the gateway's VmRSS just before, at its peak during, and
--after-s seconds after. Targets (issue 9): success >= 99 %, p99 <= 2x baseline, RSS
after within 10 % of RSS before; and the attack itself contained (attacks.py: refused,
closed or bounded by the gateway, whether or not this bystander noticed). Between attacks the runner waits until the bystander's
key is served again (at most --settle-s), so one attack's aftermath is not charged to
the next; attacks whose damage outlasted them before the fixes run last.
If the gateway dies, the attack is marked so and a fresh network is started for the rest
(at the attacks' niceness: see --attacker-nice).

The attacks run in this process at niceness 10 (--attacker-nice): on a 2-core machine
an attacker flooding requests as fast as it can would otherwise take a core from the
gateway, and its own CPU would be counted as the gateway's slowness; the gateway still
has to handle everything the attacker manages to send.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    Background,
    median,
    need_gpupool,
    percentile,
    print_table,
    raise_fd_limit,
    ratio,
    rss_kib,
    write_json,
)



def _reexec_for_src() -> None:
    """--src DIR: run this script again with DIR first on PYTHONPATH, so that this process (devnet,
    the wire module the attacks speak) and every process it starts use that tree's gpupool."""
    if "--src" not in sys.argv[:-1]:
        return
    src = str(Path(sys.argv[sys.argv.index("--src") + 1]).resolve())
    if os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] != src:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


_reexec_for_src()
need_gpupool()

from attacks import ATTACKS, Target  # noqa: E402
from provider_attacks import PROVIDER_ATTACKS  # noqa: E402

ATTACKS = {**ATTACKS, **PROVIDER_ATTACKS}  # issue 18's provider-side attacks run after the others

from gpupool.devnet import Network  # noqa: E402

PROVIDER_SERVE = ["echo=echo:chat?delay_ms=2", "echo-embed=echo:embeddings"]
TARGET_SUCCESS = 0.99
TARGET_P99_RATIO = 2.0
TARGET_RSS_RATIO = 1.10


class Rig:
    """The network under attack, the two client keys and the bystander process."""

    def __init__(self, home: Path, rate: float, max_concurrency: int, streams: bool = True):
        self.home = home
        # --src: the network's processes import gpupool from that tree (PYTHONPATH, set by _reexec_for_src,
        # beats the editable install and is inherited).
        self.net = Network(home / "net")
        self.net.start_gateway()
        for _ in range(2):
            self.net.start_provider(PROVIDER_SERVE, max_concurrency=max_concurrency)
        self.net.wait_for_models({"echo": 2, "echo-embed": 2}, timeout=120)
        # The bystander holds what a developer starts with (1,000 credits): a price bomb shows as 402s.
        self.bystander_key = self._key("bystander", 1_000 * 1_000_000)
        self.attacker_key = self._key("attacker", 10**12)
        self.log = home / f"bystander-{int(time.time())}.tsv"
        self.bystander = Background("bystander", [sys.executable, str(HERE / "bystander.py"), self.net.gateway_url,
                                                  self.bystander_key, str(self.log), "--rate", str(rate),
                                                  *([] if streams else ["--no-streams"])],
                                    home / "logs" / "bystander.log")

    @property
    def gateway_pid(self) -> int:
        assert self.net.gateway is not None
        return self.net.gateway.popen.pid

    def gateway_alive(self) -> bool:
        return self.net.gateway is not None and self.net.gateway.alive()

    def target(self) -> Target:
        return Target(self.net.gateway_url, self.attacker_key, self.net.admin_token)

    def _key(self, name: str, deposit: int) -> str:
        headers = {"Authorization": f"Bearer {self.net.admin_token}"}
        r = httpx.post(self.net.gateway_url + "/admin/keys", json={"name": name}, headers=headers, timeout=30)
        r.raise_for_status()
        body = r.json()
        httpx.post(self.net.gateway_url + "/admin/deposit", headers=headers, timeout=30,
                   json={"account": body["account"], "amount": deposit, "key": f"bench-{name}"}).raise_for_status()
        return str(body["key"])

    def samples(self, start: float, end: float) -> list[tuple[float, int, str]]:
        """(latency s, status, kind) of the bystander's requests started in [start, end)."""
        out = []
        for line in self.log.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 4 and start <= float(parts[0]) < end:
                out.append((float(parts[1]), int(parts[2]), parts[3]))
        return out

    def stop(self) -> None:
        self.bystander.stop()
        self.net.stop(timeout=10)


def window_stats(samples: list[tuple[float, int, str]]) -> dict[str, Any]:
    lat_ms = [s[0] * 1000 for s in samples]
    statuses: dict[str, int] = {}
    for _, status, kind in samples:
        statuses[f"{kind} {status}"] = statuses.get(f"{kind} {status}", 0) + 1
    ok = sum(1 for _, status, _ in samples if status == 200)
    by_kind = {kind: percentile([s[0] * 1000 for s in samples if s[2] == kind], 99)
               for kind in sorted({s[2] for s in samples})}
    return {"requests": len(samples), "success": ok / len(samples) if samples else float("nan"),
            "p50_ms": percentile(lat_ms, 50), "p99_ms": percentile(lat_ms, 99), "statuses": statuses,
            "p99_ms_by_kind": by_kind}


def wait_served(rig: Rig, timeout: float) -> float:
    """Until three bystander-key requests in a row succeed (or `timeout`); returns the seconds waited."""
    began = time.monotonic()
    streak = 0
    body = {"model": "echo", "messages": [{"role": "user", "content": "settle"}], "max_tokens": 4}
    while time.monotonic() - began < timeout and streak < 3:
        try:
            r = httpx.post(rig.net.gateway_url + "/v1/chat/completions", json=body, timeout=10,
                           headers={"Authorization": f"Bearer {rig.bystander_key}"})
            streak = streak + 1 if r.status_code == 200 else 0
        except httpx.HTTPError:
            streak = 0
        time.sleep(0.2 if streak else 0.5)
    return time.monotonic() - began


async def run_attack(rig: Rig, name: str, duration: float, after_s: float) -> dict[str, Any]:
    pid = rig.gateway_pid
    rss_before = rss_kib(pid)
    peak = rss_before
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, rss_kib(pid))
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample())
    started = time.time()
    try:
        attacker = await asyncio.wait_for(ATTACKS[name](rig.target(), duration), duration + 90)
    except Exception as exc:  # noqa: BLE001 - an attack that breaks is reported, the bench goes on
        attacker = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    attack_s = time.time() - started
    # An attack refused at once still gets its whole window: what it set off may outlast it.
    await asyncio.sleep(max(0.0, started + duration - time.time()))
    ended = time.time()
    await asyncio.sleep(after_s)
    sampling = False
    await sampler
    alive = rig.gateway_alive()
    rss_after = rss_kib(pid) if alive else 0
    return {
        "attack": name, "started": started, "attack_s": round(attack_s, 1), "window_s": round(ended - started, 1),
        "gateway_alive": alive,
        "bystander": window_stats(rig.samples(started, ended)),
        "bystander_after": window_stats(rig.samples(ended, ended + after_s)),
        "rss_kib": {"before": rss_before, "peak": peak, "after": rss_after},
        "attacker": attacker,
    }


def verdict(row: dict[str, Any], base_p99: float) -> list[str]:
    """The targets this attack missed (empty: it held)."""
    missed = []
    by = row["bystander"]
    if not row["gateway_alive"]:
        missed.append("gateway died")
    if not by["success"] >= TARGET_SUCCESS:
        missed.append(f"success {by['success'] * 100:.1f}%")
    if not ratio(by["p99_ms"], base_p99) <= TARGET_P99_RATIO:
        missed.append(f"p99 x{ratio(by['p99_ms'], base_p99):.1f}")
    if row["gateway_alive"] and not ratio(row["rss_kib"]["after"], row["rss_kib"]["before"]) <= TARGET_RSS_RATIO:
        missed.append(f"RSS after x{ratio(row['rss_kib']['after'], row['rss_kib']['before']):.2f}")
    after = row["bystander_after"]
    if after["requests"] and not after["success"] >= TARGET_SUCCESS:
        missed.append(f"after: success {after['success'] * 100:.1f}%")
    if row["attacker"].get("contained") is False:
        missed.append("not contained")
    return missed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated, in order (default: all)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per attack")
    parser.add_argument("--baseline-s", type=float, default=15.0)
    parser.add_argument("--after-s", type=float, default=5.0, help="seconds measured after each attack")
    parser.add_argument("--quiet-s", type=float, default=5.0,
                        help="seconds without attack measured before each attack (pooled into the baseline)")
    parser.add_argument("--settle-s", type=float, default=30.0, help="longest wait for service between attacks")
    parser.add_argument("--rate", type=float, default=20.0, help="bystander requests per second")
    parser.add_argument("--max-concurrency", type=int, default=32, help="per honest provider")
    parser.add_argument("--no-streams", dest="streams", action="store_false",
                        help="the bystander sends no streamed requests (its load before 2026-12-07)")
    parser.add_argument("--attacker-nice", type=int, default=10,
                        help="niceness of the attacks (this process) once the network and bystander run: on a "
                             "small machine the attacker's own CPU would otherwise count as gateway slowness")
    parser.add_argument("--src", type=Path, default=None,
                        help="run gateway and providers from this src/ directory, e.g. an older commit's: "
                             "git archive COMMIT src | tar -x -C /tmp/before  then  --src /tmp/before/src")
    parser.add_argument("--name", default="hostile", help="results file: bench/results/NAME.json")
    parser.add_argument("--keep-logs", action="store_true", help="keep the network's logs (printed path)")
    args = parser.parse_args()
    names = [n.strip() for n in args.attacks.split(",") if n.strip()]
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise SystemExit(f"error: unknown attack(s) {', '.join(unknown)}; known: {', '.join(ATTACKS)}")
    raise_fd_limit()
    home = Path(tempfile.mkdtemp(prefix="gpupool-hostile-"))
    print(f"hostile: network under {home}; {len(names)} attacks x {args.duration:.0f} s", flush=True)
    rig = Rig(home, args.rate, args.max_concurrency, args.streams)
    os.nice(args.attacker_nice)  # after the gateway, providers and bystander started at the usual priority
    rows: list[dict[str, Any]] = []
    restarts = 0
    try:
        wait_served(rig, args.settle_s)
        time.sleep(2)  # the bystander's first requests open connections; leave them out
        b0 = time.time()
        rss_base = rss_kib(rig.gateway_pid)
        time.sleep(args.baseline_s)
        quiet = rig.samples(b0, time.time())
        first = window_stats(quiet)
        rss_base = max(rss_base, rss_kib(rig.gateway_pid))
        print(f"baseline: {first['requests']} requests, success {first['success'] * 100:.1f}%, "
              f"p50 {first['p50_ms']:.1f} ms, p99 {first['p99_ms']:.1f} ms, "
              f"gateway RSS {rss_base / 1024:.0f} MiB", flush=True)
        for name in names:
            if not rig.gateway_alive():
                rig.stop()
                restarts += 1
                rig = Rig(home / f"restart-{restarts}", args.rate, args.max_concurrency, args.streams)
            waited = wait_served(rig, args.settle_s)
            q0 = time.time()
            time.sleep(args.quiet_s)
            quiet_before = rig.samples(q0, time.time())
            quiet += quiet_before
            row = asyncio.run(run_attack(rig, name, args.duration, args.after_s))
            row["settled_s_before"] = round(waited, 1)
            row["quiet_before"] = window_stats(quiet_before)
            rows.append(row)
            by = row["bystander"]
            kinds = ", ".join(f"{k} {v:.0f}" for k, v in by["p99_ms_by_kind"].items())
            print(f"  {name}: success {by['success'] * 100:.1f}% p99 {by['p99_ms']:.0f} ms ({kinds}), "
                  f"RSS {row['rss_kib']['before'] / 1024:.0f} -> {row['rss_kib']['peak'] / 1024:.0f} -> "
                  f"{row['rss_kib']['after'] / 1024:.0f} MiB; attacker saw {row['attacker']}"[:600], flush=True)
    finally:
        rig.stop()
    # The baseline: the first window and the quiet window before each attack, pooled, so that the
    # load other jobs put on a shared machine during the run is in the baseline as in the attacks.
    baseline = window_stats(quiet)
    baseline["rss_kib"] = rss_base
    for row in rows:
        row["missed"] = verdict(row, baseline["p99_ms"])
    base_stream = baseline["p99_ms_by_kind"].get("stream")
    table_rows = [["(baseline)", baseline["success"] * 100, baseline["p50_ms"], baseline["p99_ms"], 1.0, base_stream,
                   None, baseline["rss_kib"] / 1024, None, None, None, "-"]]
    for row in rows:
        by, after, rss = row["bystander"], row["bystander_after"], row["rss_kib"]
        stream_p99 = by["p99_ms_by_kind"].get("stream")
        table_rows.append([row["attack"], by["success"] * 100, by["p50_ms"], by["p99_ms"],
                           ratio(by["p99_ms"], baseline["p99_ms"]), stream_p99,
                           after["success"] * 100, rss["before"] / 1024,
                           rss["peak"] / 1024, rss["after"] / 1024, ratio(rss["after"], rss["before"]),
                           "; ".join(row["missed"]) or "holds"])
    print()
    print_table(["attack", "ok %", "p50 ms", "p99 ms", "p99/base", "stream p99 ms", "ok % after", "RSS before MiB",
                 "RSS peak MiB", "RSS after MiB", "after/before", "targets"], table_rows,
                title=f"hostile: bystander at {args.rate:g} req/s, {args.duration:g} s per attack, "
                      f"{args.after_s:g} s after; targets ok >= 99%, p99 <= 2x, RSS after <= 1.1x before")
    held = sum(1 for r in rows if not r["missed"])
    print(f"\n{held} of {len(rows)} attacks held; median bystander p99 under attack "
          f"{median(r['bystander']['p99_ms'] for r in rows):.1f} ms (baseline {baseline['p99_ms']:.1f} ms)")
    path = write_json(args.name, {"args": vars(args), "baseline": baseline, "attacks": rows, "restarts": restarts,
                                  "held": held})
    print(f"wrote {path}")
    if not args.keep_logs:
        import shutil

        shutil.rmtree(home, ignore_errors=True)
    else:
        print(f"logs kept under {home}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    main()
