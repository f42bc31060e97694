"""Databases shared by the gateway's store, its registry and the SQL ledger: URLs, engines, tables."""

from __future__ import annotations

from pathlib import Path

from typing import Any

from sqlalchemy import Connection, MetaData, event, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine


def normalize_url(url: str) -> str:
    """Accept plain `sqlite:///` and `postgresql://` URLs and pick the async drivers."""
    if url.startswith("sqlite:///"):
        url = "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
    elif url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite+aiosqlite:///"):
        path = url[len("sqlite+aiosqlite:///"):]
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return url


def add_missing_columns(conn: Connection, metadata: MetaData) -> list[str]:
    """Bring tables created by an older gpupool up to date by adding the columns it lacked.

    Only additions, and only for columns with a server default (so existing rows get a
    value): enough for the store's history so far without a migration framework.
    Run with `await conn.run_sync(add_missing_columns, Base.metadata)` after create_all.
    """
    added: list[str] = []
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in have or column.server_default is None:
                continue
            kind = column.type.compile(conn.dialect)
            default = column.server_default.arg  # type: ignore[attr-defined]
            conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN {column.name} {kind} '
                              f"NOT NULL DEFAULT '{default}'"))
            added.append(f"{table.name}.{column.name}")
    return added


def create_engine(url: str) -> AsyncEngine:
    """An async engine for `url`; SQLite files get WAL and a generous busy timeout.

    The gateway's store and its ledger write the same SQLite file from two engines:
    in WAL mode readers never block the writer, and a writer that finds the file
    busy waits (up to 30 s) instead of failing with "database is locked".
    """
    url = normalize_url(url)
    if not url.startswith("sqlite"):
        return create_async_engine(url, pool_pre_ping=True)
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, far fewer fsyncs
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def add_missing_indexes(conn: Connection, metadata: MetaData) -> None:
    """create_all makes indexes only with new tables: add the ones older databases lack."""
    for table in metadata.sorted_tables:
        for index in table.indexes:
            index.create(conn, checkfirst=True)


async def create_tables(engine: AsyncEngine, metadata: MetaData) -> None:
    """Create `metadata`'s tables, and bring ones an older gpupool made up to date (columns, indexes)."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.run_sync(add_missing_columns, metadata)
        await conn.run_sync(add_missing_indexes, metadata)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[Any]:
    """Sessions whose rows stay readable after commit (they are handed out of the `async with`)."""
    return async_sessionmaker(engine, expire_on_commit=False)
