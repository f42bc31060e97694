"""Many gateways, one network: per-key limits shared through Redis, gateways that know each other.

Two real gateways share one PostgreSQL (keys, money, the gateway registry) and one Redis
(per-key rates); a real provider is told one gateway and finds the other through
`GET /v1/gateways`. A key's requests per minute hold network-wide, not per gateway. A
single gateway without Redis still enforces its limits, and an unreachable Redis stops a
gateway's start with one line.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gpupool.devnet import Network
from tests.integration.conftest import PG_URL, client_for, pg_available, pg_database, wait_until
from tests.redteam import child_env

REDIS_URL = os.environ.get("GPUPOOL_TEST_REDIS", "redis://127.0.0.1:6379/0")


def redis_answers(address: str | tuple[str, int]) -> bool:
    """A PING over TCP (host, port) or a unix socket path."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(address)
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_available() -> bool:
    host, port = REDIS_URL.split("://", 1)[1].split("/")[0].split(":")
    return redis_answers((host, int(port)))


def shared_limits_possible() -> bool:
    try:
        import limits  # noqa: F401 - a dependency since --redis-url
    except ImportError:
        return False
    return redis_available()


def flood(clients: list[openai.OpenAI], seconds: float, threads: int = 6) -> list[float]:
    """Send echo chats round-robin over `clients` from a few threads for `seconds`; the times of
    the answers that were admitted (a 429 waits as it says and is counted out; any other error
    fails the test)."""
    admitted: list[float] = []
    errors: list[BaseException] = []
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        n = i
        while time.monotonic() < stop:
            client = clients[n % len(clients)]
            n += 1
            try:
                client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=4)
                admitted.append(time.monotonic())
            except openai.RateLimitError as exc:
                # A client that waits as told (the message's "try again in 1.9s"; the
                # Retry-After header holds whole seconds): one that does not is held back.
                wait = re.search(r"(?:try again in|wait) ([0-9.]+)s", str(exc))
                if exc.status_code != 429 or not wait:
                    errors.append(exc)
                    return
                time.sleep(min(float(wait.group(1)), 2.0))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors[0]
    return sorted(admitted)


def within(admitted: list[float], start: float, seconds: float) -> int:
    return sum(1 for t in admitted if start <= t < start + seconds)


@pytest.fixture(scope="module")
def two_gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Network, Network]]:
    if not pg_available():
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    home = tmp_path_factory.mktemp("gateways")
    with pg_database("gpupool_gateways") as db:
        yield from _two_gateways(home, db)


def _two_gateways(home: Path, db: str) -> Iterator[tuple[Network, Network]]:
    a = Network(home / "a", db=db, env=child_env())
    b = Network(home / "b", db=db, env=child_env())
    # 1,200 requests a minute with 2 s of burst: at most 40 in any 2 s, network-wide.
    limits = ["--key-rpm", "1200", "--rate-burst-s", "2"]
    if shared_limits_possible():  # else the rpm test skips; discovery needs no Redis
        limits += ["--redis-url", REDIS_URL]
    try:
        a.start_gateway(extra=[*limits, "--region", "eu"])
        b.start_gateway(extra=[*limits, "--region", "us"])
        # Told gateway A only; B is in the shared database's registry, so A lists it.
        a.start_provider(["echo=echo:chat"], max_concurrency=16, extra=["--gateway-discovery-s", "1"])
        yield a, b
    finally:
        a.stop()
        b.stop()


def test_a_provider_told_one_gateway_connects_to_another_it_learned_of(two_gateways: tuple[Network, Network]) -> None:
    a, b = two_gateways

    def listing() -> list[dict[str, Any]]:
        data = httpx.get(a.gateway_url + "/v1/gateways", timeout=5).json()["data"]
        return data if any(g["url"] == b.gateway_url for g in data) else []

    listed = wait_until(listing, "gateway A to list B (its registry heartbeat reads the database)", 30)
    assert listed[0]["self"] and listed[0]["url"] == a.gateway_url and listed[0]["region"] == "eu"
    assert {"url": b.gateway_url, "region": "us", "source": "database"}.items() <= \
        next(g for g in listed if g["url"] == b.gateway_url).items()
    a.wait_for_models({"echo": 1}, timeout=60)
    b.wait_for_models({"echo": 1}, timeout=60)  # B never was told to the provider
    (on_a,), (on_b,) = a.admin("/admin/providers"), b.admin("/admin/providers")
    assert on_a["node_id"] == on_b["node_id"] == a.providers[0].node_id
    log = a.providers[0].log_path.read_text()
    assert f"connecting to gateway {b.ws_url} too" in log


def test_a_keys_rpm_holds_across_two_gateways_sharing_redis(two_gateways: tuple[Network, Network]) -> None:
    if not shared_limits_possible():
        pytest.skip(f"Redis not reachable at {REDIS_URL}, or the limits package is not installed")
    a, b = two_gateways
    a.wait_for_models({"echo": 1}, timeout=60)
    b.wait_for_models({"echo": 1}, timeout=60)
    key = a.dev_key()  # one key in the shared database, used on both gateways
    admitted = flood([client_for(a, key), client_for(b, key)], seconds=6.5)
    # A moving window of 2 s: any 6 s from the first answer holds at most 3 × 40 = 120
    # (counted per gateway, each would admit that many: 240).
    got = within(admitted, admitted[0], 6.0)
    assert abs(got - 120) <= 12, f"{got} requests admitted in 6 s, limit 120 network-wide"


def test_one_gateway_without_redis_still_enforces_a_keys_rpm(network: Network) -> None:
    network.start_gateway(extra=["--key-rpm", "600", "--rate-burst-s", "2"])
    network.start_provider(["echo=echo:chat"], max_concurrency=16)
    network.wait_for_models({"echo": 1}, timeout=60)
    admitted = flood([client_for(network)], seconds=3.5, threads=1)  # one client: never early
    # A token bucket of 20 (2 s of 10 a second), then 10 a second: at most 20 + 30 in 3 s.
    # Fewer when the client came back early (the gateway's 429 says "0.0s" for 40 ms; an
    # early retry is held back a second): the limit is the upper bound.
    got = within(admitted, admitted[0], 3.0)
    assert 35 <= got <= 55, f"{got} requests admitted in 3 s, limit 50"
    assert httpx.get(network.gateway_url + "/v1/gateways", timeout=5).json()["data"][0]["self"] is True


def test_an_unreachable_redis_stops_the_start_with_one_line(tmp_path: Path) -> None:
    pytest.importorskip("limits", reason="the limits package (a dependency since --redis-url) is not installed")
    out = subprocess.run([sys.executable, "-m", "gpupool", "gateway", "--port", "0", "--db",
                          f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}", "--key-file", str(tmp_path / "gw.key"),
                          "--redis-url", "redis://127.0.0.1:1/0"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, **child_env()})
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Redis at redis://127.0.0.1:1/0" in lines[0], out.stderr


def test_redis_failing_at_run_time_falls_back_to_per_gateway_limits(network: Network, tmp_path: Path) -> None:
    pytest.importorskip("limits", reason="the limits package (a dependency since --redis-url) is not installed")
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server not installed")
    sock = str(tmp_path / "redis.sock")  # a Redis of its own, to stop: on a unix socket, no port to pick
    redis = subprocess.Popen([server, "--port", "0", "--unixsocket", sock, "--save", "", "--appendonly", "no",
                              "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: redis_answers(sock), "the test's own redis-server", 20)
        network.start_gateway(extra=["--redis-url", f"unix://{sock}", "--key-rpm", "600",
                                     "--rate-burst-s", "2"])
        network.start_provider(["echo=echo:chat"], max_concurrency=16)
        network.wait_for_models({"echo": 1}, timeout=60)
        # Redis counts: its moving window holds 20 in 2 s (the gateway's own buckets would allow 20 + 19).
        assert 10 <= len(flood([client_for(network)], seconds=1.9, threads=3)) <= 20
        assert network.gateway is not None and "counted by each gateway alone" not in network.gateway.log_tail(50)
    finally:
        redis.kill()
        redis.wait()
    # Redis gone: requests are still answered (fail open), and the gateway's own buckets
    # (20 at once, then 10 a second) limit the key instead.
    admitted = flood([client_for(network)], seconds=2.5, threads=1)
    assert 10 <= within(admitted, admitted[0], 2.0) <= 42
    assert network.gateway is not None
    assert "per-key limits are counted by each gateway alone" in network.gateway.log_tail(50)
