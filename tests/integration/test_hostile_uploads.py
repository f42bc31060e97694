"""One key flooding batch-file uploads is slowed at the door, and other clients keep being served.

Issue 18 (bench/hostile `file_flood`): a key uploads valid 8 MiB batch files from four
workers at once. Against a real gateway and echo provider, httpx as the uploader and the
official client as the bystander. Before: every upload was received, parsed and stored as
fast as the gateway could (on a 2-core machine the bystander's p99 went from ~50 ms to
1-3 s); now an account uploads one file at a time within a byte rate, and the rest get a
429 with Retry-After decided from their Content-Length (the body is read and dropped, not
parsed or stored), held back a second for a client that comes back before its Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpupool.devnet import Network
from tests.integration.conftest import client_for
from tests.integration.test_batch_quotas import new_key

FILE_MB = 8
RATE = 4 * 1024 * 1024  # --batch-upload-bytes-per-s
BURST = 16 * 1024 * 1024  # --batch-max-file-bytes: the bucket holds one largest file
FLOOD_S = 6.0


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = Network(Path(tmp_path_factory.mktemp("uploads")) / "net")
    try:
        network.start_gateway(extra=["--batch-upload-bytes-per-s", str(RATE), "--batch-max-file-bytes", str(BURST)])
        network.start_provider(["echo-embed=echo:embeddings"], max_concurrency=16)
        network.wait_for_models({"echo-embed": 1}, timeout=60)
        yield network
    finally:
        network.stop(timeout=10)


def batch_file(size: int) -> bytes:
    lines, total, i = [], 0, 0
    while total < size:
        line = json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings",
                           "body": {"model": "echo-embed", "input": "y" * 900}}) + "\n"
        lines.append(line)
        total += len(line)
        i += 1
    return "".join(lines).encode()


async def flood(net: Network, key: str, data: bytes, workers: int = 4) -> tuple[Counter[str], list[str]]:
    seen: Counter[str] = Counter()
    retry_after: list[str] = []
    end = time.monotonic() + FLOOD_S
    async with httpx.AsyncClient(base_url=net.gateway_url, timeout=60,
                                 headers={"Authorization": f"Bearer {key}"}) as http:
        async def worker(w: int) -> None:
            i = w
            while time.monotonic() < end:
                try:
                    r = await http.post("/v1/files", files={"file": (f"f{i}.jsonl", data)}, data={"purpose": "batch"})
                    seen[str(r.status_code)] += 1
                    if r.status_code == 429:
                        retry_after.append(r.headers.get("retry-after", ""))
                except httpx.TransportError as exc:
                    seen[type(exc).__name__] += 1
                i += workers

        await asyncio.gather(*(worker(w) for w in range(workers)))
    return seen, retry_after


def test_an_upload_flood_is_refused_at_the_door_and_a_bystander_is_served(net: Network) -> None:
    key = new_key(net, "uploader")
    data = batch_file(FILE_MB * 1024 * 1024)
    bystander = client_for(net, timeout=30)
    answers: list[Any] = []

    async def run() -> tuple[Counter[str], list[str]]:
        stop = asyncio.Event()

        async def serve() -> None:
            while not stop.is_set():
                out = await asyncio.to_thread(bystander.embeddings.create, model="echo-embed", input="bystander")
                answers.append(out)
                await asyncio.sleep(0.1)

        served = asyncio.create_task(serve())
        started = time.monotonic()
        result = await flood(net, key, data)
        result[0]["elapsed_ms"] = int((time.monotonic() - started) * 1000)
        stop.set()
        await served
        return result

    seen, retry_after = asyncio.run(run())
    elapsed = seen.pop("elapsed_ms") / 1000
    stored = httpx.get(net.gateway_url + "/v1/files", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    print(f"flood: {dict(seen)}, {len(stored)} stored in {elapsed:.1f}s; bystander answers {len(answers)}")
    assert seen["429"] > 0 and set(seen) <= {"200", "429"}, f"uploads not refused cleanly: {dict(seen)}"
    assert all(v.isdigit() and int(v) >= 1 for v in retry_after), retry_after
    # The byte rate holds: one burst of one largest file, then RATE per second (one file may be
    # admitted just before the end).
    assert sum(f["bytes"] for f in stored) <= BURST + RATE * elapsed + len(data)
    assert len(answers) >= 10 and all(len(a.data) == 1 for a in answers)
