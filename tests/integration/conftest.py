"""Fixtures that start real gateway and provider processes on loopback ports.

`network` gives a fresh, empty `Network` (stopped after the test); helpers start the
processes a test needs. Its processes can import the `tests` package, so a provider can
serve the red-team backends (`tests/redteam.py`) as a plug-in. Nothing here fakes a component: every test talks to real
processes over real sockets.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from openai import OpenAI

from gpupool.devnet import Network, Proc
from tests.redteam import child_env

T = TypeVar("T")
PG_URL = os.environ.get("GPUPOOL_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


def pg_available() -> bool:
    async def probe() -> bool:
        import asyncpg

        try:
            conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"), timeout=3)
        except Exception:  # noqa: BLE001 - any failure means "not available"
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


def _pg_admin(sql: str) -> None:
    async def run() -> None:
        import asyncpg

        admin = PG_URL.replace("postgresql+asyncpg", "postgresql").rsplit("/", 1)[0] + "/postgres"
        conn = await asyncpg.connect(admin, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@contextmanager
def pg_database(prefix: str = "gpupool_test") -> Iterator[str]:
    """A new, empty PostgreSQL database for one test (dropped after it), as a gateway `--db` URL.

    Tests sharing the one `test` database saw each other's rows: a batch, gateway registry
    row or key left by another run (a killed run, or another checkout's suite running at the
    same time) was picked up by this run's gateways, and clearing them cancelled the other
    run's batch. A database of its own leaves nothing to share."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    net = Network(tmp_path / "net", env=child_env(), early_dial=True)  # providers load while the gateway does
    try:
        yield net
    finally:
        net.stop(timeout=10)


def client_for(net: Network, key: str | None = None, **kw: object) -> OpenAI:
    return OpenAI(base_url=net.gateway_url + "/v1", api_key=key or net.dev_key(), max_retries=0, **kw)


def raw(net: Network, method: str, path: str, key: str | None = None, **kw: object) -> httpx.Response:
    headers = dict(kw.pop("headers", {}) or {})  # type: ignore[arg-type]
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.request(method, net.gateway_url + path, headers=headers, timeout=30,  # type: ignore[arg-type]
                         verify=net.verify, **kw)


def audits_body(net: Network) -> dict[str, Any]:
    """GET /admin/audits, whole: {"checkers": [...], "data": [per-provider rows]}."""
    r = httpx.get(net.gateway_url + "/admin/audits", timeout=10, verify=net.verify,
                  headers={"Authorization": f"Bearer {net.admin_token}"})
    r.raise_for_status()
    return r.json()


def wait_until(probe: Callable[[], T], what: str, timeout: float = 60.0) -> T:
    """Poll `probe` until it returns something truthy, and return that (fail after `timeout`)."""
    deadline = time.monotonic() + timeout
    while not (got := probe()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # every test waits on something, often many times: overshoot adds up
    return got


async def wait_until_async(probe: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """`wait_until` for async tests: sleeps without blocking the loop their raw peers run on."""
    deadline = time.monotonic() + timeout
    while not (got := probe()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return got


def wait_checkers(net: Network, n: int, timeout: float = 120) -> None:
    wait_until(lambda: len(audits_body(net)["checkers"]) >= n, f"{n} checkers to connect", timeout)


@pytest.fixture
def echo_net(network: Network) -> Network:
    """Gateway + two echo providers (chat) and one echo embeddings model."""
    network.start_gateway()
    network.start_provider(["echo=echo:chat", "echo-embed=echo:embeddings"])
    network.start_provider(["echo=echo:chat"])
    network.wait_for_models({"echo": 2, "echo-embed": 1}, timeout=60)
    return network


def freeze_a_busy_provider(network: Network, timeout: float = 20.0) -> Proc | None:
    """Stop (SIGSTOP) a provider that has requests in flight and return its process, or None.

    A stopped provider cannot finish anything, so if the gateway still counts work in
    flight on it after the stop, killing it is certain to interrupt that work. None means
    its work finished before the stop landed (killing right after seeing work in flight
    raced like that on slow CI, and then the kill interrupted nothing).
    """
    proc_of = {p.node_id: p for p in network.providers}
    deadline = time.monotonic() + timeout
    while not (busy := [p for p in network.admin("/admin/providers") if p["in_flight"] > 0]):
        assert time.monotonic() < deadline, "no provider ever had a request in flight"
        time.sleep(0.02)
    node_id = max(busy, key=lambda p: p["in_flight"])["node_id"]
    network.kill_provider(proc_of[node_id], signal.SIGSTOP)
    # The gateway may still be taking in answers sent before the stop: wait until its count
    # for the frozen provider holds still for a few reads.
    seen: list[int] = []
    for _ in range(30):
        time.sleep(0.1)
        seen.append(next((p["in_flight"] for p in network.admin("/admin/providers") if p["node_id"] == node_id), 0))
        if seen[-1] == 0 or seen[-4:] == [seen[-1]] * 4:
            break
    if seen[-1] > 0:
        return proc_of[node_id]
    network.kill_provider(proc_of[node_id], signal.SIGCONT)
    return None
