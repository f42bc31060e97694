"""Latency-aware placement across real network distance (separate hosts in network namespaces).

Three provider hosts sit behind links with 5, 40 and 120 ms of one-way delay (a
delaying TCP relay inside each namespace; nothing tells the gateway these
numbers, it measures them). Traffic must go to the nearest provider with
capacity, and spill over to farther ones when the nearest is saturated.
"""

from __future__ import annotations

import concurrent.futures as cf
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from gpupool.devnet import Network
from tests.integration.conftest import client_for
from tests.integration.netns import Hosts, namespaces_permitted

WHY_NOT = namespaces_permitted()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"needs network namespaces: {WHY_NOT}")

DELAYS_MS = {"near": 5, "mid": 40, "far": 120}
RELAY = Path(__file__).with_name("delay_relay.py")
RELAY_PORT = 18080


def start_far_network(tmp_path: Path, hosts: Hosts, relays: list[subprocess.Popen[bytes]],
                      serve: str, concurrency: int) -> tuple[Network, dict[str, str]]:
    net = Network(tmp_path / "net")
    net.start_gateway(host="0.0.0.0", extra=["--ping-interval-s", "0.25"])
    port = int(net.gateway_url.rsplit(":", 1)[1])
    node_of: dict[str, str] = {}
    for name, delay in DELAYS_MS.items():
        relays.append(subprocess.Popen(
            [*hosts.prefix(name), sys.executable, str(RELAY), str(RELAY_PORT), hosts.gateway_ip(name), str(port),
             str(delay)], stdout=subprocess.PIPE))
        assert relays[-1].stdout is not None and b"ready" in relays[-1].stdout.readline()
        proc = net.start_provider([serve], region=name, max_concurrency=concurrency,
                                  gateways=[f"ws://127.0.0.1:{RELAY_PORT}"], prefix=hosts.prefix(name),
                                  extra=["--max-queue", "64"])
        node_of[proc.name] = name
    net.wait_for_models({"echo": 3}, timeout=60)
    return net, node_of


def rtts_in_bounds(net: Network, timeout: float = 20) -> dict[str, float]:
    """Region -> RTT the gateway measured, once each is near twice its link's delay.

    Polled, not read once after a fixed wait: on a loaded machine the gateway's smoothed
    RTT also carries scheduling delay for a while. Nothing tells the gateway the delays.
    """
    deadline = time.monotonic() + timeout
    rtts: dict[str, float] = {}
    while time.monotonic() < deadline:
        rtts = {p["region"]: p["rtt_ms"] for p in net.admin("/admin/providers") if p["rtt_ms"] is not None}
        if len(rtts) == 3 and all(2 * d * 0.8 <= rtts[name] <= 2 * d * 1.6 + 15 for name, d in DELAYS_MS.items()):
            return rtts
        time.sleep(0.25)
    raise AssertionError(f"measured RTTs never matched the link delays {DELAYS_MS}: {rtts}")


def test_gateway_measures_distance_and_places_traffic_by_it(tmp_path: Path) -> None:
    relays: list[subprocess.Popen[bytes]] = []
    with Hosts(list(DELAYS_MS)) as hosts:
        net = None
        try:
            # Each request is 4 words x 50 ms of work; the near provider runs 2 at once.
            net, _ = start_far_network(tmp_path, hosts, relays, "echo=echo:chat?delay_ms=50", concurrency=2)
            rtts_in_bounds(net)
            region_of = {p["node_id"]: p["region"] for p in net.admin("/admin/providers")}
            client = client_for(net, timeout=30)

            def ask(i: int) -> str:
                r = client.chat.completions.with_raw_response.create(
                    model="echo", messages=[{"role": "user", "content": f"a b c {i}"}])
                return region_of[r.headers["x-gpupool-provider"]]

            # One at a time: the nearest provider always has room, so it gets everything.
            alone = Counter(ask(i) for i in range(10))
            assert alone["near"] >= 9, alone

            # 12 at once: the near one is saturated (2 slots), so work spills over, nearer first.
            with cf.ThreadPoolExecutor(12) as pool:
                burst = Counter(pool.map(ask, range(12)))
            assert burst["near"] >= 2, burst
            assert burst["mid"] + burst["far"] > 0, burst
            assert burst["mid"] >= burst["far"], burst
        finally:
            if net is not None:
                net.stop(timeout=10)
            for r in relays:
                r.kill()
                r.wait()
