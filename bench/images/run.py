"""Images per second through the pool against the same model called directly (OCR and CLIP).

    .venv/bin/python bench/images/run.py                          # defaults fit a 2-core machine
    .venv/bin/python bench/images/run.py --ocr 24 --clip 4096

Direct: the provider's own backends (`ocr`: PP-OCRv4 through ONNX Runtime; `clip`) in this
process, with the thread count a provider uses (GPUPOOL_TORCH_THREADS, default 1). The CLIP
is `tiny-clip` (`--clip-model tiny`: 32x32 pixels, well under a millisecond an image, so
the pool's per-request and per-item costs are all there is to see) or, by default, a
CLIP with the vision tower of ViT-B/32 (224 px, 12 layers of 768, 50 positions) and
random weights (`--clip-model base`, built once under bench/results/), whose cost per
image is a real CLIP's on a CPU.
Pool: one gateway and one provider serving both, on loopback, called with the official
`openai` client. For each model, in one run:

* interactive: one image per request, one request at a time (direct: one backend call per
  image), so the ratio is the pool's overhead per request;
* batch: the Batch API, one image per line (the gateway packs CLIP lines, up to 64 images
  per provider request; OCR lines are one request each), from upload to the output file
  downloaded; direct: the backend called with the same packing.

The direct runs are measured before and after the pool's (the machine is shared; the
baseline is their mean) and the pool's answers are checked against the direct ones (OCR
text equal, CLIP cosine >= 0.999). Prints a table, writes bench/results/images.json.
Target: pool >= 0.8x direct with one provider.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import REPO_ROOT, print_table, write_json  # noqa: E402

from gpupool import demo_images  # noqa: E402
from gpupool.devnet import Network  # noqa: E402
from gpupool.protocol import ChatMessage, EmbedPayload, GeneratePayload, Image  # noqa: E402

CLIP_PACK = 64  # images per provider request in a batch (images.MAX_REQUEST_IMAGES)


def base_clip(path: Path) -> Path:
    """A CLIP with ViT-B/32's vision tower and a small text tower, random weights (seed 0), built
    once: the tokenizer and preprocessing are tiny-clip's (normalisation as OpenAI CLIP's)."""
    import shutil

    from gpupool.provider.tiny_clip import create_tiny_clip, default_tiny_clip_path

    if (path / "model.safetensors").is_file():
        return path
    import torch
    from transformers import CLIPConfig, CLIPModel

    tiny = create_tiny_clip(default_tiny_clip_path())
    text = json.loads((tiny / "config.json").read_text())["text_config"]
    config = CLIPConfig(
        text_config={"vocab_size": text["vocab_size"], "max_position_embeddings": 77, "hidden_size": 256,
                     "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4,
                     "bos_token_id": text["bos_token_id"], "eos_token_id": text["eos_token_id"],
                     "pad_token_id": text["pad_token_id"]},
        vision_config={"image_size": 224, "patch_size": 32, "hidden_size": 768, "intermediate_size": 3072,
                       "num_hidden_layers": 12, "num_attention_heads": 12},
        projection_dim=512)
    torch.manual_seed(0)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    CLIPModel(config).save_pretrained(tmp)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny / name).is_file():
            shutil.copy(tiny / name, tmp / name)
    pre = json.loads((tiny / "preprocessor_config.json").read_text())
    pre.update({"crop_size": {"height": 224, "width": 224}, "size": {"shortest_edge": 224}})
    (tmp / "preprocessor_config.json").write_text(json.dumps(pre))
    (tmp / "README.md").write_text("# UNTRAINED benchmark CLIP (random weights), ViT-B/32 vision tower\n")
    tmp.rename(path)
    return path


def catalogue() -> list[dict[str, Any]]:
    return [json.loads(x) for x in (REPO_ROOT / "examples" / "catalog.jsonl").read_text().splitlines() if x]


def ocr_images(n: int) -> list[bytes]:
    cat = catalogue()
    return [demo_images.label(demo_images.label_lines(cat[(i * 37) % len(cat)], i)) for i in range(n)]


def clip_images(n: int) -> list[bytes]:
    cat = catalogue()
    return [demo_images.encode(demo_images.photo({"name": f"{cat[i % len(cat)]['name']} #{i}"}, 64))
            for i in range(n)]


# ---------------------------------------------------------------- direct


async def direct(ocr: list[bytes], clip: list[bytes], clip_spec: str) -> dict[str, Any]:
    """Images/s of the backends called in this process, and their answers."""
    import numpy as np

    from gpupool.provider.backends import ServeSpec, make_backend

    reader = make_backend(ServeSpec.parse("ocr=ocr"))
    embedder = make_backend(ServeSpec.parse(f"clip=clip:{clip_spec}"))
    await reader.start()
    await embedder.start()

    async def read(data: bytes) -> str:
        payload = GeneratePayload(messages=[ChatMessage("user", "", images=[Image("image/png", data)])])
        return "".join(getattr(e, "text", "") for e in [e async for e in reader.generate(payload)])

    async def embed(batch: list[bytes]) -> Any:
        out = await embedder.embed(EmbedPayload([""] * len(batch), images=[Image("image/png", d, i)
                                                                          for i, d in enumerate(batch)]))
        return np.frombuffer(out.vectors, "<f4").reshape(len(batch), -1)

    try:
        await read(ocr[0])  # warm-up: ONNX Runtime's first run is slow
        await embed(clip[:2])
        out: dict[str, Any] = {}
        started = time.perf_counter()
        out["ocr_texts"] = [await read(d) for d in ocr]
        out["ocr_interactive"] = out["ocr_batch"] = len(ocr) / (time.perf_counter() - started)
        started = time.perf_counter()
        rows = [await embed([d]) for d in clip]
        out["clip_interactive"] = len(clip) / (time.perf_counter() - started)
        started = time.perf_counter()
        packed = [await embed(clip[i:i + CLIP_PACK]) for i in range(0, len(clip), CLIP_PACK)]
        out["clip_batch"] = len(clip) / (time.perf_counter() - started)
        out["clip_vectors"] = np.vstack(rows)
        assert np.allclose(np.vstack(packed), out["clip_vectors"], atol=1e-4)
        return out
    finally:
        await reader.close()
        await embedder.close()


# ---------------------------------------------------------------- pool


def url(data: bytes) -> str:
    return demo_images.data_url(data)


def run_batch(client: Any, lines: list[dict[str, Any]], endpoint: str) -> tuple[float, list[dict[str, Any]]]:
    """Seconds from upload to output downloaded, and the output lines in custom_id order."""
    started = time.perf_counter()
    content = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    f = client.files.create(file=("images.jsonl", io.BytesIO(content)), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h")
    while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed", "cancelled", "expired"):
        time.sleep(0.05)
    assert batch.status == "completed" and batch.request_counts.failed == 0, batch
    out = [json.loads(x) for x in client.files.content(batch.output_file_id).content.splitlines()]
    elapsed = time.perf_counter() - started
    return elapsed, sorted(out, key=lambda x: int(x["custom_id"]))


def pool(ocr: list[bytes], clip: list[bytes], clip_spec: str) -> dict[str, Any]:
    import numpy as np
    from openai import OpenAI

    from gpupool.devnet_setup import prepare_models

    prepare_models()
    with tempfile.TemporaryDirectory(prefix="gpupool-bench-images-") as home:
        net = Network(Path(home) / "net")
        try:
            base = net.start_gateway()
            net.start_provider(["ocr=ocr", f"clip=clip:{clip_spec}"])
            net.wait_for_models({"ocr": 1, "clip": 1}, timeout=240)
            client = OpenAI(base_url=base + "/v1", api_key=net.dev_key(), max_retries=0, timeout=300)

            def read(data: bytes) -> str:
                return client.chat.completions.create(model="ocr", messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url(data)}}]}]).choices[0].message.content or ""

            def embed(data: bytes) -> list[float]:
                return client.embeddings.create(model="clip", input=[url(data)]).data[0].embedding

            read(ocr[0])  # warm-up, as the direct runs
            embed(clip[0])
            out: dict[str, Any] = {}
            started = time.perf_counter()
            out["ocr_texts"] = [read(d) for d in ocr]
            out["ocr_interactive"] = len(ocr) / (time.perf_counter() - started)
            started = time.perf_counter()
            rows = [embed(d) for d in clip]
            out["clip_interactive"] = len(clip) / (time.perf_counter() - started)
            out["clip_vectors"] = np.asarray(rows, dtype=np.float32)
            seconds, lines = run_batch(client, [
                {"custom_id": str(i), "method": "POST", "url": "/v1/chat/completions", "body": {
                    "model": "ocr", "messages": [{"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": url(d)}}]}]}} for i, d in enumerate(ocr)],
                "/v1/chat/completions")
            out["ocr_batch"] = len(ocr) / seconds
            out["ocr_batch_texts"] = [x["response"]["body"]["choices"][0]["message"]["content"] for x in lines]
            seconds, lines = run_batch(client, [
                {"custom_id": str(i), "method": "POST", "url": "/v1/embeddings",
                 "body": {"model": "clip", "input": url(d), "encoding_format": "float"}}
                for i, d in enumerate(clip)], "/v1/embeddings")
            out["clip_batch"] = len(clip) / seconds
            out["clip_batch_vectors"] = np.asarray([x["response"]["body"]["data"][0]["embedding"] for x in lines],
                                                   dtype=np.float32)
            return out
        finally:
            net.stop()


def main() -> None:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ocr", type=int, default=16, help="label images read (each way)")
    ap.add_argument("--clip", type=int, default=128, help="photos embedded (each way)")
    ap.add_argument("--clip-model", choices=("base", "tiny"), default="base")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    ocr, clip = ocr_images(args.ocr), clip_images(args.clip)
    clip_spec = "tiny-clip" if args.clip_model == "tiny" else str(base_clip(REPO_ROOT / "bench" / "results" /
                                                                            "base-clip-random"))
    clip_name = "tiny-clip" if args.clip_model == "tiny" else "clip (ViT-B/32 vision, random)"
    load = [os.getloadavg()[0]]
    before = asyncio.run(direct(ocr, clip, clip_spec))
    load.append(os.getloadavg()[0])
    through = pool(ocr, clip, clip_spec)
    load.append(os.getloadavg()[0])
    after = asyncio.run(direct(ocr, clip, clip_spec))
    load.append(os.getloadavg()[0])

    def cosine_min(a: Any, b: Any) -> float:
        return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())

    checks = {
        "ocr_interactive_text_equal": through["ocr_texts"] == before["ocr_texts"],
        "ocr_batch_text_equal": through["ocr_batch_texts"] == before["ocr_texts"],
        "clip_interactive_min_cosine": round(cosine_min(through["clip_vectors"], before["clip_vectors"]), 6),
        "clip_batch_min_cosine": round(cosine_min(through["clip_batch_vectors"], before["clip_vectors"]), 6),
    }
    rows, results = [], []
    for model, n in (("ocr", len(ocr)), ("clip", len(clip))):
        for mode in ("interactive", "batch"):
            key = f"{model}_{mode}"
            base = (before[key] + after[key]) / 2
            ratio = through[key] / base
            results.append({"model": "ocr" if model == "ocr" else clip_name, "mode": mode, "images": n,
                            "direct_images_per_s": round(base, 2), "direct_runs": [round(before[key], 2),
                                                                                  round(after[key], 2)],
                            "pool_images_per_s": round(through[key], 2), "ratio": round(ratio, 3)})
            rows.append([results[-1]["model"], mode, n, round(base, 2), round(through[key], 2), round(ratio, 3),
                         "yes" if ratio >= 0.8 else "no"])
    print_table(["model", "mode", "images", "direct img/s", "pool img/s", "pool/direct", ">= 0.8x"], rows,
                title="images per second: one provider through the gateway vs the backend called directly")
    print(f"checks: {checks}")
    print(f"load average at start, after direct, after pool, after direct: {[round(x, 1) for x in load]}")
    path = write_json("images", {"results": results, "checks": checks, "load_average": load,
                                 "args": vars(args)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
