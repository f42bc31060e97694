"""A key's requests-per-minute limit across 3 gateway replicas (issue 17, item 4).

    .venv/bin/python bench/scale/replicas.py                      # 3 gateways, rpm 600, 60 s per mode
    .venv/bin/python bench/scale/replicas.py --seconds 20 --rpm 1200 --burst-s 2

Three gateways share one PostgreSQL (keys, money, the gateway registry); one provider
(echo backend) is told gateway 1 only and finds the other two through `GET /v1/gateways`
(the join time is reported). One API key, limited to --rpm by every gateway's
`--key-rpm`, floods all three round-robin from --threads client threads for --seconds,
waiting after each 429 as long as it says, in two modes, each on fresh gateways:

- `per-gateway` (the baseline, no Redis): each gateway counts the key alone, so the
  network admits about replicas × rpm;
- `redis` (`--redis-url`): the gateways count the key in one Redis, so the network
  admits rpm.

Reported per mode: requests admitted, 429s, the admitted rate per minute over whole
windows after the first answer, and its error against the limit (target: within 10%
with Redis). Writes bench/results/replicas.json. Needs PostgreSQL (--pg) and Redis
(--redis); says so and exits 2 without them.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Missing, need_gpupool, print_table, write_json  # noqa: E402

PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"


def reachable(pg: str, redis: str) -> None:
    import socket

    async def pg_ok() -> None:
        import asyncpg

        conn = await asyncpg.connect(pg.replace("postgresql+asyncpg", "postgresql"), timeout=3)
        await conn.close()

    try:
        asyncio.run(pg_ok())
    except Exception as exc:  # noqa: BLE001 - any failure: not usable
        raise Missing(f"error: PostgreSQL not reachable at {pg} ({exc}); pass --pg") from None
    host, port = redis.split("://", 1)[1].split("/")[0].split(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        raise Missing(f"error: Redis not reachable at {redis} ({exc}); pass --redis") from None


def flood(urls: list[str], key: str, seconds: float, threads: int) -> tuple[list[float], int, list[str]]:
    """Echo chats round-robin over `urls`; (times of admitted answers, 429s, other failures)."""
    import httpx

    admitted: list[float] = []
    refused = [0]
    other: list[str] = []
    stop = time.monotonic() + seconds
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

    def worker(i: int) -> None:
        n = i
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            while time.monotonic() < stop:
                url = urls[n % len(urls)]
                n += 1
                r = client.post(url + "/v1/chat/completions", json=body)
                if r.status_code == 200:
                    admitted.append(time.monotonic())
                elif r.status_code == 429:
                    # Waits as told ("try again in 1.93s"; the header holds whole seconds): a
                    # client coming back early has its 429s held back a second by the gateway.
                    refused[0] += 1
                    told = re.search(r"(?:try again in|wait) ([0-9.]+)s", r.text)
                    time.sleep(min(float(told.group(1)), 5.0) if told else 0.05)
                else:
                    other.append(f"{r.status_code} {r.text[:120]}")
                    time.sleep(0.1)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sorted(admitted), refused[0], other


def run_mode(mode: str, args: argparse.Namespace, home: Path) -> dict[str, Any]:
    from gpupool.devnet import Network

    limits = ["--key-rpm", str(args.rpm), "--rate-burst-s", str(args.burst_s)]
    if mode == "redis":
        limits += ["--redis-url", args.redis]
    nets = [Network(home / f"{mode}-{i}", db=args.pg) for i in range(args.replicas)]
    try:
        for i, net in enumerate(nets):
            net.start_gateway(extra=[*limits, "--region", f"r{i}"])
        first = nets[0]
        started = time.monotonic()
        first.start_provider(["echo=echo:chat"], max_concurrency=32,
                             extra=["--gateways-max", str(args.replicas), "--gateway-discovery-s", "1"])
        for net in nets:
            net.wait_for_models({"echo": 1}, timeout=120)
        join_s = time.monotonic() - started
        key = first.dev_key()  # one key in the shared database
        admitted, refused, other = flood([n.gateway_url for n in nets], key, args.seconds, args.threads)
    finally:
        for net in nets:
            net.stop()
    window = args.window_s
    whole = int(args.seconds // window) * window or args.seconds
    counted = sum(1 for t in admitted if admitted and t < admitted[0] + whole)
    per_min = counted * 60 / whole
    return {"mode": mode, "replicas": args.replicas, "rpm_limit": args.rpm, "admitted": len(admitted),
            "refused_429": refused, "other_errors": len(other), "other_sample": other[:3],
            "counted_s": whole, "admitted_per_min": round(per_min, 1),
            "error_vs_limit": round(per_min / args.rpm - 1, 4), "provider_join_all_s": round(join_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--burst-s", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="flood time per mode")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--modes", default="per-gateway,redis")
    parser.add_argument("--pg", default=PG)
    parser.add_argument("--redis", default=REDIS)
    args = parser.parse_args()
    need_gpupool()
    reachable(args.pg, args.redis)
    from gpupool.gateway.money.shared_limits import window_for

    args.window_s = window_for(args.rpm, args.burst_s)[1]  # Redis's window: count whole ones
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="gpupool-replicas-") as tmp:
        for mode in args.modes.split(","):
            print(f"{mode}: {args.replicas} gateways, one key at {args.rpm} rpm, {args.seconds:g} s of flood",
                  flush=True)
            r = run_mode(mode, args, Path(tmp))
            results.append(r)
            rows.append([mode, r["replicas"], r["rpm_limit"], r["admitted"], r["refused_429"], r["other_errors"],
                         r["admitted_per_min"], f"{100 * r['error_vs_limit']:+.1f}%", r["provider_join_all_s"]])
    print_table(["mode", "gateways", "rpm limit", "admitted", "429s", "other errors", "admitted/min",
                 "vs limit", "provider on all (s)"], rows, "a key's rpm limit, network-wide")
    path = write_json("replicas", {"args": {k: v for k, v in vars(args).items()}, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
