"""The ledger: accounts, holds, settlements, provider earnings, stakes and slashes.

Every movement is a balanced double-entry journal entry with an idempotency key.
`postings` builds entries (pure); `interface` is the one API every backend offers;
`sql` stores the journal, hash-chained, in SQLite or PostgreSQL; `evm` keeps it in
Vyper contracts. `open_ledger(url)` picks the backend from the URL.
"""

from gpupool.ledger.interface import BatchResult, Charge, Ledger
from gpupool.ledger.postings import (
    Entry,
    LedgerError,
    Posting,
    account,
    fee_of,
)
from gpupool.ledger.sql import InsufficientFunds, SqlLedger


async def open_ledger(url: str) -> Ledger:
    """`sqlite:///…` / `postgresql://…` -> SqlLedger; `evm+http://…` / `evm+tester://` -> EvmLedger."""
    if url.startswith("evm+"):
        from gpupool.ledger.evm import EvmLedger  # web3 is only imported when a chain is used

        return await EvmLedger.open(url)
    return await SqlLedger.open(url)


__all__ = ["BatchResult", "Charge", "Entry", "InsufficientFunds", "Ledger", "LedgerError", "Posting",
           "SqlLedger", "account", "fee_of", "open_ledger"]
