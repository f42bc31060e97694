"""Wire protocol round trips, signatures over claims, and key files."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupool import protocol
from gpupool.identity import Identity, node_id_for, verify_signature
from gpupool.protocol import (
    ChatMessage, Done, EmbedPayload, GeneratePayload, Hardware, ModelOffer, Offer, Receipt, Run, Usage,
)


def test_every_message_round_trips() -> None:
    msgs = [
        protocol.Hello(1, b"k" * 32, "x"), protocol.Challenge(b"n", "gw"), protocol.Proof(b"s"),
        protocol.Welcome("s", "n"), protocol.LoadReport(1, 2, 3), protocol.Cancel("r"),
        protocol.Chunk("r", 0, "hi"), protocol.Fail("r", "c", "m", True), protocol.Drain("bye"),
        protocol.Ping(1, 2.5), protocol.Pong(1, 2.5),
        Run("r", "m", EmbedPayload(["a"])),
        Run("r", "m", GeneratePayload(messages=[ChatMessage("user", "hi")], seed=3, stop=["x"])),
        Done("r", Receipt("r", "n", "m", b"i", b"o", Usage(1, 2)), text="t"),
    ]
    for msg in msgs:
        assert protocol.decode(protocol.encode(msg)) == msg


@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    try:
        protocol.decode(data)
    except protocol.ProtocolError:
        pass


def test_text_and_oversized_frames_are_protocol_errors() -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode("text")
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(b"\x00" * (protocol.MAX_FRAME_BYTES + 1))


def test_unknown_fields_are_tolerated_for_forward_compatibility() -> None:
    raw = msgspec.msgpack.encode({"t": "cancel", "request_id": "r", "new_field": 1})
    assert protocol.decode(raw) == protocol.Cancel("r")


def offer(ident: Identity) -> Offer:
    o = Offer(ident.node_id, [ModelOffer("m", "generate", "echo")], Hardware("cpu", 2, 100), "eu", 4, time.time())
    return msgspec.structs.replace(o, signature=ident.sign(protocol.signed_bytes(o)))


def test_signed_claims_verify_and_any_change_breaks_them() -> None:
    ident = Identity.generate()
    o = offer(ident)
    assert protocol.verify_claim(o, ident.public_key)
    assert not protocol.verify_claim(msgspec.structs.replace(o, region="us"), ident.public_key)
    assert not protocol.verify_claim(o, Identity.generate().public_key)
    r = Receipt("r", ident.node_id, "m", b"i", b"o", Usage(3, 4))
    r = msgspec.structs.replace(r, signature=ident.sign(protocol.signed_bytes(r)))
    assert protocol.verify_claim(r, ident.public_key)
    assert not protocol.verify_claim(msgspec.structs.replace(r, usage=Usage(3, 400)), ident.public_key)
    # A receipt signature is not valid as an offer signature (domain separation).
    assert protocol.signed_bytes(r) != protocol.signed_bytes(o)


def test_payload_hash_is_canonical() -> None:
    a = GeneratePayload(messages=[ChatMessage("user", "hi")], temperature=0.7)
    b = protocol.decode(protocol.encode(Run("r", "m", a))).payload  # type: ignore[union-attr]
    assert protocol.payload_hash(a) == protocol.payload_hash(b)
    assert protocol.payload_hash(a) != protocol.payload_hash(GeneratePayload(prompt="hi"))


def test_key_file_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "node.key"
    first = Identity.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = Identity.load_or_create(path)
    assert again.public_key == first.public_key and again.node_id == node_id_for(first.public_key)
    assert verify_signature(first.public_key, first.sign(b"x"), b"x")
    assert "private_key" not in repr(first)
    path.write_bytes(b"short")
    with pytest.raises(ValueError):
        Identity.load_or_create(path)
