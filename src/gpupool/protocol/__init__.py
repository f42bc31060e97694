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

The messages live in one module per family, all imported from here (`gpupool.protocol` is
the one import point): `session.py` (handshake, pings, drain), `offer.py`, `work.py`
(requests, answers, receipts, statements), `audit.py` (audits, verdicts, hardware proofs),
`codec.py` (frames), `signing.py` (what signatures cover), `base.py` (version, limits,
close codes).
"""

from __future__ import annotations

from gpupool.identity import Identity
from gpupool.protocol.audit import AuditJob, HardwareAnswer, HardwareChallenge, Verdict
from gpupool.protocol.base import (
    CLOSE_BAD_SIGNATURE,
    CLOSE_BAD_VERSION,
    CLOSE_DUPLICATE,
    CLOSE_GATEWAY_SHUTDOWN,
    CLOSE_HANDSHAKE_TIMEOUT,
    CLOSE_LIMIT,
    CLOSE_NOT_ADMITTED,
    CLOSE_PROTOCOL_ERROR,
    INPUT_KINDS,
    MAX_BATCH_ITEMS,
    MAX_FRAME_BYTES,
    MAX_OFFER_FRAME_BYTES,
    MAX_STATEMENT_DIGESTS,
    MAX_UNPROVEN_FRAME_BYTES,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Task,
)
from gpupool.protocol.codec import Message, ProtocolError, decode, encode, list_lengths
from gpupool.protocol.offer import GpuInfo, Hardware, LoadReport, ModelOffer, Offer
from gpupool.protocol.session import (
    Challenge,
    Drain,
    Hello,
    Ping,
    Pong,
    Proof,
    SettlementAddress,
    Welcome,
)
from gpupool.protocol.signing import (
    operator_bytes,
    operator_ok,
    payload_hash,
    receipt_digest,
    sign_offer,
    signed_bytes,
    statement_bytes,
    verify_claim,
    verify_statement,
)
from gpupool.protocol.work import (
    Batch,
    Cancel,
    ChatMessage,
    Chunk,
    Done,
    EmbedPayload,
    Fail,
    GeneratePayload,
    Image,
    Payload,
    Receipt,
    Run,
    Statement,
    Usage,
    image_count,
)
from gpupool.protocol_hashes import output_hash, tokens_hash

__all__ = [
    "CLOSE_BAD_SIGNATURE", "CLOSE_BAD_VERSION", "CLOSE_DUPLICATE", "CLOSE_GATEWAY_SHUTDOWN", "CLOSE_HANDSHAKE_TIMEOUT",
    "CLOSE_LIMIT", "CLOSE_NOT_ADMITTED", "CLOSE_PROTOCOL_ERROR", "INPUT_KINDS", "MAX_BATCH_ITEMS", "MAX_FRAME_BYTES",
    "MAX_OFFER_FRAME_BYTES", "MAX_STATEMENT_DIGESTS", "MAX_UNPROVEN_FRAME_BYTES", "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS", "AuditJob", "Batch", "Cancel", "Challenge", "ChatMessage", "Chunk", "Done", "Drain",
    "EmbedPayload", "Fail", "GeneratePayload", "GpuInfo", "Hardware", "HardwareAnswer", "HardwareChallenge", "Hello",
    "Identity", "Image", "LoadReport", "Message", "ModelOffer", "Offer", "Payload", "Ping", "Pong", "Proof",
    "ProtocolError", "Receipt", "Run", "SettlementAddress", "Statement", "Task", "Usage", "Verdict", "Welcome",
    "decode", "encode", "image_count", "list_lengths", "operator_bytes", "operator_ok", "output_hash",
    "payload_hash", "receipt_digest", "sign_offer", "signed_bytes", "statement_bytes", "tokens_hash",
    "verify_claim", "verify_statement",
]
