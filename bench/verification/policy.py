"""Verification targets, measured on the gateway's own policy code (fast, no processes).

Replays, request by request, exactly what `gateway/trust/audits.py` does: `decide` (an HMAC
of a fresh request id under a random gateway secret against the rate the provider's
record earns, with the cap on unaudited runs), `record_verdict`, and `suspension` over the recent verdicts, for
many simulated providers. A verdict arrives `lag` requests after the audited answer
(checkers take time), so answers served meanwhile count as accepted.

    .venv/bin/python bench/verification/policy.py --trials 2000

Provider kinds: cheating on every request / on 10% of requests (their cheated audits
fail softly: the worst case; a hard failure suspends at once), and honest providers
whose audits fail with the per-audit false-positive rate `p` (the comparators' measured
rate bound, see docs/verification.md).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import print_table, write_json  # noqa: E402

from gpupool.verify import (  # noqa: E402
    AuditRecord,
    audit_rate,
    decide,
    fail,
    record_verdict,
    suspension,
)
from gpupool.verify import PASS  # noqa: E402


@dataclass
class Outcome:
    suspended_at: int | None  # the request count at which suspension happened
    bad_accepted: int  # cheated answers served before suspension
    audits: int
    served: int


def run_provider(cheat_rate: float, fp_rate: float, hard: bool, max_requests: int, lag: int,
                 rng: random.Random, secret: bytes, honest_first: int = 0) -> Outcome:
    """One provider; it starts cheating after `honest_first` honest requests (0: from the start).

    `suspended_at` and `bad_accepted` count from when the cheating starts."""
    record = AuditRecord()
    recent: deque = deque(maxlen=200)
    pending: deque = deque()  # (due at request n, verdict)
    bad = 0
    for n in range(1, max_requests + 1):
        while pending and pending[0][0] <= n:  # verdicts that arrived before this request
            _, verdict = pending.popleft()
            record = record_verdict(record, verdict)
            recent.append(verdict)
            if suspension(recent).suspend:
                return Outcome(n - 1 - honest_first, bad, record.audited, n - 1)
        cheated = n > honest_first and rng.random() < cheat_rate
        bad += cheated
        audit, record = decide(record, secret, uuid.uuid4().hex)
        if audit:
            wrong = cheated or rng.random() < fp_rate
            pending.append((n + lag, fail("mismatch", hard=hard and cheated) if wrong else PASS))
    return Outcome(None, bad, record.audited, max_requests)



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1000, help="simulated cheating providers per kind")
    ap.add_argument("--honest", type=int, default=3, help="honest providers, each run to --honest-audits audits")
    ap.add_argument("--honest-audits", type=int, default=10_000)
    ap.add_argument("--fp", type=float, default=1.5e-3, help="per-audit false-positive rate of an honest provider")
    ap.add_argument("--lag", type=int, default=4, help="requests served between an answer and its verdict")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    secret = os.urandom(32)
    rows, out = [], {}
    kinds = (("cheats on every request (soft fails)", 1.0, False, 100, 0),
             ("cheats on every request (hard fails)", 1.0, True, 100, 0),
             ("cheats on 10% of requests (soft)", 0.1, False, 1000, 0),
             ("honest for 5,000 requests, then cheats on every one (soft)", 1.0, False, 100, 5000),
             ("honest for 5,000 requests, then cheats on 10% (soft)", 0.1, False, 1000, 5000))
    for name, q, hard, limit, honest_first in kinds:
        target = limit
        results = [run_provider(q, 0.0, hard, honest_first + 20_000, args.lag, rng, secret, honest_first)
                   for _ in range(args.trials)]
        at = [r.suspended_at for r in results if r.suspended_at is not None]
        within = sum(1 for r in results if r.suspended_at is not None and r.suspended_at <= limit) / len(results)
        bad = statistics.mean(r.bad_accepted for r in results)
        rows.append([name, f"{statistics.median(at):.0f}", f"{sorted(at)[int(0.99 * len(at)) - 1]:.0f}",
                     f"{within:.2%} within {limit}", f"{bad:.1f}", "met" if within >= 0.99 and bad <= 20 else "NOT met"])
        out[name] = {"median_requests": statistics.median(at), "p99_requests": sorted(at)[int(0.99 * len(at)) - 1],
                     "p_within_target": within, "target_requests": target, "bad_accepted_mean": bad,
                     "trials": args.trials}
    print_table(["provider", "requests to suspension (median)", "p99", "suspended", "bad answers accepted (mean)",
                 "target"], rows, f"cheaters, {args.trials} each, verdict lag {args.lag} requests")

    suspended, audits, served, final_rates = 0, 0, 0, []
    for _ in range(args.honest):
        record = AuditRecord()
        recent: deque = deque(maxlen=200)
        while record.audited < args.honest_audits:
            audit, record = decide(record, secret, uuid.uuid4().hex)
            if audit:
                verdict = fail("fp") if rng.random() < args.fp else PASS
                record = record_verdict(record, verdict)
                recent.append(verdict)
                if suspension(recent).suspend:
                    suspended += 1
                    break
        audits += record.audited
        served += record.served
        final_rates.append(audit_rate(record))
    share = audits / served
    steady = statistics.mean(final_rates)
    print_table(["honest providers", "audited requests", "false-positive rate assumed", "suspended",
                 "audited share (whole run)", "audit rate at the end"],
                [[args.honest, f"{audits:,}", f"{args.fp:g}", suspended, f"{share:.2%}", f"{steady:.2%}"]],
                "honest providers (target: none suspended; audit compute <= 5% at steady state)")
    out["honest"] = {"providers": args.honest, "audits": audits, "served": served, "fp_rate": args.fp,
                     "suspended": suspended, "audit_share_whole_run": share, "audit_rate_steady": steady}
    print(f"wrote {write_json('verification-policy', out)}")


if __name__ == "__main__":
    main()
