"""The one ledger interface the gateway, the CLI and the tests use.

Two backends implement it: `SqlLedger` (SQLite or PostgreSQL, the default) and
`EvmLedger` (Vyper contracts through web3). Both pass the same behavioural test
suite. Amounts are integer µcr (1 credit = 1,000,000 µcr); account names are the
strings built in `postings` (`client:alice`, `provider:gp…:held`, ...).

How a gateway uses it, per client (see gateway/money/billing.py):

    await ledger.hold("tab:gw1:alice:1", "alice", 2_000_000)     # reserve a tab, one write
    ...requests run against the tab in memory...
    await ledger.settle_batch("batch:gw1:17", charges, fee_bps=500)   # one write per batch
    await ledger.release_hold("tab:gw1:alice:1:close", "alice", 1_234_000)  # the unused rest
    await ledger.release_due(now, window_s=3600)                # held earnings -> withdrawable

Every operation is idempotent by its key; replaying a batch, or a receipt already
paid in another batch, pays nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gpupool.ledger.postings import Entry


@dataclass(frozen=True)
class Charge:
    """One request's charge, from a receipt the provider signed and the gateway verified.

    `receipt` and `signature` travel so a backend that checks receipts itself (the
    EVM contract, with the provider's registered settlement key) can; the SQL
    backend trusts the gateway's check and records the request id once.
    """

    request_id: str
    client: str
    provider: str
    cost: int
    receipt: bytes = b""
    signature: bytes = b""


@dataclass
class BatchResult:
    entry: Entry | None  # None when nothing in the batch could be paid
    paid: list[str] = field(default_factory=list)  # request ids charged by this batch
    rejected: dict[str, str] = field(default_factory=dict)  # request id -> why it was not charged


class Ledger(Protocol):
    async def close(self) -> None: ...

    async def deposit(self, key: str, client_id: str, amount: int) -> Entry: ...

    async def withdraw(self, key: str, acct: str, amount: int) -> Entry: ...

    async def hold(self, key: str, client_id: str, amount: int, holder: str = "") -> Entry:
        """Reserve `amount` of the client's balance (a request's maximum cost, or a gateway's tab).

        With `holder` (a gateway's id) the funds sit in that gateway's own reserve
        account, `client:X:hold-<holder>`, so a restarted gateway can find and return
        exactly what it had reserved before it died.
        """

    async def release_hold(self, key: str, client_id: str, amount: int, holder: str = "") -> Entry:
        """Give back `amount` of the client's reserved funds (a tab's unused rest)."""

    async def settle(self, request_id: str, provider: str, cost: int, fee_bps: int) -> Entry:
        """Charge one request held under its own id; the rest of its hold goes back."""

    async def cancel_hold(self, request_id: str) -> Entry: ...

    async def settle_batch(self, key: str, charges: list[Charge], fee_bps: int, holder: str = "") -> BatchResult:
        """Charge many requests from their clients' reserved funds in one write.

        Per charge: `cost - fee` to the provider's held earnings, `fee` to the gateway.
        A request id already paid (in any batch) is rejected, as is a charge its
        client's reserve cannot cover; the rest of the batch is still paid.
        """

    async def paid(self, request_ids: Iterable[str]) -> set[str]:
        """Which of these request ids the ledger has charged (by `settle_batch` or `settle`).

        A request id is paid at most once, ever, so the answer never shrinks: the batch
        runner asks it whether a run's charge arrived before marking the run done.
        """

    async def release_due(self, now: float, window_s: float) -> int:
        """Make held earnings of batches settled before `now - window_s` withdrawable; returns µcr moved."""

    async def release(self, request_id: str) -> Entry: ...

    async def stake(self, key: str, provider: str, amount: int) -> Entry: ...

    async def unstake(self, key: str, provider: str, amount: int, now: float, delay_s: float) -> Entry: ...

    async def complete_unstake(self, key: str, now: float) -> Entry: ...

    async def slash(self, key: str, provider: str, refunds: dict[str, int], checker_id: str,
                    bounty_bps: int, evidence: Charge | None = None) -> Entry:
        """Take the provider's held earnings and stake: refunds first, then the checker's bounty.

        `evidence`: the provider-signed charge the verdict contradicts (required on EVM,
        where the contract checks the signature; on SQL it must be a paid request).
        """

    async def balance(self, acct: str) -> int: ...

    async def balances(self) -> dict[str, int]: ...

    async def history(self, acct: str, limit: int = 100) -> list[dict[str, Any]]: ...

    async def verify(self, min_window_s: float = 0.0) -> list[str]:
        """Every problem found ([] = sound); earnings released sooner than `min_window_s` are one."""
