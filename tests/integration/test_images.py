"""Images through the pool with the official `openai` client: a real gateway and two providers
serving `ocr` (RapidOCR's bundled PP-OCRv4) and `tiny-clip` (the random-weight demo CLIP).

Chat `image_url` parts reach the OCR model and come back as the printed text; image and text
embedding inputs come back in one space, equal across providers; bad images and images sent to
text-only models are one-line 400s that never reach a provider (its own answer counters stay
still); images are priced per image, held, charged and shown in `/v1/account`.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

pytest.importorskip("rapidocr_onnxruntime", reason="needs the ml extra")

from PIL import Image as PILImage  # noqa: E402
from PIL import ImageDraw, ImageFont  # noqa: E402

from gpupool.devnet import REGIONS, Network  # noqa: E402
from gpupool.provider.tiny_clip import PROJECTION_DIM  # noqa: E402
from gpupool.verify.image_checks import edit_distance  # noqa: E402
from tests.integration.conftest import client_for, raw  # noqa: E402
from tests.integration.test_metrics import free_port  # noqa: E402
from tests.redteam import child_env  # noqa: E402

pytestmark = pytest.mark.ml

LABEL = ["Organic Oat Milk 1 litre", "Best before 12 March 2027", "Keep refrigerated after opening"]
IMAGE_PRICE = 2_000  # µcr per image, on top of the token prices
MAX_IMAGE_BYTES = 200_000  # the gateway's --image-max-bytes here


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def render(lines: list[str], size: int = 32, kind: str = "PNG") -> bytes:
    img = PILImage.new("RGB", (26 * size, int(1.8 * size) * len(lines) + 24), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((14, 12 + int(1.8 * size) * i), line, fill="black", font=font(size))
    out = io.BytesIO()
    img.save(out, kind)
    return out.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()


def bomb() -> bytes:
    """A valid PNG header of 30000 x 30000 pixels in about a hundred bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def noise_png(side: int) -> bytes:
    """A PNG that does not compress (random pixels): about 3 bytes per pixel."""
    img = PILImage.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Network, list[int]]]:
    home = tmp_path_factory.mktemp("images")
    net = Network(home / "net", env={**child_env(), "GPUPOOL_HOME": str(home / "models-home")})
    ports = [free_port(), free_port()]
    try:
        net.start_gateway(extra=["--image-max-bytes", str(MAX_IMAGE_BYTES)])
        net.start_provider(["ocr=ocr", "tiny-clip=clip:tiny-clip", "echo=echo:chat", "echo-embed=echo:embeddings"],
                           extra=["--metrics-port", str(ports[0]), "--price", f"ocr=1000/1000/{IMAGE_PRICE}",
                                  "--price", f"tiny-clip=1000/0/{IMAGE_PRICE}"])
        net.start_provider(["tiny-clip=clip:tiny-clip"], extra=["--metrics-port", str(ports[1]),
                                                                "--price", f"tiny-clip=1000/0/{IMAGE_PRICE}"])
        net.wait_for_models({"ocr": 1, "tiny-clip": 2, "echo": 1, "echo-embed": 1}, timeout=180)
        yield net, ports
    finally:
        net.stop(timeout=10)


def answers(ports: list[int]) -> float:
    """Every answer the providers sent (their own counters, any outcome)."""
    total = 0.0
    for port in ports:
        for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
            if line.startswith("gpupool_provider_requests_total{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_ocr_reads_a_label_through_the_pool(net: tuple[Network, list[int]]) -> None:
    network, _ = net
    client = client_for(network)
    reply = client.chat.completions.create(model="ocr", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What does the label say?"}, image_part(data_url(render(LABEL)))]}])
    text = reply.choices[0].message.content or ""
    want = " ".join(LABEL).split()
    right = len(want) - edit_distance(text.split(), want)
    assert right / len(want) >= 0.95, text
    assert reply.usage is not None and reply.usage.prompt_tokens == 1  # one image

    reply = client.chat.completions.create(model="ocr", response_format={"type": "json_object"}, messages=[
        {"role": "user", "content": [image_part(data_url(render(LABEL[:1]), "image/png"))]}])
    form = json.loads(reply.choices[0].message.content or "")
    assert "Oat" in json.dumps(form)


def test_json_mode_is_refused_for_a_text_model(net: tuple[Network, list[int]]) -> None:
    network, _ = net
    with pytest.raises(openai.BadRequestError) as err:
        client_for(network).chat.completions.create(model="echo", response_format={"type": "json_object"},
                                                    messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["param"] == "response_format"  # type: ignore[index]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_clip_embeds_images_and_texts_alike_on_every_provider(net: tuple[Network, list[int]]) -> None:
    network, _ = net
    client = client_for(network)
    photo = data_url(render(["a red bicycle"], size=20, kind="JPEG"), "image/jpeg")
    rows: dict[str, list[list[float]]] = {}
    for region in REGIONS[:2]:
        resp = client.embeddings.with_raw_response.create(
            model="tiny-clip", input=["a red bicycle", photo], extra_body={
                "gpupool": {"region": region[0], "region_policy": "require"}})
        body = resp.parse()
        rows[resp.headers["x-gpupool-provider"]] = [d.embedding for d in body.data]
        assert [len(d.embedding) for d in body.data] == [PROJECTION_DIM, PROJECTION_DIM]
    assert len(rows) == 2, "both providers should have served"
    first, second = rows.values()
    for a, b in zip(first, second):
        assert cosine(a, b) >= 0.999
    assert cosine(first[0], first[1]) < 0.999  # the text and the image are different inputs


BAD = {
    "wrong type": lambda: data_url(render(LABEL, kind="JPEG"), "image/png"),
    "not allowed": lambda: "data:image/gif;base64," + base64.b64encode(b"GIF89a" + b"\x00" * 20).decode(),
    "too large": lambda: data_url(noise_png(300)),
    "bomb": lambda: data_url(bomb()),
    "truncated": lambda: data_url(render(LABEL)[:-40]),
    "remote URL": lambda: "https://example.com/label.png",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_images_never_reach_a_provider(net: tuple[Network, list[int]], case: str) -> None:
    network, ports = net
    url = BAD[case]()
    before = answers(ports)
    for path, body, param in (
            ("/v1/chat/completions", {"model": "ocr", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "read"}, image_part(url)]}]}, "messages[0].content[1].image_url.url"),
            ("/v1/embeddings", {"model": "tiny-clip", "input": ["a bike", url]}, "input[1]")):
        if case == "remote URL" and path == "/v1/embeddings":
            continue  # a URL that is not a data URL is text to an embedding model
        r = raw(network, "POST", path, network.dev_key(), json=body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param and "\n" not in error["message"], error
    assert answers(ports) == before


def test_images_to_text_only_models_are_refused(net: tuple[Network, list[int]]) -> None:
    network, ports = net
    client = client_for(network)
    url = data_url(render(LABEL[:1]))
    before = answers(ports)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": [image_part(url)]}])
    assert err.value.body["param"] == "messages[0].content[0].image_url"  # type: ignore[index]
    assert "'echo'" in err.value.message and "does not accept images" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="echo-embed", input=["hello", url])
    assert err.value.body["param"] == "input[1]" and "'echo-embed'" in err.value.message  # type: ignore[index]
    assert answers(ports) == before


def test_models_and_market_say_what_each_model_reads(net: tuple[Network, list[int]]) -> None:
    network, _ = net
    models = {m.id: m for m in client_for(network).models.list().data}
    assert models["ocr"].gpupool["accepts"] == ["text", "image"]  # type: ignore[attr-defined]
    assert models["echo"].gpupool["accepts"] == ["text"]  # type: ignore[attr-defined]
    market = {m["model"]: m for m in raw(network, "GET", "/v1/market").json()["data"]}
    assert market["tiny-clip"]["accepts"] == ["text", "image"] and market["echo"]["accepts"] == ["text"]
    assert market["tiny-clip"]["price_image"] == {"min": IMAGE_PRICE, "max": IMAGE_PRICE}
    offered = {m["name"]: m for p in raw(network, "GET", "/v1/providers").json()["data"] for m in p["models"]}
    assert offered["ocr"]["accepts"] == ["text", "image"] and offered["ocr"]["price_image"] == IMAGE_PRICE
    shown = subprocess.run([sys.executable, "-m", "gpupool", "market", "--gateway", network.gateway_url],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    row = next(line.split() for line in shown.splitlines() if line.startswith("tiny-clip "))
    assert f"{IMAGE_PRICE:,}" in row and "text+image" in row, shown


def test_images_are_priced_held_charged_and_shown(net: tuple[Network, list[int]]) -> None:
    network, _ = net
    client = client_for(network)
    urls = [data_url(render([word], size=24)) for word in ("one", "two", "three")]
    resp = client.embeddings.with_raw_response.create(model="tiny-clip", input=["three images", *urls])
    body = resp.parse()
    cost = int(resp.headers["x-gpupool-cost"])
    tokens = body.usage.prompt_tokens
    assert cost == 3 * IMAGE_PRICE + -(-tokens * 1000 // 1_000_000)
    account = raw(network, "GET", "/v1/account", network.dev_key()).json()
    charge = next(c for c in account["recent_charges"] if c["request_id"] == resp.headers["x-request-id"])
    assert charge["images"] == 3 and charge["image_cost"] == 3 * IMAGE_PRICE and charge["cost"] == cost


def test_a_body_of_images_is_bounded_by_max_body_bytes_only(net: tuple[Network, list[int]]) -> None:
    """Chat bodies are refused from their length when longer than any served context could need
    (413); with a model that reads images, images make them long: only --max-body-bytes applies."""
    network, _ = net
    parts = [image_part(data_url(noise_png(250))) for _ in range(12)]  # ~3 MB of base64, no text
    r = raw(network, "POST", "/v1/chat/completions", network.dev_key(), json={
        "model": "ocr", "max_tokens": 10**6, "messages": [{"role": "user", "content": parts}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens", r.text[:300]
    r = raw(network, "POST", "/v1/chat/completions", network.dev_key(), json={
        "model": "ocr", "messages": [{"role": "user", "content": parts * 2}]})
    assert r.status_code == 413, r.text[:300]
