"""What a request costs, from a provider's prices and the usage in its signed receipt.

Pure functions, integer micro-credits (1 credit = 1,000,000 µcr). Prices are per
1M tokens. Costs round up so a price above zero never rounds a request to free.

The gateway reserves `hold_bound` before dispatch, the most the request can cost
on any provider it may be sent to, and charges `charge_for` from the receipt of
the provider that served it, never more than the hold or the client's cap.
"""

from __future__ import annotations

from dataclasses import dataclass

TOKENS_PER_PRICE_UNIT = 1_000_000
# A tokenizer emits at most about one token per byte; chat templates add a few per message.
TEMPLATE_TOKENS_PER_MESSAGE = 16


@dataclass(frozen=True)
class Price:
    per_m_in: int = 0  # µcr per 1M input tokens
    per_m_out: int = 0  # µcr per 1M output tokens (generation only)

    @property
    def free(self) -> bool:
        return self.per_m_in == 0 and self.per_m_out == 0


def cost(price: Price, input_tokens: int, output_tokens: int) -> int:
    total = input_tokens * price.per_m_in + output_tokens * price.per_m_out
    return -(-total // TOKENS_PER_PRICE_UNIT)


def input_token_bound(text_bytes: int, messages: int = 0) -> int:
    """More input tokens than any tokenizer will count for this input."""
    return text_bytes + TEMPLATE_TOKENS_PER_MESSAGE * (messages + 1)


def hold_bound(prices: list[Price], input_tokens: int, max_output_tokens: int, max_price: int | None) -> int:
    """The most the request may be charged on any of these providers (0 if all are free)."""
    worst = max((cost(p, input_tokens, max_output_tokens) for p in prices), default=0)
    return worst if max_price is None else min(worst, max_price)


def charge_for(price: Price, input_tokens: int, output_tokens: int, held: int) -> int:
    """The charge for a served request: its cost at the serving provider's price, capped by the hold."""
    return min(cost(price, input_tokens, output_tokens), held)


def parse_price(text: str) -> Price:
    """`IN` or `IN/OUT`, integers of µcr per 1M tokens (e.g. `20000` or `100000/400000`)."""
    parts = text.split("/")
    try:
        values = [int(p.replace("_", "")) for p in parts]
    except ValueError:
        raise ValueError(f"price {text!r}: expected IN or IN/OUT, integers of µcr per 1M tokens") from None
    if len(values) > 2 or any(v < 0 for v in values):
        raise ValueError(f"price {text!r}: expected IN or IN/OUT, non-negative integers")
    return Price(values[0], values[1] if len(values) == 2 else 0)
