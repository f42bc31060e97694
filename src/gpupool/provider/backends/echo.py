"""The `echo` backend: no model at all. It exists only to measure the network path.

Generation echoes the last user message (or the prompt) back word by word;
embeddings are a deterministic pseudo-random unit vector per input. Offers say
"echo (no model; network benchmark only)" so nobody mistakes it for inference.

Spec: `chat` (default) or `embeddings`, optionally `?delay_ms=N` per token/request and
`&claim_tps=N` (a speed to claim in the offer, for routing tests),
e.g. `--serve echo=echo:chat?delay_ms=20`.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from collections.abc import AsyncIterator
from urllib.parse import parse_qs

from gpupool.model_results import BackendError, EmbedResult, GenDone, TextDelta
from gpupool.protocol import EmbedPayload, GeneratePayload, ModelOffer
from gpupool.provider.backends.base import Backend, GenEvent

DIMENSIONS = 32


class EchoBackend(Backend):
    kind = "echo"

    def __init__(self, name: str, spec: str = ""):
        super().__init__(name, spec)
        task, _, query = (spec or "chat").partition("?")
        if task not in ("chat", "generate", "embeddings"):
            raise ValueError(f"echo spec must be 'chat' or 'embeddings', not {task!r}")
        self.task = "embeddings" if task == "embeddings" else "generate"
        params = parse_qs(query)
        self.delay = float(params.get("delay_ms", ["0"])[0]) / 1000.0
        # A speed to claim in the offer (tests of routing against providers that lie).
        self.claim_tps = float(params.get("claim_tps", ["0"])[0])

    def offer(self) -> ModelOffer:
        return ModelOffer(
            name=self.name,
            task=self.task,
            backend=self.kind,
            description="echo (no model; network benchmark only)",
            dimensions=DIMENSIONS if self.task == "embeddings" else 0,
            claimed_decode_tps=self.claim_tps if self.task == "generate" else 0.0,
            claimed_prefill_tps=self.claim_tps * 20 if self.task == "generate" else 0.0,
            claimed_items_per_s=self.claim_tps if self.task == "embeddings" else 0.0,
        )

    async def embed(self, payload: EmbedPayload, urgent: bool = True) -> EmbedResult:
        if self.task != "embeddings":
            return await super().embed(payload, urgent)
        if self.delay:
            await asyncio.sleep(self.delay)
        rows = []
        for text in payload.inputs:
            digest = hashlib.sha256(text.encode()).digest()
            raw = [(b - 127.5) / 127.5 for b in digest]
            norm = sum(x * x for x in raw) ** 0.5 or 1.0
            rows.append(struct.pack(f"<{DIMENSIONS}f", *(x / norm for x in raw)))
        tokens = sum(len(t.split()) for t in payload.inputs)
        return EmbedResult(vectors=b"".join(rows), dimensions=DIMENSIONS, prompt_tokens=tokens)

    async def generate(self, payload: GeneratePayload) -> AsyncIterator[GenEvent]:  # type: ignore[override]
        if self.task != "generate":
            raise BackendError("unsupported_task", f"model {self.name!r} serves embeddings")
        source = payload.prompt
        if payload.messages:
            users = [m.content for m in payload.messages if m.role == "user"]
            source = users[-1] if users else payload.messages[-1].content
        prompt_tokens = sum(len(m.content.split()) for m in payload.messages) + len(
            payload.prompt.split()
        )
        words = source.split() or ["(empty)"]
        # Continuing another provider's stream: skip the words it already sent.
        skip = len(payload.continue_text.split())
        emitted = 0
        text = payload.continue_text
        finish = "stop"
        for i, word in enumerate(words[skip:], start=skip):
            if emitted >= payload.max_tokens:
                finish = "length"
                break
            piece = word if i == 0 else " " + word
            if any(s and s in text + piece for s in payload.stop):
                break
            if self.delay:
                await asyncio.sleep(self.delay)
            text += piece
            emitted += 1
            yield TextDelta(piece)
        yield GenDone(finish, prompt_tokens, emitted)
