"""Providers dying or leaving mid-request: non-streaming work moves, streams end with a clear error."""

from __future__ import annotations

import concurrent.futures as cf
import json
import signal
import time

import httpx
import openai
import pytest

from gpupool.devnet import Network
from tests.integration.conftest import (audits_body, client_for, freeze_a_busy_provider,
                                        wait_checkers, wait_until)

# 20 words at 40 ms each: every request is in flight for ~0.8 s.
SLOW = "echo=echo:chat?delay_ms=40"
WORDS = " ".join(f"w{i}" for i in range(20))
# Streams cut mid-way: 150 ms a word leaves ~2.5 s of stream after the kill point, so a
# client thread slowed down on a loaded machine cannot read past it before the kill.
STREAM_SLOW = "echo=echo:chat?delay_ms=150"


def slow_net(network: Network, n: int = 3, serve: str = SLOW) -> Network:
    network.start_gateway()
    for _ in range(n):
        network.start_provider([serve], max_concurrency=8)
    network.wait_for_models({"echo": n}, timeout=60)
    return network


def ask(client, i: int) -> str:
    out = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": f"{WORDS} r{i}"}])
    return out.choices[0].message.content


def test_killing_a_provider_fails_no_non_streaming_request(network: Network) -> None:
    slow_net(network)
    client = client_for(network, timeout=30)
    with cf.ThreadPoolExecutor(12) as pool:
        futures: list[cf.Future[str]] = []
        for _ in range(5):  # a new wave of work whenever the freeze came too late
            futures += [pool.submit(ask, client, i) for i in range(len(futures), len(futures) + 12)]
            if victim := freeze_a_busy_provider(network):
                break
        assert victim is not None, "never caught a provider with work in flight"
        network.kill_provider(victim, signal.SIGKILL)
        results = [f.result() for f in futures]
    assert results == [f"{WORDS} r{i}" for i in range(len(futures))]
    served = network.admin("/admin/requests?limit=100")
    assert any(r["attempts"] > 1 for r in served), "the requests in flight on the killed provider moved"


def test_stream_cut_by_provider_loss_ends_with_error_event(network: Network) -> None:
    network.start_gateway()
    victim = network.start_provider([STREAM_SLOW])
    network.wait_for_models({"echo": 1}, timeout=60)
    client = client_for(network, timeout=30)
    stream = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": WORDS}], stream=True)
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
                if len(got) == 3:
                    network.kill_provider(victim, signal.SIGKILL)
    assert "failed mid-stream" in str(info.value) and "no other could continue" in str(info.value)
    assert 3 <= len(got) < 20


def test_drain_finishes_in_flight_work_and_takes_no_more(network: Network) -> None:
    slow_net(network, n=2)
    client = client_for(network, timeout=30)
    draining = network.providers[0]
    with cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, client, i) for i in range(8)]
        time.sleep(0.3)
        network.kill_provider(draining, signal.SIGTERM)  # graceful: drain
        results = [f.result() for f in futures]
        assert results == [f"{WORDS} r{i}" for i in range(8)]
        # While it drains, new work goes to the other provider only.
        draining_id = next((p["node_id"] for p in network.admin("/admin/providers") if p["draining"]), None)
        later = [pool.submit(client.chat.completions.with_raw_response.create, model="echo",
                             messages=[{"role": "user", "content": f"later {i}"}]) for i in range(4)]
        served_by = {f.result().headers["x-gpupool-provider"] for f in later}
    assert draining.popen.wait(15) == 0, "a drained provider exits cleanly"

    def one_left() -> set[str] | None:
        ids = {p["node_id"] for p in network.admin("/admin/providers")}
        return ids if len(ids) == 1 else None

    assert served_by <= wait_until(one_left, "the drained provider's session to close", 10)
    assert draining_id is None or draining_id not in served_by


def test_client_disconnect_cancels_work_at_the_provider(network: Network) -> None:
    network.start_gateway()
    network.start_provider(["echo=echo:chat?delay_ms=200"], max_concurrency=1, extra=["--max-queue", "0"])
    network.wait_for_models({"echo": 1}, timeout=60)
    client = client_for(network, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": WORDS}])
    # The provider has one slot: if the abandoned request still ran (20 x 200 ms), this would get 429.
    assert _served_within(network, 1.5) == "x"


def test_client_leaving_a_stream_cancels_work_at_the_provider(network: Network) -> None:
    network.start_gateway()
    network.start_provider(["echo=echo:chat?delay_ms=200"], max_concurrency=1, extra=["--max-queue", "0"])
    network.wait_for_models({"echo": 1}, timeout=60)
    key = network.dev_key()
    with httpx.stream("POST", network.gateway_url + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": "echo", "stream": True, "messages": [{"role": "user", "content": WORDS}]}) as resp:
        lines = resp.iter_lines()
        tokens = 0
        while tokens < 2:
            line = next(lines)
            tokens += line.startswith("data: ") and '"content":"' in line and '"content":""' not in line
    # Left after 2 of 20 words. The provider has one slot and no queue: if the stream kept
    # running there (18 x 200 ms more), this request would be refused with 429.
    assert _served_within(network, 1.5) == "x"


def _served_within(network: Network, seconds: float) -> str:
    """Ask for "x" until a provider slot is free, for at most `seconds` (well under the
    3.6 s an abandoned request would keep the slot), so a slow cancel on CI is no failure."""
    client = client_for(network, timeout=10)
    deadline = time.monotonic() + seconds
    while True:
        try:
            out = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
            return out.choices[0].message.content
        except openai.APIStatusError as exc:
            if exc.status_code not in (429, 503) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_stream_continues_on_another_provider_when_its_provider_dies(network: Network) -> None:
    slow_net(network, n=2, serve=STREAM_SLOW)
    # A checker audits every answer (probation): the continuation must be audited as what
    # its provider was asked (prompt + text so far), or an honest provider fails its audit.
    network.start_checker([STREAM_SLOW])
    proc_of = {p.node_id: p for p in network.providers}
    wait_checkers(network, 1)
    key = network.dev_key()
    got: list[str] = []
    final: dict = {}
    with httpx.stream("POST", network.gateway_url + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": "echo", "stream": True, "messages": [{"role": "user", "content": WORDS}]}) as resp:
        victim_id = resp.headers["x-gpupool-provider"]
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            delta = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
            if delta:
                got.append(delta)
                if len(got) == 5:
                    network.kill_provider(proc_of[victim_id], signal.SIGKILL)
            if chunk["choices"] and chunk["choices"][0]["finish_reason"]:
                final = chunk
    assert "".join(got) == WORDS, "the client sees one uninterrupted, complete stream"
    assert final["gpupool"]["continued"] == 1
    assert final["gpupool"]["providers"][0] == victim_id and final["gpupool"]["providers"][1] != victim_id
    survivor = final["gpupool"]["providers"][1]

    def survivor_audited() -> dict | None:
        rows = {r["node_id"]: r for r in audits_body(network)["data"]}
        row = rows.get(survivor)
        return row if row and row["audits"] >= 1 else None

    row = wait_until(survivor_audited, "the continuation's audit verdict")
    assert row["audit_failures"] == 0 and not row["suspended"], row
