"""Fallback benchmark: how fast a lane takes over when the pool cannot serve, and what the gateway adds.

    .venv/bin/python bench/fallback/run.py                 # ~1 min; bench/results/fallback.json
    .venv/bin/python bench/fallback/run.py --requests 50 --stalls 5 --budget 0.5

Real processes: "the cloud" is a second gpupool gateway with an echo provider; our
gateway has a fallback lane to it. Streamed chat requests, timed at the client to
the first content token (TTFT), in three kinds, interleaved round by round:

- direct:      straight to the cloud (the lane's own TTFT: the baseline);
- no provider: to our gateway for a model no pool provider serves: the pool fails
               at once and the lane serves. Added latency = its TTFT - direct;
- stalled:     to our gateway for a model whose only provider is frozen (SIGSTOP):
               the pool's attempt fails when the first-token budget runs out, so
               the time from the failed attempt to the lane's first token is
               TTFT - budget (added over direct: that minus direct's TTFT).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import median, percentile, print_table, write_json  # noqa: E402

from gpupool.devnet import Network  # noqa: E402

WORDS = "one two three four five six seven eight"


def ttft(client: httpx.Client, url: str, key: str, model: str) -> tuple[float, str]:
    """Seconds to the first content token of a streamed chat, and who served it."""
    started = time.perf_counter()
    with client.stream("POST", url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": model, "messages": [{"role": "user", "content": WORDS}], "stream": True,
                             "max_tokens": 16}) as r:
        r.raise_for_status()
        first = None
        for line in r.iter_lines():
            if first is None and '"content":"' in line and '"content":""' not in line:
                first = time.perf_counter() - started
        assert first is not None, "no content token"
        return first, r.headers.get("x-gpupool-provider", "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200, help="direct and no-provider requests (each)")
    ap.add_argument("--stalls", type=int, default=20, help="stalled-stream requests")
    ap.add_argument("--budget", type=float, default=0.5, help="fallback_first_token_budget_s")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="gpupool-bench-fallback-"))
    cloud = Network(home / "cloud")
    ours: Network | None = None
    try:
        cloud.start_gateway()
        cloud.start_provider(["echo=echo:chat"])
        cloud.wait_for_models({"echo": 1})
        lane = f"cloud={cloud.gateway_url}/v1 key_env=CLOUD_KEY model=absent=echo@1000/1000 model=stall=echo@1000/1000"
        ours = Network(home / "ours", env={"CLOUD_KEY": cloud.dev_key()})
        ours.start_gateway(extra=["--fallback", lane, "--fallback-first-token-budget-s", str(args.budget)])
        frozen = ours.start_provider(["stall=echo:chat"])
        ours.wait_for_models({"stall": 1})
        ckey, okey = cloud.dev_key(), ours.dev_key()
        samples: dict[str, list[float]] = {"direct": [], "no provider": [], "stalled": []}
        with httpx.Client(timeout=60) as client:
            for _ in range(10):  # warm both paths (connections, first-request costs)
                ttft(client, cloud.gateway_url, ckey, "echo")
                ttft(client, ours.gateway_url, okey, "absent")
            for i in range(args.requests):
                samples["direct"].append(ttft(client, cloud.gateway_url, ckey, "echo")[0])
                t, served = ttft(client, ours.gateway_url, okey, "absent")
                assert served == "fallback:cloud", served
                samples["no provider"].append(t)
            ours.kill_provider(frozen, signal.SIGSTOP)
            try:
                for _ in range(args.stalls):
                    t, served = ttft(client, ours.gateway_url, okey, "stall")
                    assert served == "fallback:cloud", served
                    samples["stalled"].append(t)
            finally:
                ours.kill_provider(frozen, signal.SIGCONT)
        stats = httpx.get(ours.gateway_url + "/admin/fallback", timeout=10,
                          headers={"Authorization": f"Bearer {ours.admin_token}"}).json()["stats"]
    finally:
        if ours is not None:
            ours.stop(timeout=10)
        cloud.stop(timeout=10)

    direct_p50 = median(samples["direct"])
    rows: list[list[Any]] = []
    result: dict[str, Any] = {"budget_s": args.budget, "stats": stats, "kinds": {}}
    for kind, values in samples.items():
        ms = [v * 1000 for v in values]
        after_failure = [m - (args.budget * 1000 if kind == "stalled" else 0.0) for m in ms]
        p50, p90, p99 = (percentile(ms, p) for p in (50, 90, 99))
        fail_p50 = median(after_failure)
        added = None if kind == "direct" else fail_p50 - direct_p50 * 1000
        rows.append([kind, len(ms), p50, p90, p99, None if kind == "direct" else fail_p50, added])
        result["kinds"][kind] = {"n": len(ms), "ttft_ms": {"p50": p50, "p90": p90, "p99": p99},
                                 "failed_attempt_to_first_token_ms_p50": None if kind == "direct" else fail_p50,
                                 "added_over_direct_ms_p50": added}
    print_table(["kind", "n", "TTFT p50 ms", "p90", "p99", "failed attempt -> first token p50 ms",
                 "added over direct p50 ms"], rows,
                title=f"fallback lane TTFT (budget {args.budget:.2f} s; direct = the lane's own server)")
    print(f"results: {write_json('fallback', result)}")


if __name__ == "__main__":
    main()
