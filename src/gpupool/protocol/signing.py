"""What signatures cover: claims (Offer, Receipt, Verdict) over their canonical msgpack encoding with
the signature emptied, Statements over receipt digests, operators vouching for their nodes, and
the input hash a receipt commits to."""

from __future__ import annotations

import hashlib

import msgspec

from gpupool.identity import Identity, verify_signature
from gpupool.protocol.audit import Verdict
from gpupool.protocol.offer import Offer
from gpupool.protocol.work import EmbedPayload, Image, Payload, Receipt, Statement

_encoder = msgspec.msgpack.Encoder()  # canonical: the same bytes on every peer


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
