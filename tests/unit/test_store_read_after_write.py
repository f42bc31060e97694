"""A read of the request log sees every request already answered, even while the write loop is
mid-flush (test_hostile_clients::test_account_history_is_paged failed 1 == 3 under load).

The write loop takes the queued rows out of the queue and then waits on the database; a
reader's flush that ran in that window found the queue empty and read before those rows
were committed, so `/v1/account` showed fewer charges than the client had been answered for.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gpupool.gateway.store import Store


def row(rid: str) -> dict[str, object]:
    return {"request_id": rid, "at": time.time(), "key_id": 1, "account": "alice", "model": "m",
            "provider": "p", "status": "ok", "attempts": 1, "prompt_tokens": 1, "completion_tokens": 1,
            "latency_ms": 1.0, "cost": 5}


async def test_a_read_waits_for_the_rows_the_write_loop_is_writing(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}")
    try:
        for round_ in range(20):  # each round: rows queued, the loop's flush under way, a read
            for i in range(5):
                store.record_request(**row(f"r{round_}-{i}"))
            writing = asyncio.create_task(store._flush())  # what the write loop does after its 50 ms
            await asyncio.sleep(0)  # it has taken the rows and waits on the database now
            seen = await store.recent_charges("alice", limit=1000)
            assert len(seen) == 5 * (round_ + 1), (round_, len(seen))
            await writing
    finally:
        await store.engine.dispose()
