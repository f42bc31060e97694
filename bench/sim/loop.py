"""The day's loop alone, for A/B runs of the simulator (bench/README.md "sim", issue 19).

    PYTHONMALLOC=malloc GLIBC_TUNABLES=glibc.malloc.hugetlb=1 PYTHONPATH=TREE/src \
        python bench/sim/loop.py [SCENARIO] [PROVIDERS] [REQUESTS]      # internet-100k 50000 500000

Builds the world, then runs `Day(earth, cloud=False).run()` (one shard's worth of providers, no cloud
baseline) and prints one JSON line: CPU seconds of the run (`time.process_time`), µs per request, max
RSS, and a digest of the outcomes (every request's latencies and serving provider, earnings, counts,
suspensions, charges, tokens, streams, batch) that must not change when only speed does. Run two trees
at once, one per core (`nice -n 5`), and compare the CPU of the same moment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import resource
import sys
import time

from gpupool.sim.day import Day
from gpupool.sim.earth import build
from gpupool.sim.scenario import load_bundled, validate


def main() -> None:
    args = sys.argv[1:] + ["internet-100k", "50000", "500000"][len(sys.argv) - 1:]
    name, providers, requests = args[0], int(args[1]), int(args[2])
    sc = validate(dataclasses.replace(load_bundled(name), providers=providers, requests=requests))
    t0 = time.process_time()
    earth = build(sc)
    t1 = time.process_time()
    day = Day(earth, cloud=False)
    t2 = time.process_time()
    res = day.run()
    t3 = time.process_time()
    h = hashlib.sha256()
    for a in (res.pool_latency, res.hybrid_latency, res.served_by, res.earnings_usd):
        h.update(a.tobytes())
    h.update(repr(sorted(res.counts.items())).encode())
    h.update(repr(res.trust.suspensions).encode())
    h.update(repr((sorted(res.pool_charge_usd.items()), sorted(res.tokens.items()), sorted(res.streams.items()),
                   sorted(res.batch.items()))).encode())
    print(json.dumps({"build_s": round(t1 - t0, 2), "init_s": round(t2 - t1, 2), "run_cpu_s": round(t3 - t2, 2),
                      "us_per_req": round((t3 - t2) / requests * 1e6, 1), "digest": h.hexdigest()[:16],
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


if __name__ == "__main__":
    main()
