"""Gateway tables keyed by what peers choose stay bounded (issue 9): the auditor's provider records."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select, update

from gpupool import protocol
from gpupool.config import GatewaySettings
from gpupool.gateway.trust import audits
from gpupool.gateway.trust.audits import Auditor
from gpupool.gateway.peers.hub import Hub
from gpupool.gateway.store import ProviderRow, Retention, Store
from gpupool.identity import Identity


def test_provider_records_of_departed_fresh_keys_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audits, "MAX_PROVIDER_RECORDS", 100)
    hub = Hub(GatewaySettings(), Identity.generate(), store=None)  # type: ignore[arg-type] - no peer connects
    auditor = Auditor(hub, store=None, ledger=None)  # type: ignore[arg-type] - nothing here moves money
    auditor.of("cheater").suspended = "hard audit failure"
    auditor.of("owes").owed["alice"] = 5
    for i in range(5_000):  # fresh keys, each served once and left
        auditor.of(f"fresh-{i}").record = auditor.of(f"fresh-{i}").record
    assert len(auditor.providers) <= 101
    # What is at stake is never forgotten: a suspension, refunds owed.
    assert auditor.is_suspended("cheater") and auditor.providers["owes"].owed == {"alice": 5}


@pytest.mark.parametrize("n", [0, 3, 15, 16, 70_000])  # fixarray, array 16, array 32 headers
def test_list_lengths_are_read_from_headers(n: int) -> None:
    frame = protocol.encode(protocol.Statement(1, [bytes(32)] * n, b"sig"))
    assert protocol.list_lengths(frame) == {"digests": n, "items": 0, "models": 0, "token_ids": 0, "logprobs": 0}
    done = protocol.Done("r", protocol.Receipt("r", "n", "m", b"", b"", protocol.Usage(1, n)),
                         token_ids=list(range(n)), logprobs=[0.0] * n)
    assert protocol.list_lengths(protocol.encode(done))["token_ids"] == n == protocol.list_lengths(
        protocol.encode(done))["logprobs"]


def test_list_lengths_refuse_garbage() -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.list_lengths(b"\xc1\xc1")


async def test_the_store_keeps_a_bounded_number_of_provider_rows_and_events(tmp_path: Path) -> None:
    """Every fresh key that completes a handshake writes a provider row; a stranger can make
    keys without end, so the rows (and peer events) are pruned by age and by count, never
    those of providers connected now."""
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}")
    try:
        now = time.time()
        for i in range(60):
            await store.upsert_provider(f"gp{i:040x}", bytes(32), "eu", ["m"])
        async with store.sessions.begin() as s:  # ten of them were last seen 40 days ago
            await s.execute(update(ProviderRow).where(ProviderRow.node_id < f"gp{10:040x}")
                            .values(last_seen=now - 40 * 86400))
        for i in range(30):
            store.record_event(f"peer-{i}", "garbage_frame", "x")
        connected = {f"gp{0:040x}"}  # old, but connected right now
        removed = await store.prune(now, Retention(keep_s=30 * 86400, max_providers=40, max_events=20,
                                                   connected=lambda: connected))
        async with store.sessions() as s:
            left = set((await s.scalars(select(ProviderRow.node_id))).all())
        assert f"gp{0:040x}" in left and not any(f"gp{i:040x}" in left for i in range(1, 10))
        assert len(left) <= 41 and removed["providers"] == 60 - len(left)
        assert len(await store.peer_events(limit=1000)) == 20 and removed["peer events"] == 10
        assert await store.provider_known(f"gp{59:040x}")  # the newest stay
    finally:
        await store.close()
