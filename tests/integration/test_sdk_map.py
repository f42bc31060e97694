"""`gpupool.sdk.map` against a real gateway and echo providers: direct and batched, in order,
resumable by job id, async, and the catalogue example script."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gpupool import sdk
from gpupool.devnet import Network
from tests.integration.conftest import raw

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pool(network: Network) -> Network:
    network.start_gateway()
    for _ in range(2):
        network.start_provider(["echo-embed=echo:embeddings", "echo=echo:chat"])
    network.wait_for_models({"echo-embed": 2, "echo": 2}, timeout=60)
    return network


def direct(net: Network, texts: list[str]) -> list[list[float]]:
    r = httpx.post(net.gateway_url + "/v1/embeddings", timeout=30, headers={"Authorization": f"Bearer {net.dev_key()}"},
                   json={"model": "echo-embed", "input": texts, "encoding_format": "base64"})
    r.raise_for_status()
    out = []
    for d in r.json()["data"]:
        b = base64.b64decode(d["embedding"])
        out.append(list(struct.unpack(f"<{len(b) // 4}f", b)))
    return out


def batch_ids(net: Network) -> list[str]:
    return [b["id"] for b in raw(net, "GET", "/v1/batches?limit=100", net.dev_key()).json()["data"]]


def test_map_returns_results_in_input_order_direct_and_batched_and_resumes(pool: Network, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    key, url = pool.dev_key(), pool.gateway_url
    texts = [f"product {i} " + "word " * (i % 7) for i in range(300)]
    want = direct(pool, texts[:50]) + direct(pool, texts[50:300])

    small = sdk.map("echo-embed", texts[:20], base_url=url, api_key=key, progress=False)
    assert small == want[:20]
    assert batch_ids(pool) == []  # small jobs go direct

    got = sdk.map("echo-embed", texts, base_url=url + "/v1", api_key=key, job_id="catalog", state_dir=tmp_path)
    assert got == want
    progress = capsys.readouterr().err
    assert "gpupool map" in progress and "300/300" in progress  # the bar, finished
    made = batch_ids(pool)
    assert len(made) == 1
    # The same job again: its batch is read back, nothing is submitted.
    again = sdk.map("echo-embed", texts, base_url=url, api_key=key, job_id="catalog", state_dir=tmp_path,
                    progress=False)
    assert again == want and batch_ids(pool) == made
    with pytest.raises(ValueError, match="other items"):
        sdk.map("echo-embed", texts[:10], base_url=url, api_key=key, job_id="catalog", state_dir=tmp_path)

    prompts = [f"say {i}" for i in range(12)]
    answers = asyncio.run(sdk.amap("echo", prompts, endpoint="/v1/chat/completions", base_url=url, api_key=key,
                                   direct_below=5, progress=False))
    assert answers == prompts  # the echo model answers with the prompt


def test_map_reports_failed_items(pool: Network) -> None:
    key, url = pool.dev_key(), pool.gateway_url
    with pytest.raises(sdk.MapError) as info:
        sdk.map("no-such-model", ["a", "b"], base_url=url, api_key=key, progress=False)
    assert set(info.value.failures) == {0, 1}
    got = sdk.map("no-such-model", ["a"], base_url=url, api_key=key, progress=False, errors="return")
    assert "does not exist" in json.dumps(got[0])


def test_catalog_example_embeds_every_product_through_a_batch(pool: Network, tmp_path: Path) -> None:
    out = tmp_path / "vectors.json"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "embed_catalog.py"), "--model", "echo-embed",
                           "--base-url", pool.gateway_url, "--api-key", pool.dev_key(), "--job", "shop-1",
                           "--share", "0.7", "--out", str(out)],
                          capture_output=True, text=True, timeout=120,
                          env={"GPUPOOL_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    products = [json.loads(x) for x in (ROOT / "examples" / "catalog.jsonl").read_text().splitlines() if x.strip()]
    vectors = json.loads(out.read_text())
    assert list(vectors) == [p["sku"] for p in products]
    assert f"embedded {len(products)} products" in proc.stdout
    (batch,) = raw(pool, "GET", "/v1/batches", pool.dev_key()).json()["data"]
    assert batch["status"] == "completed" and batch["gpupool"]["provider_share_reached"] <= 0.7
