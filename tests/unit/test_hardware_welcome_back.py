"""After a restart, providers the gateway served before it are re-proven within a spread, not
at once (gateway/trust/hardware_checks.py `welcome_back`): 10,000 of them reconnect within a
minute, and proving each then was a third of the gateway's CPU per handshake. A key it never
saw is proven at once, and so is a returning one once the window is over."""

from __future__ import annotations

import asyncio

from gpupool.gateway.peers.session import ProviderSession
from gpupool.gateway.trust.hardware_checks import HardwareChecker
from gpupool.protocol import Hardware, ModelOffer, Offer


def session(node: str) -> ProviderSession:
    o = Offer(node_id=node, hardware=Hardware(cpu="x", cpu_cores=1, memory_mb=1), region="eu",
              max_concurrency=4, issued_at=0.0, models=[ModelOffer("m", "generate", "echo")])
    return ProviderSession(node_id=node, public_key=b"k" * 32, offer=o, ws=None,  # type: ignore[arg-type]
                           connected_at=0.0, models={m.name: m for m in o.models})


async def test_returning_providers_are_proven_later_and_new_ones_at_once() -> None:
    checks = HardwareChecker(lambda *_: None, interval_s=0, max_n=128)
    checks.welcome_back({"back-1", "back-2"}, spread_s=300.0)
    for node in ("back-1", "new-1", "back-2"):
        checks.on_connect(session(node))
    kinds = {node: type(entry[1]) for node, entry in checks._next.items()}
    assert kinds == {"back-1": asyncio.TimerHandle, "back-2": asyncio.TimerHandle, "new-1": asyncio.Task}
    delays = [entry[1].when() - asyncio.get_running_loop().time() for n, entry in checks._next.items()
              if n.startswith("back")]
    assert all(0 <= d <= 300 for d in delays)
    # Back a second time (a blip after the restart): no longer returning, proven at once.
    checks.on_connect(session("back-1"))
    assert isinstance(checks._next["back-1"][1], asyncio.Task)
    await checks.close()


async def test_after_the_window_a_returning_provider_is_proven_at_once() -> None:
    checks = HardwareChecker(lambda *_: None, interval_s=0, max_n=128)
    checks.welcome_back({"back-1"}, spread_s=0.0)  # the window is already over
    checks.on_connect(session("back-1"))
    assert isinstance(checks._next["back-1"][1], asyncio.Task) and not checks._returning
    await checks.close()
