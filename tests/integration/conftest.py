"""Fixtures that start real gateway and provider processes on loopback ports.

`network` gives a fresh, empty `Network` (stopped after the test); helpers start the
processes a test needs. Nothing here fakes a component: every test talks to real
processes over real sockets.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from gpupool.devnet import Network

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


@pytest.fixture
def echo_net(network: Network) -> Network:
    """Gateway + two echo providers (chat) and one echo embeddings model."""
    network.start_gateway()
    network.start_provider(["echo=echo:chat", "echo-embed=echo:embeddings"])
    network.start_provider(["echo=echo:chat"])
    network.wait_for_models({"echo": 2, "echo-embed": 1}, timeout=60)
    return network
