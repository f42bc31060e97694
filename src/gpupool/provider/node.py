"""What a provider and a checker process do alike to start and to run (their runners' shared part).

    specs = serve_specs(settings, nothing="nothing to serve", once="served once per provider")
    identity, operator, backends = open_node(settings, specs)
    agent = ...                                      # the role's agent
    start_node(on_signal, registry, settings)        # signals, metrics
    await run_node(agent)

Both roles read `--serve NAME=BACKEND[:SPEC]` options, dial gateways given as
http(s):// or ws(s):// addresses (checking a `--ca-cert` before any model loads),
load their identity and operator keys, handle SIGTERM and SIGINT, and serve
Prometheus metrics. The roles differ only in their agent, their words and what a
signal does, which the callers pass in. A checker may import this module.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry

from gpupool.identity import Identity
from gpupool.metrics import serve_metrics
from gpupool.provider.backends import Backend, ServeSpec, make_backend
from gpupool.tls import client_context
from gpupool.urls import ws_url


class NodeSettings(Protocol):
    """The settings both ProviderSettings and CheckerSettings have."""

    gateways: list[str]
    ca_cert: Path | None
    serve: list[str]
    key_file: Path
    operator_key_file: Path | None
    metrics_host: str
    metrics_port: int


class Runnable(Protocol):
    async def run(self) -> None: ...


def serve_specs(settings: NodeSettings, *, nothing: str, once: str) -> list[ServeSpec]:
    """The `--serve` options, parsed; ValueError (in the role's words) when none or a name repeats."""
    if not settings.serve:
        raise ValueError(f"{nothing}: pass --serve NAME=BACKEND[:SPEC] at least once")
    specs = [ServeSpec.parse(s) for s in settings.serve]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"a model name may be {once}: {names}")
    return specs


def open_node(settings: NodeSettings, specs: list[ServeSpec]) -> tuple[Identity, Identity | None, dict[str, Backend]]:
    """Resolve the gateways' addresses, check the CA, make (not load) the backends, load the keys.

    Returns (identity, operator key or None, backends by name)."""
    # http(s):// as well as ws(s)://: people paste the address they call the API at.
    settings.gateways = [ws_url(u) for u in settings.gateways]
    client_context(settings.ca_cert)  # a bad --ca-cert: one line now, before any model loads
    backends = {s.name: make_backend(s) for s in specs}
    identity = Identity.load_or_create(settings.key_file)
    operator = None if settings.operator_key_file is None else Identity.load_or_create(settings.operator_key_file)
    return identity, operator, backends


def start_node(on_signal: Callable[[], None], registry: CollectorRegistry, settings: NodeSettings) -> None:
    """Call `on_signal` on SIGTERM and SIGINT and serve metrics (`--metrics-port` 0: off)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    serve_metrics(registry, settings.metrics_host, settings.metrics_port)


async def run_node(agent: Runnable) -> None:
    """Run the agent until it returns, or until a second signal cancels it."""
    try:
        await agent.run()
    except asyncio.CancelledError:
        pass
