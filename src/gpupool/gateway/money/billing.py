"""Metered pay-per-use at the gateway: reserve before dispatch, charge verified receipts in batches.

Writing the ledger on every request would cost more than routing it, so per client
the gateway keeps a *tab*: funds it reserved on the ledger in one write (a hold
under the gateway's own reserve account) and hands out in memory. A request
reserves its maximum cost from the tab before dispatch (`reserve`, 402 when the
client's balance cannot cover it); when it ends it is either charged from its
provider-signed receipt (`Hold.charge`) or released (`Hold.release`, also what
leaving the `async with` without a charge does), so holds never leak.

Charges wait a fraction of a second in a queue; the flusher settles, in one
ledger write, those whose receipt the provider has signed: listed in a Statement
the hub verified (one signature per ~50 ms per provider), or carrying a valid
signature of its own (checked off the event loop). A receipt still unsigned after
`statement_wait_s` is never paid, so a request is never charged without one. Tabs idle for a while are closed and
their unused rest goes back to the client. If the gateway dies, a restart finds
its reserve accounts and returns them; charges not yet flushed are lost to the
provider, never taken from the client twice or created.

Tabs and holds are in holds.py; how `/v1/account` words the money, in account_view.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from gpupool import errors, protocol
from gpupool.ledger import Charge, InsufficientFunds, Ledger
from gpupool.ledger import postings
from gpupool.gateway.money.account_view import UCR_PER_CREDIT, movement
from gpupool.gateway.money.holds import FallbackCharge, Hold, PendingCharge, Tab
from gpupool.gateway.money.signed_digests import SignedDigests

log = logging.getLogger("gpupool.gateway.billing")


class Billing:
    def __init__(self, ledger: Ledger, holder: str, fee_bps: int, tab_size: int, flush_interval_s: float,
                 tab_idle_s: float, audit_window_s: float, statement_wait_s: float = 10.0,
                 on_bad_receipt: Callable[[str, str], None] = lambda node, why: None,
                 signed_per_node: int = 16_384):
        self.ledger = ledger
        self.holder = holder  # this gateway's node id: names its reserve accounts
        self.fee_bps = fee_bps
        self.tab_size = tab_size
        self.flush_interval_s = flush_interval_s
        self.tab_idle_s = tab_idle_s
        self.audit_window_s = audit_window_s
        self.statement_wait_s = statement_wait_s
        self.max_batch = int(getattr(ledger, "MAX_BATCH", 0) or 10_000)
        self.on_bad_receipt = on_bad_receipt
        # Receipt digests verified Statements listed, per provider: bounded, and pruned on the timer.
        self.signed = SignedDigests(signed_per_node, max(60.0, 2 * statement_wait_s))
        self._pruned_at = 0.0
        # An EVM contract pays only what the provider signed: a stream cut short has no such signature.
        self.receiptless = not isinstance(getattr(ledger, "address", None), str)
        self.tabs: dict[str, Tab] = {}
        self.queue: list[PendingCharge] = []
        self.fallback_queue: list[FallbackCharge] = []
        self._fallback_unsent: tuple[str, list[FallbackCharge]] | None = None
        self._boot = uuid.uuid4().hex[:8]  # keys from this run never collide with an earlier run's
        self._seq = 0
        self._settlements = 0  # charges settled (or refused) so far: `account` reads a consistent view
        self._ops = 0
        self._unsent: tuple[str, list[PendingCharge]] | None = None  # a batch whose write failed: retried as is
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._released_at = 0.0
        self.stats = {"batches": 0, "charged": 0, "rejected": 0, "bad_receipts": 0, "refused_slashed": 0,
                      "fallback_charged": 0, "settled_microcredits": 0}
        # Providers whose answers are no longer paid for (slashed); set by the auditor's wiring.
        self.unpaid: Callable[[str], bool] = lambda provider: False

    # ------------------------------------------------------------ lifecycle

    async def start(self, accounts: list[str]) -> None:
        """`accounts`: every client account this gateway may have reserved for (its keys' accounts)."""
        await self._return_stale_reserves(accounts)
        self._task = asyncio.create_task(self._loop(), name="billing")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()
        if self.queue:  # receipts whose statement is due any moment (providers sign every ~50 ms)
            await asyncio.sleep(0.2)
            await self.flush()
        for tab in list(self.tabs.values()):
            await self._close_tab(tab)

    async def _return_stale_reserves(self, accounts: list[str]) -> None:
        """Funds an earlier run of this gateway reserved and never returned (it was killed)."""
        for client in sorted(set(accounts)):
            # Asked per account: an EVM ledger stores hashed names and cannot list them.
            amount = await self.ledger.balance(postings.client_hold(client, self.holder))
            if amount > 0:
                await self.ledger.release_hold(f"reclaim:{self.holder}:{self._boot}:{client}", client, amount,
                                               self.holder)
                log.info("returned %d µcr an earlier run reserved for %s", amount, client)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self.flush()
                await self._close_idle_tabs()
                if time.monotonic() - self._pruned_at >= 1.0:  # whether or not anything was queued
                    self._pruned_at = time.monotonic()
                    self.signed.prune(self._pruned_at)
                now = time.time()
                if now - self._released_at > min(10.0, self.audit_window_s):
                    self._released_at = now
                    await self.ledger.release_due(now, self.audit_window_s)
            except Exception:  # noqa: BLE001 - the ledger may be briefly unreachable; retry next tick
                log.exception("billing flush failed; will retry")

    @property
    def settling(self) -> bool:  # a settlement is being written (others wait for it: settlement_keys.py)
        return self._flush_lock.locked() or self._unsent is not None

    def _key(self, kind: str, client: str) -> str:
        """A fresh idempotency key: a key reused with other content would be refused (or, same content, ignored)."""
        self._ops += 1
        return f"{kind}:{self.holder}:{self._boot}:{client}:{self._ops}"

    # ------------------------------------------------------------ per request

    async def reserve(self, client: str, amount: int, fix: str = "lower max_tokens") -> Hold:
        """Reserve `amount` µcr for one request, or raise 402 if the client cannot cover it.

        `fix`: what the 402 suggests besides adding credits (embeddings have no max_tokens)."""
        if amount <= 0:
            return Hold(self, None, 0)  # free model: nothing to reserve
        while True:
            tab = self.tabs.get(client)
            if tab is None:
                tab = self.tabs[client] = Tab(client)
            if tab.available < amount:
                async with tab.lock:
                    if self.tabs.get(client) is not tab:
                        continue  # closed while we waited (its money went back): start a fresh tab
                    if tab.available < amount:
                        await self._top_up(tab, amount - tab.available, fix)
            # No await since the check above: the tab is open and covers `amount`.
            tab.committed += amount
            tab.in_flight += 1
            tab.last_used = time.monotonic()
            return Hold(self, tab, amount)

    async def _top_up(self, tab: Tab, needed: int, fix: str = "lower max_tokens") -> None:
        # A whole tab when the balance allows (one write serves many requests), else just what is needed.
        for amount in dict.fromkeys((max(needed, self.tab_size), needed)):
            try:
                await self.ledger.hold(self._key("tab", tab.client),
                                       tab.client, amount, self.holder)
            except InsufficientFunds:
                continue
            tab.reserved += amount
            return
        balance = await self.ledger.balance(postings.client(tab.client))
        raise errors.PaymentRequired(
            f"insufficient balance: this request may cost up to {needed + tab.available:,} µcr but account "
            f"{tab.client!r} has {balance + tab.available:,} µcr available; add credits or {fix}")

    # ------------------------------------------------------------ batches

    def statement(self, node_id: str, digests: list[bytes]) -> None:
        """The hub verified a provider's Statement: these receipts are signed."""
        self.signed.add(node_id, digests, time.monotonic())

    def _signed_charges(self) -> tuple[list[PendingCharge], list[PendingCharge]]:
        """Split the queue into charges whose receipt is signed by a Statement, and the rest."""
        now = time.monotonic()
        covered, rest = [], []
        for item in self.queue:
            if self.unpaid(item.provider):
                # Slashed for fraud: answers it gave that are still unsettled are not charged
                # (they would only be refunded from its stake), whatever their receipts say.
                self._settled(item.client, item.cost, paid=False)
                self.stats["refused_slashed"] += 1
                self.signed.take(item.provider, item.digest)
                continue
            # A receiptless charge (a stream cut short) is the gateway's own count: nothing to wait for.
            signed = item.receipt is None or self.signed.take(item.provider, item.digest)
            (covered if signed else rest).append(item)
        self.queue = []
        waiting: list[PendingCharge] = []
        self_signed: list[PendingCharge] = []
        for item in rest:
            assert item.receipt is not None
            if item.receipt.signature:
                self_signed.append(item)
            elif now - item.queued_at < self.statement_wait_s:
                waiting.append(item)  # its Statement is probably on the way
            else:
                self._refuse(item, "receipt never signed by a statement (not charged)")
        self.queue = waiting + self.queue  # (the queue may have grown meanwhile: none of this awaits)
        return covered, self_signed

    def _refuse(self, item: PendingCharge, why: str) -> None:
        self.stats["bad_receipts"] += 1
        self._settled(item.client, item.cost, paid=False)
        self.on_bad_receipt(item.provider, why)

    async def settle_provider(self, provider: str) -> None:
        """Settle what is queued for `provider` now (waiting at most `statement_wait_s` for its
        statements): called before it is slashed, so its latest earnings are there to refund."""
        deadline = time.monotonic() + self.statement_wait_s + 1.0
        while time.monotonic() < deadline:
            await self.flush()
            waiting = [i for i in self.queue if i.provider == provider]
            if self._unsent is None and not waiting:
                return
            await asyncio.sleep(0.05)

    async def flush(self) -> None:
        """Settle the queued charges whose receipts are signed, in one ledger write."""
        async with self._flush_lock:
            await self._flush_fallback()
            if self._unsent is None:
                if not self.queue:
                    return
                good, self_signed = self._signed_charges()
                if self_signed:
                    verified = await asyncio.to_thread(_verified, self_signed)
                    kept = {id(item) for item in verified}
                    for item in self_signed:
                        if id(item) not in kept:
                            self._refuse(item, "receipt signature does not verify (not charged)")
                    good += verified
                if not good:
                    return
                if len(good) > self.max_batch:  # e.g. the contract's bound: the rest goes next tick
                    good, overflow = good[:self.max_batch], good[self.max_batch:]
                    now = time.monotonic()
                    for item in overflow:  # checked already: still covered next tick
                        self.signed.add(item.provider, [item.digest], now)
                    self.queue = overflow + self.queue
                self._seq += 1
                self._unsent = (f"batch:{self.holder}:{self._boot}:{self._seq}", good)
            key, items = self._unsent
            if items:
                charges = [Charge(i.request_id, i.client, i.provider, i.cost,
                                  protocol.encode(i.receipt) if i.receipt is not None else b"",
                                  i.settlement_sig) for i in items]
                result = await self.ledger.settle_batch(key, charges, self.fee_bps, self.holder)
                self._unsent = None  # written: whatever happens below, it is never sent again
                paid = set(result.paid)
                for item in items:
                    self._settled(item.client, item.cost, item.request_id in paid)
                self.stats["batches"] += 1
                self.stats["charged"] += len(paid)
                self.stats["settled_microcredits"] += sum(i.cost for i in items if i.request_id in paid)
                self.stats["rejected"] += len(result.rejected)
                if result.rejected:
                    log.warning("ledger refused %d charges: %s", len(result.rejected),
                                list(result.rejected.items())[:3])
            self._unsent = None

    async def _flush_fallback(self) -> None:
        """Settle fallback charges in one journal entry: per client, from its reserve, the lane's
        price to the gateway's `fallback:NAME` payable account (what it owes the upstream) and the
        fee to the gateway. Only ledgers with a journal (`apply`, the SQL ledger) can: the
        gateway refuses fallback lanes at start-up on others."""
        if self._fallback_unsent is None:
            if not self.fallback_queue:
                return
            self._seq += 1
            self._fallback_unsent = (f"fallback:{self.holder}:{self._boot}:{self._seq}", self.fallback_queue)
            self.fallback_queue = []
        key, items = self._fallback_unsent
        owed: dict[tuple[str, str], int] = {}
        fees: dict[str, int] = {}
        for i in items:
            owed[(i.client, i.lane)] = owed.get((i.client, i.lane), 0) + i.cost - i.fee
            fees[i.client] = fees.get(i.client, 0) + i.fee
        moves = [postings.Posting(postings.client_hold(c, self.holder), postings.account("fallback", lane), amount)
                    for (c, lane), amount in sorted(owed.items()) if amount]
        moves += [postings.Posting(postings.client_hold(c, self.holder), postings.GATEWAY_FEES, fee)
                     for c, fee in sorted(fees.items()) if fee]
        entry = postings.Entry(key, "fallback_batch", tuple(moves), {
            "charges": [[i.request_id, i.client, f"fallback:{i.lane}", i.cost, i.fee] for i in items]})
        try:
            await self.ledger.apply(entry)  # type: ignore[attr-defined]
            paid = True
        except InsufficientFunds:
            paid = False  # cannot happen while tabs cover their holds; never retry a refused entry
            log.error("ledger refused fallback batch %s", key)
        self._fallback_unsent = None
        for i in items:
            self._settled(i.client, i.cost, paid)
        if paid:
            self.stats["fallback_charged"] += len(items)

    def _settled(self, client: str, cost: int, paid: bool) -> None:
        """A queued charge left the queue: paid from the ledger hold, or not (its money stays in the tab)."""
        tab = self.tabs.get(client)
        if tab is None:  # cannot happen (a tab with charges pending is never closed): never jam a flush on it
            log.error("settled a charge of %d µcr for %s, whose tab is gone", cost, client)
            return
        tab.pending -= cost
        if paid:
            tab.reserved -= cost
        self._settlements += 1

    async def _close_idle_tabs(self) -> None:
        cutoff = time.monotonic() - self.tab_idle_s
        for tab in list(self.tabs.values()):
            if self._idle(tab, cutoff):
                await self._close_tab(tab, cutoff)

    @staticmethod
    def _idle(tab: Tab, cutoff: float) -> bool:
        return tab.in_flight == 0 and tab.pending == 0 and tab.last_used < cutoff

    async def _close_tab(self, tab: Tab, idle_before: float | None = None) -> None:
        """Return the tab's unused rest; with `idle_before`, only if it is still idle once its lock is ours
        (a request may have topped it up and taken a hold while we waited)."""
        async with tab.lock:
            if idle_before is not None and not self._idle(tab, idle_before):
                return
            rest = tab.available
            if rest > 0:
                # Gone from the tab before the ledger write, not after: a request arriving meanwhile
                # must not draw on money on its way back to the balance (it tops up, after us).
                tab.reserved -= rest
                try:
                    await self.ledger.release_hold(self._key("untab", tab.client),
                                                   tab.client, rest, self.holder)
                except Exception:
                    tab.reserved += rest  # still held on the ledger: the tab keeps it
                    raise
            # Deleted under the lock: a reserve waiting on it sees the tab is gone and opens a new one.
            if tab.reserved == 0 and tab.in_flight == 0 and self.tabs.get(tab.client) is tab:
                del self.tabs[tab.client]

    # ------------------------------------------------------------ reading

    async def account(self, client: str) -> dict[str, Any]:
        """What `/v1/account` shows: money in µcr (integers), times in ISO 8601, every hold with a reason.

        `balance` is spendable now; `held` is this gateway's prepaid tab for the account (see
        the module docstring): requests draw on it without a ledger write each, and its unused
        rest returns to `balance` after `tab_idle_s` without requests."""
        for _ in range(3):
            # Read again if a settlement landed meanwhile: the hold read before it and the tab's
            # unsettled charges read after would show its charge nowhere (neither held nor unsettled).
            settled = self._settlements
            reserved = await self.ledger.balance(postings.client_hold(client, self.holder))
            balance = await self.ledger.balance(postings.client(client))
            history = await self.ledger.history(postings.client(client), limit=20)
            if self._settlements == settled:
                break
        tab = self.tabs.get(client)
        holds = []
        if reserved:
            holds.append({
                "kind": "tab", "amount_ucr": reserved,
                "in_use_ucr": (tab.committed + tab.pending) if tab else 0,
                "reason": f"prepaid tab for this account's requests on this gateway (one ledger write serves "
                          f"many requests); requests in flight and charges not yet settled draw on it, and "
                          f"the unused rest returns to the balance after {self.tab_idle_s:g} s without requests",
            })
        return {
            "object": "gpupool.account", "account": client, "unit": "µcr", "ucr_per_credit": UCR_PER_CREDIT,
            "balance": balance, "held": reserved, "total": balance + reserved,
            "in_flight": tab.in_flight if tab else 0,
            "unsettled_charges": tab.pending if tab else 0,
            "holds": holds,
            "recent": [movement(h) for h in history],
        }


def _verified(batch: list[PendingCharge]) -> list[PendingCharge]:
    """The charges whose receipt carries a valid signature of its own (runs in a thread)."""
    return [c for c in batch if protocol.verify_claim(c.receipt, c.public_key)]
