"""What a batch would cost at the pool's current prices, before it is committed (pure).

    estimate("minilm", "/v1/embeddings", items, [Price(20_000), Price(30_000)], fee_bps=500)
    -> {"object": "gpupool.batch_estimate", "requests": 2, "cost_ucr": {"low": ..., "typical": ..., "high": ...}}

`low`: every item on the cheapest provider, input tokens estimated at ~4 bytes each
and no output beyond half of max_tokens; `typical`: the median provider's price, same
tokens; `high`: the most any item can be charged (the hold bound: the dearest
provider, a token per input byte, every output token allowed) — a cost cap at `high`
never stops the batch. An image is priced per image (`Price.per_image`) and counts
`pricing.IMAGE_TOKENS_BOUND` input tokens in `high`, about 64 in the others
(`policy.IMAGE_COST_BYTES` of text). Prices include the gateway fee (providers are paid
the rest).
"""

from __future__ import annotations

from typing import Any

from gpupool.batch.policy import IMAGE_COST_BYTES
from gpupool.gateway.batches.validate import DEFAULT_MAX_TOKENS, Item
from gpupool.market import pricing

BYTES_PER_TOKEN = 4  # English text in common tokenizers; only an estimate, charges use receipts


def estimate(model: str, endpoint: str, items: list[Item], prices: list[pricing.Price],
             fee_bps: int) -> dict[str, Any]:
    tokens_typ = sum((it.text_bytes + it.images * IMAGE_COST_BYTES) // BYTES_PER_TOKEN + 1 for it in items)
    images = sum(it.images for it in items)
    out_max = 0 if endpoint == "/v1/embeddings" else sum(_max_tokens(it) for it in items)
    out_typ = out_max // 2
    body: dict[str, Any] = {"object": "gpupool.batch_estimate", "model": model, "endpoint": endpoint,
                            "requests": len(items), "inputs": sum(it.weight for it in items),
                            "images": images,
                            "input_tokens_estimate": tokens_typ, "output_tokens_max": out_max,
                            "providers": len(prices), "fee_bps": fee_bps}
    if not prices:
        body["cost_ucr"] = None
        body["note"] = f"no provider serves {model!r} right now: no price to estimate from"
        return body
    by_cost = sorted(prices, key=lambda p: (p.per_m_in, p.per_m_out, p.per_image))
    median = by_cost[len(by_cost) // 2]
    body["cost_ucr"] = {
        "low": pricing.cost(by_cost[0], tokens_typ, out_typ, images),
        "typical": pricing.cost(median, tokens_typ, out_typ, images),
        "high": high_bound(endpoint, items, prices),
    }
    body["price_per_m_input_tokens"] = {"min": by_cost[0].per_m_in, "median": median.per_m_in,
                                        "max": by_cost[-1].per_m_in}
    return body


def high_bound(endpoint: str, items: list[Item], prices: list[pricing.Price]) -> int:
    """The most the whole batch can be charged at these prices (`estimate`'s `high`; what creating it
    asks the balance to cover)."""
    tokens_max = sum(pricing.input_token_bound(it.text_bytes, it.weight) for it in items)
    out_max = 0 if endpoint == "/v1/embeddings" else sum(_max_tokens(it) for it in items)
    return pricing.hold_bound(prices, tokens_max, out_max, None, sum(it.images for it in items))


def _max_tokens(it: Item) -> int:
    import msgspec

    body = msgspec.json.decode(it.body)
    n = body.get("max_completion_tokens") or body.get("max_tokens")
    return int(n) if isinstance(n, int) else (16 if it.url == "/v1/completions" else DEFAULT_MAX_TOKENS)
