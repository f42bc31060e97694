"""The ledger: accounts, holds, settlements, provider earnings, stakes and slashes.

Every movement is a balanced double-entry journal entry with an idempotency key.
`postings` builds entries (pure) and holds the ledger's errors; `interface` is the
one API every backend offers; `sql` stores the journal, hash-chained, in SQLite or
PostgreSQL; `evm` keeps it in Vyper contracts; `backends.open_ledger(url)` picks the
backend from the URL. Modules of this package import each other directly, never
this `__init__`, which only gathers the public names for the rooms above.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpupool.ledger.backends import open_ledger
from gpupool.ledger.interface import BatchResult, Charge, Ledger
from gpupool.ledger.postings import (
    Entry,
    InsufficientFunds,
    LedgerError,
    Posting,
    account,
    fee_of,
)

if TYPE_CHECKING:
    from gpupool.ledger.sql import SqlLedger


def __getattr__(name: str) -> Any:
    # The SQL backend (and with it SQLAlchemy) loads on first use: `gpupool --help` and the
    # HTTP-only commands import this package (gpupool.ledger.cli) without needing it.
    if name == "SqlLedger":
        from gpupool.ledger.sql import SqlLedger

        return SqlLedger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BatchResult", "Charge", "Entry", "InsufficientFunds", "Ledger", "LedgerError", "Posting",
           "SqlLedger", "account", "fee_of", "open_ledger"]
