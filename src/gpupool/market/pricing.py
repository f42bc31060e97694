"""What a request costs, from a provider's prices and the usage in its signed receipt.

Pure functions, integer micro-credits (1 credit = 1,000,000 µcr). Token prices are per
1M tokens; a model that reads images may also price each image in a request
(`per_image`, µcr), beside the tokens its usage counts for it. Costs round up so a
price above zero never rounds a request to free.

The gateway reserves `hold_bound` before dispatch, the most the request can cost
on any provider it may be sent to, and charges `charge_for` from the receipt of
the provider that served it, never more than the hold or the client's cap.
"""

from __future__ import annotations

from dataclasses import dataclass

TOKENS_PER_PRICE_UNIT = 1_000_000
# A tokenizer emits at most about one token per byte; chat templates add a few per message.
TEMPLATE_TOKENS_PER_MESSAGE = 16
# More input tokens than a model counts for one image: CLIP reads up to 577 positions (ViT-L/14
# at 336 px), OCR counts 1, vision chat models a few thousand (Qwen2-VL's default ceiling is
# 16,384). A provider that counts more is charged down to the hold.
IMAGE_TOKENS_BOUND = 16_384


@dataclass(frozen=True)
class Price:
    per_m_in: int = 0  # µcr per 1M input tokens
    per_m_out: int = 0  # µcr per 1M output tokens (generation only)
    per_image: int = 0  # µcr per image in the request (models that read images)

    @property
    def free(self) -> bool:
        return self.per_m_in == 0 and self.per_m_out == 0 and self.per_image == 0


def cost(price: Price, input_tokens: int, output_tokens: int, images: int = 0) -> int:
    total = input_tokens * price.per_m_in + output_tokens * price.per_m_out
    return -(-total // TOKENS_PER_PRICE_UNIT) + images * price.per_image


def image_share(price: Price, images: int, charged: int) -> int:
    """The part of a charge that paid for its images (the rest paid for tokens)."""
    return min(images * price.per_image, charged)


def input_token_bound(text_bytes: int, messages: int = 0) -> int:
    """More input tokens than any tokenizer will count for this input."""
    return text_bytes + TEMPLATE_TOKENS_PER_MESSAGE * (messages + 1)


def hold_bound(prices: list[Price], input_tokens: int, max_output_tokens: int, max_price: int | None,
               images: int = 0) -> int:
    """The most the request may be charged on any of these providers (0 if all are free); each
    image adds its price and IMAGE_TOKENS_BOUND input tokens."""
    tokens = input_tokens + images * IMAGE_TOKENS_BOUND
    # = max(costs, default=0), as a plain loop: a generator costs ~3x as much for the one or few
    # prices a request has, and this runs per request (the gateway's and the simulator's).
    worst: int | None = None
    for p in prices:
        c = cost(p, tokens, max_output_tokens, images)
        if worst is None or c > worst:
            worst = c
    if worst is None:
        worst = 0
    return worst if max_price is None else min(worst, max_price)


def charge_for(price: Price, input_tokens: int, output_tokens: int, held: int, images: int = 0) -> int:
    """The charge for a served request: its cost at the serving provider's price, capped by the hold."""
    return min(cost(price, input_tokens, output_tokens, images), held)


def parse_price(text: str, images: bool = False) -> Price:
    """`IN` or `IN/OUT`, integers of µcr per 1M tokens (e.g. `20000` or `100000/400000`); with
    `images`, also `IN/OUT/IMAGE`, IMAGE in µcr per image (e.g. `100000/400000/2000`)."""
    shape = "IN, IN/OUT or IN/OUT/IMAGE" if images else "IN or IN/OUT"
    parts = text.split("/")
    try:
        values = [int(p.replace("_", "")) for p in parts]
    except ValueError:
        raise ValueError(f"price {text!r}: expected {shape}, integers of µcr per 1M tokens") from None
    if len(values) > (3 if images else 2) or any(v < 0 for v in values):
        raise ValueError(f"price {text!r}: expected {shape}, non-negative integers")
    return Price(*values)
