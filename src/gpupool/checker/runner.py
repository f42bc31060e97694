"""Run a checker from settings: build reference backends from `--serve`, stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from gpupool.checker.agent import CheckerAgent
from gpupool.config import CheckerSettings
from gpupool.checker.metrics import checker_registry
from gpupool.metrics import serve_metrics
from gpupool.identity import Identity
from gpupool.provider.backends import ServeSpec, make_backend
from gpupool.tls import client_context
from gpupool.urls import ws_url

log = logging.getLogger("gpupool.checker")


def build_agent(settings: CheckerSettings) -> CheckerAgent:
    if not settings.serve:
        raise ValueError("nothing to check with: pass --serve NAME=BACKEND[:SPEC] at least once")
    specs = [ServeSpec.parse(s) for s in settings.serve]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"a model name may be held once per checker: {names}")
    settings.gateways = [ws_url(u) for u in settings.gateways]  # https://gw -> wss://gw, as the provider
    client_context(settings.ca_cert)  # a bad --ca-cert: one line now, before any model loads
    backends = {s.name: make_backend(s) for s in specs}
    for backend in backends.values():  # routine verdicts can wait to share a forward pass
        backend.set_batch_window(settings.batch_window_s)
    agent = CheckerAgent(Identity.load_or_create(settings.key_file), backends, settings)
    if settings.operator_key_file is not None:
        agent.operator = Identity.load_or_create(settings.operator_key_file)
    return agent


async def serve(settings: CheckerSettings) -> None:
    agent = build_agent(settings)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def on_signal() -> None:
        # First signal: finish the jobs in hand (their verdicts are owed), then leave.
        # A second one stops at once; agent.run still closes links and models on the way out.
        if agent.stopping and main is not None:
            main.cancel()
        agent.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    log.warning("checker %s holding %s -> %s", agent.identity.node_id[:12],
                ", ".join(agent.backends), ", ".join(settings.gateways))
    serve_metrics(checker_registry(agent), settings.metrics_host, settings.metrics_port)  # 0: off
    try:
        await agent.run()
    except asyncio.CancelledError:
        pass
