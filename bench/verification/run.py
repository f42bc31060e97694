"""Verification benchmark: the issue's targets, measured (one command).

    .venv/bin/python bench/verification/run.py              # ~10 min; bench/results/verification.json
    .venv/bin/python bench/verification/run.py --quick      # a short look

1. Policy (bench/verification/policy.py): the gateway's own sampling and suspension
   code replayed over thousands of simulated providers: requests until a cheater is
   suspended (at 99%), bad answers accepted per cheating identity, honest providers
   suspended over 10,000 audits each, the steady-state audit rate.
2. Real processes: a gateway, an honest MiniLM provider and two checker processes.
   - Honest: `--fp-audits` (10,000) embedding requests, every one audited (the
     gateway's probation set that long): the per-audit false-positive rate on real
     audits; then requests until the provider's audit rate is at its floor; then
     `--steady-requests` at steady state: the audited share and the CPU seconds the
     checkers spent per provider CPU second (audit compute share).
   - Generation: greedy tiny-llama requests, all audited by a checker that scores the
     committed tokens in one forward pass: checker CPU per provider CPU per audited
     answer, times the steady audited share = generation audit compute.
   - Cheaters, one at a time beside the honest provider (the red-team backends of
     tests/redteam.py, loaded as a backend plug-in): a random-weight MiniLM, noise
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
sys.path.insert(1, str(HERE.parents[1]))  # the repository root: the red-team backends are tests.redteam

from common import cpu_seconds, print_table, thread_cpu_seconds, write_json  # noqa: E402

import httpx  # noqa: E402

from gpupool.devnet import Network  # noqa: E402
from gpupool.provider.backends.base import MODEL_THREAD_PREFIX  # noqa: E402
from gpupool.verify import DEFAULT_SAMPLING  # noqa: E402
from tests.redteam import REDTEAM, child_env  # noqa: E402

PRICE = ["--price", "minilm=1000000"]
IDLE_WINDOW_S = 15.0
CHEATERS = {"random-weight MiniLM": f"minilm={REDTEAM}:random-minilm",
            "noise on 10%": f"minilm={REDTEAM}:noise:minilm?rate=0.1&seed=5",
            "cached answers": f"minilm={REDTEAM}:cached:minilm"}


def _admin(net: Network, path: str) -> Any:
    r = httpx.get(net.gateway_url + path, headers={"Authorization": f"Bearer {net.admin_token}"}, timeout=10)
    r.raise_for_status()
    return r.json()


def _embed(net: Network, key: str, texts: list[str], workers: int = 4, region: str = "") -> list[str]:
    """Send the texts as embedding requests; returns the provider that served each ("" for a
    request `region` required that found nobody there: its provider was just suspended)."""
    headers = {"Authorization": f"Bearer {key}"}
    if region:
        headers |= {"x-gpupool-region": region, "x-gpupool-region-policy": "require"}

    def one(text: str) -> str:
        r = httpx.post(net.gateway_url + "/v1/embeddings", timeout=60, headers=headers,
                       json={"model": "minilm", "input": text})
        if region and r.status_code == 503:
            return ""
        r.raise_for_status()
        return r.headers["x-gpupool-provider"]

    with cf.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, texts))


def _audit_row(net: Network, node: str) -> dict[str, Any]:
    return next(r for r in _admin(net, "/admin/audits")["data"] if r["node_id"] == node)


def real_processes(fp_audits: int, steady_requests: int, gen_requests: int, cheater_requests: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="gpupool-verification-"))
    net = Network(tmp, env=child_env())  # providers import the cheaters from tests.redteam
    out: dict[str, Any] = {}
    try:
        # Probation = fp_audits: every one of the honest provider's first answers is audited,
        # which measures the false-positive rate on real audits before the rate adapts.
        net.start_gateway(extra=["--settle-interval-s", "0.1", "--tab-idle-s", "2",
                                 "--audit-probation-requests", str(fp_audits)])
        honest = net.start_provider(["minilm=embeddings:minilm"], extra=PRICE, max_concurrency=8)
        checkers = [net.start_checker(["minilm=embeddings:minilm"]) for _ in range(2)]
        net.wait_for_models({"minilm": 1}, timeout=180)
        while len(_admin(net, "/admin/audits")["checkers"]) < 2:
            time.sleep(0.3)
        key = net.dev_key()
        honest_id = honest.node_id
        pids = {"provider": honest.popen.pid, **{f"checker-{i}": c.popen.pid for i, c in enumerate(checkers)}}

        def cpu() -> dict[str, float]:
            """Whole-process CPU seconds, and those of the model threads alone ("model:...")."""
            whole = {name: cpu_seconds(pid) for name, pid in pids.items()}
            return whole | {f"model:{name}": thread_cpu_seconds(pid, MODEL_THREAD_PREFIX) for name, pid in pids.items()}

        def share(a: dict[str, float], b: dict[str, float], part: str = "") -> float:
            """Checkers' CPU per provider CPU between two readings (`part` "model:": model threads)."""
            checker = sum(b[k] - a[k] for k in b if k.startswith(f"{part}checker"))
            return checker / max(1e-9, b[f"{part}provider"] - a[f"{part}provider"])

        # --- honest: every answer audited (probation), then until the rate reaches its floor,
        # then the steady state the audit-compute target is about.
        t0 = time.monotonic()
        print(f"honest provider: {fp_audits:,} requests, every one audited...", flush=True)
        c0 = cpu()
        _embed(net, key, [f"honest product query number {i}" for i in range(fp_audits)])
        time.sleep(2.0)
        c1 = cpu()
        row = _audit_row(net, honest_id)
        probation = {"requests": row["served"], "audits": row["audits"], "false_positives": row["audit_failures"],
                     "checker_cpu_per_provider_cpu": share(c0, c1),
                     "checker_model_cpu_per_provider_model_cpu": share(c0, c1, "model:"),
                     "seconds": time.monotonic() - t0}
        print(f"  {probation}", flush=True)
        warm, floor = 0, DEFAULT_SAMPLING.floor
        while row["audit_rate"] > floor and warm < 20_000:
            _embed(net, key, [f"warm product query number {warm + i}" for i in range(250)])
            warm += 250
            row = _audit_row(net, honest_id)
        print(f"  audit rate at its floor after {warm:,} more requests; steady state: {steady_requests:,} "
              "requests...", flush=True)
        time.sleep(1.0)
        a0, c2, t2 = row["audits"], cpu(), time.monotonic()
        _embed(net, key, [f"steady product query number {i}" for i in range(steady_requests)])
        time.sleep(2.0)
        c3, t3 = cpu(), time.monotonic()
        row = _audit_row(net, honest_id)
        # What the checkers burn with no audits at all (connection upkeep, pings): a fixed cost
        # per checker process, the same whatever the traffic, measured to split it out.
        time.sleep(IDLE_WINDOW_S)
        c4 = cpu()
        idle_per_s = sum(c4[k] - c3[k] for k in c4 if k.startswith("checker")) / IDLE_WINDOW_S
        out["honest"] = {"requests": row["served"], "audits": row["audits"], "false_positives": row["audit_failures"],
                         "suspended": bool(row["suspended"]), "audit_rate_now": row["audit_rate"],
                         "probation": probation, "warm_requests": warm, "steady_requests": steady_requests,
                         "steady_audited_share": (row["audits"] - a0) / steady_requests,
                         "audit_cpu_share_steady": share(c2, c3),
                         "audit_model_cpu_share_steady": share(c2, c3, "model:"),
                         "steady_seconds": t3 - t2, "checkers_idle_cpu_per_s": idle_per_s}
        print(f"  {out['honest']}", flush=True)
        out["generation"] = generation_audit_cost(net, key, tmp, gen_requests)

        # --- cheaters, one at a time beside the honest provider
        out["cheaters"] = {}
        for name, serve in CHEATERS.items():
            before = {p["node_id"] for p in _admin(net, "/admin/providers")["data"]}
            region = "rt-" + name.split()[0].lower()  # its own region, so it surely gets traffic
            proc = net.start_provider([serve], region=region, extra=PRICE, max_concurrency=8)
            deadline = time.monotonic() + 180
            while not ({p["node_id"] for p in _admin(net, "/admin/providers")["data"]} - before):
                if not proc.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"cheater {name!r} did not connect:\n{proc.log_tail()}")
                time.sleep(0.3)
            cheater = proc.node_id
            # Half the traffic routed freely, half required in the cheater's region: how much
            # a newcomer gets of the free half depends on routing (speed, reputation).
            for batch in range(cheater_requests // 20):
                _embed(net, key, [f"{name} q{batch}-{i}" for i in range(10)])
                _embed(net, key, [f"{name} r{batch}-{i}" for i in range(10)], region=region)
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


def generation_audit_cost(net: Network, key: str, tmp: Path, n: int) -> dict[str, Any]:
    """CPU a checker spends auditing greedy generation (scoring the committed tokens in one
    forward pass) per CPU second the provider spent generating them. Every request is in
    the provider's probation, so every one is audited."""
    provider = net.start_provider(["tiny-llama=generate:tiny-llama"], extra=["--price", "tiny-llama=1000/1000"],
                                  max_concurrency=2)
    checker = net.start_checker(["tiny-llama=generate:tiny-llama"], name="checker-gen")
    net.wait_for_models({"tiny-llama": 1}, timeout=180)
    while len(_admin(net, "/admin/audits")["checkers"]) < 3:
        time.sleep(0.3)
    node = provider.node_id
    print(f"generation: {n} greedy requests (64 tokens), every one audited...", flush=True)

    def one(i: int) -> None:
        r = httpx.post(net.gateway_url + "/v1/chat/completions", timeout=120, headers={"Authorization": f"Bearer {key}"},
                       json={"model": "tiny-llama", "max_tokens": 64, "temperature": 0,
                             "messages": [{"role": "user", "content": f"Describe product number {i} in a few words."}]})
        r.raise_for_status()

    def cpu() -> tuple[float, float, float, float]:
        p, k = provider.popen.pid, checker.popen.pid
        return (cpu_seconds(p), cpu_seconds(k), thread_cpu_seconds(p, MODEL_THREAD_PREFIX),
                thread_cpu_seconds(k, MODEL_THREAD_PREFIX))

    p0, k0, pm0, km0 = cpu()
    with cf.ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(n)))
    deadline = time.monotonic() + 60
    while _audit_row(net, node)["audits"] < n and time.monotonic() < deadline:
        time.sleep(0.5)
    p1, k1, pm1, km1 = cpu()
    row = _audit_row(net, node)
    result = {"requests": row["served"], "audits": row["audits"], "false_positives": row["audit_failures"],
              "checker_cpu_per_provider_cpu": (k1 - k0) / max(1e-9, p1 - p0),
              "checker_model_cpu_per_provider_model_cpu": (km1 - km0) / max(1e-9, pm1 - pm0)}
    print(f"  {result}", flush=True)
    net.kill_provider(provider)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short look: small policy replay, 300 probation audits")
    ap.add_argument("--fp-audits", type=int, default=10_000,
                    help="honest requests audited one by one (the gateway's probation) [10,000]")
    ap.add_argument("--steady-requests", type=int, default=3000,
                    help="honest requests measured once the audit rate is at its floor [3,000]")
    ap.add_argument("--gen-requests", type=int, default=200, help="greedy generation requests, all audited [200]")
    ap.add_argument("--cheater-requests", type=int, default=400)
    ap.add_argument("--skip-policy", action="store_true", help="only the real-process part")
    args = ap.parse_args()
    policy_args = ["--trials", "200", "--honest", "1", "--honest-audits", "2000"] if args.quick else []
    if not args.skip_policy:
        subprocess.run([sys.executable, str(HERE / "policy.py"), *policy_args], check=True)
    if args.quick:
        args.fp_audits, args.steady_requests, args.gen_requests = 300, 1000, 40
    result = real_processes(args.fp_audits, args.steady_requests, args.gen_requests, args.cheater_requests)
    h, p, g = result["honest"], result["honest"]["probation"], result["generation"]
    fp_bound = 3 / p["audits"] if p["audits"] and not p["false_positives"] else p["false_positives"] / max(1, p["audits"])
    print_table(["honest requests", "audits", "false positives", "per-audit FP rate (95% bound if 0)", "suspended",
                 "audited share at steady state"],
                [[f"{h['requests']:,}", f"{h['audits']:,}", h["false_positives"], f"{fp_bound:.1e}", h["suspended"],
                  f"{h['steady_audited_share']:.1%}"]],
                "honest embeddings provider, real processes (target: 0 suspended)")
    print_table(["CPU of the checkers per provider CPU", "every answer audited (probation)",
                 "at steady state = audit compute"],
                [["model threads (forward passes)", f"{p['checker_model_cpu_per_provider_model_cpu']:.1%}",
                  f"{h['audit_model_cpu_share_steady']:.1%}"],
                 ["whole processes (+ connections, signatures, idle upkeep)", f"{p['checker_cpu_per_provider_cpu']:.1%}",
                  f"{h['audit_cpu_share_steady']:.1%}"]],
                f"embeddings audit compute (target <= 5% at steady state); two idle checkers burn "
                f"{1000 * h['checkers_idle_cpu_per_s']:.1f} ms CPU per second between them")
    gen_steady = g["checker_model_cpu_per_provider_model_cpu"] * h["steady_audited_share"]
    print_table(["greedy generation requests", "audits", "false positives",
                 "checker / provider CPU, all audited: model threads", "whole processes",
                 "x audited share at steady state = audit compute"],
                [[g["requests"], g["audits"], g["false_positives"], f"{g['checker_model_cpu_per_provider_model_cpu']:.1%}",
                  f"{g['checker_cpu_per_provider_cpu']:.1%}", f"{gen_steady:.2%}"]],
                "generation audits (one scoring forward pass per audited answer)")
    result["generation"]["audit_compute_at_steady_share"] = gen_steady
    print_table(["cheater", "served before suspension", "bad answers found", "slashed", "refund owed µcr",
                 "requests after suspension"],
                [[n, c["served_before_suspension"], c["failed_audits"], c["slashed"], c["refund_owed_ucr"],
                  c["requests_after_suspension"]] for n, c in result["cheaters"].items()],
                "cheaters beside the honest provider, real processes (targets: suspended within 100 / 1,000 "
                "requests; <= 20 bad answers each, all refunded; no traffic once suspended)")
    print(f"wrote {write_json('verification', result)}")


if __name__ == "__main__":
    main()
