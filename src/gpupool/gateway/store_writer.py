"""The store's batching writer: request-log, peer-event and provider rows, written every ~50 ms.

A request never waits on a database round trip: rows are queued in memory and written
in one transaction per batch. While the database is unreachable they are kept (up to
MAX_PENDING_ROWS, then the oldest go and are counted); a row the database refuses is
dropped and recorded, so one bad row cannot jam the queue.

    writer = LogWriter(sessions)
    writer.start()
    writer.queue(RequestRow, {...})
    await writer.flush()      # before a read that must see what was queued
    await writer.stop()
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import async_sessionmaker

from gpupool.gateway.store_tables import PeerEventRow, ProviderRow

log = logging.getLogger("gpupool.gateway.store")

# Request and event log rows held in memory while the database does not take writes.
MAX_PENDING_ROWS = 100_000


class LogWriter:
    def __init__(self, sessions: async_sessionmaker[Any]):
        self.sessions = sessions
        self._pending: list[tuple[Any, dict[str, Any]]] = []
        # node id -> its provider row's new values: joins are written in batches (thousands of
        # providers reconnecting at once must not each wait on, and lock, the database).
        self._providers: dict[str, dict[str, Any]] = {}
        self._wake = asyncio.Event()
        # One flush at a time: a reader's flush (recent_charges, peer_events) must wait for the
        # rows the write loop has already taken out of `_pending` to commit, or it reads without them.
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0  # log rows dropped: the database unreachable too long, or refusing the row

    def start(self) -> None:
        self._task = asyncio.create_task(self._write_loop(), name="store-writer")

    async def stop(self) -> None:
        """Stop the loop (what is still queued stays for a last `flush`)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def record_event(self, peer: str, kind: str, detail: str) -> None:
        log.warning("peer %s: %s: %s", peer, kind, detail)
        self.queue(PeerEventRow, {"at": time.time(), "peer": peer, "kind": kind, "detail": detail[:2000]})

    def note_provider(self, node_id: str, public_key: bytes, region: str, models: list[str]) -> None:
        """Record (or refresh) a provider's row in the next batch write, `last_seen` = now."""
        self._providers[node_id] = {"node_id": node_id, "public_key": public_key.hex(), "region": region,
                                    "models": ",".join(models), "last_seen": time.time()}
        self._wake.set()

    def queue(self, table: Any, row: dict[str, Any]) -> None:
        if len(self._pending) >= MAX_PENDING_ROWS:
            # The database has been unreachable for a while: keep the newest rows, count the rest.
            del self._pending[:MAX_PENDING_ROWS // 10]
            self.dropped += MAX_PENDING_ROWS // 10
            log.error("the database is not taking writes: %d request/event log rows dropped so far", self.dropped)
        self._pending.append((table, row))
        self._wake.set()

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(0.05)  # gather a batch: one transaction per ~50 ms, not per request
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - logging must never take the gateway down
                log.exception("writing request log failed; will retry")
                await asyncio.sleep(1.0)

    async def flush(self) -> None:
        async with self._flushing:
            await self._flush_pending()

    async def _flush_pending(self) -> None:
        self._wake.clear()
        if not self._pending and not self._providers:
            return
        batch, self._pending = self._pending, []
        providers, self._providers = self._providers, {}
        by_table: dict[Any, list[dict[str, Any]]] = {}
        for table, row in batch:
            by_table.setdefault(table, []).append(row)
        try:
            async with self.sessions.begin() as s:
                if providers:
                    await _write_providers(s, providers)
                for table, rows in by_table.items():
                    await s.execute(insert(table), rows)
        except (OperationalError, InterfaceError, OSError):
            self._pending[:0] = batch  # the database is unreachable: keep them for the next try
            # Newer values noted meanwhile win; the rest are tried again.
            self._providers = {**providers, **self._providers}
            raise
        except Exception:  # noqa: BLE001 - a row the database refuses: retrying the batch would jam forever
            await self._write_one_by_one(batch)
            await self._providers_one_by_one(providers)

    async def _providers_one_by_one(self, rows: dict[str, dict[str, Any]]) -> None:
        """Provider rows of a refused batch, each in its own transaction (another gateway sharing the
        database may have inserted one a moment ago: this updates it); one still refused is dropped."""
        for node_id, row in rows.items():
            try:
                async with self.sessions.begin() as s:
                    await _write_providers(s, {node_id: row})
            except (OperationalError, InterfaceError, OSError):
                self._providers.setdefault(node_id, row)  # unreachable after all: try again later
            except Exception as exc:  # noqa: BLE001
                log.error("dropped provider row %s the database refuses: %s: %s", node_id[:16],
                          type(exc).__name__, str(exc)[:200])

    async def _write_one_by_one(self, batch: list[tuple[Any, dict[str, Any]]]) -> None:
        """Write a refused batch row by row; a row the database refuses is dropped and recorded."""
        bad = 0
        for table, row in batch:
            try:
                async with self.sessions.begin() as s:
                    await s.execute(insert(table), [row])
            except (OperationalError, InterfaceError, OSError):
                self._pending.append((table, row))  # unreachable after all: try again later
            except Exception as exc:  # noqa: BLE001
                bad += 1
                log.error("dropped a %s row the database refuses: %s: %s", table.__tablename__,
                          type(exc).__name__, str(exc)[:200])
        if bad:
            self.dropped += bad
            self.record_event("gateway", "log_rows_dropped", f"{bad} log rows the database refused were dropped")


async def _write_providers(s: Any, rows: dict[str, dict[str, Any]]) -> None:
    """Insert the providers not yet in the table, update the others (first_seen kept)."""
    ids = list(rows)
    known: set[str] = set()
    for i in range(0, len(ids), 500):
        known.update((await s.scalars(select(ProviderRow.node_id).where(
            ProviderRow.node_id.in_(ids[i:i + 500])))).all())
    new = [{**r, "first_seen": r["last_seen"]} for n, r in rows.items() if n not in known]
    if new:
        await s.execute(insert(ProviderRow), new)
    seen = [r for n, r in rows.items() if n in known]
    if seen:
        await s.execute(update(ProviderRow), seen)  # by primary key, first_seen kept
