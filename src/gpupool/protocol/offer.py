"""What a provider (or checker) announces: its models with prices and claimed speeds, its hardware, its load."""

from __future__ import annotations

from typing import Annotated

import msgspec

from gpupool.protocol.base import Task, _Msg
from gpupool.protocol_limits import (
    Capacity,
    Concurrency,
    Count,
    Description,
    Latitude,
    Longitude,
    Micro,
    ModelName,
    Rate,
    Region,
    ShortStr,
    Timestamp,
)


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
