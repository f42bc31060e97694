"""The queries over the batch tables (batches/tables.py) that store, claim, finish and list items.

Files, batches and items live beside the gateway's other tables (SQLite by default,
PostgreSQL when several gateways share the work). Input file contents are stored in
the database (a `LargeBinary` column: one place to back up, shared by every gateway);
output and error files are not copied: their lines are the items' stored result lines,
read in input order when downloaded.

An item moves `pending` → `leased` (a gateway claimed it, until `lease_until`) →
`charging` (its result is stored; the charge for its run is on its way to the ledger)
→ `done`. A lease that runs out (its gateway died) makes the item claimable again; a
`charging` item whose gateway died is `done` if the ledger has its run's charge, else
it is run again under a new run id, so each item is charged exactly once.

    bs = await BatchStore.open(store.engine)
    claimed = await bs.claim(batch_id, owner="gw1", run_id="bat_…", n=64, lease_s=30, now=time.time())
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, and_, bindparam, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import defer

from gpupool.gateway.batches.tables import (
    ACTIVE,
    TERMINAL,
    Base,
    BatchRow,
    ExposureRow,
    FileRow,
    ItemRow,
)

# An input file's bytes, written apart from its row (`BatchStore.add_file`).
_FILES = FileRow.__table__
_SET_CONTENT = _FILES.update().where(_FILES.c.id == bindparam("file_id")).values(content=bindparam("content"))


@dataclass(frozen=True)
class Claimed:
    idx: int
    custom_id: str
    body: str
    weight: int
    attempts: int


@dataclass(frozen=True)
class Finished:
    """One item's result, written when its shard ends."""

    idx: int
    ok: bool
    line: bytes
    cost: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    provider: str = ""


class BatchStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.pg = engine.url.get_backend_name().startswith("postgresql")

    @classmethod
    async def open(cls, engine: AsyncEngine) -> BatchStore:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        return cls(engine)

    # ------------------------------------------------------------ files

    async def add_file(self, row: FileRow) -> None:
        content = row.content
        if self.pg or content is None:
            async with self.sessions.begin() as s:
                s.add(row)
            return
        # SQLite: the content is bound to a statement of its own, rebound to nothing once it ran.
        # Python's sqlite3 keeps each connection's recent statements prepared, and a prepared
        # statement keeps a copy of the values last bound to it until they are bound again: an
        # INSERT holding the whole file kept up to one file's bytes per pooled connection in the
        # gateway's heap (+35 MiB after a flood of 8 MiB files, bench/hostile `file_flood`).
        row.content = None
        async with self.sessions.begin() as s:
            s.add(row)
            await s.flush()
            conn = await s.connection()
            await conn.execute(_SET_CONTENT, {"file_id": row.id, "content": content})
            await conn.execute(_SET_CONTENT, {"file_id": "", "content": None})  # matches no row
        row.content = content

    async def file(self, file_id: str, account: str, content: bool = False) -> FileRow | None:
        """The file's row; its `content` (an input file's bytes, up to 100 MiB) only when asked for."""
        q = select(FileRow).where(FileRow.id == file_id, FileRow.account == account)
        async with self.sessions() as s:
            return await s.scalar(q if content else q.options(defer(FileRow.content, raiseload=True)))

    async def usage(self, account: str) -> tuple[int, int]:
        """The account's stored input files: how many, and their bytes (the quota counts these)."""
        async with self.sessions() as s:
            n, total = (await s.execute(select(func.count(), func.coalesce(func.sum(FileRow.bytes), 0))
                                        .where(FileRow.account == account, FileRow.kind == "input"))).one()
        return int(n), int(total)

    async def files(self, account: str, purpose: str | None, after: str | None, limit: int) -> list[FileRow]:
        # Never the content column: a listing of a hundred 100 MiB files must not read them.
        q = (select(FileRow).options(defer(FileRow.content, raiseload=True)).where(FileRow.account == account)
             .order_by(FileRow.created_at.desc(), FileRow.id.desc()))
        if purpose:
            q = q.where(FileRow.purpose == purpose)
        if after:
            async with self.sessions() as s:
                anchor = await s.get(FileRow, after, options=[defer(FileRow.content, raiseload=True)])
            if anchor is not None:
                q = q.where(or_(FileRow.created_at < anchor.created_at,
                                and_(FileRow.created_at == anchor.created_at, FileRow.id < anchor.id)))
        async with self.sessions() as s:
            return list((await s.scalars(q.limit(limit))).all())

    async def delete_file(self, file_id: str, account: str) -> bool:
        async with self.sessions.begin() as s:
            result = await s.execute(delete(FileRow).where(FileRow.id == file_id, FileRow.account == account))
        return bool(result.rowcount)

    async def lines(self, batch_id: str, ok: bool, page: int = 2000) -> Any:
        """The stored result lines of a batch's items (successes or errors), in input order."""
        last = -1
        while True:
            async with self.sessions() as s:
                rows = (await s.execute(
                    select(ItemRow.idx, ItemRow.line).where(ItemRow.batch_id == batch_id, ItemRow.idx > last,
                                                           ItemRow.state == "done", ItemRow.ok == int(ok))
                    .order_by(ItemRow.idx).limit(page))).all()
            for idx, line in rows:
                last = idx
                yield line + b"\n"
            if len(rows) < page:
                return

    # ------------------------------------------------------------ batches

    async def create_batch(self, batch: BatchRow, items: list[ItemRow]) -> None:
        """The batch and all its items in one transaction: nothing is half-created."""
        async with self.sessions.begin() as s:
            s.add(batch)
            await s.flush()
            for i in range(0, len(items), 5000):
                s.add_all(items[i:i + 5000])
                await s.flush()

    async def batch(self, batch_id: str, account: str | None = None) -> BatchRow | None:
        async with self.sessions() as s:
            row = await s.get(BatchRow, batch_id)
        return row if row is not None and (account is None or row.account == account) else None

    async def batches(self, account: str, after: str | None, limit: int) -> list[BatchRow]:
        q = select(BatchRow).where(BatchRow.account == account).order_by(BatchRow.created_at.desc(),
                                                                         BatchRow.id.desc())
        if after:
            async with self.sessions() as s:
                anchor = await s.get(BatchRow, after)
            if anchor is not None:
                q = q.where(or_(BatchRow.created_at < anchor.created_at,
                                and_(BatchRow.created_at == anchor.created_at, BatchRow.id < anchor.id)))
        async with self.sessions() as s:
            return list((await s.scalars(q.limit(limit))).all())

    async def active_count(self, account: str) -> int:
        async with self.sessions() as s:
            return int(await s.scalar(select(func.count()).where(BatchRow.account == account,
                                                                 BatchRow.status.in_(ACTIVE))) or 0)

    async def active(self) -> list[BatchRow]:
        async with self.sessions() as s:
            return list((await s.scalars(select(BatchRow).where(BatchRow.status.in_(ACTIVE))
                                         .order_by(BatchRow.created_at))).all())

    async def set_status(self, batch_id: str, old: tuple[str, ...], new: str, now: float, mark: str = "") -> bool:
        """Move a batch from one of `old` to `new` (stamping `<new>_at`, and `mark` if given); False if
        another got there first."""
        async with self.sessions.begin() as s:
            row = await s.get(BatchRow, batch_id, with_for_update=self.pg)
            if row is None or row.status not in old:
                return False
            stamps = json.loads(row.stamps or "{}")
            stamps.setdefault(f"{new}_at", int(now))
            if mark:
                stamps.setdefault(mark, int(now))
            row.status, row.stamps = new, json.dumps(stamps)
        return True

    async def counts(self, batch_id: str, now: float) -> dict[str, int]:
        """Items by state, plus `leased_live` / `charging_live`: those whose lease has not run out."""
        async with self.sessions() as s:
            rows = (await s.execute(select(ItemRow.state, func.count(), func.sum(
                (ItemRow.lease_until >= now).cast(Integer))).where(ItemRow.batch_id == batch_id)
                .group_by(ItemRow.state))).all()
        out = {"pending": 0, "leased": 0, "charging": 0, "done": 0, "leased_live": 0, "charging_live": 0}
        for state, n, live in rows:
            out[state] = int(n)
            if state in ("leased", "charging"):
                out[f"{state}_live"] = int(live or 0)
        out["claimable"] = out["pending"] + out["leased"] - out["leased_live"]
        return out

    async def exposure(self, batch_id: str) -> dict[str, int]:
        async with self.sessions() as s:
            rows = (await s.execute(select(ExposureRow.provider, ExposureRow.items)
                                    .where(ExposureRow.batch_id == batch_id))).all()
        return {p: int(n) for p, n in rows}

    async def expose(self, batch_id: str, provider: str, n: int) -> None:
        """Count `n` more items sent to `provider`, before they are sent (so a crash never undercounts)."""
        async with self.sessions.begin() as s:
            result = await s.execute(update(ExposureRow).where(ExposureRow.batch_id == batch_id,
                                                               ExposureRow.provider == provider)
                                     .values(items=ExposureRow.items + n))
            if not result.rowcount:
                s.add(ExposureRow(batch_id=batch_id, provider=provider, items=n))

    # ------------------------------------------------------------ items

    async def claim(self, batch_id: str, owner: str, run_id: str, n: int, lease_s: float, now: float,
                    max_attempts: int) -> list[Claimed]:
        """Lease up to `n` claimable items to `owner` under `run_id` (atomic across gateways).

        Claimable: pending, or leased by a gateway whose lease ran out; items tried
        `max_attempts` times are left for `close_rest`."""
        async with self.sessions.begin() as s:
            pick = (select(ItemRow.idx).where(ItemRow.batch_id == batch_id, or_(
                ItemRow.state == "pending", and_(ItemRow.state == "leased", ItemRow.lease_until < now)))
                .where(ItemRow.attempts < max_attempts).order_by(ItemRow.seq).limit(n))
            if self.pg:
                pick = pick.with_for_update(skip_locked=True)
            idxs = list((await s.scalars(pick)).all())
            if not idxs:
                return []
            await s.execute(update(ItemRow).where(ItemRow.batch_id == batch_id, ItemRow.idx.in_(idxs))
                            .values(state="leased", owner=owner, run_id=run_id, lease_until=now + lease_s,
                                    reserved=0, attempts=ItemRow.attempts + 1))
            rows = (await s.execute(select(ItemRow.idx, ItemRow.custom_id, ItemRow.body, ItemRow.weight,
                                           ItemRow.attempts).where(ItemRow.batch_id == batch_id,
                                                                   ItemRow.run_id == run_id))).all()
        return [Claimed(*r) for r in rows]

    async def _committed(self, s: AsyncSession, batch_id: str, now: float) -> int:
        charged = await s.scalar(select(func.coalesce(func.sum(ItemRow.cost), 0)).where(
            ItemRow.batch_id == batch_id, ItemRow.state.in_(("charging", "done"))))
        live = await s.scalar(select(func.coalesce(func.sum(ItemRow.reserved), 0)).where(
            ItemRow.batch_id == batch_id, ItemRow.state == "leased", ItemRow.lease_until >= now))
        return int(charged or 0) + int(live or 0)

    async def reserve_run(self, batch_id: str, run_id: str, each: int, max_cost: int | None, now: float) -> bool:
        """Set a run's cost bound on its items; False (nothing changed) if the batch's committed cost
        (charged plus live reservations, over every gateway) would then exceed `max_cost`."""
        async with self.sessions.begin() as s:
            if self.pg:  # one reserver per batch at a time: the check below stays exact
                await s.execute(select(BatchRow.id).where(BatchRow.id == batch_id).with_for_update())
            await s.execute(update(ItemRow).where(ItemRow.batch_id == batch_id, ItemRow.run_id == run_id,
                                                  ItemRow.state == "leased").values(reserved=each))
            if max_cost is not None and await self._committed(s, batch_id, now) > max_cost:
                await s.rollback()
                return False
        return True

    async def forget_owner(self, prefix: str, owner: str) -> None:
        """Leases held by an earlier run of this gateway (same identity, so that process is gone)."""
        async with self.sessions.begin() as s:
            await s.execute(update(ItemRow).where(ItemRow.owner.startswith(prefix), ItemRow.owner != owner,
                                                  ItemRow.state.in_(("leased", "charging")))
                            .values(lease_until=0.0))

    async def renew(self, run_ids: list[str], owner: str, until: float) -> None:
        if not run_ids:
            return
        async with self.sessions.begin() as s:
            await s.execute(update(ItemRow).where(ItemRow.run_id.in_(run_ids), ItemRow.owner == owner,
                                                  ItemRow.state.in_(("leased", "charging")))
                            .values(lease_until=until))

    async def release(self, batch_id: str, run_id: str, tried: bool = True) -> None:
        """The run failed (`tried`) or never started: its items go back to pending for another try."""
        async with self.sessions.begin() as s:
            await s.execute(update(ItemRow).where(ItemRow.batch_id == batch_id, ItemRow.run_id == run_id,
                                                  ItemRow.state == "leased")
                            .values(state="pending", reserved=0, lease_until=0.0,
                                    attempts=ItemRow.attempts - (0 if tried else 1)))

    async def finish(self, batch_id: str, run_id: str, results: list[Finished], charging: bool) -> int:
        """Store a run's results; `charging`: its charge still has to reach the ledger. Returns rows
        written (0 if the lease was lost to another gateway meanwhile: the results are dropped)."""
        state = "charging" if charging else "done"
        written = 0
        async with self.sessions.begin() as s:
            for r in results:
                result = await s.execute(
                    update(ItemRow).where(ItemRow.batch_id == batch_id, ItemRow.idx == r.idx,
                                          ItemRow.run_id == run_id, ItemRow.state == "leased")
                    .values(state=state, ok=int(r.ok), line=r.line, cost=r.cost, prompt_tokens=r.prompt_tokens,
                            completion_tokens=r.completion_tokens, provider=r.provider, reserved=0))
                written += result.rowcount
            if written != len(results):
                await s.rollback()
                return 0
            if not charging:
                await self._count_done(s, batch_id, results)
        return written

    async def _count_done(self, s: AsyncSession, batch_id: str, results: list[Finished]) -> None:
        ok = sum(1 for r in results if r.ok)
        await s.execute(update(BatchRow).where(BatchRow.id == batch_id).values(
            completed=BatchRow.completed + ok, failed=BatchRow.failed + len(results) - ok,
            cost_ucr=BatchRow.cost_ucr + sum(r.cost for r in results),
            input_tokens=BatchRow.input_tokens + sum(r.prompt_tokens for r in results),
            output_tokens=BatchRow.output_tokens + sum(r.completion_tokens for r in results)))

    async def orphans(self, now: float) -> list[tuple[str, str, float]]:
        """(batch id, run id, lease end) of runs left `charging` by a gateway whose lease ran out."""
        async with self.sessions() as s:
            rows = (await s.execute(select(ItemRow.batch_id, ItemRow.run_id, func.max(ItemRow.lease_until)).where(
                ItemRow.state == "charging", ItemRow.lease_until < now)
                .group_by(ItemRow.batch_id, ItemRow.run_id))).all()
        return [(b, r, float(until)) for b, r, until in rows if r]

    async def confirm(self, batch_id: str, run_id: str, paid: bool) -> None:
        """The run's charge reached the ledger (`paid`): its items are done; else they run again."""
        # One UPDATE that only rows still `charging` pass: two gateways confirming the same run at
        # once (its owner, and another that took its lease for lost under load) count it once, since
        # the second UPDATE finds the rows moved (a select-then-write counted them twice).
        charging = (ItemRow.batch_id == batch_id, ItemRow.run_id == run_id, ItemRow.state == "charging")
        async with self.sessions.begin() as s:
            if paid:
                rows = (await s.execute(update(ItemRow).where(*charging).values(state="done").returning(
                    ItemRow.idx, ItemRow.ok, ItemRow.cost, ItemRow.prompt_tokens, ItemRow.completion_tokens))).all()
                if rows:
                    await self._count_done(s, batch_id, [Finished(idx, bool(ok), b"", cost, pt, ct)
                                                         for idx, ok, cost, pt, ct in rows])
            else:
                await s.execute(update(ItemRow).where(*charging).values(state="pending", line=None, cost=0,
                                                                        lease_until=0.0))

    async def close_rest(self, batch_id: str, make_line: Any, now: float, min_attempts: int = 0) -> int:
        """Write an error line for every item not done and not running (cancelled, expired, over the
        cost cap), or with `min_attempts` only for those tried that often (failed everywhere)."""
        n = 0
        async with self.sessions.begin() as s:
            rows = (await s.scalars(select(ItemRow).where(
                ItemRow.batch_id == batch_id, ItemRow.attempts >= min_attempts,
                or_(ItemRow.state == "pending", and_(ItemRow.state == "leased", ItemRow.lease_until < now))))).all()
            for row in rows:
                row.state, row.ok, row.line, row.cost, row.reserved = "done", 0, make_line(row), 0, 0
                n += 1
            if rows:
                await s.execute(update(BatchRow).where(BatchRow.id == batch_id)
                                .values(failed=BatchRow.failed + n))
        return n

    async def finalize(self, batch_id: str, status: str, files: list[FileRow], now: float) -> bool:
        """Create the output/error file records and set the final status, once."""
        async with self.sessions.begin() as s:
            row = await s.get(BatchRow, batch_id, with_for_update=self.pg)
            if row is None or row.status in TERMINAL:
                return False
            for f in files:
                size_of = func.coalesce(func.sum(func.length(ItemRow.line) + 1), 0)
                n, size = (await s.execute(select(func.count(), size_of).where(
                    ItemRow.batch_id == batch_id, ItemRow.state == "done",
                    ItemRow.ok == int(f.kind == "output")))).one()
                if not n:
                    continue  # as OpenAI: no error file when nothing failed
                f.bytes = int(size)
                s.add(f)
                if f.kind == "output":
                    row.output_file_id = f.id
                else:
                    row.error_file_id = f.id
            stamps = json.loads(row.stamps or "{}")
            stamps.setdefault(f"{status}_at", int(now))
            row.status, row.stamps = status, json.dumps(stamps)
        return True

    async def set_errors(self, batch_id: str, errors: list[dict[str, Any]]) -> None:
        async with self.sessions.begin() as s:
            await s.execute(update(BatchRow).where(BatchRow.id == batch_id).values(errors=json.dumps(errors)))


def now_s() -> float:
    return time.time()
