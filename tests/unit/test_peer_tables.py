"""Gateway tables keyed by what peers choose stay bounded (issue 9): the auditor's provider records."""

from __future__ import annotations

import pytest

from gpupool.config import GatewaySettings
from gpupool.gateway import audits
from gpupool.gateway.audits import Auditor
from gpupool.gateway.hub import Hub
from gpupool.identity import Identity


def test_provider_records_of_departed_fresh_keys_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audits, "MAX_PROVIDER_RECORDS", 100)
    hub = Hub(GatewaySettings(), Identity.generate(), store=None)  # type: ignore[arg-type] - no peer connects
    auditor = Auditor(hub, ledger=None)  # type: ignore[arg-type] - nothing here moves money
    auditor.of("cheater").suspended = "hard audit failure"
    auditor.of("owes").owed["alice"] = 5
    for i in range(5_000):  # fresh keys, each served once and left
        auditor.of(f"fresh-{i}").record = auditor.of(f"fresh-{i}").record
    assert len(auditor.providers) <= 101
    # What is at stake is never forgotten: a suspension, refunds owed.
    assert auditor.is_suspended("cheater") and auditor.providers["owes"].owed == {"alice": 5}
