"""The chain side of the EVM ledger: compiling Ledger.vy, a signing connection, deploying.

    address = await deploy("http://127.0.0.1:8545")    # once, by the operator

`gpupool.ledger.evm.EvmLedger` maps the `Ledger` operations onto the deployed
contract through a `Chain`. The sender is the node's first unlocked account, or the
key in the environment variable GPUPOOL_EVM_PRIVATE_KEY (or `private_key=`), which
signs locally. Reverts become `LedgerError` / `InsufficientFunds`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import ContractLogicError, Web3RPCError

from gpupool.ledger.postings import InsufficientFunds, LedgerError

CONTRACT_SOURCE = Path(__file__).parent / "contracts" / "Ledger.vy"
KEY_ENV = "GPUPOOL_EVM_PRIVATE_KEY"
# Default floor (seconds of chain time) under audit windows and unbonding: the gateway's
# default audit window, so held earnings stay contestable as long as the docs promise.
DEFAULT_MIN_DELAY_S = 3600

_compiled: dict[str, dict[str, Any]] = {}

try:  # the in-process chain reports reverts with its own exception
    from eth_tester.exceptions import TransactionFailed

    _REVERTS: tuple[type[Exception], ...] = (ContractLogicError, Web3RPCError, ValueError, TransactionFailed)
except ImportError:  # pragma: no cover - eth-tester is only needed for evm+tester://
    _REVERTS = (ContractLogicError, Web3RPCError, ValueError)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gpupool" / "vyper"


def compiled() -> dict[str, Any]:
    """ABI and bytecode of Ledger.vy, compiled once per source and compiler version.

    Compiling takes seconds, so the output is kept in memory and under the user's
    cache dir, keyed by a hash of the source and the compiler version.
    """
    import vyper

    source = CONTRACT_SOURCE.read_text()
    digest = hashlib.sha256(f"{vyper.__version__}\0{source}".encode()).hexdigest()[:24]
    if digest in _compiled:
        return _compiled[digest]
    path = _cache_dir() / f"Ledger-{digest}.json"
    try:
        out = json.loads(path.read_text())
    except (OSError, ValueError):
        out = vyper.compile_code(source, output_formats=["abi", "bytecode", "bytecode_runtime"])
        out = {"abi": out["abi"], "bytecode": out["bytecode"], "bytecode_runtime": out["bytecode_runtime"]}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(out))
        tmp.replace(path)  # atomic: parallel test workers never read half a file
    _compiled[digest] = out
    return out


def _error(exc: Exception) -> LedgerError:
    message = str(getattr(exc, "message", None) or exc)
    if "insufficient funds" in message:
        return InsufficientFunds(message)
    return LedgerError(message)


class Chain:
    """A web3 connection plus the account that signs: shared by `deploy` and `EvmLedger`."""

    def __init__(self, w3: AsyncWeb3, private_key: str | None):
        self.w3 = w3
        self.account = Account.from_key(private_key) if private_key else None
        self.sender: str = self.account.address if self.account else ""
        self.lock = asyncio.Lock()  # one transaction in flight per sender: nonces stay in order

    @classmethod
    async def connect(cls, rpc: str | AsyncWeb3, private_key: str | None) -> Chain:
        w3 = rpc if isinstance(rpc, AsyncWeb3) else AsyncWeb3(AsyncHTTPProvider(rpc))
        chain = cls(w3, private_key or os.environ.get(KEY_ENV) or None)
        if not chain.sender:
            accounts = await w3.eth.accounts
            if not accounts:
                raise LedgerError("the node has no unlocked account: pass a private key")
            chain.sender = accounts[0]
        return chain

    async def send(self, call: Any, value: int = 0) -> Any:
        """Send one transaction and wait for it; a revert raises LedgerError/InsufficientFunds."""
        async with self.lock:
            try:
                tx = await call.build_transaction({"from": self.sender, "value": value})
            except _REVERTS as exc:
                raise _error(exc) from exc
            if self.account is not None:
                tx["nonce"] = await self.w3.eth.get_transaction_count(self.sender, "pending")
                signed = self.account.sign_transaction(tx)
                tx_hash = await self.w3.eth.send_raw_transaction(signed.raw_transaction)
            else:
                tx_hash = await self.w3.eth.send_transaction(tx)
            receipt = await self.w3.eth.wait_for_transaction_receipt(tx_hash, poll_latency=0.01)
        if receipt["status"] != 1:
            raise LedgerError(f"transaction {tx_hash.hex()} reverted")
        return receipt


async def disconnect(w3: AsyncWeb3) -> None:
    # Only the HTTP provider holds a session; the in-process chain has nothing to close.
    if isinstance(w3.provider, AsyncHTTPProvider):
        await w3.provider.disconnect()


async def deploy_on(chain: Chain, min_delay: int) -> str:
    out = compiled()
    factory = chain.w3.eth.contract(abi=out["abi"], bytecode=out["bytecode"])
    receipt = await chain.send(factory.constructor(min_delay))
    return str(receipt["contractAddress"])


async def deploy(rpc_url: str, private_key: str | None = None, min_delay: int = DEFAULT_MIN_DELAY_S) -> str:
    """Deploy a new ledger contract; returns its address (the owner is the deploying account).

    `min_delay` (seconds of chain time) is a floor the contract puts under every audit
    window, every early release and every unbonding delay, whatever the owner asks for
    later; it cannot be changed after deployment. 0 only for tests.
    """
    chain = await Chain.connect(rpc_url, private_key)
    try:
        return await deploy_on(chain, min_delay)
    finally:
        await disconnect(chain.w3)
