"""Engines that fail behind a connected provider: a cut stream and HTTP 500s (issue 18's failover suite).

Each provider fronts its own OpenAI-compatible engine (`tests/fake_engine.py`, through
the `upstream` backend); one engine fails every answer, the other is healthy. The
provider stays connected, so only the gateway's failover can save the client: every
answer must be exactly the no-fault one, through the official client with no retries.
The stall and SIGSTOP cases are in `test_stalls.py`, a gateway restart in
`test_failover_restart.py`, what each costs in `bench/failover`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gpupool.devnet import Network
from tests.fake_engine import EngineProc
from tests.integration.test_stalls import WORDS, streams_past_a_faulty_engine


@pytest.fixture
def engines() -> Iterator[list[EngineProc]]:
    started: list[EngineProc] = []
    try:
        yield started
    finally:
        for engine in started:
            engine.stop()


@pytest.mark.parametrize("mode", ["drop", "error"])
def test_an_engine_that_cuts_or_fails_its_answers_costs_no_client_an_answer(
        network: Network, engines: list[EngineProc], mode: str) -> None:
    # drop: the engine closes the connection after 4 words; error: it answers HTTP 500 at once.
    failing, bad, results = streams_past_a_faulty_engine(network, engines, ["--fault", mode, "--after", "4"], 12)
    assert [text for text, _, _ in results] == [f"{WORDS} r{i}" for i in range(12)], "every answer exact"
    assert failing.stats()["faulted"] >= 1, "some requests reached the failing engine"
    if mode == "drop":
        # Cut after words had reached the client: continued on the other provider, not restarted.
        moved = [meta for _, meta, _ in results if meta.get("continued")]
        assert moved and all(meta["providers"][0] == bad.node_id for meta in moved), moved
