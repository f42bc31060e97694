"""Gateway tables keyed by what peers choose stay bounded (issue 9): the auditor's provider records."""

from __future__ import annotations

import pytest

from gpupool import protocol
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
