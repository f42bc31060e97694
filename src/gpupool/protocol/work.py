"""Requests and their answers: the payloads, Run and Cancel, Chunk / Done / Fail, the Receipt a
provider commits to, and the Statement that signs many receipts at once."""

from __future__ import annotations

from typing import Union

import msgspec

from gpupool.protocol.base import _Msg
from gpupool.protocol_limits import Count, LogProb, Seq, ShortStr, Timestamp, TokenId


class Image(msgspec.Struct, omit_defaults=True):
    """Image bytes as the client sent them (PNG, JPEG or WebP; `gpupool.images` checks them).

    `at` places it: in a ChatMessage, the character offset in `content` it sits at (-1: after
    the text); in an EmbedPayload, the index of the input it is (that input is "")."""

    media_type: str
    data: bytes
    at: int = -1


class ChatMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str  # the message's text parts, joined: all a text-only model reads
    name: str = ""
    # Only for models whose offer accepts "image": a peer from before images ignores this field.
    images: list[Image] = []


class EmbedPayload(msgspec.Struct, tag="embed", tag_field="k", omit_defaults=True):
    inputs: list[str]
    images: list[Image] = []  # inputs that are images (their `inputs` entry is "")


class GeneratePayload(msgspec.Struct, tag="gen", tag_field="k", omit_defaults=True):
    # Exactly one of messages (chat) or prompt (plain completion) is set.
    messages: list[ChatMessage] = []
    prompt: str = ""
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = []
    # Failover mid-stream: text a previous provider already streamed to the client.
    # The provider continues this text (it is the start of the answer, not a new turn).
    continue_text: str = ""
    response_format: str = ""  # "json_object": the answer is one JSON object (the ocr backend's boxes)


Payload = Union[EmbedPayload, GeneratePayload]


def image_count(payload: Payload) -> int:
    """How many images a request carries (embedding inputs or chat message parts): each is priced."""
    if isinstance(payload, EmbedPayload):
        return len(payload.images)
    return sum(len(m.images) for m in payload.messages)


class Run(_Msg, tag="run"):
    request_id: str
    model: str
    payload: Payload
    deadline_ms: int = 60_000
    # False: the gateway wants only Done (with the full text), no Chunk per token.
    stream: bool = True


class Cancel(_Msg, tag="cancel"):
    request_id: str


class Chunk(_Msg, tag="chunk"):
    request_id: str
    seq: Seq
    text: str


class Usage(msgspec.Struct):
    prompt_tokens: Count
    completion_tokens: Count = 0


class Receipt(msgspec.Struct, omit_defaults=True):
    """What the provider commits to: signed, so it can be held against it later."""

    request_id: str
    node_id: str
    model: str
    input_hash: bytes
    output_hash: bytes
    usage: Usage
    finish_reason: ShortStr = ""
    issued_at: Timestamp = 0.0
    tokens_hash: bytes = b""  # generation: commits to Done.token_ids and Done.logprobs (see tokens_hash)
    signature: bytes = b""


class Done(_Msg, tag="done"):
    request_id: str
    receipt: Receipt
    # Embeddings: little-endian float32 rows, one per input, each `dimensions` long.
    vectors: bytes = b""
    dimensions: Count = 0
    # Generation: the full text (streamed chunks concatenate to exactly this).
    text: str = ""
    # On an EVM ledger: the settlement key's signature over this request's cost (65 bytes).
    settlement_sig: bytes = b""
    # Generation by a backend that runs the model: the chosen token ids and their
    # log-probabilities, for audits (never sent on to the client).
    token_ids: list[TokenId] = []
    logprobs: list[LogProb] = []


class Fail(_Msg, tag="fail"):
    request_id: str
    code: str
    message: str
    retryable: bool = False


class Batch(_Msg, tag="batch"):
    """Several answers' messages in one frame: under load a provider sends what is
    ready together, saving a frame (and its parsing) per token on both sides."""

    items: list[Union[Chunk, Done, Fail]]


class Statement(_Msg, tag="statement"):
    """The provider's signature over receipts it sent: `digests` are `receipt_digest`s, in order."""

    seq: Seq
    digests: list[bytes]
    signature: bytes = b""
