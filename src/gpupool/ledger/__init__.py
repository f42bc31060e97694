"""The ledger: accounts, holds, settlements, provider earnings, stakes and slashes.

Every movement is a balanced double-entry journal entry with an idempotency key.
`postings` builds entries (pure); `interface` is the one API every backend offers;
`sql` stores the journal, hash-chained, in SQLite or PostgreSQL; `evm` keeps it in
Vyper contracts. `open_ledger(url)` picks the backend from the URL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpupool.ledger.interface import BatchResult, Charge, Ledger
from gpupool.ledger.postings import (
    Entry,
    LedgerError,
    Posting,
    account,
    fee_of,
)

if TYPE_CHECKING:
    from gpupool.ledger.sql import InsufficientFunds, SqlLedger


def __getattr__(name: str) -> Any:
    # The SQL backend (and with it SQLAlchemy) loads on first use: `gpupool --help` and the
    # HTTP-only commands import this package (gpupool.ledger.cli) without needing it.
    if name in ("InsufficientFunds", "SqlLedger"):
        from gpupool.ledger import sql

        return getattr(sql, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def open_ledger(url: str) -> Ledger:
    """`sqlite:///…` / `postgresql://…` -> SqlLedger; `evm+http://…` / `evm+tester://` -> EvmLedger."""
    if url.startswith("evm+"):
        from gpupool.ledger.evm import EvmLedger  # web3 is only imported when a chain is used

        return await EvmLedger.open(url)
    from gpupool.ledger.sql import SqlLedger

    return await SqlLedger.open(url)


__all__ = ["BatchResult", "Charge", "Entry", "InsufficientFunds", "Ledger", "LedgerError", "Posting",
           "SqlLedger", "account", "fee_of", "open_ledger"]
