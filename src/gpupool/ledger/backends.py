"""Which ledger backend a URL names: `open_ledger(url)`.

    ledger = await open_ledger("sqlite:///gw.db")                       # SqlLedger
    ledger = await open_ledger("evm+http://127.0.0.1:8545?contract=0x…")  # EvmLedger

Each backend is imported only when its URL is opened: SQLAlchemy for the SQL one,
web3 for a chain, so the package and its CLI load without either.
"""

from __future__ import annotations

from gpupool.ledger.interface import Ledger


async def open_ledger(url: str) -> Ledger:
    """`sqlite:///…` / `postgresql://…` -> SqlLedger; `evm+http://…` / `evm+tester://` -> EvmLedger."""
    if url.startswith("evm+"):
        from gpupool.ledger.evm import EvmLedger  # web3 is only imported when a chain is used

        return await EvmLedger.open(url)
    from gpupool.ledger.sql import SqlLedger

    return await SqlLedger.open(url)
