"""Frames: every message is one msgpack-encoded binary WebSocket frame, a tagged union on `t`.

    frame = encode(Ping(1, time.time()))
    msg = decode(frame)          # ProtocolError on a text frame, an oversized one or garbage
"""

from __future__ import annotations

from typing import Union

import msgspec

from gpupool import frame_lists
from gpupool.protocol.audit import AuditJob, HardwareAnswer, HardwareChallenge, Verdict
from gpupool.protocol.base import MAX_FRAME_BYTES
from gpupool.protocol.offer import LoadReport, Offer
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
from gpupool.protocol.work import Batch, Cancel, Chunk, Done, Fail, Run, Statement

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


def list_lengths(frame: bytes) -> dict[str, int]:
    """`frame_lists.list_lengths` (top-level list lengths from their headers); garbage: ProtocolError."""
    try:
        return frame_lists.list_lengths(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from exc
