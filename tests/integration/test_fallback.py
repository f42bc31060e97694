"""Fallback lanes: when the pool cannot serve, a configured OpenAI-compatible upstream does.

"The cloud" is a second, real gpupool gateway with its own echo provider. Our gateway
has a lane to it that maps `cloud-only` (a model no pool provider serves), `echo`
(served by a deliberately dear pool provider) and `stall` (served by a provider the
test freezes) onto the cloud's echo models.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from gpupool.devnet import Network, Proc
from gpupool.ledger import SqlLedger
from gpupool.routing.fallback import lane_cost
from gpupool.market.pricing import Price
from tests.integration.conftest import client_for, wait_until
from tests.openai_schemas import validate
from tests.unit.ledger_backends import anvil_url  # noqa: F401 - the Anvil fixture

FEE_BPS = 500  # the gateway's default fee
LANE_PRICE = Price(10_000_000, 40_000_000)  # 10 / 40 µcr a token: costs big enough to see
POOL_PRICE = "100000000/100000000"  # 100 µcr a token (the gateway's upper bound): far above the lane's
BUDGET_S = 1.0
WORDS = "one two three four five"


@dataclass
class Nets:
    ours: Network
    cloud: Network
    stall: Proc


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nets]:
    home = tmp_path_factory.mktemp("fallback")
    cloud = Network(home / "cloud")
    ours: Network | None = None
    try:
        cloud.start_gateway()
        cloud.start_provider(["echo=echo:chat", "echo-embed=echo:embeddings"])
        cloud.wait_for_models({"echo": 1, "echo-embed": 1}, timeout=90)
        price = f"{LANE_PRICE.per_m_in}/{LANE_PRICE.per_m_out}"
        lane = (f"cloud={cloud.gateway_url}/v1 key_env=CLOUD_KEY model=cloud-only=echo@{price} "
                f"model=cloud-embed=echo-embed@{price} model=echo@{price} model=stall=echo@{price} "
                f"model=slow=echo@{price}")
        ours = Network(home / "ours", env={"CLOUD_KEY": cloud.dev_key()})
        ours.start_gateway(extra=["--fallback", lane, "--fallback-first-token-budget-s", str(BUDGET_S)])
        ours.start_provider(["echo=echo:chat"], extra=["--price", f"echo={POOL_PRICE}"])
        stall = ours.start_provider(["stall=echo:chat", "slow=echo:chat?delay_ms=400"])
        ours.wait_for_models({"echo": 1, "stall": 1, "slow": 1}, timeout=90)
        yield Nets(ours, cloud, stall)
    finally:
        if ours is not None:
            for p in ours.providers:
                ours.kill_provider(p, signal.SIGCONT)
            ours.stop(timeout=10)
        cloud.stop(timeout=10)


def fallback_stats(net: Network) -> dict[str, dict[str, int]]:
    r = httpx.get(net.gateway_url + "/admin/fallback", headers={"Authorization": f"Bearer {net.admin_token}"},
                  timeout=10)
    r.raise_for_status()
    return r.json()["stats"]


def metric(text: str, series: str) -> float:
    """The value of one series in a Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def ledger_balance(net: Network, account: str) -> int:
    async def read() -> int:
        ledger = await SqlLedger.open(net.db)
        try:
            return await ledger.balance(account)
        finally:
            await ledger.close()

    return asyncio.run(read())


def test_no_provider_for_the_model_is_served_by_the_lane_at_its_price(nets: Nets) -> None:
    client = client_for(nets.ours, timeout=30)
    owed_before = ledger_balance(nets.ours, "fallback:cloud")
    raw_resp = client.chat.completions.with_raw_response.create(
        model="cloud-only", messages=[{"role": "user", "content": WORDS}])
    out = raw_resp.parse()
    assert raw_resp.headers["x-gpupool-provider"] == "fallback:cloud"
    assert out.choices[0].message.content == WORDS  # the cloud's echo answered
    assert out.model == "cloud-only"
    validate(json.loads(raw_resp.http_response.content), "CreateChatCompletionResponse")
    usage = out.usage
    assert usage is not None and usage.prompt_tokens == 5 and usage.completion_tokens == 5  # the cloud's counts
    expected = lane_cost(LANE_PRICE, 5, 5, FEE_BPS)  # 50 + 200 µcr, plus the 5% fee (12, rounded down)
    assert expected == 262
    assert int(raw_resp.headers["x-gpupool-cost"]) == expected == usage.model_extra["cost_ucr"]

    recent = httpx.get(nets.ours.gateway_url + "/v1/account", timeout=10,
                       headers={"Authorization": f"Bearer {nets.ours.dev_key()}"}).json()["recent_charges"]
    mine = next(c for c in recent if c["request_id"] == out.id)
    assert mine["provider"] == "fallback:cloud" and mine["cost"] == expected
    assert fallback_stats(nets.ours)["served"].get("no_provider", 0) >= 1
    metrics = httpx.get(nets.ours.gateway_url + "/metrics", timeout=10).text
    assert metric(metrics, 'gpupool_fallbacks_total{reason="no_provider",result="served"}') >= 1
    assert metric(metrics, 'gpupool_routing_decisions_total{decision="fallback"}') >= 1
    # Settled on the ledger: the lane's price is owed to the upstream, the fee is the gateway's.
    wait_until(lambda: ledger_balance(nets.ours, "fallback:cloud") - owed_before == 250,
               "the fallback charge to settle", timeout=30)
    # The operator records paying the upstream against that account (docs/fallback.md).
    out_cli = subprocess.run([sys.executable, "-m", "gpupool", "ledger", "withdraw", "fallback:cloud", "250",
                              "--ledger", nets.ours.db], capture_output=True, text=True, timeout=60)
    assert out_cli.returncode == 0, out_cli.stderr
    assert ledger_balance(nets.ours, "fallback:cloud") == owed_before


def test_openai_client_streams_chat_and_embeds_through_the_lane(nets: Nets) -> None:
    client = client_for(nets.ours, timeout=30)
    cloud = client_for(nets.cloud, timeout=30)
    with client.chat.completions.with_streaming_response.create(
            model="cloud-only", messages=[{"role": "user", "content": WORDS}], stream=True,
            stream_options={"include_usage": True}) as resp:
        assert resp.headers["x-gpupool-provider"] == "fallback:cloud"
        chunks = list(resp.parse())
    for chunk in chunks:
        validate(chunk.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == WORDS
    assert {c.model for c in chunks} == {"cloud-only"} and len({c.id for c in chunks}) == 1
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    assert usage.model_extra["cost_ucr"] == lane_cost(LANE_PRICE, usage.prompt_tokens, usage.completion_tokens,
                                                      FEE_BPS) > 0

    texts = ["waterproof boots", "a frying pan"]
    raw_resp = client.embeddings.with_raw_response.create(model="cloud-embed", input=texts)
    emb = raw_resp.parse()
    assert raw_resp.headers["x-gpupool-provider"] == "fallback:cloud"
    direct = cloud.embeddings.create(model="echo-embed", input=texts)
    assert [d.embedding for d in emb.data] == [d.embedding for d in direct.data]
    assert emb.model == "cloud-embed"
    assert int(raw_resp.headers["x-gpupool-cost"]) == lane_cost(LANE_PRICE, emb.usage.prompt_tokens, 0, FEE_BPS)
    r = httpx.post(nets.ours.gateway_url + "/v1/embeddings", timeout=30,
                   headers={"Authorization": f"Bearer {nets.ours.dev_key()}"},
                   json={"model": "cloud-embed", "input": texts, "encoding_format": "float"})
    validate(r.json(), "CreateEmbeddingResponse")
    assert [d["embedding"] for d in r.json()["data"]] == [d.embedding for d in direct.data]

    # Legacy completions, streamed, through httpx.
    with httpx.stream("POST", nets.ours.gateway_url + "/v1/completions", timeout=30,
                      headers={"Authorization": f"Bearer {nets.ours.dev_key()}"},
                      json={"model": "cloud-only", "prompt": WORDS, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["x-gpupool-provider"] == "fallback:cloud"
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == WORDS


def test_a_client_that_forbids_fallback_gets_the_pool_error_as_before(nets: Nets) -> None:
    client = client_for(nets.ours, timeout=30)
    with pytest.raises(openai.NotFoundError):  # a model the pool never saw: 404, as without lanes
        client.chat.completions.create(model="cloud-only", messages=[{"role": "user", "content": WORDS}],
                                       extra_body={"gpupool": {"allow_fallback": False}})
    # Every pool provider above the cap: 503, as without lanes (the lane would fit the cap).
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": WORDS}],
                                       extra_body={"gpupool": {"allow_fallback": False, "max_price": 1_000}})
    assert info.value.status_code == 503
    r = httpx.post(nets.ours.gateway_url + "/v1/chat/completions", timeout=30,
                   headers={"Authorization": f"Bearer {nets.ours.dev_key()}", "X-Gpupool-Allow-Fallback": "false"},
                   json={"model": "cloud-only", "messages": [{"role": "user", "content": WORDS}]})
    assert r.status_code == 404
    r = httpx.post(nets.ours.gateway_url + "/v1/chat/completions", timeout=30,
                   headers={"Authorization": f"Bearer {nets.ours.dev_key()}"},
                   json={"model": "cloud-only", "messages": [{"role": "user", "content": WORDS}],
                         "gpupool": {"allow_fallback": "no"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "gpupool.allow_fallback"
    r = httpx.post(nets.ours.gateway_url + "/v1/chat/completions", timeout=30,  # refused even with no lane for it
                   headers={"Authorization": f"Bearer {nets.ours.dev_key()}", "X-Gpupool-Allow-Fallback": "maybe"},
                   json={"model": "no-lane-model", "messages": [{"role": "user", "content": WORDS}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "X-Gpupool-Allow-Fallback"


def test_a_price_cap_takes_the_cheaper_lane_but_never_a_lane_above_it(nets: Nets) -> None:
    client = client_for(nets.ours, timeout=30)
    # Estimates (6 input tokens, 16 output): pool 2,200 µcr; lane 700 + 5% = 735.
    ask = {"model": "echo", "messages": [{"role": "user", "content": WORDS}], "max_tokens": 16}
    raw_resp = client.chat.completions.with_raw_response.create(**ask, extra_body={"gpupool": {"max_price": 1_000}})
    assert raw_resp.headers["x-gpupool-provider"] == "fallback:cloud"
    assert int(raw_resp.headers["x-gpupool-cost"]) <= 1_000
    assert fallback_stats(nets.ours)["served"].get("price", 0) >= 1
    with pytest.raises(openai.APIStatusError) as info:  # the lane's estimate is over this cap too
        client.chat.completions.create(**ask, extra_body={"gpupool": {"max_price": 500}})
    assert info.value.status_code == 503
    assert info.value.body["code"] == "no_provider_within_limits"  # type: ignore[index]
    # Without a cap the pool serves, as always.
    direct = client.chat.completions.with_raw_response.create(**ask)
    assert not direct.headers["x-gpupool-provider"].startswith("fallback:")


def test_a_stream_stalled_before_its_first_token_moves_to_the_lane_within_the_budget(nets: Nets) -> None:
    client = client_for(nets.ours, timeout=60)
    nets.ours.kill_provider(nets.stall, signal.SIGSTOP)  # connected, silent: the pool stalls
    try:
        started = time.monotonic()
        with client.chat.completions.with_streaming_response.create(
                model="stall", messages=[{"role": "user", "content": WORDS}], stream=True) as resp:
            first_header = time.monotonic() - started
            assert resp.headers["x-gpupool-provider"] == "fallback:cloud"
            text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    finally:
        nets.ours.kill_provider(nets.stall, signal.SIGCONT)
    assert text == WORDS
    # The budget is 1 s; the pool's own stall limit is at least 2 s and then nobody else serves
    # `stall`, so "stalled" (not "failed") proves the budget ended the wait. Slack for a busy CI box.
    assert fallback_stats(nets.ours)["served"].get("stalled", 0) >= 1
    assert BUDGET_S <= first_header < BUDGET_S + 8, first_header


def test_a_pool_too_slow_for_the_deadline_leaves_the_lane_time_to_answer(nets: Nets) -> None:
    # 10 words at 400 ms: the pool needs 4 s. With a 6 s deadline the pool gets at most half (the
    # lane keeps up to fallback_reserve_s back), and sooner, once the hedge is due with no other
    # provider to take it, the lane is the hedge (after the 1 s budget); either way the lane
    # answers well before the deadline.
    words = " ".join(f"w{i}" for i in range(10))
    before = fallback_stats(nets.ours)["served"]
    started = time.monotonic()
    r = httpx.post(nets.ours.gateway_url + "/v1/chat/completions", timeout=30,
                   headers={"Authorization": f"Bearer {nets.ours.dev_key()}", "X-Gpupool-Timeout": "6"},
                   json={"model": "slow", "messages": [{"role": "user", "content": words}]})
    elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert r.headers["x-gpupool-provider"] == "fallback:cloud"
    assert r.json()["choices"][0]["message"]["content"] == words
    assert BUDGET_S <= elapsed < 6.0, elapsed
    after = fallback_stats(nets.ours)["served"]
    assert sum(after.get(r, 0) - before.get(r, 0) for r in ("deadline", "stalled")) == 1


def test_a_dead_lane_leaves_a_clear_error(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    try:
        net.start_gateway(extra=["--fallback", "gone=http://127.0.0.1:9/v1 model=cloud-only@1/1"])
        r = httpx.post(net.gateway_url + "/v1/chat/completions", timeout=30,
                       headers={"Authorization": f"Bearer {net.dev_key()}"},
                       json={"model": "cloud-only", "messages": [{"role": "user", "content": WORDS}]})
        assert r.status_code == 502
        message = r.json()["error"]["message"]
        assert "gone: unreachable" in message and "cloud-only" in message, message
    finally:
        net.stop(timeout=10)


def test_a_misconfigured_lane_stops_the_gateway_with_one_line(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "gpupool", "gateway", "--port", "0", "--db",
                          f"sqlite+aiosqlite:///{tmp_path / 'g.db'}", "--key-file", str(tmp_path / "g.key"),
                          "--fallback", "cloud=http://127.0.0.1:9/v1 key_env=NO_SUCH_VAR_X model=m@1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "NO_SUCH_VAR_X" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_model_only_a_lane_serves_is_listed_in_v1_models(tmp_path: Path) -> None:
    """A request for it is served by the lane, so clients that pick models from /v1/models must see it."""
    net = Network(tmp_path / "net")
    try:
        net.start_gateway(extra=["--fallback", "gone=http://127.0.0.1:9/v1 model=cloud-only@1/1 model=other@1/1",
                                 "--fallback", "spare=http://127.0.0.1:9/v1 model=cloud-only@2/2"])
        models = {m.id: m for m in client_for(net).models.list().data}
        assert set(models) == {"cloud-only", "other"}, models
        info = models["cloud-only"].model_extra["gpupool"]
        assert info["fallback"] == ["gone", "spare"] and info["providers"] == 0 and info["verified"] is False
        validate(httpx.get(net.gateway_url + "/v1/models", headers={"Authorization": f"Bearer {net.dev_key()}"},
                           timeout=10).json(), "ListModelsResponse")
    finally:
        net.stop(timeout=10)


def test_lanes_on_the_evm_ledger_are_refused_with_one_line_saying_why(tmp_path: Path, anvil_url: str) -> None:  # noqa: F811
    deployed = subprocess.run([sys.executable, "-m", "gpupool", "ledger", "deploy", "--rpc", anvil_url],
                              capture_output=True, text=True, timeout=120)
    assert deployed.returncode == 0, deployed.stderr
    ledger_url = re.search(r"--ledger '([^']+)'", deployed.stdout).group(1)  # type: ignore[union-attr]
    out = subprocess.run([sys.executable, "-m", "gpupool", "gateway", "--port", "0", "--db",
                          f"sqlite+aiosqlite:///{tmp_path / 'g.db'}", "--key-file", str(tmp_path / "g.key"),
                          "--ledger", ledger_url, "--fallback", "cloud=http://127.0.0.1:9/v1 model=m@1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert "SQL ledger" in line and "settlement key" in line and "never be charged" in line, line
