"""The one wire protocol between gateways, providers and (later) checkers.

Every message is a msgspec struct, sent as one msgpack-encoded binary WebSocket
frame. Messages form a tagged union on the ``t`` field, so a frame decodes
straight into the right type and anything else is rejected as garbage.

Handshake (provider dials out to the gateway, so providers work behind NAT)::

    provider                         gateway
       Hello(version, public key) ──▶
                                  ◀── Challenge(nonce)       (or close: bad version)
       Proof(sig over nonce, host dialled), Offer ─▶   (protocol_handshake.py)
                                  ◀── Welcome(session)       (or close: bad signature)

Then the gateway sends Run / Cancel / Ping and the provider answers with
Chunk* then Done (carrying a Receipt) or Fail, LoadReport, Pong, Drain, and
every ~50 ms a Statement: one signature over the digests of the receipts it sent
since the last one.

Claims (Offer, Receipt) are signed by the provider's ed25519 key over their
canonical msgpack encoding with the signature field emptied; see ``signed_bytes``.
A receipt is bound to the provider either by its own signature or by a signed
Statement listing its digest. Statements exist because one ed25519 check costs
more than routing a request: signing each receipt made both ends pay that per
request, a statement pays it once per ~50 ms per provider.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal, Union

import msgspec

from gpupool import frame_lists
from gpupool.identity import Identity, verify_signature
from gpupool.protocol_hashes import output_hash, tokens_hash  # noqa: F401 - part of the protocol's API
# Peer-sent numbers and strings are bounded by their types: decoding refuses a NaN or a 2**64 count.
from gpupool.protocol_limits import (Capacity, Concurrency, Count, Description, Latitude, LogProb, Longitude, Micro,
                                     ModelName, Rate, Region, Score, Seq, ShortStr, Timestamp, TokenId)

PROTOCOL_VERSION = 2  # 2: the Proof signs the host the peer dialled (protocol_handshake.py)
SUPPORTED_VERSIONS = frozenset({PROTOCOL_VERSION})

# Largest frame a peer may send; larger frames are a protocol violation.
MAX_FRAME_BYTES = 16 * 1024 * 1024
# Before a peer has proven its key it may only send small frames: a Hello or a Proof is
# under 200 bytes, so a few KiB leaves room for an `agent` string and nothing more. Checked
# on the raw frame, before decoding, so a 16 MB Hello costs the gateway no parsing.
MAX_UNPROVEN_FRAME_BYTES = 4 * 1024
# The Offer comes right after the Proof: a signed list of (bounded) model offers.
MAX_OFFER_FRAME_BYTES = 256 * 1024

# WebSocket close codes (4000-4999 are for applications).
CLOSE_BAD_VERSION = 4001
CLOSE_BAD_SIGNATURE = 4002
CLOSE_PROTOCOL_ERROR = 4003
CLOSE_HANDSHAKE_TIMEOUT = 4004
CLOSE_DUPLICATE = 4005
CLOSE_GATEWAY_SHUTDOWN = 4006
# Most items a peer puts in one Batch, and digests in one Statement. A gateway refuses more
# only above its own limits (GatewaySettings, default 4096), which must not be set below these.
MAX_BATCH_ITEMS = 1024
MAX_STATEMENT_DIGESTS = 1024

CLOSE_NOT_ADMITTED = 4007  # a checker the gateway's operator has not admitted
CLOSE_LIMIT = 4008  # a peer went over a per-session limit (offer size, prices, queued output)

Task = Literal["embeddings", "generate"]
INPUT_KINDS = ("text", "image")  # what ModelOffer.accepts may list; a receiver refuses others


class _Msg(msgspec.Struct, tag_field="t", forbid_unknown_fields=False, omit_defaults=True):
    """Base of all wire messages; unknown fields are tolerated so newer peers interoperate."""


# ---------------------------------------------------------------- handshake


class Hello(_Msg, tag="hello"):
    version: int
    public_key: bytes  # raw 32-byte ed25519 public key
    agent: str = ""  # software name/version, informational


class Challenge(_Msg, tag="challenge"):
    nonce: bytes
    gateway_id: str
    version: int = PROTOCOL_VERSION


class Proof(_Msg, tag="proof"):
    signature: bytes  # ed25519 over protocol_handshake.challenge_bytes(nonce, gateway_id, host)
    host: ShortStr = ""  # the host[:port] the peer dialled (what its WebSocket request's Host said)


class Welcome(_Msg, tag="welcome"):
    session: str
    node_id: str
    # Set when the gateway settles on an EVM ledger: providers then sign each receipt's
    # cost with their secp256k1 settlement key too (see ledger/settlement_key.py).
    contract: str = ""
    chain_id: int = 0


class SettlementAddress(_Msg, tag="settlement_address"):
    """Provider -> gateway after a Welcome naming a contract: its settlement key, and its consent
    (`registration`: the key's signature binding it to this provider in that contract)."""

    address: str
    registration: bytes


# ---------------------------------------------------------------- offer


class ModelOffer(msgspec.Struct, omit_defaults=True):
    name: ModelName  # the gateway's --max-model-name bounds it further
    task: Task
    backend: ShortStr  # embeddings | generate | upstream | echo
    description: Description = ""
    max_input_tokens: Count = 8192
    max_output_tokens: Count = 2048
    dimensions: Count = 0  # embeddings only
    # Prices in micro-credits per 1M tokens (market issue fills these in).
    price_in: Micro = 0
    price_out: Micro = 0
    price_image: Micro = 0  # µcr per image in a request, beside the token prices (models that read images)
    # Speed the provider claims; routing uses it (capped) only until it has measured.
    claimed_prefill_tps: Rate = 0.0
    claimed_decode_tps: Rate = 0.0
    claimed_items_per_s: Rate = 0.0
    # Inputs the model reads, from INPUT_KINDS. Empty means text only (offers from before images).
    accepts: Annotated[list[ShortStr], msgspec.Meta(max_length=8)] = []


class GpuInfo(msgspec.Struct, omit_defaults=True):
    name: ShortStr
    memory_mb: Count
    uuid: ShortStr = ""


class Hardware(msgspec.Struct, omit_defaults=True):
    cpu: ShortStr
    cpu_cores: Count
    memory_mb: Count
    gpus: Annotated[list[GpuInfo], msgspec.Meta(max_length=256)] = []


class Offer(_Msg, tag="offer"):
    node_id: ShortStr
    models: list[ModelOffer]
    hardware: Hardware
    region: Region
    max_concurrency: Concurrency
    issued_at: Timestamp
    latitude: Latitude = 0.0
    longitude: Longitude = 0.0
    # "provider" serves client traffic; "checker" holds reference models and judges audit jobs.
    role: ShortStr = "provider"
    # Optional: the public key of the node's operator, and its signature over
    # `operator_bytes(node_id)`. Nodes of one operator never audit each other.
    operator: bytes = b""
    operator_sig: bytes = b""
    signature: bytes = b""


class LoadReport(_Msg, tag="load"):
    in_flight: Capacity
    queued: Capacity
    capacity: Capacity


# ---------------------------------------------------------------- work


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


class AuditJob(_Msg, tag="audit"):
    """Gateway -> checker: re-run a served request and judge the provider's committed answer.

    Sent after the provider committed (its receipt is in hand), so it cannot know which
    of its answers are audited. The output travels as the provider sent it. It carries
    only what the check needs: the request (which the checker must see to re-run it),
    the provider's signed receipt and output; never the client's account, key or address.
    """

    job_id: str
    model: str
    payload: Payload
    receipt: Receipt
    vectors: bytes = b""  # embeddings: the provider's float32 rows
    dimensions: Count = 0
    text: str = ""  # generation: the provider's text
    token_ids: list[TokenId] = []  # generation: the committed tokens, when the provider sent them
    logprobs: list[LogProb] = []
    # The gateway is waiting on this verdict (probation, a recheck after a failure, a fraud
    # confirmation): judge it at once instead of holding it for a shared batch.
    urgent: bool = False


class Verdict(_Msg, tag="verdict"):
    """Checker -> gateway: its signed judgement of one audit job (evidence for suspension and slashing)."""

    job_id: str
    request_id: str
    provider: str  # node id of the audited provider
    checker: str  # node id of the checker
    passed: bool
    hard: bool  # wrong model, garbage, bad signature: suspend at once
    reason: str
    score: Score
    issued_at: Timestamp
    signature: bytes = b""


# ---------------------------------------------------------------- hardware proof (verify/hardware.py)


class HardwareChallenge(_Msg, tag="hw_challenge"):
    """Gateway -> provider: prove the claimed hardware by computing C = A·B.

    A and B (n×n, integers in [-value_range, value_range]) derive from `seed`; see
    `gpupool.verify.hardware`. Round one (`open_rows` empty): compute C and commit to it.
    Round two, same `challenge_id`: open the listed rows of the committed C — chosen only
    after the commitment arrived, so a provider cannot compute just those rows.
    """

    challenge_id: str
    seed: int
    n: int
    value_range: int
    open_rows: list[int] = []


class HardwareAnswer(_Msg, tag="hw_answer"):
    """Provider -> gateway: round one carries `row_digests` (SHA-256 of each row of C as
    little-endian int64) and the provider's own timing; round two carries `rows`, the
    requested rows as little-endian int64 bytes, in the order they were asked for."""

    challenge_id: str
    row_digests: list[bytes] = []
    elapsed_s: Rate = 0.0
    rows: list[bytes] = []
    device: ShortStr = ""  # informational: where the provider computed C ("cpu", "cuda")


class Drain(_Msg, tag="drain"):
    reason: str = ""


class Ping(_Msg, tag="ping"):
    nonce: int
    sent_at: float


class Pong(_Msg, tag="pong"):
    nonce: int
    sent_at: float


Message = Union[
    Hello, Challenge, Proof, Welcome, Offer, LoadReport, Run, Cancel, Chunk, Done, Fail,
    Batch, Statement, SettlementAddress, AuditJob, Verdict, Drain, Ping, Pong,
    HardwareChallenge, HardwareAnswer,
]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


class ProtocolError(Exception):
    """A peer sent bytes that are not a valid message of this protocol."""


def encode(msg: Message) -> bytes:
    return _encoder.encode(msg)


def decode(frame: bytes | str) -> Message:
    if isinstance(frame, str):
        raise ProtocolError("text frame received; the protocol uses binary msgpack frames")
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        return _decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from exc


# ---------------------------------------------------------------- signing


def list_lengths(frame: bytes) -> dict[str, int]:
    """`frame_lists.list_lengths` (top-level list lengths from their headers); garbage: ProtocolError."""
    try:
        return frame_lists.list_lengths(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from exc


def operator_bytes(node_id: str) -> bytes:
    """What an operator's key signs to vouch that `node_id` is one of its nodes (Offer.operator_sig)."""
    return b"gpupool-operator-v1\x00" + node_id.encode()


def sign_offer(offer: Offer, node: Identity, operator: Identity | None = None) -> Offer:
    """The offer signed by its node, and vouched for by its operator's key where it has one."""
    if operator is not None:
        offer = msgspec.structs.replace(offer, operator=operator.public_key,
                                        operator_sig=operator.sign(operator_bytes(offer.node_id)))
    return msgspec.structs.replace(offer, signature=node.sign(signed_bytes(offer)))


def operator_ok(offer: Offer) -> bool:
    """No operator claimed, or a valid one: a 32-byte key whose signature vouches for this node."""
    if not offer.operator:
        return not offer.operator_sig
    return len(offer.operator) == 32 and verify_signature(offer.operator, offer.operator_sig,
                                                          operator_bytes(offer.node_id))


def signed_bytes(claim: Offer | Receipt | Verdict) -> bytes:
    """Canonical bytes a signature covers: the msgpack encoding with the signature emptied."""
    return b"gpupool-" + type(claim).__name__.lower().encode() + b"-v1\x00" + _encoder.encode(
        msgspec.structs.replace(claim, signature=b"")
    )


def verify_claim(claim: Offer | Receipt | Verdict, public_key: bytes) -> bool:
    return verify_signature(public_key, claim.signature, signed_bytes(claim))


def receipt_digest(receipt: Receipt) -> bytes:
    """What a Statement lists for a receipt: the hash of its canonical bytes (signature excluded)."""
    return hashlib.sha256(signed_bytes(receipt)).digest()


def statement_bytes(seq: int, digests: list[bytes]) -> bytes:
    # `seq` is 0..2**63-1 once decoded; masked so that a locally built one cannot raise either.
    return b"gpupool-statement-v1\x00" + (seq & (2**64 - 1)).to_bytes(8, "big") + b"".join(digests)


def verify_statement(st: Statement, public_key: bytes) -> bool:
    if any(len(d) != 32 for d in st.digests):
        return False
    return verify_signature(public_key, st.signature, statement_bytes(st.seq, st.digests))


def payload_hash(payload: Payload) -> bytes:
    """Hash of a request's input both sides compute alike (canonical msgpack), each image's bytes replaced
    by their SHA-256: a receipt commits to images without holding them (no images: hashed as before)."""
    return hashlib.sha256(_encoder.encode(_hashed_images(payload))).digest()


def _hashed_images(payload: Payload) -> Payload:
    def digests(images: list[Image]) -> list[Image]:
        return [msgspec.structs.replace(i, data=hashlib.sha256(i.data).digest()) for i in images]

    if isinstance(payload, EmbedPayload):
        return msgspec.structs.replace(payload, images=digests(payload.images)) if payload.images else payload
    if not any(m.images for m in payload.messages):
        return payload
    messages = [msgspec.structs.replace(m, images=digests(m.images)) for m in payload.messages]
    return msgspec.structs.replace(payload, messages=messages)
