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

from gpupool import protocol, protocol_limits
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


def _offer(**fields: object) -> protocol.Offer:
    offer = protocol.Offer(node_id="gp1", models=[protocol.ModelOffer("m", "generate", "echo")],
                           hardware=protocol.Hardware("cpu", 8, 16_384, [protocol.GpuInfo("H100", 81_559, "GPU-1")]),
                           region="eu-west", max_concurrency=1_024, issued_at=time.time(),
                           latitude=-33.9, longitude=151.2)
    return msgspec.structs.replace(offer, **fields)


@pytest.mark.parametrize("bad", [
    _offer(latitude=float("nan")), _offer(latitude=91.0), _offer(longitude=float("-inf")),
    _offer(max_concurrency=10**6), _offer(max_concurrency=-1), _offer(region="r" * 65),
    _offer(node_id="n" * 257), _offer(issued_at=float("inf")),
    _offer(hardware=protocol.Hardware("c" * 257, 8, 1)),
    _offer(hardware=protocol.Hardware("cpu", 8, 2**40)),
    _offer(models=[protocol.ModelOffer("m", "generate", "echo", description="d" * 1_025)]),
    _offer(models=[protocol.ModelOffer("m", "generate", "echo", price_in=-1)]),
    _offer(models=[protocol.ModelOffer("m", "generate", "echo", claimed_decode_tps=float("nan"))]),
    protocol.LoadReport(0, 0, protocol_limits.MAX_CAPACITY + 1),
    protocol.Statement(-1, []),
    protocol.Done("r", protocol.Receipt("r", "n", "m", b"", b"", protocol.Usage(2**64 - 1, 1))),
    protocol.Done("r", protocol.Receipt("r", "n", "m", b"", b"", protocol.Usage(1, 2**31))),
    protocol.Done("r", protocol.Receipt("r", "n", "m", b"", b"", protocol.Usage(1)), token_ids=[2**31]),
    protocol.Done("r", protocol.Receipt("r", "n", "m", b"", b"", protocol.Usage(1)), token_ids=[-1]),
    protocol.Done("r", protocol.Receipt("r", "n", "m", b"", b"", protocol.Usage(1)), logprobs=[1e39]),
    protocol.Done("r", protocol.Receipt("r", "n", "m", b"", b"", protocol.Usage(1)), logprobs=[float("nan")]),
    protocol.Verdict("j", "r", "p", "c", False, False, "wrong", float("nan"), 0.0),
], ids=lambda m: type(m).__name__)
def test_decoding_refuses_numbers_and_strings_out_of_bounds(bad: protocol.Message) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(protocol.encode(bad))


def test_generous_bounds_pass_and_hashing_is_total() -> None:
    limits = protocol_limits
    good = [_offer(), _offer(latitude=90.0, longitude=-180.0, max_concurrency=limits.MAX_CONCURRENCY,
                             region="r" * limits.MAX_REGION),
            protocol.LoadReport(limits.MAX_CAPACITY, limits.MAX_CAPACITY, limits.MAX_CAPACITY),
            protocol.Done("r", protocol.Receipt("r", "n", "m", b"", b"", protocol.Usage(2**31 - 1, 2**31 - 1)),
                          token_ids=[0, 2**31 - 1], logprobs=[-3.4e38, 0.0])]
    for msg in good:
        assert protocol.decode(protocol.encode(msg)) == msg
    # Built locally, out of range: the hashes still answer (and differ from in-range ones), never raise.
    for ids, lps in (([2**31], [0.0]), ([1], [1e39]), ([-2**40], [])):
        assert len(protocol.tokens_hash(ids, lps)) == 32
    assert protocol.tokens_hash([1], [0.5]) != protocol.tokens_hash([1], [1e39])
    assert protocol.statement_bytes(2**70, []) and protocol.statement_bytes(-1, [])
