"""Registering providers' on-chain settlement keys (EVM ledger), without letting it crowd out settlement.

A provider announces its settlement key in a `SettlementAddress` after each Welcome naming
a contract. Registering costs an RPC read and a transaction at the operator's gas, and every
transaction shares the operator's nonce lock with settlement, so a stream of announcements
must not become a stream of transactions queued ahead of clients' charges:

- a node's announcement is acted on at most once per `period_s`; one identical to a key
  already registered for it does nothing at all;
- one worker registers one node at a time, newest announcement per node, and waits for a
  settlement being written to finish first (settlement first: at most one registration is
  ever ahead of it);
- the tables are bounded (`max_nodes`), keyed by proven node ids only.

    keys = SettlementKeys(ledger, store, settling=lambda: billing.settling)
    hub.listeners.settlement_address.append(keys.announced)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gpupool.gateway.store import Store
from gpupool.ledger import Ledger
from gpupool.protocol import SettlementAddress

log = logging.getLogger("gpupool.gateway.settlement_keys")


class SettlementKeys:
    def __init__(self, ledger: Ledger, store: Store, settling: Callable[[], bool] = lambda: False,
                 period_s: float = 600.0, max_nodes: int = 100_000, settle_wait_s: float = 5.0):
        self.ledger = ledger
        self.store = store
        self.settling = settling  # True while a settlement is being written: it goes first
        self.period_s = period_s
        self.max_nodes = max_nodes
        self.settle_wait_s = settle_wait_s
        self._acted: dict[str, float] = {}  # node -> when its last announcement was acted on
        self._registered: dict[str, str] = {}  # node -> its key on chain (lower case), once known
        self._due: dict[str, SettlementAddress] = {}  # announcements waiting for the worker
        self._worker: asyncio.Task[None] | None = None
        self.stats = {"registered": 0, "ignored": 0, "failed": 0, "mismatch": 0}

    def announced(self, node_id: str, msg: SettlementAddress) -> None:
        """The hub's listener: a provider announced its key. Never awaits; never spawns more than one task."""
        now = time.monotonic()
        if self._registered.get(node_id) == msg.address.lower():
            self.stats["ignored"] += 1  # the very key on chain: nothing to do
            return
        acted = self._acted.get(node_id)
        if node_id in self._due or (acted is not None and now - acted < self.period_s):
            self.stats["ignored"] += 1
            return
        self._bound(now)
        self._acted[node_id] = now
        self._due[node_id] = msg
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name="settlement-keys")

    def _bound(self, now: float) -> None:
        if len(self._acted) >= self.max_nodes:
            for node, at in list(self._acted.items()):
                if now - at >= self.period_s:
                    del self._acted[node]
            while len(self._acted) >= self.max_nodes:
                del self._acted[next(iter(self._acted))]
        while len(self._registered) >= self.max_nodes:
            del self._registered[next(iter(self._registered))]

    async def _work(self) -> None:
        while self._due:
            node_id = next(iter(self._due))
            msg = self._due.pop(node_id)
            deadline = time.monotonic() + self.settle_wait_s
            while self.settling() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # a settlement is being written: clients' charges first
            try:
                await self._register(node_id, msg)
            except Exception as exc:  # noqa: BLE001 - the chain briefly unreachable: the next announcement retries
                self.stats["failed"] += 1
                log.warning("registering the settlement key of %s failed: %s: %s", node_id[:12],
                            type(exc).__name__, exc)

    async def _register(self, node_id: str, msg: SettlementAddress) -> None:
        registered = await self.ledger.settlement_address(node_id)  # type: ignore[attr-defined]
        if registered is None:
            await self.ledger.register_provider(node_id, msg.address, msg.registration)  # type: ignore[attr-defined]
            registered = msg.address
            self.stats["registered"] += 1
            log.info("registered settlement key %s for provider %s", msg.address, node_id[:12])
        self._registered[node_id] = registered.lower()
        if registered.lower() != msg.address.lower():
            # Registration is set once: receipts signed with another key would never be paid.
            self.stats["mismatch"] += 1
            self.store.record_event(node_id, "settlement_key_mismatch",
                                    f"announced {msg.address}, contract has {registered}: its receipts will not be paid")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
