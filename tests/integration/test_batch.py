"""The OpenAI Files and Batch API across real gateway and provider processes.

The official `openai` client uploads, creates, polls and downloads; bad files are
refused naming the line; batches belong to their account; cancel closes every item;
and a gateway killed mid-batch (SIGKILL) and restarted on the same database finishes
it with every custom_id exactly once and each item charged once on the ledger.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
from typing import Any

import httpx
import openai
import pytest

from gpupool.devnet import Network
from tests.integration.conftest import (
    PG_URL,
    client_for,
    pg_available,
    pg_database,
    raw,
    wait_until,
)
from tests.openai_schemas import validate

PRICE = 50_000_000  # µcr per 1M input tokens: 50 µcr per echo token (a word), so costs are visible
WORDS = ["red", "blue", "running", "shoes", "kettle", "lamp", "oak", "desk", "wool", "scarf"]


def embed_lines(n: int, prefix: str = "sku", model: str = "echo-embed") -> list[dict[str, Any]]:
    lines = []
    for i in range(n):
        text = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(1 + i % 4)) + f" {i}"
        inp: Any = text if i % 5 else [text, text + " large"]  # some lines carry two inputs
        lines.append({"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/embeddings",
                      "body": {"model": model, "input": inp, "encoding_format": "float"}})
    return lines


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def start(network: Network, providers: int, serve: str = "echo-embed=echo:embeddings",
          extra: list[str] | None = None) -> None:
    network.start_gateway(extra=extra)
    for _ in range(providers):
        network.start_provider([serve, "echo=echo:chat"],
                               extra=["--price", f"{serve.split('=')[0]}={PRICE}", "--price", f"echo={PRICE}/{PRICE}"])
    network.wait_for_models({serve.split("=")[0]: providers}, timeout=60)


def finished(client: openai.OpenAI, batch_id: str, timeout: float = 60) -> Any:
    return wait_until(lambda: (b := client.batches.retrieve(batch_id)).status in
                      ("completed", "cancelled", "failed", "expired") and b, f"batch {batch_id} to end", timeout)


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if not file_id:
        return []
    return [json.loads(x) for x in client.files.content(file_id).content.splitlines()]


def ledger_charges(network: Network, request_ids: set[str]) -> dict[str, int]:
    """Charges the gateway's SQL ledger settled for these request ids (read from its journal)."""
    from sqlalchemy import select

    from gpupool.ledger.sql import JournalRow, SqlLedger

    async def read() -> dict[str, int]:
        ledger = await SqlLedger.open(network.db)
        try:
            out: dict[str, int] = {}
            async with ledger.sessions() as s:
                rows = (await s.scalars(select(JournalRow.body).where(JournalRow.kind == "settle_batch"))).all()
                for body in rows:
                    for rid, _client, _provider, cost, _fee in json.loads(body)["memo"]["charges"]:
                        if rid in request_ids:
                            assert rid not in out, f"{rid} charged twice"
                            out[rid] = cost
            return out
        finally:
            await ledger.close()

    return asyncio.run(read())


def check_cost(network: Network, batch: Any, out: list[dict[str, Any]], errs: list[dict[str, Any]]) -> None:
    """Batch cost = sum of its items' costs = what the ledger charged for its runs."""
    item_costs = [x["response"]["body"]["usage"]["cost_ucr"] for x in out]
    runs = {x["response"]["request_id"] for x in out}
    charged = ledger_charges(network, runs)
    assert batch.model_extra["gpupool"]["cost_ucr"] == sum(item_costs) == sum(charged.values()) > 0
    assert set(charged) == runs  # every run that produced output was charged, once


def test_official_client_runs_a_batch_over_the_pool(network: Network) -> None:
    start(network, providers=2)
    client = client_for(network)
    lines = embed_lines(40)
    uploaded = client.files.create(file=("catalog.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    validate(raw(network, "GET", f"/v1/files/{uploaded.id}", network.dev_key()).json(), "OpenAIFile")
    assert uploaded.bytes == len(jsonl(lines)) and uploaded.purpose == "batch"
    assert client.files.content(uploaded.id).content == jsonl(lines)

    estimate = raw(network, "POST", "/v1/batches/estimate", network.dev_key(),
                   json={"input_file_id": uploaded.id}).json()
    assert estimate["requests"] == 40 and estimate["providers"] == 2
    assert 0 < estimate["cost_ucr"]["low"] <= estimate["cost_ucr"]["high"]

    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h",
                                  metadata={"gpupool_max_provider_share": "0.6"})
    assert batch.status in ("validating", "in_progress")
    body = raw(network, "GET", f"/v1/batches/{batch.id}", network.dev_key()).json()
    validate(body, "Batch")
    done = finished(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.total == done.request_counts.completed == 40 and done.request_counts.failed == 0
    validate(raw(network, "GET", f"/v1/batches/{batch.id}", network.dev_key()).json(), "Batch")
    listed = raw(network, "GET", "/v1/batches?limit=5", network.dev_key()).json()
    validate(listed, "ListBatchesResponse")
    assert listed["data"][0]["id"] == batch.id

    out = read_lines(client, done.output_file_id)
    assert sorted(x["custom_id"] for x in out) == sorted(x["custom_id"] for x in lines)
    assert not done.error_file_id
    # Results come back unchanged: each line's vectors are what a direct request returns.
    direct = {}
    for x in lines[:10]:
        inp = x["body"]["input"]
        r = client.embeddings.create(model="echo-embed", input=inp, encoding_format="float")
        direct[x["custom_id"]] = [d.embedding for d in r.data]
    for x in out:
        assert x["error"] is None and x["response"]["status_code"] == 200
        assert x["id"].startswith("batch_req_")
        if x["custom_id"] in direct:
            got = [d["embedding"] for d in x["response"]["body"]["data"]]
            assert [[round(v, 6) for v in row] for row in got] == \
                   [[round(v, 6) for v in row] for row in direct[x["custom_id"]]]
    check_cost(network, done, out, [])
    share = done.model_extra["gpupool"]
    assert share["providers"] == 2 and 0 < share["provider_share_reached"] <= 0.6

    # A chat batch through the same API.
    chat = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "echo", "max_tokens": 8, "messages": [{"role": "user", "content": f"hello {i}"}]}}
            for i in range(3)]
    f2 = client.files.create(file=("chat.jsonl", io.BytesIO(jsonl(chat))), purpose="batch")
    b2 = finished(client, client.batches.create(input_file_id=f2.id, endpoint="/v1/chat/completions",
                                                completion_window="24h").id)
    answers = {x["custom_id"]: x["response"]["body"]["choices"][0]["message"]["content"]
               for x in read_lines(client, b2.output_file_id)}
    assert answers == {f"q{i}": f"hello {i}" for i in range(3)}

    files = raw(network, "GET", "/v1/files", network.dev_key()).json()
    validate(files, "ListFilesResponse")
    deleted = raw(network, "DELETE", f"/v1/files/{f2.id}", network.dev_key()).json()
    validate(deleted, "DeleteFileResponse")
    assert raw(network, "GET", f"/v1/files/{f2.id}", network.dev_key()).status_code == 404


def test_bad_files_are_refused_naming_the_line_and_nothing_is_created(network: Network) -> None:
    # Uploads have their own limit, above the one every other request keeps.
    start(network, providers=1, extra=["--max-body-bytes", "2000", "--batch-max-file-bytes", "20000"])
    key = network.dev_key()
    good = embed_lines(3)

    def upload(content: bytes) -> httpx.Response:
        return raw(network, "POST", "/v1/files", key, files={"file": ("x.jsonl", content)}, data={"purpose": "batch"})

    cases = {
        b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "echo-embed", '
        b'"input": "x"}}\n{not json\n': "line 2: not valid JSON",
        jsonl(good + [good[1]]): "line 4: duplicate custom_id 'sku-1'",
        jsonl(good[:1] + [{**good[1], "url": "/v1/images"}]): "line 2: unsupported url '/v1/images'",
        jsonl(good[:2] + [{**good[2], "body": {"model": "nope", "input": "x"}}]):
            "line 3: the model 'nope' does not exist",
        jsonl([{**good[0], "body": {"model": "echo-embed", "input": "x", "tools": []}}]):
            "line 1: Unrecognized request argument supplied: tools",
        jsonl([{**good[0], "url": "/v1/chat/completions"}]): "line 1:",
        b"": "the file is empty",
    }
    for content, message in cases.items():
        r = upload(content)
        assert r.status_code == 400, r.text
        assert message in r.json()["error"]["message"], (message, r.json())
    r = raw(network, "POST", "/v1/files", key, files={"file": ("x.jsonl", jsonl(good))}, data={"purpose": "fine-tune"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
    assert raw(network, "GET", "/v1/files", key).json()["data"] == []  # nothing half-created

    # The batch's endpoint must match every line; bad options are named.
    fid = upload(jsonl(good)).json()["id"]
    r = raw(network, "POST", "/v1/batches", key, json={"input_file_id": fid, "endpoint": "/v1/chat/completions",
                                                        "completion_window": "24h"})
    assert r.status_code == 400 and "line 1: url /v1/embeddings differs" in r.json()["error"]["message"]
    r = raw(network, "POST", "/v1/batches", key, json={"input_file_id": fid, "endpoint": "/v1/embeddings",
                                                        "completion_window": "24h",
                                                        "metadata": {"gpupool_max_provider_share": "1.5"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "metadata.gpupool_max_provider_share"
    # No admitted checker audits echo-embed here: a batch that requires verified models is refused.
    for value, status in (("maybe", 400), ("true", 503)):
        r = raw(network, "POST", "/v1/batches", key, json={"input_file_id": fid, "endpoint": "/v1/embeddings",
                                                            "completion_window": "24h",
                                                            "metadata": {"gpupool_require_verified": value}})
        assert r.status_code == status and r.json()["error"]["param"] == "metadata.gpupool_require_verified", r.text
    assert raw(network, "GET", "/v1/batches", key).json()["data"] == []

    big = jsonl(embed_lines(60))
    assert 2000 < len(big) < 20000
    assert upload(big).status_code == 200  # over --max-body-bytes, within the upload limit
    r = upload(big * 3)
    assert r.status_code == 413 and "exceeds the limit of 20000 bytes" in r.json()["error"]["message"]
    r = raw(network, "POST", "/v1/embeddings", key, json={"model": "echo-embed", "input": ["x" * 3000]})
    assert r.status_code == 413  # other routes keep their own limit


def test_batches_belong_to_their_account_and_cancel_closes_every_item(network: Network) -> None:
    network.start_gateway()
    network.start_provider(["echo=echo:chat?delay_ms=100"], max_concurrency=2)  # one batch slot, ~5 items/s
    network.wait_for_models({"echo": 1}, timeout=60)
    client = client_for(network)
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "echo", "messages": [{"role": "user", "content": f"hi {i}"}]}} for i in range(60)]
    fid = client.files.create(file=("a.jsonl", io.BytesIO(jsonl(lines))), purpose="batch").id
    batch = client.batches.create(input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h")

    other = httpx.post(network.gateway_url + "/admin/keys", json={"name": "other-shop"}, timeout=10,
                       headers={"Authorization": f"Bearer {network.admin_token}"}).json()["key"]
    for path in (f"/v1/files/{fid}", f"/v1/files/{fid}/content", f"/v1/batches/{batch.id}"):
        r = raw(network, "GET", path, other)
        assert r.status_code == 404, (path, r.text)
    assert raw(network, "POST", f"/v1/batches/{batch.id}/cancel", other).status_code == 404
    assert raw(network, "GET", "/v1/batches", other).json()["data"] == []

    wait_until(lambda: client.batches.retrieve(batch.id).request_counts.completed > 0, "some items done", 30)
    # Batch work leaves the provider's other slot to interactive requests: it never holds both,
    # and a client's request is served at once (not queued behind the batch).
    for _ in range(10):
        assert all(p["in_flight"] <= 1 for p in network.admin("/admin/providers"))
        time.sleep(0.05)
    started = time.monotonic()
    reply = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "now please"}])
    assert reply.choices[0].message.content == "now please" and time.monotonic() - started < 1.5
    assert client.batches.retrieve(batch.id).status == "in_progress"
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    done = finished(client, batch.id)
    assert done.status == "cancelled"
    out, errs = read_lines(client, done.output_file_id), read_lines(client, done.error_file_id)
    ids = [x["custom_id"] for x in out + errs]
    assert sorted(ids) == sorted(x["custom_id"] for x in lines)  # every item exactly once
    assert errs and all(x["error"]["code"] == "batch_cancelled" for x in errs)
    assert 0 < len(out) < len(lines)
    assert done.request_counts.completed == len(out) and done.request_counts.failed == len(errs)


def test_a_gateway_killed_mid_batch_finishes_it_after_restart_exactly_once(network: Network) -> None:
    network.start_gateway()
    for _ in range(2):  # 2 batch slots each; a shard takes 1.5 s: the kill lands while shards run
        network.start_provider(["echo-embed=echo:embeddings?delay_ms=1500"], max_concurrency=3,
                               extra=["--price", f"echo-embed={PRICE}"])
    network.wait_for_models({"echo-embed": 2}, timeout=60)
    client = client_for(network)
    lines = embed_lines(300)
    fid = client.files.create(file=("big.jsonl", io.BytesIO(jsonl(lines))), purpose="batch").id
    batch = client.batches.create(input_file_id=fid, endpoint="/v1/embeddings", completion_window="24h")
    wait_until(lambda: client.batches.retrieve(batch.id).request_counts.completed > 0, "a part done", 60)
    before = client.batches.retrieve(batch.id)
    assert before.status == "in_progress" and before.request_counts.completed < len(lines)
    assert network.gateway is not None
    network.kill_provider(network.gateway, signal.SIGKILL)  # mid-batch: shards in flight, charges queued
    network.gateway.popen.wait(10)
    left = client_for(network)  # the same URL after restart? No: a new port; reconnect below
    del left
    old_url = network.gateway_url
    network.start_gateway(port=int(old_url.rsplit(":", 1)[1]))  # providers reconnect to the same address
    network.wait_for_models({"echo-embed": 2}, timeout=60)
    client = client_for(network)
    done = finished(client, batch.id, timeout=90)
    assert done.status == "completed"
    out, errs = read_lines(client, done.output_file_id), read_lines(client, done.error_file_id)
    assert errs == []
    assert sorted(x["custom_id"] for x in out) == sorted(x["custom_id"] for x in lines)
    assert len({x["id"] for x in out}) == len(lines)
    check_cost(network, done, out, errs)
    attempts = asyncio.run(_attempts(network.db, batch.id))
    assert max(attempts) >= 2, attempts  # the kill interrupted shards: their items ran again


async def _attempts(db: str, batch_id: str) -> list[int]:
    from sqlalchemy import select

    from gpupool.db import create_engine
    from gpupool.gateway.batches.tables import ItemRow

    engine = create_engine(db)
    try:
        async with engine.connect() as conn:
            return list((await conn.scalars(select(ItemRow.attempts).where(ItemRow.batch_id == batch_id))).all())
    finally:
        await engine.dispose()


def test_cli_estimates_submits_and_a_cost_cap_is_never_exceeded(network: Network, tmp_path: Any) -> None:
    start(network, providers=2)
    key = network.dev_key()
    path = tmp_path / "req.jsonl"
    # Long inputs: the hold bound (a token per byte) is then ~6x an item's real cost (a token per word).
    lines = [{"custom_id": f"long-{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "echo-embed", "input": " ".join(f"w{i}" for _ in range(50))}} for i in range(80)]
    path.write_bytes(jsonl(lines))
    env = {"GPUPOOL_API_KEY": key, "GPUPOOL_BASE_URL": network.gateway_url, "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> Any:
        import subprocess
        import sys

        return subprocess.run([sys.executable, "-m", "gpupool", "batch", *args], capture_output=True, text=True,
                              timeout=120, env=env)

    est = cli("estimate", str(path), "--json")
    assert est.returncode == 0, est.stderr
    high = json.loads(est.stdout)["cost_ucr"]["high"]
    assert raw(network, "GET", "/v1/files", key).json()["data"] == []  # the estimate left nothing behind

    # A cap at an eighth of the worst case: above one shard's bound, below what all items cost,
    # so some items run, the rest are refused, and the cap holds.
    cap = high // 8
    sub = cli("submit", str(path), "--max-cost", str(cap), "--max-share", "0.7", "--wait")
    batch_id = sub.stdout.strip()
    assert batch_id.startswith("batch_"), sub.stderr
    client = client_for(network)
    done = client.batches.retrieve(batch_id)
    assert done.status == "completed"
    out, errs = read_lines(client, done.output_file_id), read_lines(client, done.error_file_id)
    assert sorted(x["custom_id"] for x in out + errs) == sorted(x["custom_id"] for x in lines)
    assert out and errs and all(x["error"]["code"] == "cost_cap_reached" for x in errs)
    assert 0 < done.model_extra["gpupool"]["cost_ucr"] <= cap
    check_cost(network, done, out, errs)
    assert "completed" in cli("status", batch_id).stdout
    got = cli("results", batch_id)
    assert [json.loads(x)["custom_id"] for x in got.stdout.splitlines()] == [x["custom_id"] for x in out]
    bad = cli("status", "batch_nope")
    assert bad.returncode == 1 and bad.stderr.startswith("error: No such Batch object")


@pytest.mark.skipif(not pg_available(), reason=f"PostgreSQL not reachable at {PG_URL}")
def test_two_gateways_on_postgresql_share_a_batch_and_one_finishes_it_when_the_other_dies(tmp_path: Any) -> None:
    with pg_database("gpupool_batch") as db:
        _two_gateways_share_a_batch(tmp_path, db)


def _two_gateways_share_a_batch(tmp_path: Any, db: str) -> None:
    a, b = Network(tmp_path / "a", db=db), Network(tmp_path / "b", db=db)
    try:
        a.start_gateway()
        b.start_gateway()
        for _ in range(2):
            a.start_provider(["echo-embed=echo:embeddings?delay_ms=1500"], max_concurrency=3,
                             gateways=[a.ws_url, b.ws_url], extra=["--price", f"echo-embed={PRICE}"])
        a.wait_for_models({"echo-embed": 2}, timeout=60)
        b.wait_for_models({"echo-embed": 2}, timeout=60)
        key = a.dev_key()
        client = client_for(a, key)
        lines = embed_lines(1500, prefix=f"pg-{time.time_ns()}")  # several rounds of shards: A dies mid-way
        fid = client.files.create(file=("pg.jsonl", io.BytesIO(jsonl(lines))), purpose="batch").id
        batch = client.batches.create(input_file_id=fid, endpoint="/v1/embeddings", completion_window="24h")
        assert a.gateway is not None
        # Killed once it has finished items for good: `completed` also counts items still being charged,
        # which go back to the queue when their gateway dies (then B runs them, and A finished none).
        a_id = a.gateway.node_id[:24]  # how the runner names its leases (runner.py)
        # ...and while it holds a shard: B then has leases to take over (attempts 2), not only pending items.
        wait_until(lambda: a_id in asyncio.run(_owners(db, batch.id, "done"))
                   and a_id in asyncio.run(_owners(db, batch.id, "leased")), "a part done by A, one running", 60)
        assert client.batches.retrieve(batch.id).status == "in_progress"
        a.kill_provider(a.gateway, signal.SIGKILL)  # gateway A dies; B (same database) carries on
        other = client_for(b, key)
        done = finished(other, batch.id, timeout=90)  # A's leases run out (10 s), B takes them over
        assert done.status == "completed"
        out = read_lines(other, done.output_file_id)
        assert sorted(x["custom_id"] for x in out) == sorted(x["custom_id"] for x in lines)
        check_cost(b, done, out, [])
        owners = asyncio.run(_owners(db, batch.id))
        assert len(owners) == 2, owners  # both gateways finished items of it
        assert max(asyncio.run(_attempts(db, batch.id))) >= 2  # B ran again what A held when it died
    finally:
        a.stop()
        b.stop()


async def _owners(db: str, batch_id: str, state: str = "") -> set[str]:
    """Which gateway processes hold or finished the batch's items (read from the shared database);
    `state`: only items in that state ("done": finished for good, "leased": being run now)."""
    from sqlalchemy import select

    from gpupool.db import create_engine
    from gpupool.gateway.batches.tables import ItemRow

    engine = create_engine(db)
    try:
        async with engine.connect() as conn:
            query = select(ItemRow.owner).where(ItemRow.batch_id == batch_id, ItemRow.owner != "")
            if state:
                query = query.where(ItemRow.state == state)
            rows = (await conn.execute(query.distinct())).all()
    finally:
        await engine.dispose()
    return {r[0].split(":")[0] for r in rows}


def test_a_straggling_shard_is_copied_to_another_provider_near_the_end(network: Network) -> None:
    network.start_gateway()
    network.start_provider(["echo-embed=echo:embeddings"], extra=["--price", f"echo-embed={PRICE}"])
    network.start_provider(["echo-embed=echo:embeddings?delay_ms=30000"], extra=["--price", f"echo-embed={PRICE}"])
    network.wait_for_models({"echo-embed": 2}, timeout=60)
    client = client_for(network)
    lines = embed_lines(120)
    fid = client.files.create(file=("s.jsonl", io.BytesIO(jsonl(lines))), purpose="batch").id
    started = time.monotonic()
    batch = client.batches.create(input_file_id=fid, endpoint="/v1/embeddings", completion_window="24h")
    done = finished(client, batch.id, timeout=60)
    took = time.monotonic() - started
    # Shards sent to the 30 s provider were copied to the fast one once they ran past the
    # straggler limit (a few seconds), so the batch did not wait for the slow provider.
    assert done.status == "completed" and took < 20, took
    out = read_lines(client, done.output_file_id)
    assert sorted(x["custom_id"] for x in out) == sorted(x["custom_id"] for x in lines)
    assert done.model_extra["gpupool"]["providers"] == 2  # the slow provider did get work
    check_cost(network, done, out, [])  # the copy that lost was never charged
