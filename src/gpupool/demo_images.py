"""The images part of `gpupool demo`: product labels read by `ocr`, an image search with `tiny-clip`.

Everything it sends is generated here with Pillow, so the demo needs no files:

* labels: a product's name and price printed black on white, the kind of
  picture a data team sends at batch scale; `ocr` (the real PP-OCRv4) reads them back
  through a chat request with an `image_url` part, and the demo counts the words right;
* photos: one synthetic "product photo" per catalogue item (shapes and colours drawn from
  a hash of its name); the catalogue is embedded as images by `tiny-clip`, then a query
  photo (the same product shot smaller and saved as JPEG) is ranked against it. tiny-clip
  is UNTRAINED (random weights): it finds near-duplicates of a picture (measured: every
  one of the 295 products ranks first for its own query photo; tilted by 4 degrees as
  well, 259 of 295), nothing about what the picture shows.

Only the official `openai` client talks to the gateway: images go as data URLs.
"""

from __future__ import annotations

import base64
import hashlib
import io
import time
from collections.abc import Callable
from typing import Any

LABELLED = (0, 101, 250)  # catalogue rows whose labels are read
QUERIES = (0, 14, 140)  # catalogue rows whose photo is searched for
IMAGE_BATCH = 32  # images per embeddings request
PHOTO_SIZE = 96


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def encode(img: Any, fmt: str = "PNG", **options: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def label_lines(product: dict[str, Any], i: int) -> list[str]:
    return [product["name"], f"Price {product['price'] / 100:.2f}"]


def label(lines: list[str], size: int = 26) -> bytes:
    """Black text on white, one line per row (a TrueType font where the system has one)."""
    from PIL import Image as PILImage
    from PIL import ImageDraw, ImageFont

    try:
        font: Any = ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        font = ImageFont.load_default(size)
    img = PILImage.new("RGB", (int(0.62 * size * max(len(x) for x in lines)) + 40, int(1.8 * size) * len(lines) + 24),
                       "white")
    draw = ImageDraw.Draw(img)
    for row, line in enumerate(lines):
        draw.text((14, 12 + int(1.8 * size) * row), line, fill="black", font=font)
    return encode(img)


def photo(product: dict[str, Any], size: int = PHOTO_SIZE) -> Any:
    """A synthetic product photo: a background and three shapes, colours and places from the name's hash."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    h = hashlib.sha256(product["name"].encode()).digest()
    img = PILImage.new("RGB", (size, size), (h[0], h[1], h[2]))
    draw = ImageDraw.Draw(img)
    for k in range(3):
        x0, y0 = h[3 + 4 * k] % (size // 2), h[4 + 4 * k] % (size // 2)
        w, hh = size // 4 + h[5 + 4 * k] % (size // 2), size // 4 + h[6 + 4 * k] % (size // 2)
        shape = draw.ellipse if k % 2 else draw.rectangle
        shape((x0, y0, x0 + w, y0 + hh), fill=(h[16 + 3 * k], h[17 + 3 * k], h[18 + 3 * k]))
    return img


def query_photo(product: dict[str, Any]) -> bytes:
    """The same product shot again: smaller, as a JPEG."""
    return encode(photo(product).resize((80, 80)).convert("RGB"), "JPEG", quality=75)


def words_right(read: str, expected: str) -> tuple[int, int]:
    """(words of `expected` found in order in `read`, words expected): a word-level edit alignment."""
    want, got = expected.split(), read.split()
    row = list(range(len(got) + 1))
    for i, w in enumerate(want, 1):
        prev, row[0] = row[0], i
        for j, g in enumerate(got, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (w != g))
    return max(0, len(want) - row[-1]), len(want)


def read_labels(client: Any, catalog: list[dict[str, Any]], record: Callable[[str, str, float], None]) -> None:
    """[4/5] Product labels through `ocr` (chat with image parts)."""
    print("[4/5] reading product labels with ocr (PP-OCRv4, real) from generated images:", flush=True)
    right = total = 0
    for i in LABELLED:
        lines = label_lines(catalog[i], i)
        started = time.perf_counter()
        raw = client.chat.completions.with_raw_response.create(model="ocr", messages=[{"role": "user", "content": [
            {"type": "text", "text": "Read the label."},
            {"type": "image_url", "image_url": {"url": data_url(label(lines))}}]}])
        record("ocr-label", raw.headers.get("x-gpupool-provider", "?"), (time.perf_counter() - started) * 1000)
        text = raw.parse().choices[0].message.content or ""
        ok, n = words_right(text, " ".join(lines))
        right, total = right + ok, total + n
        print(f"  label {i}: {' | '.join(lines)}")
        print(f"     read: {' | '.join(text.splitlines())}   ({ok}/{n} words)")
    print(f"  words read right: {right}/{total} ({100 * right / max(total, 1):.0f}%)\n", flush=True)


def image_search(client: Any, catalog: list[dict[str, Any]], record: Callable[[str, str, float], None]) -> None:
    """[5/5] The catalogue's photos embedded by `tiny-clip`; query photos ranked against them."""
    import numpy as np

    print("[5/5] image search with tiny-clip over the catalogue's product photos", flush=True)
    print("      NOTE: tiny-clip is an UNTRAINED demo CLIP with random weights: it finds near-duplicate "
          "pictures, not meaning.")

    def embed(urls: list[str], kind: str) -> Any:
        started = time.perf_counter()
        raw = client.embeddings.with_raw_response.create(model="tiny-clip", input=urls)
        record(kind, raw.headers.get("x-gpupool-provider", "?"), (time.perf_counter() - started) * 1000)
        data = sorted(raw.parse().data, key=lambda d: d.index)
        return np.asarray([d.embedding for d in data], dtype=np.float32)

    started = time.perf_counter()
    urls = [data_url(encode(photo(p))) for p in catalog]
    matrix = np.vstack([embed(urls[i:i + IMAGE_BATCH], "embed-photos") for i in range(0, len(urls), IMAGE_BATCH)])
    print(f"      {matrix.shape[0]} photos -> {matrix.shape[1]}-dimension vectors in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    for i in QUERIES:
        q = embed([data_url(query_photo(catalog[i]), "image/jpeg")], "photo-query")[0]
        scores = matrix @ q  # rows are unit vectors: a dot product is the cosine
        print(f'  photo query: "{catalog[i]["name"]}" (smaller, JPEG)')
        for rank, j in enumerate(np.argsort(-scores)[:3], 1):
            print(f"    {rank}. {scores[j]:.3f}  {catalog[j]['name']}  ({catalog[j]['category']})")
    print(flush=True)
