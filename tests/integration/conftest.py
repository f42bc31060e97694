"""Fixtures that start real gateway and provider processes on loopback ports.

`network` gives a fresh, empty `Network` (stopped after the test); helpers start the
processes a test needs. Nothing here fakes a component: every test talks to real
processes over real sockets.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from openai import OpenAI

from gpupool.devnet import Network

T = TypeVar("T")
PG_URL = os.environ.get("GPUPOOL_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


def pg_available() -> bool:
    import asyncio

    async def probe() -> bool:
        import asyncpg

        try:
            conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"), timeout=3)
        except Exception:  # noqa: BLE001 - any failure means "not available"
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    net = Network(tmp_path / "net")
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
    return httpx.request(method, net.gateway_url + path, headers=headers, timeout=30, **kw)  # type: ignore[arg-type]


def audits_body(net: Network) -> dict[str, Any]:
    """GET /admin/audits, whole: {"checkers": [...], "data": [per-provider rows]}."""
    r = httpx.get(net.gateway_url + "/admin/audits", timeout=10,
                  headers={"Authorization": f"Bearer {net.admin_token}"})
    r.raise_for_status()
    return r.json()


def wait_until(probe: Callable[[], T], what: str, timeout: float = 60.0) -> T:
    """Poll `probe` until it returns something truthy, and return that (fail after `timeout`)."""
    deadline = time.monotonic() + timeout
    while not (got := probe()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return got


async def wait_until_async(probe: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """`wait_until` for async tests: sleeps without blocking the loop their raw peers run on."""
    deadline = time.monotonic() + timeout
    while not (got := probe()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
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
