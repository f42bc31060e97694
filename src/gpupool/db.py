"""Database URLs shared by the gateway's store and the SQL ledger."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, MetaData, inspect, text


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
