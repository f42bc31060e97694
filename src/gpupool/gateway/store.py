"""Gateway state in SQL (SQLAlchemy 2, async): API keys, providers, peer events, request log.

SQLite file by default, PostgreSQL by URL. API keys are stored as SHA-256 hashes
only. Request-log and peer-event rows go through a small batching writer
(store_writer.py) so a request never waits on a database round trip; the tables
are in store_tables.py.

    store = await Store.open("sqlite+aiosqlite:///gw.db")
    key = await store.create_key("alice")        # plaintext shown once
    record = await store.authenticate(key)       # ApiKey or None
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gpupool.db import create_engine, create_tables, session_factory
from gpupool.gateway.store_tables import (
    ApiKey,
    ApiKeyRow,
    Base,
    PeerEventRow,
    ProviderRow,
    RequestRow,
)
from gpupool.gateway.store_writer import LogWriter
from gpupool.ledger.postings import account_for

__all__ = ["KEY_PREFIX", "ApiKey", "ApiKeyRow", "PeerEventRow", "ProviderRow", "RequestRow", "Retention", "Store",
           "hash_key"]

log = logging.getLogger("gpupool.gateway.store")

KEY_PREFIX = "gp-"


# How long a gateway trusts what it read about a key: a revocation (from the CLI, the
# admin API or another gateway sharing the database) takes effect within this time.
KEY_CACHE_S = 2.0
KEY_CACHE_MAX = 10_000


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Retention:
    """How much the store keeps of what strangers cause (GatewaySettings: --retention-days...)."""

    keep_s: float = 30 * 86400  # provider rows unseen and peer events older than this go
    max_providers: int = 100_000  # beyond this, the longest-unseen (not connected) rows go
    max_events: int = 1_000_000
    every_s: float = 3600.0
    connected: Callable[[], Iterable[str]] = lambda: ()


class Store:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.sessions = session_factory(engine)
        # key hash -> (key or None if unknown/revoked, monotonic time the entry expires)
        self._key_cache: dict[str, tuple[ApiKey | None, float]] = {}
        self._id_cache: dict[int, tuple[ApiKey | None, float]] = {}
        self.key_cache_s = KEY_CACHE_S
        self.writer = LogWriter(self.sessions)
        self._pruner: asyncio.Task[None] | None = None

    @property
    def dropped(self) -> int:
        """Log rows dropped: the database unreachable too long, or refusing the row."""
        return self.writer.dropped

    @classmethod
    async def open(cls, url: str) -> Store:
        engine = create_engine(url)
        await create_tables(engine, Base.metadata)
        return cls(engine)

    def start_writer(self, retention: Retention | None = None) -> None:
        self.writer.start()
        if retention is not None:
            self._pruner = asyncio.create_task(self._prune_loop(retention), name="store-pruner")

    async def close(self) -> None:
        await self.writer.stop()
        if self._pruner is not None:
            self._pruner.cancel()
            await asyncio.gather(self._pruner, return_exceptions=True)
        await self._flush()
        await self.engine.dispose()

    # ------------------------------------------------------------ API keys

    async def create_key(self, name: str, key: str | None = None, account: str | None = None, *,
                         rpm: int = 0, tpm: int = 0, concurrency: int = 0) -> str:
        """Create (or, given `key`, register) an API key; returns the plaintext once.

        The key spends from ledger account `account` (default: derived from `name`);
        `rpm`, `tpm` and `concurrency` are its limits (0: the gateway's defaults).
        """
        if min(rpm, tpm, concurrency) < 0:
            raise ValueError("key limits must be 0 (the gateway's default) or positive")
        key = key or KEY_PREFIX + secrets.token_urlsafe(32)
        async with self.sessions.begin() as s:
            existing = await s.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == hash_key(key)))
            if existing is None:
                s.add(ApiKeyRow(name=name, key_hash=hash_key(key), hint=key[:7], created_at=time.time(),
                                account=account_for(account or name),
                                rpm=rpm, tpm=tpm, max_concurrency=concurrency))
        self._key_cache.pop(hash_key(key), None)
        return key

    async def list_keys(self) -> list[dict[str, Any]]:
        async with self.sessions() as s:
            rows = (await s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id))).all()
        return [
            {"id": r.id, "name": r.name, "account": r.account, "hint": r.hint + "…", "created_at": r.created_at,
             "revoked": r.revoked, "rpm": r.rpm, "tpm": r.tpm, "concurrency": r.max_concurrency}
            for r in rows
        ]

    async def revoke_key(self, key_id: int) -> bool:
        async with self.sessions.begin() as s:
            result = await s.execute(update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(revoked=True))
        self._key_cache.clear()
        return bool(result.rowcount)

    async def authenticate(self, key: str) -> ApiKey | None:
        """The key's record, or None if unknown or revoked.

        Answers are cached for `key_cache_s` (2 s): long enough that a busy key costs one
        database read every two seconds, short enough that a revocation written by any
        process sharing the database reaches this gateway within that time. Misses are
        cached too (a flood of wrong keys must not become a flood of queries), for the
        same short time, so a key created a moment ago by another replica works soon.
        """
        digest = hash_key(key)
        now = time.monotonic()
        cached = self._key_cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self.sessions() as s:
            row = await s.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == digest))
        found = (ApiKey(row.id, row.name, row.account, row.rpm, row.tpm, row.max_concurrency)
                 if row is not None and not row.revoked else None)
        if len(self._key_cache) >= KEY_CACHE_MAX:
            # Bounded: drop what expired; if a flood of distinct keys filled it, start over.
            self._key_cache = {d: e for d, e in self._key_cache.items() if e[1] > now}
            if len(self._key_cache) >= KEY_CACHE_MAX:
                self._key_cache.clear()
        self._key_cache[digest] = (found, now + self.key_cache_s)
        return found

    # ------------------------------------------------------------ providers and events

    async def key_by_id(self, key_id: int) -> ApiKey | None:
        """A key's record by its id (None if unknown or revoked): batches run under the key that made
        them. Cached like `authenticate`, so a revocation reaches a running batch within seconds."""
        now = time.monotonic()
        cached = self._id_cache.get(key_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self.sessions() as s:
            row = await s.get(ApiKeyRow, key_id)
        found = (ApiKey(row.id, row.name, row.account, row.rpm, row.tpm, row.max_concurrency)
                 if row is not None and not row.revoked else None)
        if len(self._id_cache) >= KEY_CACHE_MAX:
            self._id_cache.clear()  # ids come from this gateway's own batches: rarely many
        self._id_cache[key_id] = (found, now + self.key_cache_s)
        return found

    async def upsert_provider(self, node_id: str, public_key: bytes, region: str, models: list[str]) -> None:
        now = time.time()
        for attempt in range(2):
            try:
                async with self.sessions.begin() as s:
                    row = await s.get(ProviderRow, node_id)
                    if row is None:
                        s.add(ProviderRow(node_id=node_id, public_key=public_key.hex(), region=region,
                                          models=",".join(models), first_seen=now, last_seen=now))
                    else:
                        row.region, row.models, row.last_seen = region, ",".join(models), now
                return
            except IntegrityError:
                # Another gateway sharing this database inserted the same provider a moment
                # ago (a provider connects to all its gateways at once): update that row.
                if attempt == 1:
                    raise

    def note_provider(self, node_id: str, public_key: bytes, region: str, models: list[str]) -> None:
        """Record (or refresh) a provider's row in the next batch write, `last_seen` = now."""
        self.writer.note_provider(node_id, public_key, region, models)

    async def recent_models(self, since: float) -> set[str]:
        """The models of providers seen (connected, leaving or re-stamped) since `since` (wall clock)."""
        async with self.sessions() as s:
            rows = (await s.scalars(select(ProviderRow.models).where(ProviderRow.last_seen >= since))).all()
        return {name for row in rows for name in row.split(",") if name}

    async def recent_providers(self, since: float, most: int) -> set[str]:
        """The node ids of providers seen since `since` (wall clock), the `most` latest."""
        async with self.sessions() as s:
            rows = (await s.scalars(select(ProviderRow.node_id).where(ProviderRow.last_seen >= since)
                                    .order_by(ProviderRow.last_seen.desc()).limit(most))).all()
        return set(rows)

    async def provider_known(self, node_id: str) -> bool:
        """Whether this provider ever connected to a gateway sharing this database."""
        async with self.sessions() as s:
            return await s.get(ProviderRow, node_id[:64]) is not None

    def record_event(self, peer: str, kind: str, detail: str) -> None:
        self.writer.record_event(peer, kind, detail)

    def record_request(self, **row: Any) -> None:
        self.writer.queue(RequestRow, row)

    async def peer_events(self, peer: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        await self._flush()
        q = select(PeerEventRow).order_by(PeerEventRow.id.desc()).limit(limit)
        if peer:
            q = q.where(PeerEventRow.peer == peer)
        async with self.sessions() as s:
            rows = (await s.scalars(q)).all()
        return [{"at": r.at, "peer": r.peer, "kind": r.kind, "detail": r.detail} for r in rows]

    async def recent_requests(self, limit: int = 100) -> list[dict[str, Any]]:
        await self._flush()
        async with self.sessions() as s:
            rows = (await s.scalars(select(RequestRow).order_by(RequestRow.at.desc()).limit(limit))).all()
        return [
            {c: getattr(r, c) for c in ("request_id", "at", "model", "provider", "status", "attempts",
                                        "prompt_tokens", "completion_tokens", "latency_ms", "cost")}
            for r in rows
        ]

    async def recent_charges(self, account: str, limit: int = 20, after: str | None = None) -> list[dict[str, Any]]:
        """The account's requests, newest first, `limit` of them; `after` a request id from the
        previous page continues below it (an index range on (account, at), never a scan)."""
        await self._flush()
        q = select(RequestRow).where(RequestRow.account == account)
        async with self.sessions() as s:
            if after:
                cursor = await s.scalar(select(RequestRow.at).where(RequestRow.request_id == after,
                                                                    RequestRow.account == account))
                if cursor is None:
                    raise KeyError(after)
                q = q.where((RequestRow.at < cursor) | ((RequestRow.at == cursor) & (RequestRow.request_id < after)))
            q = q.order_by(RequestRow.at.desc(), RequestRow.request_id.desc()).limit(limit)
            rows = (await s.scalars(q)).all()
        return [{"request_id": r.request_id, "at": r.at, "model": r.model, "status": r.status, "cost": r.cost,
                 "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                 "images": r.images, "image_cost": r.image_cost,
                 "provider": r.provider} for r in rows]  # a node id, or fallback:NAME

    # ------------------------------------------------------------ pruning

    async def _flush(self) -> None:
        await self.writer.flush()

    async def _prune_loop(self, retention: Retention) -> None:
        while True:
            try:
                removed = await self.prune(time.time(), retention)
                if any(removed.values()):
                    log.info("pruned %s", ", ".join(f"{n} {what}" for what, n in removed.items()))
            except Exception as exc:  # noqa: BLE001 - pruning must never take the gateway down
                log.warning("pruning the store failed (will retry): %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(retention.every_s)

    async def prune(self, now: float, retention: Retention) -> dict[str, int]:
        """Bound what strangers can make the database hold: provider rows (one per key that ever
        completed a handshake; keys cost nothing) and peer events. Connected providers are kept."""
        await self._flush()
        connected = set(retention.connected())
        async with self.sessions.begin() as s:
            stale = (await s.scalars(select(ProviderRow.node_id).where(
                ProviderRow.last_seen < now - retention.keep_s))).all()
            over = (await s.scalars(select(ProviderRow.node_id).order_by(ProviderRow.last_seen.desc())
                                    .offset(retention.max_providers))).all()
            gone = [n for n in {*stale, *over} if n not in connected]
            for i in range(0, len(gone), 500):
                await s.execute(delete(ProviderRow).where(ProviderRow.node_id.in_(gone[i:i + 500])))
            old_events = await s.execute(delete(PeerEventRow).where(PeerEventRow.at < now - retention.keep_s))
            cutoff = await s.scalar(select(PeerEventRow.id).order_by(PeerEventRow.id.desc())
                                    .offset(retention.max_events).limit(1))
            extra = await s.execute(delete(PeerEventRow).where(PeerEventRow.id <= cutoff)) if cutoff else None
        return {"providers": len(gone),
                "peer events": old_events.rowcount + (extra.rowcount if extra is not None else 0)}
