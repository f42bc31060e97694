"""OpenAI-compatible request bodies (pydantic, validated at the HTTP edge); the responses are in openai_responses.py.

Requests accept exactly what gpupool can honour. Every number is range-checked
(`seed` within int64 as OpenAI documents it; `max_tokens` within the model's limit;
no NaN or infinity anywhere), and a parameter the network does not implement
(`tools`, `response_format` other than text or json_object, `logprobs`, `n > 1`, audio, ...) or an
unknown field is refused with a 400 naming it, never silently ignored. Parameters
sent with their neutral value (`null`, `logprobs: false`, `n: 1`, `presence_penalty:
0`, ...) keep working, so clients that spell out defaults are served.

    body = parse(ChatCompletionRequest, raw_bytes)    # errors.InvalidRequest on anything wrong
    payload = body.payload(default_max_tokens=256, limit=ModelLimits(2048, 8192))

Sampled generation requests (temperature > 0) always reach the provider with a seed:
the client's, or a random one the gateway picks, because checkers can only audit a
sampled answer by replaying its seed (see `gpupool.verify.token_sampler`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gpupool import errors
from gpupool.gateway.edge import image_inputs

# The response builders, also read here by batches/shard.py (openai_api.chat_response, ...).
from gpupool.gateway.edge.openai_responses import (  # noqa: F401
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    embedding_response,
    usage,
)
from gpupool.images import DEFAULT_LIMITS, ImageLimits
from gpupool.protocol import ChatMessage, EmbedPayload, GeneratePayload
from gpupool.verify.token_sampler import GREEDY_BELOW

MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256
MAX_MESSAGES = 2048
MAX_CONTENT_PARTS = 256
MAX_NAME_CHARS = 256
MAX_EMBEDDING_DIMENSIONS = 65_536
# OpenAI documents `seed` as an int64; the wire (msgpack) could carry up to 2**64-1, but a
# value the official API refuses is refused here too.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
# No model generates 2**31 tokens: a ceiling that keeps every later sum in range.
MAX_TOKENS_CEILING = 2**31 - 1
# A token never covers more than this many characters (the longest vocabulary entries
# are runs of spaces or dashes well below it), so len(text) / this is a lower bound on
# the prompt's tokens: a prompt over the model's input limit even by that bound is refused
# at the edge instead of costing a provider a tokenizer pass (or worse).
MAX_CHARS_PER_TOKEN = 128

# Room in a generation request's body beyond its prompt text: roles, up to MAX_MESSAGES
# message envelopes, stop sequences and the sampling fields.
BODY_SLACK_BYTES = 256 * 1024
GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})

BodyT = TypeVar("BodyT", bound="_Body")

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
JSON_OBJECT = {"type": "json_object"}  # honoured only by backends that answer in JSON (inference.py checks)


@dataclass(frozen=True)
class ModelLimits:
    """What the providers of a model accept: most completion tokens, most prompt tokens."""

    max_output_tokens: int
    max_input_tokens: int


def parse(model: type[BodyT], raw: bytes) -> BodyT:
    """Validate a request body; any problem becomes one InvalidRequest naming the parameter."""
    try:
        body = model.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        kind = first.get("type")
        if kind == "json_invalid":
            raise errors.InvalidRequest("request body is not valid JSON") from None
        if kind == "model_type" and not first.get("loc"):
            raise errors.InvalidRequest("request body must be a JSON object") from None
        loc = [str(p) for p in first.get("loc", ())]
        # `messages.0.content.list[...]` -> `messages.0.content`: the union branch is noise.
        loc = [p for p in loc if not p.startswith(("list[", "str", "int", "dict["))] or loc
        where = ".".join(loc)
        if kind == "extra_forbidden":
            raise errors.InvalidRequest(f"Unrecognized request argument supplied: {where} (gpupool does not "
                                        "implement it; see docs/api.md)", param=where) from None
        msg = str(first.get("msg", "invalid request body")).removeprefix("Value error, ")
        raise errors.InvalidRequest(f"{where}: {msg}" if where else msg, param=where or None) from None
    body.refuse_unsupported()
    return body


def _refuse(param: str, why: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"{param}: {why} (see docs/api.md for what gpupool supports)", param=param,
                                 code="unsupported_parameter")


class _Body(BaseModel):
    model_config = _STRICT
    model: str = Field(min_length=1, max_length=256)
    # gpupool's own routing options (region, region_policy, max_price): gateway/edge/http.py reads them.
    gpupool: dict[str, Any] | None = None
    # Tags for the client's own abuse tracking at OpenAI; nothing to honour, nothing changes.
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=256)

    # Parameters OpenAI defines that gpupool does not implement: accepted only with a value
    # that asks for nothing (so clients spelling out defaults keep working), else refused.
    NEUTRAL: ClassVar[dict[str, tuple[Any, ...]]] = {}

    def refuse_unsupported(self) -> None:
        # Only what the client sent can ask for something (most requests send none of these).
        for name in self.model_fields_set.intersection(self.NEUTRAL):
            value = getattr(self, name)
            if value is not None and value not in self.NEUTRAL[name]:
                raise _refuse(name, f"{_unsupported_reason(name)}; send null or omit it")


def _unsupported_reason(name: str) -> str:
    reasons = {
        "tools": "tool calling is not implemented by the network's backends",
        "tool_choice": "tool calling is not implemented by the network's backends",
        "functions": "function calling is not implemented by the network's backends",
        "function_call": "function calling is not implemented by the network's backends",
        "parallel_tool_calls": "tool calling is not implemented by the network's backends",
        "response_format": "only {\"type\": \"text\"} or (for ocr models, which answer in JSON) "
                           "{\"type\": \"json_object\"} is supported",
        "logprobs": "log-probabilities are not returned by this gateway",
        "top_logprobs": "log-probabilities are not returned by this gateway",
        "audio": "audio output is not supported",
        "modalities": "only text output ([\"text\"]) is supported",
        "prediction": "predicted outputs are not supported",
        "frequency_penalty": "penalties are not implemented (only 0)",
        "presence_penalty": "penalties are not implemented (only 0)",
        "logit_bias": "logit bias is not implemented",
        "store": "completions are not stored (only false)",
        "metadata": "stored-completion metadata is not supported",
        "service_tier": "service tiers are not offered (only auto or default)",
        "reasoning_effort": "reasoning controls are not supported",
        "verbosity": "verbosity controls are not supported",
        "web_search_options": "web search is not supported",
        "best_of": "best_of other than 1 is not supported",
        "suffix": "suffix (insertion) is not supported",
        "echo": "echo=true is not supported",
    }
    return reasons.get(name, "not supported")


class ChatMessageIn(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    refusal: str | None = None  # an earlier assistant turn's refusal, echoed back: nothing to do
    tool_call_id: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    tool_calls: list[Any] | None = None
    # What an earlier answer carried, when a client sends it back as history (e.g.
    # `message.model_dump()`): citations are output-only; audio and calls must be empty.
    annotations: list[Any] | None = None
    function_call: Any = None
    audio: Any = None

    @field_validator("content")
    @classmethod
    def _few_parts(cls, v: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        if isinstance(v, list) and len(v) > MAX_CONTENT_PARTS:
            raise ValueError(f"at most {MAX_CONTENT_PARTS} content parts")
        return v

    @field_validator("tool_calls", "function_call", "audio")
    @classmethod
    def _nothing_we_cannot_replay(cls, v: Any) -> Any:
        if v:
            raise ValueError("tool calls and audio are not implemented by the network's backends")
        return v

    def message(self, i: int, images: ImageLimits) -> ChatMessage:
        """The wire's message: text parts joined, image parts checked (image_inputs.py)."""
        return image_inputs.chat_message(i, self.role, self.content, self.name or "", images)


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool | None = False
    # Random padding OpenAI adds against side channels; our events carry none, so nothing to turn off.
    include_obfuscation: bool | None = None


class _Sampling(_Body):
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, int] | None = Field(default=None, max_length=1024)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int | None) -> int | None:
        if v not in (None, 1):
            raise ValueError("only n=1 is supported")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence may have at most {MAX_STOP_CHARS} characters")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        for token, bias in (v or {}).items():
            if not token.isdigit() or len(token) > 10:
                raise ValueError(f"logit_bias keys are token ids, not {token[:20]!r}")
            if not -100 <= bias <= 100:
                raise ValueError("logit_bias values must be between -100 and 100")
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


def _output_tokens(requested: int | None, default: int, limit: ModelLimits | None, param: str) -> int:
    """The completion budget: the client's within the model's limit (400 above it), else the default."""
    if limit is None:
        return requested or default
    if requested is not None and requested > limit.max_output_tokens:
        raise errors.InvalidRequest(
            f"{param} is too large: {requested}. This model supports at most {limit.max_output_tokens} "
            "completion tokens", param=param)
    return requested or min(default, limit.max_output_tokens)


def generation_body_limit(path: str, largest_context: int | None, images: bool = False) -> tuple[int, str]:
    """The largest body a generation route can need: a JSON body holds at least one byte per
    prompt character, so one over the largest served context by MAX_CHARS_PER_TOKEN is refused
    (413) from its Content-Length, before the event loop parses megabytes of it. With a model
    that reads images (`images`), chat bodies carry them: only --max-body-bytes bounds those."""
    if images and path == "/v1/chat/completions":
        return 2**63, ""
    if path not in GENERATION_PATHS or largest_context is None:
        return 2**63, ""
    return (largest_context * MAX_CHARS_PER_TOKEN + BODY_SLACK_BYTES,
            f"no model served here takes a prompt that long (the largest context is {largest_context} tokens)")


def _check_prompt(chars: int, limit: ModelLimits | None, param: str) -> None:
    if limit is not None and chars // MAX_CHARS_PER_TOKEN > limit.max_input_tokens:
        raise errors.InvalidRequest(
            f"{param} is far longer than this model's context of {limit.max_input_tokens} tokens "
            f"({chars} characters)", param=param, code="context_length_exceeded")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CEILING)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CEILING)
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    parallel_tool_calls: Any = None
    response_format: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    store: Any = None
    metadata: Any = None
    service_tier: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None
    prompt_cache_key: str | None = Field(default=None, max_length=256)  # a cache hint: nothing to honour

    NEUTRAL: ClassVar[dict[str, tuple[Any, ...]]] = {
        "tools": ([],), "tool_choice": ("none",), "functions": ([],), "function_call": ("none",),
        "parallel_tool_calls": (True, False), "response_format": ({"type": "text"}, JSON_OBJECT),
        "logprobs": (False,),
        "top_logprobs": (0,), "audio": (), "modalities": (["text"],), "prediction": (), "store": (False,),
        "metadata": ({},), "service_tier": ("auto", "default"), "reasoning_effort": (), "verbosity": (),
        "web_search_options": (), "frequency_penalty": (0,), "presence_penalty": (0,), "logit_bias": ({},),
    }

    def image_param(self) -> str:
        """The parameter name of the request's first image, "" if it has none."""
        return image_inputs.chat_image_param([m.content for m in self.messages])

    def payload(self, default_max_tokens: int, limit: ModelLimits | None = None,
                images: ImageLimits = DEFAULT_LIMITS) -> GeneratePayload:
        """The wire's payload; with images (`image_param`), call it off the event loop: it checks them."""
        param = "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"
        messages = [m.message(i, images) for i, m in enumerate(self.messages)]
        image_inputs.check_total([image for m in messages for image in m.images], "messages")
        _check_prompt(sum(len(m.content) for m in messages), limit, "messages")
        return GeneratePayload(
            messages=messages,
            max_tokens=_output_tokens(self.max_completion_tokens or self.max_tokens, default_max_tokens, limit,
                                      param),
            temperature=self.temperature_or_default(),
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.replayable_seed(),
            stop=self.stop_list(),
            response_format="json_object" if self.response_format == JSON_OBJECT else "",
        )


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1, le=MAX_TOKENS_CEILING)  # OpenAI's documented default
    echo: bool | None = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    best_of: int | None = Field(default=None, ge=0, le=20)
    suffix: str | None = None

    NEUTRAL: ClassVar[dict[str, tuple[Any, ...]]] = {
        "echo": (False,), "logprobs": (), "best_of": (1,), "suffix": ("",), "frequency_penalty": (0,),
        "presence_penalty": (0,), "logit_bias": ({},),
    }

    @field_validator("prompt")
    @classmethod
    def _single_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("exactly one prompt per request is supported")
        return v

    def payload(self, limit: ModelLimits | None = None) -> GeneratePayload:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        _check_prompt(len(prompt), limit, "prompt")
        return GeneratePayload(
            prompt=prompt,
            max_tokens=_output_tokens(self.max_tokens, 16, limit, "max_tokens"),
            temperature=self.temperature_or_default(),
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.replayable_seed(),
            stop=self.stop_list(),
        )


class EmbeddingRequest(_Body):
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=MAX_EMBEDDING_DIMENSIONS)

    def image_param(self) -> str:
        """The parameter name of the first input that is an image data URL, "" if none."""
        return image_inputs.embedding_image_param([self.input] if isinstance(self.input, str) else self.input)

    def payload(self, max_inputs: int, limit: ModelLimits | None = None,
                images: ImageLimits = DEFAULT_LIMITS) -> EmbedPayload:
        """The wire's payload; with images (`image_param`), call it off the event loop: it checks them."""
        inputs = [self.input] if isinstance(self.input, str) else self.input
        if not inputs:
            raise errors.InvalidRequest("input must not be empty", param="input")
        if not all(isinstance(x, str) for x in inputs):
            raise errors.InvalidRequest("token-array inputs are not supported; send strings", param="input")
        if len(inputs) > max_inputs:
            raise errors.InvalidRequest(f"at most {max_inputs} inputs per request", param="input")
        if any(x == "" for x in inputs):
            raise errors.InvalidRequest("inputs must be non-empty strings", param="input")
        texts, found = image_inputs.embedding_inputs(list(inputs), images)  # type: ignore[arg-type]
        _check_prompt(max(len(x) for x in texts), limit, "input")
        return EmbedPayload(inputs=texts, images=found)
