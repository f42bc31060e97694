"""Files and batches cannot be used to flood a gateway, and public routes cannot be read without limit.

Issue 18, items 10 and 11, against real gateway and provider processes with the official
`openai` client and httpx: an account's stored files are capped (count and bytes); listing
files never reads their contents; a batch is created only if the account can pay for it;
parsing a large file does not stall the event loop; these routes count against the key's
requests per minute; a batch that runs past its window expires. And the keyless rate per
address cannot be skipped by sending a made-up `Authorization` header, on keyed and public
routes alike.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gpupool.devnet import Network
from tests.integration.conftest import client_for
from tests.integration.test_batch import PRICE, embed_lines, finished, jsonl, read_lines

MAX_FILES = 12
MAX_STORED = 100 * 1024 * 1024


def new_key(net: Network, name: str, **limits: int) -> str:
    r = httpx.post(net.gateway_url + "/admin/keys", json={"name": name, **limits}, timeout=10,
                   headers={"Authorization": f"Bearer {net.admin_token}"})
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def deposit(net: Network, account: str, amount: int) -> None:
    r = httpx.post(net.gateway_url + "/admin/deposit", json={"account": account, "amount": amount,
                                                              "key": f"test-{account}-{amount}"},
                   headers={"Authorization": f"Bearer {net.admin_token}"}, timeout=10)
    assert r.status_code == 201, r.text


def peak_rss_mb(net: Network) -> float:
    """The gateway process's peak resident memory so far (VmHWM), in MiB."""
    assert net.gateway is not None
    for line in Path(f"/proc/{net.gateway.popen.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def big_file(mb: int, lines: int = 12) -> bytes:
    """A valid embeddings file of about `mb` MiB in a few long lines (quick to parse, heavy to hold)."""
    text = "word " * (mb * 1024 * 1024 // lines // 5)
    return jsonl([{"custom_id": f"b-{i}", "method": "POST", "url": "/v1/embeddings",
                   "body": {"model": "echo-embed", "input": text}} for i in range(lines)])


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    network = Network(tmp_path_factory.mktemp("batchquota") / "net")
    try:
        # Upload rates are not what this module tests (test_hostile_uploads.py does): a byte-hog's
        # 9 x 12 MiB would meet the 2 MiB/s default before the stored-bytes cap on a fast machine.
        network.start_gateway(extra=["--batch-max-files", str(MAX_FILES), "--batch-max-stored-bytes",
                                     str(MAX_STORED), "--batch-window-s", "8",
                                     "--batch-upload-bytes-per-s", str(1 << 30)])
        network.start_provider(["echo-embed=echo:embeddings", "slow=echo:chat?delay_ms=500"], max_concurrency=2,
                               extra=["--price", f"echo-embed={PRICE}", "--price", f"slow={PRICE}/{PRICE}"])
        network.wait_for_models({"echo-embed": 1, "slow": 1}, timeout=90)
        yield network
    finally:
        network.stop(timeout=10)


def test_listing_files_never_reads_their_contents(net: Network) -> None:
    """Eight 12 MiB files stored, then listed 20 times: the listing (metadata) must not load the 96 MiB
    of contents; before, each listing read every blob and the gateway's peak memory grew by that much."""
    key = new_key(net, "lister")
    client = client_for(net, key, timeout=120)
    data = big_file(12)
    for i in range(8):
        client.files.create(file=(f"big-{i}.jsonl", io.BytesIO(data)), purpose="batch")
    time.sleep(1.0)
    before = peak_rss_mb(net)
    for _ in range(20):
        listed = client.files.list()
        assert len(listed.data) == 8 and all(f.bytes == len(data) for f in listed.data)
    grown = peak_rss_mb(net) - before
    print(f"peak RSS grew {grown:.1f} MiB listing 96 MiB of files")
    assert grown < 40, grown
    # The contents are still there when asked for, and deleting makes room again.
    first = listed.data[0].id
    assert client.files.content(first).content == data
    for f in listed.data:
        client.files.delete(f.id)


def test_stored_files_are_capped_per_account_by_count_and_bytes(net: Network) -> None:
    key = new_key(net, "hoarder")
    client = client_for(net, key, timeout=120)
    small = jsonl(embed_lines(2))
    ids = [client.files.create(file=(f"s{i}.jsonl", io.BytesIO(small)), purpose="batch").id for i in range(MAX_FILES)]
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("one-more.jsonl", io.BytesIO(small)), purpose="batch")
    assert refused.value.code == "file_limit_reached" and "delete some" in refused.value.message
    # Another account is not affected by this one's hoard.
    other = client_for(net, new_key(net, "neighbour"))
    other.files.delete(other.files.create(file=("n.jsonl", io.BytesIO(small)), purpose="batch").id)
    # Deleting one makes room; bytes are capped too (the cap is 100 MiB: 9 × 12 MiB pass it).
    client.files.delete(ids.pop())
    client.files.create(file=("again.jsonl", io.BytesIO(small)), purpose="batch")
    for i in ids[:2]:
        client.files.delete(i)
    data = big_file(12)
    hog = client_for(net, new_key(net, "byte-hog"), timeout=120)
    stored = 0
    with pytest.raises(openai.BadRequestError) as too_big:
        for i in range(MAX_FILES):
            hog.files.create(file=(f"h{i}.jsonl", io.BytesIO(data)), purpose="batch")
            stored += len(data)
    assert too_big.value.code == "file_limit_reached" and stored + len(data) > MAX_STORED >= stored
    for f in hog.files.list().data:
        hog.files.delete(f.id)


def test_a_batch_needs_a_balance_that_covers_it(net: Network) -> None:
    """An empty account cannot make the gateway copy thousands of items; a cost cap it can cover works."""
    key = new_key(net, "pauper")
    client = client_for(net, key, timeout=60)
    f = client.files.create(file=("p.jsonl", io.BytesIO(jsonl(embed_lines(2000)))), purpose="batch")
    with pytest.raises(openai.APIStatusError) as refused:
        client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    assert refused.value.status_code == 402 and "gpupool_max_cost_ucr" in refused.value.message
    assert client.batches.list().data == []  # nothing was created
    deposit(net, "pauper", 3_000)
    with pytest.raises(openai.APIStatusError):
        client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    capped = client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h",
                                   metadata={"gpupool_max_cost_ucr": "2000"})
    assert capped.status in ("validating", "in_progress")
    client.batches.cancel(capped.id)
    finished(client, capped.id)


def test_parsing_a_large_file_does_not_stall_the_gateway(net: Network) -> None:
    """A 20 MiB file of 50,000 lines took the event loop for about a second per parse (upload,
    estimate, create); parsed in a worker thread, /healthz keeps answering in milliseconds."""
    key = new_key(net, "big-parser")
    line = {"custom_id": "", "method": "POST", "url": "/v1/embeddings",
            "body": {"model": "echo-embed", "input": "red running shoes " * 20}}
    data = b"".join(json.dumps({**line, "custom_id": f"c{i}"}).encode() + b"\n" for i in range(50_000))

    async def run() -> tuple[float, float]:
        async with httpx.AsyncClient(base_url=net.gateway_url, timeout=120) as http:
            done = asyncio.Event()
            worst = 0.0

            async def probe() -> None:
                nonlocal worst
                while not done.is_set():
                    t = time.monotonic()
                    assert (await http.get("/healthz")).status_code == 200
                    worst = max(worst, time.monotonic() - t)
                    await asyncio.sleep(0.02)

            prober = asyncio.create_task(probe())
            t0 = time.monotonic()
            up = await http.post("/v1/files", files={"file": ("big.jsonl", data)}, data={"purpose": "batch"},
                                 headers={"Authorization": f"Bearer {key}"})
            assert up.status_code == 200, up.text
            est = await http.post("/v1/batches/estimate", json={"input_file_id": up.json()["id"]},
                                  headers={"Authorization": f"Bearer {key}"})
            assert est.status_code == 200 and est.json()["requests"] == 50_000, est.text
            took = time.monotonic() - t0
            done.set()
            await prober
            return worst, took

    worst, took = asyncio.run(run())
    print(f"upload + estimate of 50,000 lines took {took:.2f}s; slowest /healthz {worst * 1000:.0f} ms")
    assert worst < 0.4, worst


def test_files_and_batches_count_against_the_keys_request_rate(net: Network) -> None:
    key = new_key(net, "slowpoke", rpm=6)  # one request per 10 s, a burst of one
    assert httpx.get(net.gateway_url + "/v1/files", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    for path in ("/v1/files", "/v1/batches"):
        r = httpx.get(net.gateway_url + path, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 429 and "retry-after" in r.headers, (path, r.text)
        assert r.json()["error"]["code"] == "rate_limit_exceeded"


def test_batch_items_run_under_the_keys_limits(net: Network) -> None:
    """A key limited to 12 requests a minute (a burst of two) cannot push more through a batch: each
    shard counts as one of its requests. Six one-second items, unlimited, all finish within the 8 s
    window; under the limit (one every 5 s after the create and the first) at most three run."""
    limited = new_key(net, "metered", rpm=12)
    helper = httpx.post(net.gateway_url + "/admin/keys", json={"name": "metered-reader", "account": "metered"},
                        headers={"Authorization": f"Bearer {net.admin_token}"}, timeout=10).json()["key"]
    deposit(net, "metered", 50_000_000)
    reader = client_for(net, helper, timeout=60)  # same account, no limits: uploads and polls
    lines = [{"custom_id": f"m{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "slow", "messages": [{"role": "user", "content": f"item {i}"}], "max_tokens": 8}}
             for i in range(6)]
    f = reader.files.create(file=("metered.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client_for(net, limited).batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                    completion_window="24h")
    done = finished(reader, batch.id, timeout=60)
    assert done.status == "expired" and 1 <= done.request_counts.completed <= 3, (done.status, done.request_counts)


def test_a_batch_past_its_window_expires_and_only_what_ran_is_charged(net: Network) -> None:
    """The gateway runs with an 8 s window; each item (two words at 0.5 s each) takes a second on the
    one provider's one batch slot:
    the first items finish, the batch expires, the rest get `batch_expired` lines and no charge."""
    key = new_key(net, "late")
    deposit(net, "late", 50_000_000)
    client = client_for(net, key, timeout=60)
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "slow", "messages": [{"role": "user", "content": f"question {i}"}],
                       "max_tokens": 8}} for i in range(20)]
    f = client.files.create(file=("late.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.expires_at - batch.created_at <= 9
    done = finished(client, batch.id, timeout=60)
    assert done.status == "expired" and done.expired_at, done
    ok, failed = read_lines(client, done.output_file_id), read_lines(client, done.error_file_id)
    assert 1 <= len(ok) < 20 and len(ok) + len(failed) == 20, (len(ok), len(failed))
    assert {x["custom_id"] for x in ok} | {x["custom_id"] for x in failed} == {f"q{i}" for i in range(20)}
    assert all(x["error"]["code"] == "batch_expired" for x in failed)
    assert done.request_counts.completed == len(ok)
    charged = sum(x["response"]["body"]["usage"].get("cost_ucr", 0) for x in ok)
    assert done.model_extra["gpupool"]["cost_ucr"] == charged


# ---------------------------------------------------------------- the keyless rate (item 11)


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A gateway alone, keyless rate 2/s with a 2 s burst: four requests, then 429s."""
    network = Network(tmp_path_factory.mktemp("keyless") / "net")
    try:
        network.start_gateway(extra=["--anonymous-rate", "2", "--rate-burst-s", "2"])
        yield network
    finally:
        network.stop(timeout=10)


PUBLIC = ["/v1/market", "/v1/providers", "/v1/stats", "/metrics", "/v1/providers/" + "ab" * 32 + "/earnings",
          "/v1/providers/" + "ab" * 32 + "/reputation"]


_ADDRESSES = itertools.count(2)


def fresh_address() -> str:
    """A loopback address no earlier case sent from (Linux routes all of 127/8 to lo): its keyless
    bucket is full, without waiting for the one the previous case spent to refill."""
    return f"127.0.0.{next(_ADDRESSES)}"


def _statuses(net: Network, path: str, n: int, headers: dict[str, str], address: str) -> list[int]:
    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=net.gateway_url, timeout=30, headers=headers,
                                     transport=httpx.AsyncHTTPTransport(local_address=address)) as http:
            return [r.status_code for r in await asyncio.gather(*(http.get(path) for _ in range(n)))]

    return asyncio.run(run())


@pytest.mark.parametrize("path", PUBLIC)
def test_a_made_up_key_does_not_skip_the_keyless_rate_on_public_routes(strict: Network, path: str) -> None:
    statuses = _statuses(strict, path, 12, {"Authorization": "Bearer not-a-key-at-all"}, fresh_address())
    assert statuses.count(429) >= 6, statuses
    # A real key is no pass on a public route either: it reads no key, so it counts per address.
    statuses = _statuses(strict, path, 12, {"Authorization": f"Bearer {strict.dev_key()}"}, fresh_address())
    assert statuses.count(429) >= 6, statuses


def test_a_made_up_key_on_a_keyed_route_counts_against_the_address(strict: Network) -> None:
    address = fresh_address()
    bad = _statuses(strict, "/v1/models", 12, {"Authorization": "Bearer gp-made-up"}, address)
    assert set(bad) == {401}, bad  # told the key is wrong (held back once over the rate), never served
    # ... and those 401s spent the address's budget (what refilled while they were held back is
    # about 3 requests): keyless reads right after are refused.
    after = _statuses(strict, "/v1/market", 8, {}, address)
    assert after.count(429) >= 3, after
    # A known key is never held back by its address.
    good = _statuses(strict, "/v1/models", 12, {"Authorization": f"Bearer {strict.dev_key()}"}, address)
    assert set(good) == {200}, good
