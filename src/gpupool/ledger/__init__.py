"""The ledger: accounts, holds, settlements, provider earnings, stakes and slashes.

Every movement is a balanced double-entry journal entry with an idempotency key;
the journal is append-only and hash-chained. `postings` builds entries (pure);
`sql` stores them (SQLite or PostgreSQL). An EVM backend is to implement the same
`Ledger` operations.
"""

from gpupool.ledger.postings import (
    Entry,
    LedgerError,
    Posting,
    account,
    fee_of,
)
from gpupool.ledger.sql import InsufficientFunds, SqlLedger

__all__ = ["Entry", "InsufficientFunds", "LedgerError", "Posting", "SqlLedger", "account", "fee_of"]
