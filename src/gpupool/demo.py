"""`gpupool demo`: a retail search + chat scenario run through a real local network.

It starts a gateway and N provider processes (the same ones a deployment runs), then
talks to them only through the official `openai` client, the way a customer would:

1. embeds a ~300-product catalogue in batches (spread over the providers),
2. answers a few shopper queries by cosine similarity against those embeddings,
3. streams a short chat completion from tiny-llama (an UNTRAINED model: gibberish),
4. reads product labels from generated images with `ocr` (real PP-OCRv4),
5. runs an image search over the catalogue's (generated) product photos with `tiny-clip`
   (an UNTRAINED CLIP: near-duplicates only; `demo_images.py`),
6. prints which provider served each request and how long requests took.

Everything it starts is stopped before it returns.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpupool import demo_images
from gpupool.devnet import Network, NetworkError
from gpupool.devnet_setup import default_serve, dev_price_args, prepare_models
from gpupool.identity import default_home

BATCH = 32
QUERIES = [
    "waterproof hiking boots for winter",
    "gift for a kid who loves dinosaurs",
    "non-stick frying pan",
    "noise-cancelling headphones for flights",
    "a comfy bed for my old dog",
    "moisturiser for dry skin",
]
CHAT_PROMPT = "I need a warm jacket for hiking in the snow. What would you recommend?"
KINDS = ("embed-catalogue", "embed-query", "chat-stream", "ocr-label", "embed-photos", "photo-query")


@dataclass
class Call:
    kind: str
    provider: str  # node id from x-gpupool-provider ("?" if the gateway did not say)
    ms: float


def find_catalog() -> Path:
    """examples/catalog.jsonl under the current directory, else in this source tree."""
    for candidate in (Path.cwd() / "examples" / "catalog.jsonl",
                      Path(__file__).resolve().parents[2] / "examples" / "catalog.jsonl"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("examples/catalog.jsonl not found (looked in the current directory and "
                            "the gpupool source tree); run `python examples/make_catalog.py`")


def load_catalog(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def run_demo(home: Path | None, providers: int) -> int:
    """Run the whole scenario; 0 on success, 1 (after saying why) on failure."""
    try:
        import numpy  # noqa: F401  - fail before starting processes, not halfway through
        import openai  # noqa: F401
    except ImportError as exc:
        print(f"error: the demo needs numpy and openai: pip install -e '.[ml,dev]' ({exc})")
        return 1
    if providers < 1:
        print("error: --providers must be at least 1")
        return 1
    try:
        catalog_path = find_catalog()
    except FileNotFoundError as exc:
        print(f"error: {exc}")
        return 1
    catalog = load_catalog(catalog_path)
    print(f"catalogue: {len(catalog)} products from {catalog_path}", flush=True)

    try:
        prepare_models(progress=True)
    except SystemExit as exc:  # prepare_models exits with a message when the ml extra is missing
        print(f"error: {exc}")
        return 1

    # One place per user (~/.gpupool/demo), so the logs it names are still there afterwards;
    # each run starts them afresh.
    root = Path(home).expanduser() if home is not None else default_home() / "demo"
    for old in (root / "logs").glob("*.log"):
        old.unlink(missing_ok=True)
    net = Network(root)
    try:
        print(f"starting gateway and {providers} providers (logs in {net.home / 'logs'})...",
              flush=True)
        url = net.start_gateway(port=0)
        for _ in range(providers):
            net.start_provider(default_serve(), extra=dev_price_args(default_serve()))
        net.wait_for_models({s.split("=")[0]: providers for s in default_serve()}, progress=True)
        print(f"network up at {url}\n", flush=True)
        _scenario(url, net.dev_key(), catalog)
        return 0
    except NetworkError as exc:
        print(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        print("interrupted")
        return 1
    except Exception as exc:  # noqa: BLE001 - an API error (openai.APIError) or anything else
        # Mid-scenario failure: say why, then show every process's log, where the cause usually is.
        print(f"error: {type(exc).__name__}: {exc}")
        for proc in [net.gateway, *net.providers]:
            if proc is not None:
                print(f"--- {proc.name} ({'running' if proc.alive() else 'exited'}) log tail:\n"
                      f"{proc.log_tail(15)}")
        return 1
    finally:
        print("stopping the network...", flush=True)
        net.stop()
        print(f"logs kept in {net.home / 'logs'}", flush=True)


def _scenario(url: str, key: str, catalog: list[dict[str, Any]]) -> None:
    import numpy as np
    from openai import OpenAI

    # max_retries=0: a failure should surface here, not be hidden by client-side retries
    # (the gateway already retries on another provider).
    client = OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)
    calls: list[Call] = []

    def embed(texts: list[str], kind: str) -> np.ndarray:
        started = time.perf_counter()
        raw = client.embeddings.with_raw_response.create(model="minilm", input=texts)
        result = raw.parse()
        calls.append(Call(kind, raw.headers.get("x-gpupool-provider", "?"),
                          (time.perf_counter() - started) * 1000))
        # The API does not promise order; `index` does.
        vectors = [d.embedding for d in sorted(result.data, key=lambda d: d.index)]
        return np.asarray(vectors, dtype=np.float32)

    # (a) the catalogue, in batches so the work spreads over providers.
    print(f"[1/5] embedding {len(catalog)} products in batches of {BATCH}...", flush=True)
    texts = [f"{p['name']}. {p['description']}" for p in catalog]
    started = time.perf_counter()
    batches = [texts[i:i + BATCH] for i in range(0, len(texts), BATCH)]
    matrix = np.vstack([embed(batch, "embed-catalogue") for batch in batches])
    # Normalise once so a dot product is the cosine similarity.
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    used = Counter(c.provider for c in calls)
    print(f"      {matrix.shape[0]} x {matrix.shape[1]} vectors in "
          f"{time.perf_counter() - started:.1f} s, served by {len(used)} provider(s)\n", flush=True)

    # (b) semantic search.
    print("[2/5] shopper queries (cosine similarity, top 3):", flush=True)
    for query in QUERIES:
        q = embed([query], "embed-query")[0]
        scores = matrix @ (q / np.linalg.norm(q))
        print(f'  query: "{query}"')
        for rank, i in enumerate(np.argsort(-scores)[:3], 1):
            p = catalog[i]
            price = f"${p['price'] / 100:.2f}"
            print(f"    {rank}. {scores[i]:.3f}  {p['name']}  ({p['category']}, {price})")
    print(flush=True)

    # (c) streamed chat. with_raw_response gives the headers (who serves it) before the stream.
    print("[3/5] streamed chat completion from tiny-llama")
    print("      NOTE: tiny-llama is an UNTRAINED demo model with random weights: "
          "its text is gibberish.")
    print(f"      prompt: {CHAT_PROMPT}")
    print("      reply : ", end="", flush=True)
    started = time.perf_counter()
    first_token_ms: float | None = None
    raw = client.chat.completions.with_raw_response.create(
        model="tiny-llama", stream=True, max_tokens=24, temperature=0,
        messages=[{"role": "user", "content": CHAT_PROMPT}])
    for chunk in raw.parse():
        text = chunk.choices[0].delta.content if chunk.choices else None
        if text:
            first_token_ms = first_token_ms or (time.perf_counter() - started) * 1000
            print(text, end="", flush=True)
    calls.append(Call("chat-stream", raw.headers.get("x-gpupool-provider", "?"),
                      (time.perf_counter() - started) * 1000))
    ttft = f"{first_token_ms:.0f} ms" if first_token_ms is not None else "n/a"
    print(f"\n      first token after {ttft}\n", flush=True)

    def record(kind: str, provider: str, ms: float) -> None:
        calls.append(Call(kind, provider, ms))

    demo_images.read_labels(client, catalog, record)
    demo_images.image_search(client, catalog, record)
    _print_table(calls)


def _print_table(calls: list[Call]) -> None:
    # Short ids are stable per provider, so the columns show how the gateway spread the load.
    nodes = sorted({c.provider for c in calls})
    short = {n: n[:10] for n in nodes}
    header = f"{'request kind':<16} {'requests':>8}  " + "  ".join(f"{short[n]:>10}" for n in nodes)
    header += f"  {'p50 ms':>8} {'max ms':>8}"
    print("requests per provider (x-gpupool-provider) and latency:")
    print(header)
    print("-" * len(header))
    for kind in KINDS:
        rows = [c for c in calls if c.kind == kind]
        if not rows:
            continue
        per = Counter(c.provider for c in rows)
        ms = [c.ms for c in rows]
        print(f"{kind:<16} {len(rows):>8}  " + "  ".join(f"{per.get(n, 0):>10}" for n in nodes)
              + f"  {statistics.median(ms):>8.1f} {max(ms):>8.1f}")
    print(flush=True)
