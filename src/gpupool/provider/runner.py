"""Run a provider from settings: build backends from `--serve`, handle signals, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from gpupool.config import ProviderSettings
from gpupool.identity import Identity
from gpupool.provider.agent import ProviderAgent
from gpupool.provider.backends import ServeSpec, make_backend

log = logging.getLogger("gpupool.provider")


def build_agent(settings: ProviderSettings) -> ProviderAgent:
    if not settings.serve:
        raise ValueError("nothing to serve: pass --serve NAME=BACKEND[:SPEC] at least once")
    specs = [ServeSpec.parse(s) for s in settings.serve]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"a model name may be served once per provider: {names}")
    backends = {s.name: make_backend(s) for s in specs}
    return ProviderAgent(Identity.load_or_create(settings.key_file), backends, settings)


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
    log.warning("provider %s serving %s in region %s -> %s", agent.identity.node_id[:12],
                ", ".join(agent.backends), settings.region, ", ".join(settings.gateways))
    try:
        await agent.run()
    except asyncio.CancelledError:
        pass
