"""The EVM ledger backend: the `Ledger` operations as a Vyper contract, driven through web3.

    address = await deploy("http://127.0.0.1:8545")                 # once, by the operator
    ledger = await EvmLedger.open(f"evm+http://127.0.0.1:8545?contract={address}")
    ledger = await EvmLedger.open("evm+tester://")                  # in-process chain (tests)

The contract (contracts/Ledger.vy) holds every balance; this class maps the string
account names of `postings` onto it (bytes32 = keccak256(id)), sends one transaction
per operation (one per *batch* for `settle_batch`, whose receipts the contract checks
against each provider's registered secp256k1 key), and returns the same `Entry`
values as `SqlLedger`. The URL forms, the key scheme, the unit (1 µcr = 1 wei) and
the gas figures are in docs/ledger-evm.md.

Compiling, the signing connection (who sends, how reverts become `LedgerError` /
`InsufficientFunds`) and `deploy` live in `evm_chain`; `deploy` is re-exported here.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, urlparse

from web3 import AsyncWeb3, Web3
from web3.logs import DISCARD
from web3.providers.eth_tester import AsyncEthereumTesterProvider

import gpupool.ledger.postings as postings
from gpupool.ledger.evm_chain import Chain, compiled, deploy, deploy_on, disconnect
from gpupool.ledger.interface import BatchResult, Charge
from gpupool.ledger.postings import Entry, LedgerError
from gpupool.ledger.settlement_key import id_key, split_signature

__all__ = ["EvmLedger", "deploy"]

MAX_BATCH = 256  # the contract's DynArray bound: one transaction settles at most this many receipts
MAX_RELEASE_BATCHES = 64  # batches one release_due transaction walks
PAID_QUERIES = 32  # `paid` view calls in flight at once: one per request id, none batched
REJECT_REASONS = {1: "already paid", 2: "bad or missing provider signature", 3: "client's reserve cannot cover it"}
WITHDRAW_KINDS = {"client": 0, "provider": 1, "checker": 2}


def _parse_account(acct: str) -> tuple[str, str, str]:
    parts = acct.split(":")
    return parts[0], parts[1] if len(parts) > 1 else "", parts[2] if len(parts) > 2 else ""


class EvmLedger:
    """`Ledger` on an EVM chain. Build it with `open`; all amounts are µcr (= wei)."""

    MAX_BATCH = MAX_BATCH  # callers (the gateway's billing) size their batches by it

    def __init__(self, chain: Chain, address: str, chain_id: int):
        self.chain = chain
        self.w3 = chain.w3
        self.address = self.w3.to_checksum_address(address)
        self.chain_id = chain_id
        self.contract = self.w3.eth.contract(address=self.address, abi=compiled()["abi"])
        # bytes32 -> id, for ids this process has used: the chain stores only hashes.
        self._names: dict[bytes, str] = {}
        self._accounts: set[str] = set()
        self._journal: list[Entry] = []  # entries applied through this instance, for history()

    @classmethod
    async def open(cls, url: str, private_key: str | None = None) -> EvmLedger:
        """`evm+http://HOST:PORT?contract=0x…` (an existing deployment) or `evm+tester://` (a fresh in-process chain)."""
        parsed = urlparse(url)
        if parsed.scheme == "evm+tester":
            chain = await Chain.connect(AsyncWeb3(AsyncEthereumTesterProvider()), private_key)
            address = await deploy_on(chain, 0)
        elif parsed.scheme in ("evm+http", "evm+https"):
            query = parse_qs(parsed.query)
            rpc = f"{parsed.scheme[4:]}://{parsed.netloc}{parsed.path}"
            chain = await Chain.connect(rpc, private_key)
            if "contract" not in query:
                raise LedgerError(f"{url}: name the deployed contract with ?contract=0x… (see `deploy`)")
            address = query["contract"][0]
        else:
            raise LedgerError(f"not an EVM ledger URL: {url!r} (evm+http://…?contract=0x… or evm+tester://)")
        return cls(chain, address, await chain.w3.eth.chain_id)

    @classmethod
    async def connect(cls, w3: AsyncWeb3, address: str, private_key: str | None = None,
                      sender: str | None = None) -> EvmLedger:
        """Another view of a deployed ledger on an open connection, sending as another account
        (a provider's settlement key withdrawing its earnings, an authorised checker slashing)."""
        chain = Chain(w3, private_key)
        chain.sender = chain.sender or sender or (await w3.eth.accounts)[0]
        return cls(chain, address, await w3.eth.chain_id)

    async def close(self) -> None:
        await disconnect(self.w3)

    # ------------------------------------------------------------ helpers

    def _k(self, ident: str) -> bytes:
        key = id_key(ident)
        self._names[key] = ident
        return key

    def _name(self, key: bytes) -> str:
        return self._names.get(bytes(key), "0x" + bytes(key).hex())

    def _touch(self, entry: Entry) -> Entry:
        self._journal.append(entry)
        for name in entry.deltas():
            self._accounts.add(name)
        return entry

    async def _view(self, name: str, *args: Any) -> Any:
        return await getattr(self.contract.functions, name)(*args).call()

    async def _send(self, name: str, *args: Any, value: int = 0) -> Any:
        return await self.chain.send(getattr(self.contract.functions, name)(*args), value)

    def _events(self, receipt: Any, name: str) -> list[Any]:
        event = getattr(self.contract.events, name)()
        return [log for log in event.process_receipt(receipt, errors=DISCARD) if log["address"] == self.address]

    async def _first_log(self, name: str, key: bytes) -> Any:
        """The event an operation logged the first time its key was used (for replays)."""
        logs = await getattr(self.contract.events, name)().get_logs(argument_filters={"key": key}, from_block=0)
        if not logs:
            raise LedgerError(f"no {name} event for key 0x{key.hex()}")
        return logs[0]

    # ------------------------------------------------------------ registry

    async def register_provider(self, provider: str, address: str, signature: bytes) -> None:
        """Bind `provider` to its settlement address, once; `signature` is `SettlementKey.sign_registration`."""
        v, r, s = split_signature(signature)
        await self._send("register_provider", self._k(provider), address, v, r, s)

    async def settlement_address(self, provider: str) -> str | None:
        address = await self._view("settlement", id_key(provider))
        return None if int(address, 16) == 0 else address

    async def bind_client(self, client_id: str, wallet: str, signature: bytes) -> None:
        """Bind `client_id` to its own wallet, once; `signature` is `SettlementKey.sign_client_binding`.

        Afterwards the client's free funds leave the contract only to that wallet, and only
        provider-signed receipts (settle_batch) can charge it: the owner can no longer move them."""
        v, r, s = split_signature(signature)
        await self._send("bind_client", self._k(client_id), wallet, v, r, s)

    async def client_address(self, client_id: str) -> str | None:
        address = await self._view("client_address", id_key(client_id))
        return None if int(address, 16) == 0 else address

    async def set_checker(self, address: str, allowed: bool = True) -> None:
        await self._send("set_checker", address, allowed)

    # ------------------------------------------------------------ operations

    async def deposit(self, key: str, client_id: str, amount: int) -> Entry:
        entry = postings.deposit_entry(key, client_id, amount)
        # A replay carries the value again; the contract sends it straight back.
        await self._send("deposit", id_key(key), self._k(client_id), amount, value=amount)
        return self._touch(entry)

    async def withdraw(self, key: str, acct: str, amount: int) -> Entry:
        entry = postings.withdraw_entry(key, acct, amount)
        kind, ident, sub = _parse_account(acct)
        if acct == postings.GATEWAY_FEES:
            code, ident_key = 3, b"\0" * 32
        elif kind in WITHDRAW_KINDS and not sub:
            code, ident_key = WITHDRAW_KINDS[kind], self._k(ident)
        else:
            raise LedgerError(f"{acct} cannot be withdrawn from the contract")
        await self._send("withdraw", id_key(key), code, ident_key, amount)
        return self._touch(entry)

    def _holder(self, holder: str) -> bytes:
        return self._k(holder) if holder else b"\0" * 32

    def _hold_account(self, client_id: str, holder: str) -> bytes:
        """The contract's key for `client_hold(client_id, holder)` (see `_hold_account` in Ledger.vy)."""
        client = self._k(client_id)
        return client if not holder else Web3.keccak(client + self._k(holder))

    async def hold(self, key: str, client_id: str, amount: int, holder: str = "") -> Entry:
        entry = postings.hold_entry(key, client_id, amount, holder)
        await self._send("hold", id_key(entry.key), self._k(client_id), self._holder(holder), amount)
        return self._touch(entry)

    async def release_hold(self, key: str, client_id: str, amount: int, holder: str = "") -> Entry:
        entry = postings.release_hold_entry(key, client_id, amount, holder)
        await self._send("release_hold", id_key(key), self._k(client_id), self._holder(holder), amount)
        return self._touch(entry)

    async def _hold_of(self, request_id: str) -> tuple[str, int]:
        client_key, amount = await self._view("holds", id_key(f"hold:{request_id}"))
        if amount == 0:
            raise LedgerError(f"no hold for request {request_id!r}")
        return self._name(client_key), amount

    async def settle(self, request_id: str, provider: str, cost: int, fee_bps: int) -> Entry:
        client_id, held = await self._hold_of(request_id)
        entry = postings.settle_entry(request_id, client_id, provider, held, cost, fee_bps)
        await self._send("settle", id_key(entry.key), id_key(f"hold:{request_id}"), id_key(request_id),
                         self._k(provider), cost, fee_bps)
        return self._touch(entry)

    async def cancel_hold(self, request_id: str) -> Entry:
        client_id, held = await self._hold_of(request_id)
        entry = postings.cancel_hold_entry(request_id, client_id, held)
        await self._send("cancel_hold", id_key(entry.key), id_key(f"hold:{request_id}"))
        return self._touch(entry)

    async def settle_batch(self, key: str, charges: list[Charge], fee_bps: int, holder: str = "") -> BatchResult:
        """One transaction for the batch; the contract checks each charge's signature (see settlement_key)."""
        if len(charges) > MAX_BATCH:
            raise LedgerError(f"a batch settles at most {MAX_BATCH} receipts on chain (got {len(charges)})")
        postings.fee_of(0, fee_bps)  # range check, same error as SqlLedger
        receipts = []
        for c in charges:
            if not isinstance(c.cost, int) or c.cost < 0:
                raise LedgerError(f"cost must be a non-negative integer of µcr (got {c.cost!r})")
            # A missing or malformed signature still goes on chain (as zeros) so the
            # batch's content, and so its idempotency digest, does not depend on it.
            v, r, s = split_signature(c.signature) if len(c.signature) == 65 else (0, b"\0" * 32, b"\0" * 32)
            receipts.append((self._k(c.request_id), self._hold_account(c.client, holder), self._k(c.provider),
                             c.cost, v, r, s))
        tx = await self._send("settle_batch", id_key(key), fee_bps, receipts)
        batch = self._events(tx, "Batch")
        if not batch:  # a replay: report what the first submission did
            first = await self._first_log("Batch", id_key(key))
            tx = await self.w3.eth.get_transaction_receipt(first["transactionHash"])
        rejected_logs = [(bytes(e["args"]["request"]), e["args"]["reason"]) for e in self._events(tx, "Rejected")]
        result = BatchResult(entry=None)
        paid: list[tuple[str, str, str, int]] = []
        for c in charges:  # Rejected events come in receipt order, so duplicates pair up correctly
            if rejected_logs and rejected_logs[0][0] == id_key(c.request_id):
                result.rejected[c.request_id] = REJECT_REASONS.get(rejected_logs.pop(0)[1], "rejected")
            else:
                result.paid.append(c.request_id)
                paid.append((c.request_id, c.client, c.provider, c.cost))
        if paid:
            result.entry = postings.settle_batch_entry(key, paid, fee_bps, holder)
            if batch:
                self._touch(result.entry)
        return result

    async def paid(self, request_ids: Iterable[str]) -> set[str]:
        """Request ids the contract's `paid` map holds (set by `settle_batch` and `settle` alike).

        The full answer, as of the latest block (a charge in a transaction not yet mined is
        not paid yet), but one `eth_call` per distinct id: the contract has no view over
        many keys, so this costs a round trip per id (at most `PAID_QUERIES` in flight).
        """
        ids = list(dict.fromkeys(request_ids))
        gate = asyncio.Semaphore(PAID_QUERIES)

        async def is_paid(request_id: str) -> bool:
            async with gate:
                provider_key = await self._view("paid", id_key(request_id))
            return int.from_bytes(provider_key, "big") != 0

        answers = await asyncio.gather(*(is_paid(r) for r in ids))
        return {r for r, yes in zip(ids, answers) if yes}

    async def release_due(self, now: float, window_s: float) -> int:
        cutoff = max(0, math.floor(now - window_s))
        moved = 0
        while True:
            start = await self._view("next_release")
            if start >= await self._view("n_batches") or await self._view("batch_at", start) > cutoff:
                return moved  # nothing due: no transaction
            tx = await self._send("release_due", cutoff)
            event = self._events(tx, "Released")[0]["args"]
            moved += event["total"]
            if event["next_batch"] - start < MAX_RELEASE_BATCHES:
                return moved

    async def release(self, request_id: str) -> Entry:
        provider_key, earned, _at = await self._view("settled", id_key(request_id))
        if int.from_bytes(provider_key, "big") == 0:
            raise LedgerError(f"request {request_id!r} has no settled earnings to release")
        entry = postings.release_entry(request_id, self._name(provider_key), earned)
        await self._send("release", id_key(entry.key), id_key(request_id))
        return self._touch(entry)

    async def stake(self, key: str, provider: str, amount: int) -> Entry:
        entry = postings.stake_entry(key, provider, amount)
        await self._send("stake", id_key(key), self._k(provider), amount)
        return self._touch(entry)

    async def unstake(self, key: str, provider: str, amount: int, now: float, delay_s: float) -> Entry:
        entry = postings.unstake_entry(key, provider, amount, now + delay_s)
        await self._send("unstake", id_key(key), self._k(provider), amount, round((now + delay_s) * 1000))
        return self._touch(entry)

    async def complete_unstake(self, key: str, now: float) -> Entry:
        provider_key, amount, available_at_ms, _ = await self._view("unstakes", id_key(key))
        if amount == 0:
            raise LedgerError(f"no unstake {key!r}")
        if round(now * 1000) < available_at_ms:
            raise LedgerError(f"unstake {key!r} is unbonding until {available_at_ms / 1000}")
        entry = postings.unbonded_entry(f"{key}:done", self._name(provider_key), amount)
        await self._send("complete_unstake", id_key(entry.key), id_key(key), round(now * 1000))
        return self._touch(entry)

    async def slash(self, key: str, provider: str, refunds: dict[str, int], checker_id: str,
                    bounty_bps: int, evidence: Charge | None = None) -> Entry:
        """Slash with `evidence`: the provider-signed Charge (as paid) whose answer a checker proved wrong."""
        if evidence is None or len(evidence.signature) != 65:
            raise LedgerError("an on-chain slash needs evidence: the provider-signed receipt it contradicts")
        if evidence.provider != provider:
            raise LedgerError("the evidence is another provider's receipt")
        if not 0 <= bounty_bps <= postings.BPS:
            raise LedgerError("bounty_bps must be between 0 and 10,000")
        order = sorted(refunds.items())
        v, r, s = split_signature(evidence.signature)
        tx = await self._send("slash", id_key(key), self._k(provider), [self._k(c) for c, _ in order],
                              [a for _, a in order], self._k(checker_id), bounty_bps,
                              id_key(evidence.request_id), evidence.cost, v, r, s)
        events = self._events(tx, "Slashed")
        args = (events[0] if events else await self._first_log("Slashed", id_key(key)))["args"]
        entry = postings.slash_entry(key, provider, args["held"], args["staked"], refunds, checker_id, bounty_bps)
        return self._touch(entry) if events else entry

    # ------------------------------------------------------------ reading and checking

    async def balance(self, acct: str) -> int:
        if acct == postings.WORLD:
            return await self._view("withdrawn") - await self._view("deposited")
        if acct == postings.GATEWAY_FEES:
            return await self._view("fees")
        if acct == postings.SLASHED:
            return await self._view("slashed")
        kind, ident, sub = _parse_account(acct)
        if kind == "client" and sub.startswith("hold-"):  # a gateway's reserve for the client
            return await self._view("client_hold", self._hold_account(ident, sub[len("hold-"):]))
        getter = {("client", ""): "client_free", ("client", "hold"): "client_hold",
                  ("provider", ""): "provider_free", ("provider", "held"): "provider_held",
                  ("stake", ""): "staked", ("stake", "unbonding"): "unbonding",
                  ("checker", ""): "checker_free"}.get((kind, sub))
        if getter is None or not ident:
            return 0
        return await self._view(getter, id_key(ident))

    async def balances(self) -> dict[str, int]:
        """Every account this process has used, plus the system ones (the chain stores hashes, not names)."""
        names = self._accounts | {postings.WORLD, postings.GATEWAY_FEES, postings.SLASHED}
        # release_due moves held earnings of providers it does not name: include their free accounts.
        names |= {n.removesuffix(":held") for n in self._accounts if n.endswith(":held")}
        return {name: await self.balance(name) for name in sorted(names)}

    async def history(self, acct: str, limit: int = 100) -> list[dict[str, Any]]:
        """Entries touching `acct` that this process applied, newest first (see docs: on-chain history is events)."""
        out: list[dict[str, Any]] = []
        for seq, entry in reversed(list(enumerate(self._journal, 1))):
            delta = entry.deltas().get(acct)
            if delta:
                out.append({"seq": seq, "key": entry.key, "kind": entry.kind, "delta": delta})
                if len(out) >= limit:
                    break
        return out

    async def verify(self, min_window_s: float = 0.0) -> list[str]:
        """Problems found: foreign code at the address, coin that does not match the books, negative
        sums, and a chain-time floor (`min_delay`) shorter than the promised audit window.

        Paid-once and release times need no separate check here: the contract itself refuses
        a second payment and any release before `min_delay`."""
        problems: list[str] = []
        code = bytes(await self.w3.eth.get_code(self.address))
        if code != bytes.fromhex(compiled()["bytecode_runtime"].removeprefix("0x")):
            return [f"the code at {self.address} is not the gpupool ledger contract"]  # nothing else can be read
        min_delay = await self._view("min_delay")
        if min_delay < min_window_s:
            problems.append(f"the contract holds earnings for at least {min_delay} s, less than the promised "
                            f"{min_window_s:g} s audit window: its owner can release them sooner")
        inside = await self._view("deposited") - await self._view("withdrawn")
        coin = await self.w3.eth.get_balance(self.address)
        if coin != inside:
            problems.append(f"contract holds {coin} wei but its books say {inside} µcr: money was created or lost")
        known = await self.balances()
        if sum(v for k, v in known.items() if k != postings.WORLD) > inside:
            problems.append("accounts hold more than was deposited: money was created")
        return problems

