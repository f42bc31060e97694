"""Run a provider from settings: build backends from `--serve`, handle signals, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from gpupool.config import ProviderSettings
from gpupool.gc_tuning import freeze_startup_heap
from gpupool.identity import Identity
from gpupool.market.pricing import Price, parse_price
from gpupool.metrics import serve_metrics
from gpupool.provider.metrics import provider_registry
from gpupool.provider.agent import ProviderAgent
from gpupool.provider.backends import ServeSpec, make_backend
from gpupool.tls import client_context
from gpupool.urls import ws_url

log = logging.getLogger("gpupool.provider")


def build_agent(settings: ProviderSettings) -> ProviderAgent:
    if not settings.serve:
        raise ValueError("nothing to serve: pass --serve NAME=BACKEND[:SPEC] at least once")
    specs = [ServeSpec.parse(s) for s in settings.serve]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"a model name may be served once per provider: {names}")
    prices = parse_prices(settings.prices, names)  # before loading models: a typo fails fast
    # http(s):// as well as ws(s)://: people paste the address they call the API at.
    settings.gateways = [ws_url(u) for u in settings.gateways]
    client_context(settings.ca_cert)  # a bad --ca-cert: one line now, before any model loads
    backends = {s.name: make_backend(s) for s in specs}
    agent = ProviderAgent(Identity.load_or_create(settings.key_file), backends, settings, prices)
    if settings.operator_key_file is not None:
        agent.operator = Identity.load_or_create(settings.operator_key_file)
    return agent


def parse_prices(items: list[str], names: list[str]) -> dict[str, Price]:
    """`--price NAME=IN[/OUT]` options, checked against the served model names."""
    prices: dict[str, Price] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in names:
            raise ValueError(f"--price expects NAME=IN[/OUT] for a served model ({', '.join(names)}); got {item!r}")
        prices[name] = parse_price(value)
    return prices


async def serve(settings: ProviderSettings) -> None:
    agent = build_agent(settings)
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_signal() -> None:
        # First signal: drain gracefully. Second: stop now.
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            agent.request_drain()
        else:
            for task in asyncio.all_tasks(loop):
                task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    log.info("provider %s starting: %s in region %s -> %s", agent.identity.node_id[:12],
             ", ".join(agent.backends), settings.region, ", ".join(settings.gateways))
    serve_metrics(provider_registry(agent), settings.metrics_host, settings.metrics_port)  # 0: off
    freeze_startup_heap()  # backends and models are loaded
    try:
        await agent.run()
    except asyncio.CancelledError:
        pass
