"""Verification benchmark: the issue's targets, measured (one command).

    .venv/bin/python bench/verification/run.py              # ~5 min; bench/results/verification.json
    .venv/bin/python bench/verification/run.py --quick      # a short look

1. Policy (bench/verification/policy.py): the gateway's own sampling and suspension
   code replayed over thousands of simulated providers: requests until a cheater is
   suspended (at 99%), bad answers accepted per cheating identity, honest providers
   suspended over 10,000 audits each, the steady-state audit rate.
2. Real processes: a gateway, an honest MiniLM provider and two checker processes.
   - Honest steady state: `--honest-requests` embedding requests; audits, failed
     audits (false positives) and the CPU seconds the checkers spent vs the provider
     (audit compute share), over the whole run and after the probation/ramp phase.
   - Cheaters, one at a time beside the honest provider: a random-weight MiniLM, noise
     on 10% of requests, cached answers. For each: requests it served before
     suspension, failed audits (bad answers found), whether the fraud was slashed,
     and how much was refunded.
   - Traffic share: what the suspended cheaters got after suspension (target: none).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import cpu_seconds, print_table, write_json  # noqa: E402

import httpx  # noqa: E402

from gpupool.devnet import Network  # noqa: E402
from gpupool.identity import Identity  # noqa: E402

PRICE = ["--price", "minilm=1000000"]
CHEATERS = {"random-weight MiniLM": "minilm=redteam:random-minilm",
            "noise on 10%": "minilm=redteam:noise:minilm?rate=0.1&seed=5",
            "cached answers": "minilm=redteam:cached:minilm"}


def _admin(net: Network, path: str) -> Any:
    r = httpx.get(net.gateway_url + path, headers={"Authorization": f"Bearer {net.admin_token}"}, timeout=10)
    r.raise_for_status()
    return r.json()


def _node(net: Network, proc: Any) -> str:
    return Identity.load_or_create(Path(proc.args[proc.args.index("--key-file") + 1])).node_id


def _embed(net: Network, key: str, texts: list[str], workers: int = 4) -> list[str]:
    """Send the texts as embedding requests; returns the provider that served each."""
    def one(text: str) -> str:
        r = httpx.post(net.gateway_url + "/v1/embeddings", timeout=60, headers={"Authorization": f"Bearer {key}"},
                       json={"model": "minilm", "input": text})
        r.raise_for_status()
        return r.headers["x-gpupool-provider"]

    with cf.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, texts))


def real_processes(honest_requests: int, cheater_requests: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="gpupool-verification-"))
    net = Network(tmp)
    out: dict[str, Any] = {}
    try:
        net.start_gateway(extra=["--settle-interval-s", "0.1", "--tab-idle-s", "2"])
        honest = net.start_provider(["minilm=embeddings:minilm"], extra=PRICE, max_concurrency=8)
        checkers = []
        for i in range(2):
            checkers.append(net._spawn(f"checker-{i}", ["checker", "--gateway", net.ws_url, "--key-file",
                                                        str(tmp / f"checker-{i}.key"), "--serve",
                                                        "minilm=embeddings:minilm"]))
        net.wait_for_models({"minilm": 1}, timeout=180)
        while len(_admin(net, "/admin/audits")["checkers"]) < 2:
            time.sleep(0.3)
        key = net.dev_key()
        honest_id = _node(net, honest)
        pids = {"provider": honest.popen.pid, **{f"checker-{i}": c.popen.pid for i, c in enumerate(checkers)}}

        def cpu() -> dict[str, float]:
            return {name: cpu_seconds(pid) for name, pid in pids.items()}

        # --- honest steady state
        warm = min(honest_requests // 2, 800)  # probation (50 at 100%) and the 25% ramp
        print(f"honest provider: {honest_requests:,} requests ({warm} warm-up)...", flush=True)
        c0 = cpu()
        _embed(net, key, [f"honest product query number {i}" for i in range(warm)])
        time.sleep(1.0)
        c1 = cpu()
        _embed(net, key, [f"steady product query number {i}" for i in range(honest_requests - warm)])
        time.sleep(2.0)
        c2 = cpu()
        row = next(r for r in _admin(net, "/admin/audits")["data"] if r["node_id"] == honest_id)

        def share(a: dict[str, float], b: dict[str, float]) -> float:
            checker = sum(b[k] - a[k] for k in b if k.startswith("checker"))
            return checker / max(1e-9, b["provider"] - a["provider"])

        out["honest"] = {"requests": row["served"], "audits": row["audits"], "false_positives": row["audit_failures"],
                         "suspended": bool(row["suspended"]), "audit_rate_now": row["audit_rate"],
                         "audit_cpu_share_whole_run": share(c0, c2), "audit_cpu_share_steady": share(c1, c2)}

        # --- cheaters, one at a time beside the honest provider
        out["cheaters"] = {}
        for name, serve in CHEATERS.items():
            before = {p["node_id"] for p in _admin(net, "/admin/providers")["data"]}
            proc = net.start_provider([serve], extra=PRICE, max_concurrency=8)
            deadline = time.monotonic() + 180
            while not ({p["node_id"] for p in _admin(net, "/admin/providers")["data"]} - before):
                if not proc.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"cheater {name!r} did not connect:\n{proc.log_tail()}")
                time.sleep(0.3)
            cheater = _node(net, proc)
            served_by: list[str] = []
            for batch in range(cheater_requests // 20):
                served_by += _embed(net, key, [f"{name} q{batch}-{i}" for i in range(20)])
                time.sleep(0.3)
                rows = {r["node_id"]: r for r in _admin(net, "/admin/audits")["data"]}
                if rows.get(cheater, {}).get("suspended"):
                    break
            time.sleep(2.0)  # the second checker's confirmation, the slash
            after = _embed(net, key, [f"after {name} {i}" for i in range(40)])
            rows = {r["node_id"]: r for r in _admin(net, "/admin/audits")["data"]}
            events = [e for e in _admin(net, "/admin/events?limit=1000")["data"] if e["peer"] == cheater]
            r = rows.get(cheater, {})
            out["cheaters"][name] = {
                "served_before_suspension": r.get("served", 0), "failed_audits": r.get("audit_failures", 0),
                "suspended": r.get("suspended", ""), "slashed": r.get("slashed", False),
                "refund_owed_ucr": r.get("owed_refunds", 0),
                "slash_events": [e["detail"] for e in events if e["kind"] == "slashed"],
                "requests_after_suspension": sum(1 for p in after if p == cheater)}
            print(f"  {name}: {out['cheaters'][name]}", flush=True)
            net.kill_provider(proc)
    finally:
        net.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--honest-requests", type=int, default=3000)
    ap.add_argument("--cheater-requests", type=int, default=400)
    ap.add_argument("--skip-policy", action="store_true", help="only the real-process part")
    args = ap.parse_args()
    policy_args = ["--trials", "200", "--honest", "1", "--honest-audits", "2000"] if args.quick else []
    if not args.skip_policy:
        subprocess.run([sys.executable, str(HERE / "policy.py"), *policy_args], check=True)
    honest_requests = 600 if args.quick else args.honest_requests
    result = real_processes(honest_requests, args.cheater_requests)
    h = result["honest"]
    print_table(["honest requests", "audits", "false positives", "suspended", "audit rate now",
                 "checker CPU / provider CPU (whole run)", "(after warm-up)"],
                [[f"{h['requests']:,}", h["audits"], h["false_positives"], h["suspended"], f"{h['audit_rate_now']:.1%}",
                  f"{h['audit_cpu_share_whole_run']:.1%}", f"{h['audit_cpu_share_steady']:.1%}"]],
                "honest provider, real processes (targets: 0 suspended; audit compute <= 5% at steady state)")
    print_table(["cheater", "served before suspension", "bad answers found", "slashed", "refund owed µcr",
                 "requests after suspension"],
                [[n, c["served_before_suspension"], c["failed_audits"], c["slashed"], c["refund_owed_ucr"],
                  c["requests_after_suspension"]] for n, c in result["cheaters"].items()],
                "cheaters beside the honest provider, real processes (targets: suspended within 100 / 1,000 "
                "requests; <= 20 bad answers each, all refunded; no traffic once suspended)")
    print(f"wrote {write_json('verification', result)}")


if __name__ == "__main__":
    main()
