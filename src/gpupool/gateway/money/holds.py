"""A client's tab and one request's hold on it: reserve, then charge once or release.

Billing (billing.py) opens tabs and hands out holds; a `Hold` settles exactly once,
from a provider-signed receipt (`charge`), for what a stream delivered before its
client left (`charge_delivered`), for a fallback lane's answer (`charge_fallback`),
or not at all (`release`, also what leaving its `async with` does), so holds never leak.
Charges go to billing's queues, which settle them in batches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gpupool import protocol
from gpupool.protocol import Receipt


@dataclass
class Tab:
    client: str
    reserved: int = 0  # µcr held on the ledger for this client by this gateway, not yet charged
    committed: int = 0  # reserved by requests in flight
    pending: int = 0  # charged in memory, waiting for the next batch
    in_flight: int = 0
    # Opened counts as used: a tab whose first top-up is still being written is not idle.
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def available(self) -> int:
        return self.reserved - self.committed - self.pending


@dataclass(frozen=True)
class PendingCharge:
    request_id: str
    client: str
    provider: str
    cost: int
    receipt: Receipt | None  # None: a stream the client left, charged for what it was sent (`charge_delivered`)
    public_key: bytes
    digest: bytes  # what the provider's Statement lists for this receipt
    queued_at: float
    settlement_sig: bytes = b""  # on an EVM ledger: the provider's signature over the cost


@dataclass(frozen=True)
class FallbackCharge:
    """A request served by a fallback lane: no receipt, no provider, no audit (see `flush_fallback`)."""

    request_id: str
    client: str
    lane: str
    cost: int  # what the client pays: the lane's price plus the gateway fee
    fee: int  # the gateway's part of `cost`; the rest is owed to the lane's upstream


class ChargeQueues(Protocol):
    """What a hold needs of billing: the queues its charges go to (`Billing` is one)."""

    queue: list[PendingCharge]
    fallback_queue: list[FallbackCharge]
    receiptless: bool  # the ledger settles charges no receipt covers (the gateway's count)


class Hold:
    """One request's reservation. Settle it once: `charge` from a receipt, or `release`."""

    def __init__(self, billing: ChargeQueues, tab: Tab | None, amount: int):
        self._billing = billing
        self._tab = tab
        self.amount = amount
        self.charged: int | None = None
        self.images = 0  # images the charge paid for, and the part of it they cost (for the request log)
        self.image_cost = 0

    async def __aenter__(self) -> Hold:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.release()

    def charge(self, request_id: str, provider: str, cost: int, receipt: Receipt, public_key: bytes,
               settlement_sig: bytes = b"") -> int:
        """Charge `cost` (capped by the hold) for a served request; returns what was charged."""
        return self._charge(cost, lambda client, amount: self._billing.queue.append(PendingCharge(
            request_id, client, provider, amount, receipt, public_key, protocol.receipt_digest(receipt),
            time.monotonic(), settlement_sig)))

    def charge_delivered(self, request_id: str, provider: str, cost: int) -> int:
        """Charge `cost` (capped) for a stream's part delivered before the client left: no receipt
        covers it, so only a ledger that takes the gateway's count settles it (`receiptless`)."""
        if not self._billing.receiptless:
            self.release()
            return 0
        return self._charge(cost, lambda client, amount: self._billing.queue.append(PendingCharge(
            request_id, client, provider, amount, None, b"", b"", time.monotonic())))

    def charge_fallback(self, request_id: str, lane: str, cost: int, fee: int) -> int:
        """Charge `cost` (capped by the hold) for a request a fallback lane served; returns what was charged."""
        return self._charge(cost, lambda client, amount: self._billing.fallback_queue.append(
            FallbackCharge(request_id, client, lane, amount, min(fee, amount))))

    def _charge(self, cost: int, enqueue: Callable[[str, int], None]) -> int:
        """Charge once, capped by the hold; `enqueue(client, amount)` queues the settlement."""
        if self.charged is not None:
            return self.charged
        self.charged = min(cost, self.amount)
        tab = self._tab
        if tab is not None:
            self._finish(tab)
            if self.charged > 0:
                tab.pending += self.charged
                enqueue(tab.client, self.charged)
        return self.charged

    def release(self) -> None:
        """The request ended without a charge (failed, cancelled, timed out): the hold returns to the tab."""
        if self.charged is None:
            self.charged = 0
            if self._tab is not None:
                self._finish(self._tab)

    def _finish(self, tab: Tab) -> None:
        tab.committed -= self.amount
        tab.in_flight -= 1
        tab.last_used = time.monotonic()
