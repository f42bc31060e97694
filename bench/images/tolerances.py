"""Honest disagreement of the image backends: the numbers behind verify/image_checks.py's tolerances.

    PYTHONPATH=src python bench/images/tolerances.py

The same requests are answered by two honest set-ups that differ only in arithmetic: torch
threads 1 vs 4 and float32 vs bfloat16 for `clip` (tiny-clip), ONNX Runtime threads 1 vs 4
for `ocr`. Prints the lowest cosine per image row and the largest normalised edit distance.
Record the output in docs/verification.md ("Images").
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gpupool.protocol import ChatMessage, EmbedPayload, GeneratePayload, Image  # noqa: E402
from gpupool.provider.backends.clip import CLIPBackend  # noqa: E402
from gpupool.provider.backends.ocr import OCRBackend  # noqa: E402
from gpupool.provider.tiny_clip import create_tiny_clip  # noqa: E402
from gpupool.verify.image_checks import normalised_distance  # noqa: E402
from tests.unit.test_image_backends import LABELS, answer, render  # noqa: E402


def photos(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        img = PILImage.new("RGB", (int(rng.integers(40, 300)), int(rng.integers(40, 300))),
                           tuple(int(v) for v in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = int(rng.integers(0, img.width)), int(rng.integers(0, img.height))
            draw.ellipse((x, y, x + 30, y + 20), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


async def clip_rows(path: Path, payload: EmbedPayload, threads: int, dtype: str) -> np.ndarray:
    os.environ["GPUPOOL_TORCH_THREADS"] = str(threads)
    backend = CLIPBackend("tiny-clip", str(path))
    backend.dtype = dtype
    await backend.start()
    result = await backend.embed(payload)
    await backend.close()
    return np.frombuffer(result.vectors, "<f4").reshape(len(payload.inputs), result.dimensions)


async def main() -> None:
    path = create_tiny_clip(Path(tempfile.mkdtemp()) / "tiny-clip")
    pics = photos(64)
    payload = EmbedPayload([""] * len(pics) + [" ".join(lines) for lines in LABELS],
                           images=[Image("image/png", data, i) for i, data in enumerate(pics)])
    base = await clip_rows(path, payload, 1, "float32")
    for threads, dtype in ((4, "float32"), (1, "bfloat16")):
        other = await clip_rows(path, payload, threads, dtype)
        cos = np.sum(base * other, axis=1)
        print(f"clip tiny-clip float32/1 thread vs {dtype}/{threads} threads: lowest cosine "
              f"images {cos[:len(pics)].min():.6f}, texts {cos[len(pics):].min():.6f}")
    texts: dict[int, list[str]] = {}
    for threads in (1, 4):
        backend = OCRBackend("ocr")
        backend.threads = threads
        await backend.start()
        texts[threads] = []
        for font_name in ("DejaVuSans.ttf", ""):
            for size in (20, 28, 36):
                for lines in LABELS:
                    payload_ocr = GeneratePayload(messages=[ChatMessage("user", "", images=[
                        Image("image/png", render(lines, font_name, size))])])
                    texts[threads].append((await answer(backend, payload_ocr))[0])
        await backend.close()
    worst = max(normalised_distance(a, b) for a, b in zip(texts[1], texts[4]))
    print(f"ocr PP-OCRv4 1 vs 4 ONNX Runtime threads, {len(texts[1])} labels: largest distance {worst:.4f}")


if __name__ == "__main__":
    asyncio.run(main())
