"""Run a checker from settings: build reference backends from `--serve`, stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import logging

from gpupool.checker.agent import CheckerAgent
from gpupool.checker.metrics import checker_registry
from gpupool.config import CheckerSettings
from gpupool.provider.node import open_node, run_node, serve_specs, start_node

log = logging.getLogger("gpupool.checker")


def build_agent(settings: CheckerSettings) -> CheckerAgent:
    specs = serve_specs(settings, nothing="nothing to check with", once="held once per checker")
    identity, operator, backends = open_node(settings, specs)
    for backend in backends.values():  # routine verdicts can wait to share a forward pass
        backend.set_batch_window(settings.batch_window_s)
    agent = CheckerAgent(identity, backends, settings)
    agent.operator = operator
    return agent


async def serve(settings: CheckerSettings) -> None:
    agent = build_agent(settings)
    main = asyncio.current_task()

    def on_signal() -> None:
        # First signal: finish the jobs in hand (their verdicts are owed), then leave.
        # A second one stops at once; agent.run still closes links and models on the way out.
        if agent.stopping and main is not None:
            main.cancel()
        agent.stop()

    log.warning("checker %s holding %s -> %s", agent.identity.node_id[:12],
                ", ".join(agent.backends), ", ".join(settings.gateways))
    start_node(on_signal, checker_registry(agent), settings)
    await run_node(agent)
