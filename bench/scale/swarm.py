"""A light swarm of provider sessions for bench/scale: many per process, the real protocol.

    python bench/scale/swarm.py --url ws://127.0.0.1:PORT --count 500 --first 0

Each session is the project's own `GatewayLink` (provider/gateway_link.py) over a
small stand-in for `ProviderAgent`: its own ed25519 key (`gpupool.identity`), the
real handshake (Hello, Challenge, Proof, signed Offer of N echo models, Welcome),
hardware proofs answered, Pings answered, Runs served by the echo backend with
receipts covered by signed Statements every ~50 ms, a LoadReport after each run,
and reconnection with jittered exponential backoff (`PeerLink.run`). What makes it
light: no model, no metrics server, no per-node process; one echo backend object
per model is shared by every session of this process.

With `--churn-s S` (tests/integration/test_scale.py) every session, about every S seconds,
does one of: re-send its offer with a random subset of the models, prices, concurrency and
output limit; re-send it unchanged; report a new capacity; or drop its connection (and
reconnect): the pool changes under load while the gateway's index must keep up.

Every `--report-s` the process prints one JSON line of counters on stdout (the
parent sums them over processes): sessions connected now, handshakes completed,
hardware proofs answered, runs served, connection errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import time

# One BLAS thread: each session's hardware proof is a small product (n ≈ 128-192), and
# OpenBLAS's worker threads spin while they wait: measured at n = 192, 15.6 ms of CPU per
# proof with the default two threads, 1.4 ms with one. Set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpupool import protocol  # noqa: E402
from gpupool.config import ProviderSettings  # noqa: E402
from gpupool.identity import Identity  # noqa: E402
from gpupool.market.pricing import Price  # noqa: E402
from gpupool.protocol import Hardware, HardwareAnswer, LoadReport, Offer, Welcome  # noqa: E402
from gpupool.provider.admission import Admission  # noqa: E402
from gpupool.provider.backends.echo import EchoBackend  # noqa: E402
from gpupool.provider.gateway_link import GatewayLink  # noqa: E402

REGIONS = [("eu-west", 53.3, -6.3), ("us-east", 39.0, -77.5), ("ap-south", 19.1, 72.9),
           ("eu-central", 50.1, 8.7), ("us-west", 45.6, -121.2), ("ap-east", 22.3, 114.2)]
# 1 MiB of claimed memory: the gateway sizes its hardware proof to the claim, so each
# session proves a small (n ≈ 128-192) product: the exchange is real, its cost small.
HARDWARE = Hardware(cpu="bench-swarm", cpu_cores=1, memory_mb=1)


class Counters:
    def __init__(self) -> None:
        self.connected = 0
        self.welcomed = 0
        self.proofs = 0
        self.runs = 0
        self.errors = 0


class SwarmNode:
    """What a GatewayLink reads from its provider (the `ServingNode` protocol), for one session."""

    def __init__(self, identity: Identity, backends: dict[str, EchoBackend], settings: ProviderSettings,
                 region: tuple[str, float, float], max_concurrency: int):
        self.identity = identity
        self.settings = settings
        self.backends = backends
        self.prices: dict[str, Price] = {}
        self.admission = Admission(max_concurrency, 4 * max_concurrency)
        self.answers: dict[tuple[str, str], int] = {}
        self.draining = False
        self.region = region
        self.link: SwarmLink | None = None
        self.models: list[Any] | None = None  # --churn: the offer's current models (None: every backend's)

    def make_offer(self) -> Offer:
        name, lat, lon = self.region
        models = self.models if self.models is not None else [b.offer() for b in self.backends.values()]
        offer = Offer(node_id=self.identity.node_id, models=models,
                      hardware=HARDWARE, region=name, latitude=lat, longitude=lon,
                      max_concurrency=self.admission.max_concurrency, issued_at=time.time())
        return protocol.sign_offer(offer, self.identity)

    async def report_load(self) -> None:
        if self.link is not None:
            await self.link.send_load(LoadReport(in_flight=self.admission.in_flight, queued=self.admission.queued,
                                                 capacity=self.admission.capacity))


class SwarmLink(GatewayLink):
    """A GatewayLink that counts what the benchmark measures."""

    def __init__(self, node: SwarmNode, url: str, counters: Counters):
        super().__init__(node, url)
        self.counters = counters
        self._up = False

    async def _welcomed(self, ws: Any, welcome: Welcome) -> None:
        await super()._welcomed(ws, welcome)
        self.counters.welcomed += 1
        self.counters.connected += 1
        self._up = True

    def _disconnected(self) -> None:
        super()._disconnected()
        if self._up:
            self.counters.connected -= 1
            self._up = False
        else:
            self.counters.errors += 1  # ended before a Welcome: refused, timed out or unreachable

    async def _send(self, msg: protocol.Message) -> None:
        if isinstance(msg, HardwareAnswer) and msg.rows:
            self.counters.proofs += 1
        elif isinstance(msg, LoadReport):
            self.counters.runs += 1  # one load report after each run
        await super()._send(msg)


async def churn(node: SwarmNode, every_s: float, rng: random.Random) -> None:
    """Change this session now and then (see the module docstring)."""
    while True:
        await asyncio.sleep(every_s * rng.uniform(0.5, 1.5))
        link = node.link
        if link is None or link._ws is None:
            continue
        what = rng.random()
        if what < 0.4:
            names = rng.sample(sorted(node.backends), rng.randint(1, len(node.backends)))
            node.models = [msgspec.structs.replace(node.backends[n].offer(), price_in=rng.randint(0, 1000),
                                                   price_out=rng.randint(0, 1000),
                                                   max_output_tokens=rng.choice([256, 512, 1024]))
                           for n in names]
            node.admission.max_concurrency = rng.randint(1, 16)
            await link._send(node.make_offer())
        elif what < 0.55:
            await link._send(node.make_offer())  # unchanged: the gateway's diff moves nothing
        elif what < 0.8:
            await link._send(LoadReport(in_flight=0, queued=0, capacity=rng.randint(0, 200)))
        else:
            await link._ws.close()  # the link reconnects with its backoff


def no_proxy_lookup() -> None:
    """Skip websockets' per-dial proxy lookup: it walks the whole environment on every connect
    (profiled: ~8% of a swarm process's CPU while joining). The swarm dials loopback directly."""
    from websockets.asyncio import client

    client.get_proxy = lambda uri: None  # type: ignore[attr-defined, assignment]


async def main_async(args: argparse.Namespace) -> None:
    no_proxy_lookup()
    counters = Counters()
    backends = {f"{args.prefix}{i}": EchoBackend(f"{args.prefix}{i}", "chat") for i in range(args.models)}
    settings = ProviderSettings(reconnect_max_s=args.reconnect_max_s)
    rng = random.Random(args.first)
    links = []
    for i in range(args.count):
        node = SwarmNode(Identity.generate(), backends, settings, REGIONS[(args.first + i) % len(REGIONS)],
                         args.max_concurrency)
        node.link = SwarmLink(node, args.url, counters)
        links.append(node.link)
    tasks = [asyncio.create_task(report(counters, args.report_s))]  # counters from the start, ramp or not
    for link in links:
        tasks.append(asyncio.create_task(link.run()))
        if args.ramp_s:
            await asyncio.sleep(args.ramp_s / args.count * rng.uniform(0.5, 1.5))
    if args.churn_s > 0:
        for link in links:
            tasks.append(asyncio.create_task(churn(link.node, args.churn_s, random.Random(rng.random()))))
    await asyncio.gather(*tasks, return_exceptions=True)  # they run until the process is stopped


async def report(counters: Counters, every_s: float) -> None:
    while True:
        print(json.dumps({"t": time.time(), "connected": counters.connected, "welcomed": counters.welcomed,
                          "proofs": counters.proofs, "runs": counters.runs, "errors": counters.errors}),
              flush=True)
        await asyncio.sleep(every_s)


def main() -> None:
    ap = argparse.ArgumentParser(description="provider sessions for bench/scale (one process of the swarm)")
    ap.add_argument("--url", required=True, help="gateway ws:// URL")
    ap.add_argument("--count", type=int, required=True, help="sessions in this process")
    ap.add_argument("--first", type=int, default=0, help="index of this process's first session (regions)")
    ap.add_argument("--models", type=int, default=8, help="echo models each session offers [8]")
    ap.add_argument("--prefix", default="echo-", help="model names are PREFIX0..PREFIX{models-1}")
    ap.add_argument("--max-concurrency", type=int, default=8, help="each session's offered concurrency [8]")
    ap.add_argument("--reconnect-max-s", type=float, default=30.0, help="longest reconnect backoff [30, as providers]")
    ap.add_argument("--ramp-s", type=float, default=0.0, help="spread the sessions' first dials over this long [0]")
    ap.add_argument("--churn-s", type=float, default=0.0, help="change each session about this often [0: never]")
    ap.add_argument("--report-s", type=float, default=0.25, help="how often counters are printed [0.25]")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # one line per lost connection × thousands is noise here
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
