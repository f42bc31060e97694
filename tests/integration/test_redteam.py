"""The red-team suite: cheating providers as real processes beside honest ones, real checkers.

Each cheater is the normal provider with a red-team backend (`tests/redteam.py`, loaded
as a backend plug-in) that misbehaves in one way (serving a random-weight MiniLM as `minilm`, returning noise on 10% of
requests, returning its previous answer for new prompts, truncating generated text
while reporting full usage). Two checker processes hold the reference models. Real
clients send traffic through the gateway; the test then reads what the gateway
decided: every cheater suspended, no honest provider suspended, suspended providers
served nothing more, confirmed fraud slashed and the clients refunded.
"""

from __future__ import annotations

import concurrent.futures as cf
import re
import time
from typing import Any

import openai
import pytest

from gpupool.devnet import Network
from gpupool.devnet_setup import prepare_models
from gpupool.ledger import postings
from tests.integration.conftest import client_for, wait_checkers, wait_until
from tests.integration.test_billing import FAST_SETTLE, ledger_state, new_account, wait_settled
from tests.redteam import REDTEAM

EMBED_PRICE = ["--price", "minilm=1000000"]  # 1 µcr per token: refunds are easy to see
GEN_PRICE = ["--price", "tiny-llama=1000000/1000000"]


def _start_checkers(network: Network, n: int, serve: list[str]) -> None:
    for _ in range(n):
        network.start_checker(serve)  # stopped with the network


def _drive(client: openai.OpenAI, calls: list[Any], workers: int = 4) -> list[Any]:
    with cf.ThreadPoolExecutor(workers) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


@pytest.mark.timeout(480)  # start-up (four MiniLM providers, two checkers) + up to 150 s of rounds
def test_embedding_cheaters_are_suspended_and_refunded_honest_ones_are_not(network: Network) -> None:
    network.start_gateway(extra=FAST_SETTLE)
    # Each cheater and the honest provider in a region of its own, so the test can make
    # sure each one gets traffic.
    region = {"random-minilm": "rt-random", "noise 10%": "rt-noise", "cached": "rt-cached", "honest": "honest"}
    honest = network.start_provider(["minilm=embeddings:minilm"], region=region["honest"], extra=EMBED_PRICE)
    serves = {"random-minilm": f"minilm={REDTEAM}:random-minilm",
              "noise 10%": f"minilm={REDTEAM}:noise:minilm?rate=0.1&seed=3",
              "cached": f"minilm={REDTEAM}:cached:minilm"}
    cheaters = {name: network.start_provider([serve], region=region[name], extra=EMBED_PRICE)
                for name, serve in serves.items()}
    _start_checkers(network, 2, ["minilm=embeddings:minilm"])
    network.wait_for_models({"minilm": 4}, timeout=180)
    wait_checkers(network, 2)
    key = new_account(network, "shopper", 10_000_000)
    client = client_for(network, key, timeout=60)
    node = {name: p.node_id for name, p in cheaters.items()}
    honest_id = honest.node_id

    def pinned(text: str, where: str) -> None:
        # A cheater suspended while this round runs has nobody left in its region: 503.
        try:
            client.embeddings.create(model="minilm", input=text, extra_headers={
                "x-gpupool-region": where, "x-gpupool-region-policy": "require"})
        except openai.APIStatusError as e:
            assert e.status_code == 503, e

    # Traffic in rounds until every cheater is suspended (verdicts arrive after the answers).
    # Most requests are routed freely; how many of those a cheater gets depends on routing
    # (speed, reputation, audits awaiting verdicts), so each round also sends a few to each
    # cheater still serving (the 10% one needs about ten answers to be caught) and to the
    # honest one, which must be audited too.
    rows: dict[str, Any] = {}
    deadline = time.monotonic() + 150
    round_ = 0
    while time.monotonic() < deadline:  # rounds until a deadline: a slow machine just needs more of them
        round_ += 1
        calls = [lambda t=f"red running shoes size {round_}-{i}": client.embeddings.create(model="minilm", input=t)
                 for i in range(24)]
        for name, n in [*node.items(), ("honest", honest_id)]:
            if not rows.get(n, {}).get("suspended"):
                calls += [lambda t=f"blue kettle {round_}-{i}", w=region[name]: pinned(t, w) for i in range(6)]
        _drive(client, calls)
        time.sleep(1.0)
        rows = {r["node_id"]: r for r in network.admin("/admin/audits")}
        # The honest one too must have been judged at least once (its row exists) before the end.
        if all(rows.get(n, {}).get("suspended") for n in node.values()) and honest_id in rows:
            break
    assert all(rows.get(n, {}).get("suspended") for n in node.values()), rows
    assert not rows[honest_id]["suspended"] and rows[honest_id]["audit_failures"] == 0
    assert rows[honest_id]["audits"] > 0
    # Suspended providers get no more traffic: the next requests all go to the honest one.
    after = [client.embeddings.with_raw_response.create(model="minilm", input=f"kettle {i}") for i in range(10)]
    assert {r.headers["x-gpupool-provider"] for r in after} == {honest_id}
    # Every bad answer the audits found was refunded (less the gateway fee) once fraud was confirmed.
    # A slash waits for a second checker to confirm, and that checker may still hold a backlog.
    def slashed_all() -> list[dict[str, Any]]:
        events = network.admin("/admin/events?limit=1000")
        return events if set(node.values()) <= {e["peer"] for e in events if e["kind"] == "slashed"} else []

    events = wait_until(slashed_all, "every cheater slashed", timeout=60)
    wait_settled(network, key)
    balances, problems = ledger_state(network.db)
    assert problems == []
    for name, n in node.items():
        # Each cheater got few bad answers through before suspension (the bound: 20 on average),
        detail = next(e["detail"] for e in events if e["kind"] == "slashed" and e["peer"] == n)
        refunded = int(re.search(r"refunded (\d+) µcr", detail).group(1))  # type: ignore[union-attr]
        assert rows[n]["audit_failures"] <= 20 and refunded > 0, (name, rows[n], detail)
        # and what it had earned went back to the client (it had no stake to take).
        assert balances.get(postings.provider_held(n), 0) == 0, name


@pytest.mark.timeout(420)  # start-up (models, two providers, a checker) + up to 120 s of rounds
def test_a_truncating_generation_cheater_is_suspended(network: Network) -> None:
    prepare_models()
    network.start_gateway(extra=FAST_SETTLE)
    # One slot on the honest provider: under load, work spills over to the cheater even after
    # its first failed audits have lowered its reputation (idle, the router would starve it).
    honest = network.start_provider(["tiny-llama=generate:tiny-llama"], extra=GEN_PRICE, max_concurrency=1)
    cheater = network.start_provider([f"tiny-llama={REDTEAM}:truncate:tiny-llama"], extra=GEN_PRICE)
    _start_checkers(network, 1, ["tiny-llama=generate:tiny-llama"])
    network.wait_for_models({"tiny-llama": 2}, timeout=180)
    wait_checkers(network, 1)
    client = client_for(network, timeout=60)
    cheater_id, honest_id = cheater.node_id, honest.node_id
    # Traffic in rounds until the cheater is suspended. Its failed audits lower its reputation,
    # so the router already sends it less and it takes a few rounds to fail the 4 audits it needs.
    rows: dict[str, Any] = {}
    deadline, round_ = time.monotonic() + 120, 0
    while time.monotonic() < deadline:
        round_ += 1
        _drive(client, [lambda i=i: client.chat.completions.create(
            model="tiny-llama", max_tokens=12, temperature=0,
            messages=[{"role": "user", "content": f"tell me about item {round_}-{i}"}]) for i in range(8)], workers=4)
        time.sleep(0.5)
        rows = {r["node_id"]: r for r in network.admin("/admin/audits")}
        if rows.get(cheater_id, {}).get("suspended"):
            break
    assert rows[cheater_id]["suspended"], rows
    # The cheater can be caught before the honest provider served anything (it answers
    # faster, truncating): the requests after the suspension are the honest one's.
    after = _drive(client, [lambda i=i: client.chat.completions.with_raw_response.create(
        model="tiny-llama", max_tokens=12, temperature=0,
        messages=[{"role": "user", "content": f"after suspension {i}"}]) for i in range(4)], workers=2)
    assert {r.headers["x-gpupool-provider"] for r in after} == {honest_id}
    time.sleep(0.5)
    rows = {r["node_id"]: r for r in network.admin("/admin/audits")}
    assert not rows[honest_id]["suspended"], rows[honest_id]
