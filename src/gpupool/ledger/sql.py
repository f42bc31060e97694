"""The SQL ledger backend: the journal and balances in SQLite or PostgreSQL.

    ledger = await SqlLedger.open("sqlite+aiosqlite:///ledger.db")
    await ledger.deposit("dep-1", "alice", 5_000_000)
    await ledger.hold("req-1", "alice", 20_000)
    await ledger.settle("req-1", provider="gp1…", cost=7_000, fee_bps=500)
    await ledger.verify()        # -> [] when balances and the hash chain agree

Each operation is one transaction: the entry is appended to the hash-chained
journal and the balances change together, or nothing happens. Applying an entry
whose key is already in the journal returns the recorded entry (idempotent);
the same key with different content is refused. Appends are serialised: a
unique `prev_hash` makes a forked chain impossible even across processes, and on
PostgreSQL an advisory lock makes concurrent writers queue instead of retrying.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from sqlalchemy import BigInteger, Float, Integer, String, Text, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from gpupool.db import create_engine, normalize_url
import gpupool.ledger.postings as postings
from gpupool.ledger.interface import BatchResult, Charge
from gpupool.ledger.journal_checks import paid_once_problems, release_time_problems
from gpupool.ledger.postings import GENESIS, Entry, InsufficientFunds, LedgerError, Posting, chain_hash

T = TypeVar("T")

ADVISORY_LOCK = 0x6770_6F6F6C  # "gpool": one journal, one lock


class Base(DeclarativeBase):
    pass


class AccountRow(Base):
    __tablename__ = "ledger_accounts"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)


class JournalRow(Base):
    __tablename__ = "ledger_journal"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)  # Entry.canonical()
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)  # one successor per row
    hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float, index=True)


class AccountEntryRow(Base):
    """Which journal rows touch which account: `history` reads an account's newest entries
    through this index instead of scanning the whole journal. Derived from the journal
    (written in the same transaction; `verify` checks it), never hashed."""

    __tablename__ = "ledger_account_entries"
    account: Mapped[str] = mapped_column(String(200), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    delta: Mapped[int] = mapped_column(BigInteger)


class PaidRow(Base):
    """Each request id charged once, ever: a replayed receipt finds its row and is refused."""

    __tablename__ = "ledger_paid"
    request_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    batch: Mapped[str] = mapped_column(String(200))


def _entry_from_body(body: str) -> Entry:
    data = json.loads(body)
    return Entry(data["key"], data["kind"], tuple(Posting(*p) for p in data["postings"]), data["memo"])


class SqlLedger:
    def __init__(self, url: str):
        self.url = normalize_url(url)
        self.engine = create_engine(self.url)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._lock = asyncio.Lock()  # one writer per process; the database orders processes
        self._pg = self.url.startswith("postgresql")

    @classmethod
    async def open(cls, url: str) -> SqlLedger:
        ledger = cls(url)
        async with ledger.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await ledger._index_old_entries()
        return ledger

    async def _index_old_entries(self) -> None:
        """A database from before the account index: fill it once from the journal."""
        async with self._lock, self.sessions.begin() as s:
            await self._lock_journal(s)
            if await s.scalar(select(AccountEntryRow.seq).limit(1)) is not None:
                return
            if await s.scalar(select(JournalRow.seq).limit(1)) is None:
                return
            for seq, body in (await s.execute(select(JournalRow.seq, JournalRow.body))).all():
                self._index(s, seq, _entry_from_body(body))

    @staticmethod
    def _index(s: AsyncSession, seq: int, entry: Entry) -> None:
        for name, delta in entry.deltas().items():
            if delta:
                s.add(AccountEntryRow(account=name, seq=seq, delta=delta))

    async def close(self) -> None:
        await self.engine.dispose()

    # ------------------------------------------------------------ core

    async def apply(self, entry: Entry) -> Entry:
        """Append `entry` and move its balances, once per key."""
        return await self._locked(lambda s: self._append(s, entry))

    async def _lock_journal(self, s: AsyncSession) -> None:
        if self._pg:
            await s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK})

    async def _append(self, s: AsyncSession, entry: Entry) -> Entry:
        """Inside a locked transaction: append `entry` once and move its balances."""
        existing = await s.scalar(select(JournalRow).where(JournalRow.key == entry.key))
        if existing is not None:
            if existing.body != entry.canonical().decode():
                raise LedgerError(f"key {entry.key!r} was already used for a different entry")
            return _entry_from_body(existing.body)
        head = await s.scalar(select(JournalRow.hash).order_by(JournalRow.seq.desc()).limit(1))
        prev = head or GENESIS
        await self._move(s, entry)
        # The time is hashed with the entry (whole ms, exact through a float column): editing
        # a batch's time to release its earnings early breaks the chain.
        at_ms = round(time.time() * 1000)
        row = JournalRow(key=entry.key, kind=entry.kind, body=entry.canonical().decode(), prev_hash=prev,
                         hash=chain_hash(prev, entry, at_ms), at=at_ms / 1000)
        s.add(row)
        await s.flush()  # assigns row.seq
        self._index(s, row.seq, entry)
        return entry

    async def _locked(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run `work` in one locked transaction, retrying when another process appended first."""
        for attempt in range(20):
            async with self._lock:
                try:
                    async with self.sessions.begin() as s:
                        await self._lock_journal(s)
                        return await work(s)
                except IntegrityError:
                    if attempt == 19:
                        raise
            await asyncio.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _move(self, s: AsyncSession, entry: Entry) -> None:
        for name, delta in sorted(entry.deltas().items()):
            row = await s.get(AccountRow, name, with_for_update=self._pg)
            if row is None:
                row = AccountRow(name=name, balance=0)
                s.add(row)
            new = row.balance + delta
            if new < 0 and name != postings.WORLD:
                raise InsufficientFunds(f"insufficient funds: {name} has {row.balance:,} µcr, needs {-delta:,}")
            row.balance = new

    async def _memo(self, key: str) -> dict[str, Any] | None:
        async with self.sessions() as s:
            body = await s.scalar(select(JournalRow.body).where(JournalRow.key == key))
        return None if body is None else json.loads(body)["memo"]

    # ------------------------------------------------------------ operations

    async def deposit(self, key: str, client_id: str, amount: int) -> Entry:
        return await self.apply(postings.deposit_entry(key, client_id, amount))

    async def withdraw(self, key: str, acct: str, amount: int) -> Entry:
        return await self.apply(postings.withdraw_entry(key, acct, amount))

    async def hold(self, key: str, client_id: str, amount: int, holder: str = "") -> Entry:
        return await self.apply(postings.hold_entry(key, client_id, amount, holder))

    async def release_hold(self, key: str, client_id: str, amount: int, holder: str = "") -> Entry:
        return await self.apply(postings.release_hold_entry(key, client_id, amount, holder))

    async def settle_batch(self, key: str, charges: list[Charge], fee_bps: int, holder: str = "") -> BatchResult:
        async def work(s: AsyncSession) -> BatchResult:
            result = BatchResult(entry=None)
            done = await s.scalar(select(JournalRow.body).where(JournalRow.key == key))
            if done is not None:  # the same batch again: report what it paid, pay nothing
                entry = _entry_from_body(done)
                offered = {(c.request_id, c.client, c.provider, c.cost) for c in charges}
                paid_rows = entry.memo["charges"]  # type: ignore[union-attr]
                if any((r[0], r[1], r[2], r[3]) not in offered for r in paid_rows):  # type: ignore[union-attr]
                    raise LedgerError(f"key {key!r} was already used for a different batch")
                result.entry = entry
                result.paid = [str(r[0]) for r in paid_rows]  # type: ignore[union-attr]
                return result
            ids = list(dict.fromkeys(c.request_id for c in charges))
            seen: set[str] = set()
            for i in range(0, len(ids), 500):
                seen.update(await s.scalars(select(PaidRow.request_id).where(PaidRow.request_id.in_(ids[i:i + 500]))))
            reserve: dict[str, int] = {}
            accepted: list[tuple[str, str, str, int]] = []
            for c in charges:
                if c.request_id in seen:
                    result.rejected[c.request_id] = "already paid"
                    continue
                if c.client not in reserve:
                    reserve[c.client] = int(await s.scalar(select(AccountRow.balance).where(
                        AccountRow.name == postings.client_hold(c.client, holder))) or 0)
                if c.cost > reserve[c.client]:
                    result.rejected[c.request_id] = f"client reserve {reserve[c.client]} < cost {c.cost}"
                    continue
                reserve[c.client] -= c.cost
                seen.add(c.request_id)
                accepted.append((c.request_id, c.client, c.provider, c.cost))
            if not accepted:
                return result
            result.entry = await self._append(s, postings.settle_batch_entry(key, accepted, fee_bps, holder))
            await s.execute(insert(PaidRow), [{"request_id": a[0], "batch": key} for a in accepted])
            result.paid = [a[0] for a in accepted]
            return result

        return await self._locked(work)

    async def paid(self, request_ids: Iterable[str]) -> set[str]:
        """Request ids in `ledger_paid` (charged in a batch) or settled alone (`settle:ID`, kind settle).

        Read in chunks of 500 ids, each one indexed lookup per table."""
        ids = list(dict.fromkeys(request_ids))
        out: set[str] = set()
        async with self.sessions() as s:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                out.update(await s.scalars(select(PaidRow.request_id).where(PaidRow.request_id.in_(chunk))))
                # cancel_hold writes the same `settle:ID` key with another kind: only `settle` charged.
                settled = await s.scalars(select(JournalRow.key).where(
                    JournalRow.key.in_([f"settle:{r}" for r in chunk]), JournalRow.kind == "settle"))
                out.update(key.removeprefix("settle:") for key in settled)
        return out

    async def release_due(self, now: float, window_s: float) -> int:
        async with self.sessions() as s:
            released = select(JournalRow.key).where(JournalRow.kind == "release")
            due = (await s.execute(select(JournalRow.key, JournalRow.body).where(
                JournalRow.kind == "settle_batch", JournalRow.at < now - window_s,
                ("release:" + JournalRow.key).not_in(released)).order_by(JournalRow.seq))).all()
        moved = 0
        for key, body in due:
            earned: dict[str, int] = json.loads(body)["memo"]["earned"]

            async def work(s: AsyncSession, key: str = key, earned: dict[str, int] = earned) -> int:
                # A slash may have taken held earnings since: release what is still there.
                have = {p: int(await s.scalar(select(AccountRow.balance).where(
                    AccountRow.name == postings.provider_held(p))) or 0) for p in earned}
                entry = await self._append(s, postings.release_batch_entry(
                    key, {p: min(a, have[p]) for p, a in earned.items()}, window_s))
                return sum(p.amount for p in entry.postings)

            moved += await self._locked(work)
        return moved

    async def settle(self, request_id: str, provider: str, cost: int, fee_bps: int) -> Entry:
        hold = await self._memo(f"hold:{request_id}")
        if hold is None:
            raise LedgerError(f"no hold for request {request_id!r}")
        return await self.apply(postings.settle_entry(request_id, hold["client"], provider, hold["amount"], cost,
                                                      fee_bps))

    async def cancel_hold(self, request_id: str) -> Entry:
        hold = await self._memo(f"hold:{request_id}")
        if hold is None:
            raise LedgerError(f"no hold for request {request_id!r}")
        return await self.apply(postings.cancel_hold_entry(request_id, hold["client"], hold["amount"]))

    async def release(self, request_id: str) -> Entry:
        settled = await self._memo(f"settle:{request_id}")
        if settled is None or "provider" not in settled:
            raise LedgerError(f"request {request_id!r} has no settled earnings to release")
        return await self.apply(postings.release_entry(request_id, settled["provider"], settled["earned"]))

    async def stake(self, key: str, provider: str, amount: int) -> Entry:
        return await self.apply(postings.stake_entry(key, provider, amount))

    async def unstake(self, key: str, provider: str, amount: int, now: float, delay_s: float) -> Entry:
        return await self.apply(postings.unstake_entry(key, provider, amount, now + delay_s))

    async def complete_unstake(self, key: str, now: float) -> Entry:
        memo = await self._memo(key)
        if memo is None or "available_at" not in memo:
            raise LedgerError(f"no unstake {key!r}")
        if now < memo["available_at"]:
            raise LedgerError(f"unstake {key!r} is unbonding until {memo['available_at']}")
        return await self.apply(postings.unbonded_entry(f"{key}:done", memo["provider"], memo["amount"]))

    async def slash(self, key: str, provider: str, refunds: dict[str, int], checker_id: str,
                    bounty_bps: int, evidence: Charge | None = None) -> Entry:
        """Take held earnings and stake (see `postings.slash_entry`).

        `evidence` is the provider-signed charge the verdict contradicts: the EVM
        contract checks it itself; here the caller (the gateway's audit flow) has
        checked the signature, and the evidence must at least be a request we paid.
        """
        if evidence is not None:
            async with self.sessions() as s:
                paid = await s.scalar(select(PaidRow.request_id).where(PaidRow.request_id == evidence.request_id))
            if paid is None:
                raise LedgerError(f"evidence {evidence.request_id!r} is not a paid request")
        held = await self.balance(postings.provider_held(provider))
        staked = await self.balance(postings.stake(provider))
        return await self.apply(postings.slash_entry(key, provider, held, staked, refunds, checker_id, bounty_bps))

    # ------------------------------------------------------------ reading and checking

    async def balance(self, acct: str) -> int:
        async with self.sessions() as s:
            value = await s.scalar(select(AccountRow.balance).where(AccountRow.name == acct))
        return int(value or 0)

    async def balances(self) -> dict[str, int]:
        async with self.sessions() as s:
            rows = (await s.execute(select(AccountRow.name, AccountRow.balance))).all()
        return {name: int(bal) for name, bal in rows}

    async def history(self, acct: str, limit: int = 100) -> list[dict[str, Any]]:
        """Entries touching `acct`, newest first, with the account's change in each (read
        through the account index: the cost does not grow with the rest of the journal)."""
        async with self.sessions() as s:
            rows = (await s.execute(
                select(AccountEntryRow.seq, AccountEntryRow.delta, JournalRow.key, JournalRow.kind, JournalRow.at)
                .join(JournalRow, JournalRow.seq == AccountEntryRow.seq)
                .where(AccountEntryRow.account == acct)
                .order_by(AccountEntryRow.seq.desc()).limit(limit))).all()
        return [{"seq": seq, "key": key, "kind": kind, "delta": delta, "at": at} for seq, delta, key, kind, at in rows]

    async def verify(self, min_window_s: float = 0.0) -> list[str]:
        """Replay the journal: every problem found. [] = sound.

        Checks the hash chain (entries and their times), balances against the replay, the
        account index against the journal, the paid-once records against the batches that
        paid (`journal_checks`),
        and that each batch's earnings were released no sooner than the window recorded
        with the release, and never sooner than `min_window_s` (the audit window promised).
        """
        problems: list[str] = []
        replayed: dict[str, int] = {}
        prev = GENESIS
        async with self.sessions() as s:
            rows = (await s.scalars(select(JournalRow).order_by(JournalRow.seq))).all()
            paid_rows = {r.request_id: r.batch for r in (await s.scalars(select(PaidRow))).all()}
            indexed = set((await s.execute(select(AccountEntryRow.account, AccountEntryRow.seq,
                                                  AccountEntryRow.delta))).all())
        entries = []
        expected: set[tuple[str, int, int]] = set()
        for row in rows:
            entry = _entry_from_body(row.body)
            entries.append((row, entry))
            # Rows written before times were hashed carry the older hash (the time alone unchecked).
            if row.prev_hash != prev or row.hash not in (chain_hash(prev, entry, round(row.at * 1000)),
                                                         chain_hash(prev, entry)):
                problems.append(f"journal row {row.seq} ({row.key}) does not chain to the one before it "
                                "(its entry or its time was edited)")
            prev = row.hash
            for name, delta in entry.deltas().items():
                replayed[name] = replayed.get(name, 0) + delta
                if delta:
                    expected.add((name, row.seq, delta))
        if indexed != expected:
            problems.append(f"the account index disagrees with the journal in {len(indexed ^ expected)} rows "
                            "(account histories would show the wrong entries)")
        problems += paid_once_problems([(r.key, r.kind, e.memo) for r, e in entries], paid_rows)
        problems += release_time_problems([(r.key, r.kind, r.at, e.memo) for r, e in entries], min_window_s)
        stored = await self.balances()
        for name in sorted(set(stored) | set(replayed)):
            if stored.get(name, 0) != replayed.get(name, 0):
                problems.append(f"{name}: balance {stored.get(name, 0)} but the journal says {replayed.get(name, 0)}")
        if sum(stored.values()) != 0:
            problems.append(f"balances sum to {sum(stored.values())}, not 0: money was created or lost")
        return problems
