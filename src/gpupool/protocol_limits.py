"""Bounds on what a peer may put in a wire message, checked by msgspec while decoding.

A frame whose numbers or strings fall outside these types is refused by
`protocol.decode` like any other garbage: the receiver disconnects the peer and records
it (`garbage_frame`). So nothing a peer sends can overflow a database column
(PostgreSQL `integer` is 32-bit), make `struct.pack` raise while hashing, or poison a
float with NaN or infinity. Every limit is far above what an honest peer sends; an
operator's own, tighter limits (GatewaySettings, "Peer limits") are checked after
decoding. docs/security.md lists them.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

INT32_MAX = 2**31 - 1  # PostgreSQL `integer`, the `<i` of tokens_hash
INT63_MAX = 2**63 - 1  # PostgreSQL `bigint`, the 8 bytes of statement_bytes
FLOAT32_MAX = 3.4028234663852886e38  # the `<f` of tokens_hash
MAX_TOKENS = INT32_MAX  # token counts in a receipt's usage, token ids
MAX_CONCURRENCY = 4_096  # requests one node runs at once (a large engine runs ~1,024)
MAX_CAPACITY = 65_536  # running plus queued, in a LoadReport
MAX_SHORT_STR = 256  # node ids, model and hardware names, roles, reasons
MAX_REGION = 64  # a region: "eu-west", "us-east-1"
MAX_DESCRIPTION = 1_024  # a model's description
MAX_MODEL_NAME = 8_192  # loose: the gateway's --max-model-name (default 128) refuses with a clearer reason
MAX_TIMESTAMP = 1e11  # seconds since 1970: the year 5138

# A count or size a peer states: never negative, fits a 32-bit column.
Count = Annotated[int, Meta(ge=0, le=INT32_MAX)]
# µcr amounts (prices per 1M tokens): a 64-bit column. The gateway bounds prices further.
Micro = Annotated[int, Meta(ge=0, le=INT63_MAX)]
Seq = Annotated[int, Meta(ge=0, le=INT63_MAX)]
TokenId = Annotated[int, Meta(ge=0, le=MAX_TOKENS)]
# Finite floats (NaN fails every comparison, so a bound refuses it too).
LogProb = Annotated[float, Meta(ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
Rate = Annotated[float, Meta(ge=0, le=1e12)]  # tokens or items per second, a duration
Score = Annotated[float, Meta(ge=-1e12, le=1e12)]
Timestamp = Annotated[float, Meta(ge=0, le=MAX_TIMESTAMP)]
Latitude = Annotated[float, Meta(ge=-90, le=90)]
Longitude = Annotated[float, Meta(ge=-180, le=180)]
Concurrency = Annotated[int, Meta(ge=0, le=MAX_CONCURRENCY)]
Capacity = Annotated[int, Meta(ge=0, le=MAX_CAPACITY)]
ShortStr = Annotated[str, Meta(max_length=MAX_SHORT_STR)]
Region = Annotated[str, Meta(max_length=MAX_REGION)]
Description = Annotated[str, Meta(max_length=MAX_DESCRIPTION)]
ModelName = Annotated[str, Meta(max_length=MAX_MODEL_NAME)]
