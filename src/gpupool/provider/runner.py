"""Run a provider from settings: build backends from `--serve`, handle signals, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging

from gpupool.config import ProviderSettings
from gpupool.gc_tuning import freeze_startup_heap
from gpupool.market.pricing import Price, parse_price
from gpupool.provider.agent import ProviderAgent
from gpupool.provider.metrics import provider_registry
from gpupool.provider.node import open_node, run_node, serve_specs, start_node

log = logging.getLogger("gpupool.provider")


def build_agent(settings: ProviderSettings) -> ProviderAgent:
    specs = serve_specs(settings, nothing="nothing to serve", once="served once per provider")
    prices = parse_prices(settings.prices, [s.name for s in specs])  # before loading models: a typo fails fast
    identity, operator, backends = open_node(settings, specs)
    agent = ProviderAgent(identity, backends, settings, prices)
    agent.operator = operator
    return agent


def parse_prices(items: list[str], names: list[str]) -> dict[str, Price]:
    """`--price NAME=IN[/OUT[/IMAGE]]` options, checked against the served model names."""
    prices: dict[str, Price] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in names:
            raise ValueError(f"--price expects NAME=IN[/OUT[/IMAGE]] for a served model ({', '.join(names)}); got {item!r}")
        prices[name] = parse_price(value, images=True)
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

    log.info("provider %s starting: %s in region %s -> %s", agent.identity.node_id[:12],
             ", ".join(agent.backends), settings.region, ", ".join(settings.gateways))
    start_node(on_signal, provider_registry(agent), settings)
    freeze_startup_heap()  # backends and models are loaded
    await run_node(agent)
