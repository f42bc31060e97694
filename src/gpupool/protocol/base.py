"""The protocol's version, frame-size limits, WebSocket close codes and the base of every message."""

from __future__ import annotations

from typing import Literal

import msgspec

# 2: the Proof signs the host the peer dialled (protocol_handshake.py); 3: hardware challenges
# derive A and B from the stream's bytes (verify/hardware.py), so a version-2 provider would
# answer every proof wrongly: it is refused at the Hello instead.
PROTOCOL_VERSION = 3
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
