"""How big a request is: the one place its input is measured (pricing bounds, routing, per-key limits).

    size = PayloadSize.of(payload)
    size.input_token_bound    # more input tokens than any tokenizer counts (sizes the hold)
    size.tokens_estimate      # ~4 characters a token: routing and price-cap estimates only

Usage is never taken from here: what a request costs comes from the provider's signed
receipt. These are bounds and estimates made before the request is served, and the ceiling
a receipt's prompt tokens must stay under (`prompt_token_ceiling`).
"""

from __future__ import annotations

from dataclasses import dataclass

from gpupool.market.pricing import input_token_bound
from gpupool.protocol import EmbedPayload, Payload, image_count

# Tokens one image may count as in a receipt: vision encoders spend from ~64 to a few thousand
# (tiled high resolution); far above that is a lie. Holds never count images (text only).
IMAGE_TOKENS_CEILING = 1 << 16
# Prompt tokens a receipt may claim beyond the hold's bound before it counts as a lie: chat
# templates add default system prompts (dates, tool lists) that the bound does not foresee.
# A claim between the two is only capped by the hold; beyond, the provider is thrown out.
TEMPLATE_SLACK_TOKENS = 4096



@dataclass(frozen=True, slots=True)
class PayloadSize:
    chars: int  # characters of input: every embedding input, or prompt + continuation + messages
    text_bytes: int  # the same input's UTF-8 bytes
    items: int  # embedding inputs, or chat messages (each adds template tokens)
    max_output: int  # tokens the request may generate (0 for embeddings)
    embeddings: bool
    images: int = 0  # images in the request (not in chars: their bytes are no text)

    @classmethod
    def of(cls, payload: Payload) -> PayloadSize:
        if isinstance(payload, EmbedPayload):
            texts = payload.inputs
            return cls(sum(len(x) for x in texts), sum(len(x.encode()) for x in texts), len(texts), 0, True,
                       len(payload.images))
        texts = [payload.prompt, payload.continue_text, *(m.content for m in payload.messages)]
        return cls(sum(len(x) for x in texts), sum(len(x.encode()) for x in texts), len(payload.messages),
                   payload.max_tokens, False, image_count(payload))

    @property
    def tokens_estimate(self) -> int:
        """Input tokens at ~4 characters each: a routing estimate only."""
        return self.chars // 4 + 1

    @property
    def input_token_bound(self) -> int:
        """More input tokens than any tokenizer will count (what holds are sized for)."""
        return input_token_bound(self.text_bytes, self.items)

    @property
    def prompt_token_ceiling(self) -> int:
        """The most prompt tokens a receipt for this request may claim: more means the provider lies."""
        return 2 * self.input_token_bound + TEMPLATE_SLACK_TOKENS + IMAGE_TOKENS_CEILING * self.images

    @property
    def quota_tokens(self) -> int:
        """Tokens counted against a key's tokens-per-minute at admission, as OpenAI counts them:
        about one per 4 characters of input, plus all of `max_tokens`."""
        if self.embeddings:
            return self.chars // 4 + self.items
        return self.chars // 4 + 1 + self.max_output
