"""A log row the database refuses is dropped and recorded, never retried forever (issue 18, item 3).

A receipt once claimed 2**64-1 prompt tokens: the request log's batch could never be
written (SQLite has no such integer; PostgreSQL `integer` stops at 2**31-1), every retry
failed the same way, every later row waited behind it, and `/v1/account` (which reads the
log) raised for every account. Receipts are bounded now; the writer must cope anyway.
"""

from __future__ import annotations

import time
from pathlib import Path

from gpupool.gateway.store import Store


def row(rid: str, prompt: int) -> dict[str, object]:
    return dict(request_id=rid, at=time.time(), key_id="k", account="alice", model="m", provider="p",
                status="ok", attempts=1, prompt_tokens=prompt, completion_tokens=1, latency_ms=1.0, cost=5)


async def test_a_row_the_database_refuses_is_dropped_and_the_rest_written(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}")
    try:
        store.record_request(**row("good-1", 10))
        store.record_request(**row("bad", 2**64 - 1))
        store.record_request(**row("good-2", 12))
        charges = await store.recent_charges("alice")  # writes what is queued first: never raises
        assert sorted(c["request_id"] for c in charges) == ["good-1", "good-2"]
        assert store.dropped == 1
        events = await store.peer_events("gateway")
        assert any(e["kind"] == "log_rows_dropped" for e in events)
        store.record_request(**row("good-3", 13))  # nothing jammed behind it
        assert len(await store.recent_charges("alice")) == 3
    finally:
        await store.engine.dispose()
