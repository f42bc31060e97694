"""Embed a retail catalogue over the pool with `gpupool.sdk.map`, then search it.

    make devnet                                   # in one terminal: a local network
    GPUPOOL_API_KEY=gp-dev-... python examples/embed_catalog.py
    python examples/embed_catalog.py --job catalog-v1   # resumable: rerun picks up the same batch

Every product (`name. description`) becomes one item; `map` sends them through the
Batch API (with `--job`, or when there are many) or as direct requests, shows a
progress bar and returns the vectors in catalogue order. The shopper queries are
then answered by cosine similarity, locally.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from gpupool import sdk

HERE = Path(__file__).parent
QUERIES = ["waterproof boots for hiking", "gift for a kid who loves dinosaurs", "something to brew coffee"]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)) or 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", type=Path, default=HERE / "catalog.jsonl")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--base-url", default=os.environ.get("GPUPOOL_BASE_URL", "http://127.0.0.1:8000"))
    ap.add_argument("--api-key", default=os.environ.get("GPUPOOL_API_KEY"))
    ap.add_argument("--job", default=None, help="job id: run through the Batch API, resumable under this name")
    ap.add_argument("--share", default=None, help="privacy cap: most share of products one provider may see")
    ap.add_argument("--out", type=Path, default=None, help="write {sku: vector} as JSON here")
    args = ap.parse_args()

    products = [json.loads(line) for line in args.catalog.read_text().splitlines() if line.strip()]
    texts = [f"{p['name']}. {p['description']}" for p in products]
    metadata = {"gpupool_max_provider_share": args.share} if args.share else None
    vectors = sdk.map(args.model, texts, base_url=args.base_url, api_key=args.api_key, job_id=args.job,
                      metadata=metadata)
    print(f"embedded {len(vectors)} products ({len(vectors[0])} dimensions each)")
    if args.out:
        args.out.write_text(json.dumps({p["sku"]: v for p, v in zip(products, vectors)}))
    queries = sdk.map(args.model, QUERIES, base_url=args.base_url, api_key=args.api_key, progress=False)
    for q, qv in zip(QUERIES, queries):
        best = sorted(range(len(products)), key=lambda i: cosine(qv, vectors[i]), reverse=True)[:3]
        print(f"\n{q!r}:")
        for i in best:
            print(f"  {cosine(qv, vectors[i]):.3f}  {products[i]['sku']}  {products[i]['name']}")


if __name__ == "__main__":
    main()
