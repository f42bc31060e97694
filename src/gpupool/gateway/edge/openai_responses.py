"""OpenAI-compatible response bodies: whole answers, stream chunks, embeddings, usage.

Plain dicts shaped like OpenAI's published schemas (the tests validate them against
it), plus `usage.cost_ucr`: what the request was charged, in µcr. The request side,
validated at the HTTP edge, is openai_api.py.

    chat_response(rid, "tiny-llama", "Hello", "stop", prompt=5, completion=1, provider=node_id, cost=12)
"""

from __future__ import annotations

import base64
import time
from typing import Any


def usage(prompt: int, completion: int, cost: int = 0) -> dict[str, int]:
    """OpenAI's usage object, plus `cost_ucr`: what this request was charged, in µcr."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "cost_ucr": cost}


def embedding_response(model: str, vectors: bytes, dims: int, count: int, fmt: str, prompt_tokens: int,
                       cost: int = 0) -> dict[str, Any]:
    import struct  # local: only this builder needs it

    row_bytes = dims * 4
    data = []
    for i in range(count):
        row = vectors[i * row_bytes:(i + 1) * row_bytes]
        emb: Any = base64.b64encode(row).decode() if fmt == "base64" else list(struct.unpack(f"<{dims}f", row))
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {"object": "list", "model": model, "data": data,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "cost_ucr": cost}}


def chat_response(rid: str, model: str, text: str, finish: str, prompt: int, completion: int, provider: str,
                  cost: int = 0) -> dict[str, Any]:
    return _answer(rid, "chat.completion", model, provider, {
        "index": 0,
        "message": {"role": "assistant", "content": text, "refusal": None},
        "finish_reason": finish or "stop",
        "logprobs": None,
    }, usage(prompt, completion, cost))


def completion_response(rid: str, model: str, text: str, finish: str, prompt: int, completion: int,
                        provider: str, cost: int = 0) -> dict[str, Any]:
    return _answer(rid, "text_completion", model, provider,
                   {"index": 0, "text": text, "finish_reason": finish or "stop", "logprobs": None},
                   usage(prompt, completion, cost))


def _answer(rid: str, kind: str, model: str, provider: str, choice: dict[str, Any],
            used: dict[str, int]) -> dict[str, Any]:
    """A whole (non-streamed) answer: one choice; the provider's id prefix as its system fingerprint."""
    return {
        "id": rid,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": provider[:16],
        "choices": [choice],
        "usage": used,
    }


def chat_chunk(rid: str, model: str, created: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return _chunk(rid, "chat.completion.chunk", model, created,
                  {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None})


def completion_chunk(rid: str, model: str, created: int, text: str, finish: str | None) -> dict[str, Any]:
    return _chunk(rid, "text_completion", model, created,
                  {"index": 0, "text": text, "finish_reason": finish, "logprobs": None})


def _chunk(rid: str, kind: str, model: str, created: int, choice: dict[str, Any]) -> dict[str, Any]:
    """One streamed event: every chunk of a stream carries the stream's id, model and creation time."""
    return {"id": rid, "object": kind, "created": created, "model": model, "choices": [choice]}
