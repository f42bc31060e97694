"""Who the hub tells of changes in the pool: the seam between the registry of peers and everyone else.

    hub.listeners.joined.append(hardware_checks.on_connect)
    hub.listeners.left.append(router.forget_if_crowded)
    hub.listeners.statement.append(billing.statement)
    hub.listeners.verdict.append(auditor.on_verdict)

The hub (`peers/hub.py`) only keeps connections and offers; what a change means to
routing, money or trust is decided by whoever subscribes, so the hub imports none of
them. Listeners are called in the order they subscribed, on the event loop, and must
not block: anything slow is their own task.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gpupool.gateway.peers.session import ProviderSession
from gpupool.protocol import HardwareAnswer, SettlementAddress, Verdict


@dataclass
class HubListeners:
    # A provider-role session completed its handshake and was registered.
    joined: list[Callable[[ProviderSession], None]] = field(default_factory=list)
    # A provider-role session left (disconnected, replaced, thrown out); its requests see ProviderLost.
    left: list[Callable[[ProviderSession], None]] = field(default_factory=list)
    # A provider re-sent its Offer (models, prices, region may have changed).
    offer_changed: list[Callable[[ProviderSession], None]] = field(default_factory=list)
    # (node id, receipt digests) of each Statement whose signature verified.
    statement: list[Callable[[str, list[bytes]], None]] = field(default_factory=list)
    # A verdict from an admitted checker, its signature verified; awaited in turn.
    verdict: list[Callable[[ProviderSession, Verdict], Awaitable[None]]] = field(default_factory=list)
    # A provider's answer to a hardware challenge.
    hardware_answer: list[Callable[[ProviderSession, HardwareAnswer], None]] = field(default_factory=list)
    # A provider announced the key it signs on-chain settlements with (EVM ledger).
    settlement_address: list[Callable[[str, SettlementAddress], None]] = field(default_factory=list)
