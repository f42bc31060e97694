"""The hashes a receipt commits to for an answer: its output text or vectors, its tokens.

Split out of the protocol (`gpupool.protocol` re-exports them) to keep that file readable; both
sides of the wire compute them alike.
"""

from __future__ import annotations

import hashlib
import struct

import msgspec

_encoder = msgspec.msgpack.Encoder()


def tokens_hash(token_ids: list[int], logprobs: list[float]) -> bytes:
    """What a receipt commits to for the generated tokens: int32 ids, then float32 log-probs (LE).
    Values out of range (decoding refuses them from a peer) hash their msgpack: it never raises."""
    try:
        packed = struct.pack(f"<{len(token_ids)}i{len(logprobs)}f", *token_ids, *logprobs)
    except (struct.error, OverflowError):
        packed = b"out-of-range\x00" + _encoder.encode([token_ids, logprobs])
    return hashlib.sha256(packed).digest()


def output_hash(data: bytes | str) -> bytes:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).digest()
