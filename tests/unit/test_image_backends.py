"""Images in, in process with real models: the `ocr` backend (RapidOCR's bundled PP-OCRv4) reads
printed text rendered with Pillow, the `clip` backend embeds images and texts with the tiny
random CLIP, and bad image bytes are refused with a clear BackendError before any model runs.
The wire shapes (protocol.Image) keep old payloads and their hashes as they were."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

pytest.importorskip("rapidocr_onnxruntime", reason="needs the ml extra")

import numpy as np  # noqa: E402
from PIL import Image as PILImage  # noqa: E402
from PIL import ImageDraw, ImageFont  # noqa: E402

from gpupool import images, protocol  # noqa: E402
from gpupool.model_results import BackendError, GenDone, TextDelta  # noqa: E402
from gpupool.protocol import ChatMessage, EmbedPayload, GeneratePayload, Image  # noqa: E402
from gpupool.provider.backends import Backend, ServeSpec, make_backend  # noqa: E402
from gpupool.provider.tiny_clip import PROJECTION_DIM, create_tiny_clip  # noqa: E402
from gpupool.verify.image_checks import edit_distance, ocr_text  # noqa: E402

pytestmark = pytest.mark.ml

LABELS = [
    ["Organic Oat Milk 1 litre", "Best before 12 March 2027", "Keep refrigerated after opening"],
    ["Whole grain bread with sunflower seeds", "Invoice number 48213 due on 5 January", "Price 2.49 per bottle"],
]
FONTS = ["DejaVuSans.ttf", ""]  # a TrueType font where the system has one; Pillow's own font


def font(name: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype(name, size) if name else ImageFont.load_default(size=size)
    except OSError:
        return ImageFont.load_default(size=size)


def render(lines: list[str], font_name: str = "", size: int = 24, kind: str = "PNG") -> bytes:
    """Black text on white, one line per row, with room to spare on the right."""
    img = PILImage.new("RGB", (28 * size, int(1.8 * size) * len(lines) + 20), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((12, 12 + int(1.8 * size) * i), line, fill="black", font=font(font_name, size))
    out = io.BytesIO()
    img.save(out, kind)
    return out.getvalue()


def picture(color: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> bytes:
    img = PILImage.new("RGB", size, color)
    ImageDraw.Draw(img).ellipse((4, 4, size[0] // 2, size[1] // 2), fill=(255 - color[0], 40, 200))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def chat(*imgs: bytes, response_format: str = "", max_tokens: int = 256) -> GeneratePayload:
    parts = [Image("image/png", data) for data in imgs]
    return GeneratePayload(messages=[ChatMessage("user", "What does the label say?", images=parts)],
                           max_tokens=max_tokens, response_format=response_format)


async def answer(backend: Backend, payload: GeneratePayload) -> tuple[str, GenDone]:
    parts, done = [], None
    async for event in backend.generate(payload):
        if isinstance(event, TextDelta):
            parts.append(event.text)
        else:
            done = event
    assert isinstance(done, GenDone)
    return "".join(parts), done


def bomb() -> bytes:
    """A valid PNG of 30000 x 30000 pixels in about a hundred bytes (its header is the bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


BAD_IMAGES = {
    "truncated": ("image/png", lambda: render(LABELS[0])[:400], "truncated or corrupt"),
    "wrong type": ("image/png", lambda: render(LABELS[0], kind="JPEG"), "claims image/png"),
    "not allowed": ("image/gif", lambda: b"GIF89a" + b"\x00" * 20, "not accepted"),
    "not an image": ("image/png", lambda: b"%PDF-1.7 hello", "claims image/png"),
    "decompression bomb": ("image/png", bomb, "pixels"),
}


async def start(spec: str) -> Backend:
    backend = make_backend(ServeSpec.parse(spec))
    await backend.start()
    return backend


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip", seed=0)


@pytest.fixture(scope="module")
def backends(clip_dir: Path) -> Iterator[dict[str, Backend]]:
    made = {"ocr": asyncio.run(start("ocr=ocr")),
            "clip-a": asyncio.run(start(f"tiny-clip=clip:{clip_dir}")),
            "clip-b": asyncio.run(start(f"tiny-clip=clip:{clip_dir}"))}
    yield made
    for backend in made.values():
        asyncio.run(backend.close())


# ------------------------------------------------------------------ ocr


@pytest.mark.parametrize("font_name", FONTS)
async def test_ocr_reads_printed_labels(backends: dict[str, Backend], font_name: str) -> None:
    """>= 95% of the words right on clean renders (28 px text), in reading order, one answer per image."""
    text, done = await answer(backends["ocr"], chat(*(render(lines, font_name, 28) for lines in LABELS)))
    pages = text.split("\n\n")
    assert len(pages) == 2
    want = [word for lines in LABELS for word in " ".join(lines).split()]
    right = len(want) - edit_distance(text.split(), want)
    assert right / len(want) >= 0.95, text
    assert done.finish_reason == "stop" and done.prompt_tokens == 2
    assert done.completion_tokens == len(text.split())


async def test_ocr_json_form_and_word_budget(backends: dict[str, Backend]) -> None:
    payload = chat(render(LABELS[0], "DejaVuSans.ttf"), response_format="json_object")
    answer_json, done = await answer(backends["ocr"], payload)
    lines = json.loads(answer_json)["images"][0]["lines"]
    assert [line["text"] for line in lines] == LABELS[0], lines
    tops = [min(y for _, y in line["box"]) for line in lines]
    assert tops == sorted(tops) and all(len(line["box"]) == 4 for line in lines)
    assert all(0.5 < line["confidence"] <= 1.0 for line in lines)
    assert ocr_text(answer_json, True) == "\n".join(LABELS[0])
    assert offer_accepts(backends["ocr"]) == ["text", "image"]
    # max_tokens caps the words, whole lines at a time.
    text, done = await answer(backends["ocr"], chat(render(LABELS[0], "DejaVuSans.ttf"), max_tokens=6))
    assert text == LABELS[0][0] and done.finish_reason == "length" and done.completion_tokens == 5


def offer_accepts(backend: Backend) -> list[str]:
    return backend.offer().accepts


async def test_ocr_needs_an_image(backends: dict[str, Backend]) -> None:
    with pytest.raises(BackendError) as err:
        await answer(backends["ocr"], GeneratePayload(messages=[ChatMessage("user", "hello")]))
    assert err.value.code == "invalid_input" and "image" in str(err.value)


# ------------------------------------------------------------------ clip


async def test_clip_embeds_images_and_texts_in_one_space(backends: dict[str, Backend]) -> None:
    payload = EmbedPayload(["a red apple", "", "", "fresh bread"],
                           images=[Image("image/png", picture((200, 30, 30)), 1),
                                   Image("image/png", picture((20, 160, 60), (64, 30)), 2)])
    a, b = await backends["clip-a"].embed(payload), await backends["clip-b"].embed(payload)
    rows = [np.frombuffer(r.vectors, "<f4").reshape(4, r.dimensions) for r in (a, b)]
    assert a.dimensions == PROJECTION_DIM == backends["clip-a"].offer().dimensions
    assert np.allclose(np.linalg.norm(rows[0], axis=1), 1.0, atol=1e-5)
    assert float(np.min(np.sum(rows[0] * rows[1], axis=1))) >= 0.999  # two instances agree
    # Image rows differ from text rows and from each other; usage = text tokens + 17 per image.
    assert float(rows[0][1] @ rows[0][2]) < 0.999
    texts = await backends["clip-a"].embed(EmbedPayload(["a red apple", "fresh bread"]))
    assert a.prompt_tokens == texts.prompt_tokens + 2 * 17
    assert np.allclose(np.frombuffer(texts.vectors, "<f4").reshape(2, -1), rows[0][[0, 3]], atol=1e-5)
    assert offer_accepts(backends["clip-a"]) == ["text", "image"]


async def test_clip_refuses_misplaced_images(backends: dict[str, Backend]) -> None:
    for payload in (EmbedPayload(["text", "x"], images=[Image("image/png", picture((1, 2, 3)), 1)]),
                    EmbedPayload([""], images=[Image("image/png", picture((1, 2, 3)), 3)])):
        with pytest.raises(BackendError) as err:
            await backends["clip-a"].embed(payload)
        assert err.value.code == "invalid_input"


# ------------------------------------------------------------------ bad images


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
async def test_bad_images_are_refused(backends: dict[str, Backend], case: str) -> None:
    media_type, make, message = BAD_IMAGES[case]
    data = make()
    for call in (lambda: answer(backends["ocr"], GeneratePayload(
                     messages=[ChatMessage("user", "", images=[Image(media_type, data)])])),
                 lambda: backends["clip-a"].embed(EmbedPayload([""], images=[Image(media_type, data, 0)]))):
        with pytest.raises(BackendError) as err:
            await call()
        assert err.value.code == "invalid_image" and message in str(err.value), str(err.value)
        assert "\n" not in str(err.value)
    with pytest.raises(images.ImageError):
        images.decode_rgb(data, media_type)


def test_data_urls_and_limits() -> None:
    import base64

    png = picture((9, 9, 9))
    assert images.parse_data_url("data:image/png;base64," + base64.b64encode(png).decode()) == ("image/png", png)
    assert images.check_header(png, "image/png") == (48, 40)
    for url, message in (("https://example.com/a.png", "data URL"), ("data:image/png;base64,@@@", "base64"),
                         ("data:text/plain;base64,aGk=", "not accepted")):
        with pytest.raises(images.ImageError, match=message):
            images.parse_data_url(url)
    small = images.ImageLimits(max_bytes=100)
    with pytest.raises(images.ImageError, match="over"):
        images.parse_data_url("data:image/png;base64," + base64.b64encode(png).decode(), small)
    with pytest.raises(images.ImageError, match="images in one request"):
        images.check_request([10] * (images.MAX_REQUEST_IMAGES + 1))


# ------------------------------------------------------------------ wire


def test_wire_shapes_keep_old_payloads() -> None:
    old = GeneratePayload(messages=[ChatMessage("user", "hi")])
    # A payload without images encodes (and so hashes) exactly as before images existed.
    assert b"images" not in msgspec.msgpack.encode(old)
    assert b"accepts" not in msgspec.msgpack.encode(protocol.ModelOffer("m", "generate", "generate"))
    png = picture((5, 6, 7))
    new = GeneratePayload(messages=[ChatMessage("user", "hi", images=[Image("image/png", png, 2)])])
    run = protocol.decode(protocol.encode(protocol.Run("r1", "ocr", new)))
    assert isinstance(run, protocol.Run) and run.payload == new
    # The hash commits to the image through its digest: the bytes themselves are not hashed.
    digest = msgspec.structs.replace(new.messages[0].images[0], data=hashlib.sha256(png).digest())
    stand_in = GeneratePayload(messages=[ChatMessage("user", "hi", images=[digest])])
    assert protocol.payload_hash(new) == hashlib.sha256(msgspec.msgpack.encode(stand_in)).digest()
    assert protocol.payload_hash(new) != protocol.payload_hash(old)
    other = GeneratePayload(messages=[ChatMessage("user", "hi", images=[Image("image/png", png + b"x", 2)])])
    assert protocol.payload_hash(other) != protocol.payload_hash(new)
    emb = EmbedPayload(["", "t"], images=[Image("image/png", png, 0)])
    assert protocol.payload_hash(emb) != protocol.payload_hash(EmbedPayload(["", "t"]))
    # An old peer's decoder (no `images` field) still reads a new frame, ignoring the images.

    class OldMessage(msgspec.Struct):
        role: str
        content: str
        name: str = ""

    assert msgspec.msgpack.decode(msgspec.msgpack.encode(new.messages[0]), type=OldMessage).content == "hi"


def test_no_space_is_put_around_a_decimal_point() -> None:
    """The gap around a period is measured above it (it sits below the band): "86.99" stays whole,
    while a real gap between words still becomes a space."""
    from gpupool.provider.backends.ocr import with_spaces

    boxes = [[[x, 0], [x + 8, 0], [x + 8, 10], [x, 10]] for x in (0, 10, 30, 40, 50)]
    assert with_spaces("86.99", boxes, [(24.0, 1.5), (39.0, 1.5)]) == "86.99"
    assert with_spaces("ab,cd", boxes, [(24.0, 1.5)]) == "ab,cd"
    assert with_spaces("abcde", boxes, [(39.0, 1.5)]) == "abc de"
