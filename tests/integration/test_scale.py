"""Many providers on one gateway (issue 17): the model index, restarts, holds (issue 18 item 4).

Real processes: a gateway, and either real providers or the light swarm of bench/scale
(`swarm.py`: many `GatewayLink` sessions in one process, the real protocol), at small sizes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from gpupool.devnet import Network
from tests.integration.conftest import wait_until

SWARM = Path(__file__).resolve().parents[2] / "bench" / "scale" / "swarm.py"


def start_swarm(net: Network, count: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(SWARM), "--url", net.ws_url, "--count", str(count), "--models", "4",
                             "--reconnect-max-s", "1", "--report-s", "0.2", *extra],
                            stdout=subprocess.PIPE, stderr=open(net.home / "logs" / "swarm.log", "ab"), text=True,
                            env=net.env, start_new_session=True)


def stop(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait(10)


def chat(client: httpx.Client, net: Network, model: str, key: str, **body: Any) -> httpx.Response:
    return client.post(net.gateway_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8,
                             **body})


class Load:
    """A client thread asking for `model` until stopped; counts the answers' statuses."""

    def __init__(self, net: Network, model: str):
        self.net, self.model, self.key = net, model, net.dev_key()
        self.codes: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                try:
                    code = chat(client, self.net, self.model, self.key).status_code
                except httpx.HTTPError:
                    code = 0  # no answer (the gateway is down)
                    time.sleep(0.05)
                self.codes[code] = self.codes.get(code, 0) + 1

    def stop(self) -> dict[int, int]:
        self._stop.set()
        self._thread.join(60)
        return self.codes


def test_the_index_matches_a_full_scan_through_joins_leaves_and_offer_changes(network: Network) -> None:
    network.start_gateway(extra=["--hardware-proof-max-n", "0"])
    swarm = start_swarm(network, 40, "--churn-s", "0.4")
    try:
        wait_until(lambda: network.admin("/admin/index")["sessions"] >= 30, "the swarm joined", timeout=60)
        load = Load(network, "echo-0")
        checks, seen_models, counts = 0, set(), set()
        t_end = time.monotonic() + 8
        while time.monotonic() < t_end:
            state = network.admin("/admin/index")
            assert state["mismatches"] == [], state["mismatches"]
            seen_models.update(state["models"])
            counts.add(tuple(m["sessions"] for m in state["models"].values()))  # the pool did change
            checks += 1
            time.sleep(0.1)
        codes = load.stop()
        assert checks >= 10 and seen_models >= {"echo-0", "echo-1"} and len(counts) >= 5, counts
        assert codes.get(200, 0) > 10, codes  # requests were served while the pool churned
    finally:
        stop(swarm)
    # Every session gone: the index holds nothing, like the scan.
    state = wait_until(lambda: (s := network.admin("/admin/index"))["sessions"] == 0 and s, "the swarm left", 30)
    assert state["mismatches"] == [] and state["models"] == {}


def test_a_restart_under_load_gives_no_404_for_a_model_served_before(network: Network) -> None:
    url = network.start_gateway(extra=["--hardware-proof-max-n", "0"])
    port = int(url.rsplit(":", 1)[1])
    swarm = start_swarm(network, 6)
    try:
        network.wait_for_models({"echo-0": 6}, timeout=60)
        load = Load(network, "echo-0")
        time.sleep(1.0)
        assert network.gateway is not None
        os.killpg(network.gateway.popen.pid, signal.SIGKILL)
        network.gateway.popen.wait(10)
        # Restarted on the same port and database; the load never stopped asking.
        network.start_gateway(port=port, extra=["--hardware-proof-max-n", "0"])
        with httpx.Client(timeout=10) as client:
            # Right after start, before the providers are back: waits, then 200 (not 404).
            first = chat(client, network, "echo-0", network.dev_key())
            # A model nobody ever served is still unknown at once (no grace for it).
            t0 = time.monotonic()
            unknown = chat(client, network, "never-served", network.dev_key())
        wait_until(lambda: network.health()["providers"] >= 6, "the swarm reconnected", timeout=60)
        time.sleep(1.0)
        codes = load.stop()
    finally:
        stop(swarm)
    assert first.status_code == 200, first.text
    assert unknown.status_code == 404 and time.monotonic() - t0 < 5, unknown.text
    assert 404 not in codes, codes
    assert codes.get(200, 0) > 10, codes


def test_an_expensive_offer_does_not_inflate_the_hold(network: Network) -> None:
    """Two providers at 1,000 µcr per 1M tokens and one at the gateway's maximum price (100 µcr a
    token): a client holding 20,000 µcr asking for 256 tokens (the dear one's hold alone ~26,000 µcr)
    is served by a cheap one, never refused with 402 nor sent to the dear one."""
    network.start_gateway(extra=["--hardware-proof-max-n", "0", "--tab-size", "1000"])
    cheap = [network.start_provider(["echo=echo:chat"], extra=["--price", "echo=1000/1000"]) for _ in range(2)]
    dear = network.start_provider(["echo=echo:chat"], extra=["--price", "echo=100000000/100000000"])
    network.wait_for_models({"echo": 3}, timeout=120)
    admin = {"Authorization": f"Bearer {network.admin_token}"}
    key = httpx.post(network.gateway_url + "/admin/keys", json={"name": "thrifty", "account": "thrifty"},
                     headers=admin, timeout=10).json()["key"]
    httpx.post(network.gateway_url + "/admin/deposit", json={"account": "thrifty", "amount": 20_000, "key": "dep-t"},
               headers=admin, timeout=10).raise_for_status()
    served = {}
    with httpx.Client(timeout=30) as client:
        for _ in range(12):
            r = chat(client, network, "echo", key, max_tokens=256)
            assert r.status_code == 200, r.text  # today: 402, the hold priced at the dear offer
            served[r.headers["x-gpupool-provider"]] = served.get(r.headers["x-gpupool-provider"], 0) + 1
    assert dear.node_id not in served and set(served) <= {c.node_id for c in cheap}, served


def test_a_handshake_storm_is_admitted_at_the_gateways_pace_and_told_when_to_come_back(network: Network) -> None:
    """40 providers dial at once a gateway admitting 10 handshakes a second with a 0.5 s queue: the
    rest are refused with a 503 and a Retry-After booking a later turn, which the providers honour,
    so each is refused about once (not at every step of its backoff) and all join, paced."""
    network.start_gateway(extra=["--hardware-proof-max-n", "0", "--handshakes-per-s", "10",
                                 "--handshake-queue-s", "0.5"])
    swarm = start_swarm(network, 40)
    try:
        t0 = time.monotonic()
        wait_until(lambda: network.health()["providers"] >= 40, "every provider joined", timeout=60)
        took = time.monotonic() - t0
        assert swarm.stdout is not None
        counters: dict[str, int] = {}
        for line in swarm.stdout:  # the swarm's counters, printed every 0.2 s
            counters = json.loads(line)
            if counters["connected"] >= 40:
                break
    finally:
        stop(swarm)
    deferred = [e for e in network.admin("/admin/events?limit=500") if e["kind"] == "handshake_deferred"]
    assert len(deferred) >= 10 and all("retry in" in e["detail"] for e in deferred)
    assert took >= 1.5  # paced: 40 handshakes at 10 a second after a burst of ~11
    assert counters["errors"] <= 45, counters  # refused about once each, not at every backoff step
