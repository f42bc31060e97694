"""Images across real processes: batches of images, `sdk.map` over a folder, with the official client.

One gateway and two providers of `tiny-clip` (the untrained CLIP, 32x32 inputs: fast on a
CPU), one of them also serving `ocr` (the bundled PP-OCRv4). A batch of 1,000 tiny images
completes with every custom_id exactly once, charged once on the ledger, within the
privacy cap; `sdk.map` embeds a folder of images and reads a folder of labels; batch
lines with images for a text-only model, or with a bad image, are refused naming the line.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

pytest.importorskip("rapidocr_onnxruntime", reason="needs the ml extra")

from gpupool import sdk  # noqa: E402
from gpupool.devnet import Network  # noqa: E402
from gpupool.devnet_setup import dev_price_args, prepare_models  # noqa: E402
from tests.integration.conftest import client_for, raw  # noqa: E402
from tests.integration.test_batch import check_cost, finished, jsonl, read_lines  # noqa: E402
from tests.unit.test_image_backends import LABELS, render  # noqa: E402

pytestmark = pytest.mark.ml

CLIP_OCR = ["tiny-clip=clip:tiny-clip", "ocr=ocr", "minilm=echo:embeddings"]
CLIP_ONLY = ["tiny-clip=clip:tiny-clip"]


def tiny_png(i: int) -> bytes:
    """An 8x8 picture of its own: two colours from the index (a few hundred bytes)."""
    from PIL import Image as PILImage

    img = PILImage.new("RGB", (8, 8), (i % 256, (i // 256) * 60, 128))
    img.paste(((i * 7) % 256, (i * 3) % 256, 255 - (i // 256) * 50), (0, 0, 4, 8))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


@pytest.fixture(scope="module")
def img_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    net = Network(tmp_path_factory.mktemp("img") / "net")
    try:
        prepare_models()
        net.start_gateway()
        for serve in (CLIP_OCR, CLIP_ONLY):
            net.start_provider(serve, extra=dev_price_args(serve), max_concurrency=4)
        net.wait_for_models({"tiny-clip": 2, "ocr": 1}, timeout=240)
        yield net
    finally:
        net.stop()


@pytest.mark.timeout(300)
def test_a_batch_of_1000_images_completes_exactly_once_within_the_privacy_cap(img_net: Network) -> None:
    client = client_for(img_net, timeout=60)
    lines = [{"custom_id": f"img-{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "tiny-clip", "input": data_url(tiny_png(i)), "encoding_format": "float"}}
             for i in range(1000)]
    uploaded = client.files.create(file=("images.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    estimate = raw(img_net, "POST", "/v1/batches/estimate", img_net.dev_key(),
                   json={"input_file_id": uploaded.id}).json()
    # The devnet prices tiny-clip's images at 1 µcr each, beside their tokens: every estimate covers them.
    assert estimate["images"] == 1000 and 1000 < estimate["cost_ucr"]["low"] <= estimate["cost_ucr"]["high"]
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h",
                                  metadata={"gpupool_max_provider_share": "0.6"})
    done = finished(client, batch.id, timeout=240)
    assert done.status == "completed", done
    assert done.request_counts.completed == 1000 and done.request_counts.failed == 0
    out = read_lines(client, done.output_file_id)
    ids = [x["custom_id"] for x in out]
    assert len(ids) == 1000 and set(ids) == {x["custom_id"] for x in lines}  # each item exactly once
    vectors = {x["custom_id"]: x["response"]["body"]["data"][0]["embedding"] for x in out}
    assert all(len(v) == 32 for v in vectors.values())
    check_cost(img_net, done, out, [])  # every run charged once, the items' costs add up to it
    assert done.model_extra["gpupool"]["cost_ucr"] > 1000  # each image paid for (1 µcr) beside its tokens
    share = done.model_extra["gpupool"]
    assert share["providers"] == 2 and 0 < share["provider_share_reached"] <= 0.6
    # A batch's answer is the pool's answer: equal inputs give the same vector as a direct request.
    for i in (0, 517, 999):
        direct = client.embeddings.create(model="tiny-clip", input=[data_url(tiny_png(i))], encoding_format="float")
        a, b = np.asarray(direct.data[0].embedding), np.asarray(vectors[f"img-{i}"])
        assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) >= 0.999
    # Distinct pictures, distinct vectors (the packing kept each image in its own row).
    assert len({tuple(np.round(v, 5)) for v in vectors.values()}) > 990


def test_sdk_map_embeds_a_folder_of_images_and_reads_a_folder_of_labels(img_net: Network, tmp_path: Path) -> None:
    photos, scans = tmp_path / "photos", tmp_path / "scans"
    photos.mkdir()
    scans.mkdir()
    for i in range(20):
        (photos / f"p{i:02d}.png").write_bytes(tiny_png(i))
    (photos / "notes.txt").write_text("not an image")
    for i, lines in enumerate(LABELS):
        (scans / f"label{i}.png").write_bytes(render(lines, "DejaVuSans.ttf"))
    key, url = img_net.dev_key(), img_net.gateway_url
    vectors = sdk.map("tiny-clip", photos, base_url=url, api_key=key, progress=False)
    assert len(vectors) == 20 and all(len(v) == 32 for v in vectors)
    direct = client_for(img_net).embeddings.create(model="tiny-clip", input=[data_url(tiny_png(7))],
                                                   encoding_format="float").data[0].embedding
    assert float(np.dot(vectors[7], direct)) >= 0.999  # the folder's order: sorted by name
    # The same folder through the Batch API (a job id makes map use it): the same vectors.
    batched = sdk.map("tiny-clip", photos, base_url=url, api_key=key, progress=False, job_id="photos",
                      state_dir=tmp_path / "jobs")
    assert all(float(np.dot(a, b)) >= 0.999 for a, b in zip(vectors, batched))
    texts = sdk.map("ocr", scans, endpoint="/v1/chat/completions", base_url=url, api_key=key, progress=False)
    assert texts == ["\n".join(lines) for lines in LABELS]


def test_batch_lines_with_images_are_checked_at_upload(img_net: Network) -> None:
    client = client_for(img_net)

    def upload(body: dict[str, object]) -> openai.BadRequestError:
        good = {"custom_id": "ok", "method": "POST", "url": "/v1/embeddings",
                "body": {"model": "tiny-clip", "input": data_url(tiny_png(1))}}
        content = jsonl([good, {"custom_id": "bad", "method": "POST", "url": "/v1/embeddings", "body": body}])
        with pytest.raises(openai.BadRequestError) as caught:
            client.files.create(file=("x.jsonl", io.BytesIO(content)), purpose="batch")
        return caught.value

    error = upload({"model": "minilm", "input": ["a shoe", data_url(tiny_png(2))]})
    assert "line 2: input[1]: model 'minilm' does not accept images" in str(error), error
    truncated = data_url(tiny_png(3)[:-20])
    error = upload({"model": "tiny-clip", "input": truncated})
    assert "line 2: input" in str(error) and "truncated" in str(error), error
    not_base64 = data_url(render(["x"]))[:30] + "!!!"
    error = upload({"model": "tiny-clip", "input": not_base64})
    assert "line 2:" in str(error) and "base64" in str(error), error
    assert json.loads(error.response.text)["error"]["code"] == "invalid_batch_line"
