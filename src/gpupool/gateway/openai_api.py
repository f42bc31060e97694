"""OpenAI-compatible request bodies (pydantic, validated at the HTTP edge) and response builders.

Requests accept what the official `openai` client sends and ignore fields we
don't act on (e.g. `user`); fields that would change the answer in ways we
cannot honour (`n > 1`, image parts, token-array inputs) are refused with a 400
that names the field, rather than silently ignored. Responses are plain dicts
shaped like OpenAI's published schemas (the tests validate them against it).

Sampled generation requests (temperature > 0) always reach the provider with a seed:
the client's, or a random one the gateway picks, because checkers can only audit a
sampled answer by replaying its seed (see `gpupool.verify.sampler`).
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gpupool import errors
from gpupool.protocol import ChatMessage, EmbedPayload, GeneratePayload
from gpupool.verify.sampler import GREEDY_BELOW

MAX_STOP_SEQUENCES = 4


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise errors.InvalidRequest(
                    f"content parts of type {part.get('type')!r} are not supported; send text",
                    param="messages",
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(_Body):
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int | None) -> int | None:
        if v not in (None, 1):
            raise ValueError("only n=1 is supported")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        return v

    def temperature_or_default(self) -> float:
        return 1.0 if self.temperature is None else self.temperature

    def replayable_seed(self) -> int | None:
        """The client's seed; for a sampled request without one, a fresh random one, so that
        a checker can replay the answer (a greedy request needs none)."""
        if self.seed is None and self.temperature_or_default() >= GREEDY_BELOW:
            return secrets.randbits(63)
        return self.seed

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def payload(self, default_max_tokens: int) -> GeneratePayload:
        return GeneratePayload(
            messages=[ChatMessage(role=m.role, content=m.text(), name=m.name or "") for m in self.messages],
            max_tokens=self.max_completion_tokens or self.max_tokens or default_max_tokens,
            temperature=self.temperature_or_default(),
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.replayable_seed(),
            stop=self.stop_list(),
        )


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's documented default
    echo: bool | None = False

    @field_validator("prompt")
    @classmethod
    def _single_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("exactly one prompt per request is supported")
        return v

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("echo=true is not supported")
        return v

    def payload(self) -> GeneratePayload:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return GeneratePayload(
            prompt=prompt,
            max_tokens=self.max_tokens or 16,
            temperature=self.temperature_or_default(),
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.replayable_seed(),
            stop=self.stop_list(),
        )


class EmbeddingRequest(_Body):
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)

    def payload(self, max_inputs: int) -> EmbedPayload:
        inputs = [self.input] if isinstance(self.input, str) else self.input
        if not inputs:
            raise errors.InvalidRequest("input must not be empty", param="input")
        if not all(isinstance(x, str) for x in inputs):
            raise errors.InvalidRequest("token-array inputs are not supported; send strings", param="input")
        if len(inputs) > max_inputs:
            raise errors.InvalidRequest(f"at most {max_inputs} inputs per request", param="input")
        if any(x == "" for x in inputs):
            raise errors.InvalidRequest("inputs must be non-empty strings", param="input")
        return EmbedPayload(inputs=list(inputs))  # type: ignore[arg-type]


# ---------------------------------------------------------------- responses


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
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": provider[:16],
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "finish_reason": finish or "stop",
            "logprobs": None,
        }],
        "usage": usage(prompt, completion, cost),
    }


def completion_response(rid: str, model: str, text: str, finish: str, prompt: int, completion: int,
                        provider: str, cost: int = 0) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": provider[:16],
        "choices": [{"index": 0, "text": text, "finish_reason": finish or "stop", "logprobs": None}],
        "usage": usage(prompt, completion, cost),
    }


def chat_chunk(rid: str, model: str, created: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def completion_chunk(rid: str, model: str, created: int, text: str, finish: str | None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
    }
