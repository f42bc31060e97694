"""The gateway's tables (SQLAlchemy 2 declarative): API keys, providers, peer events, the request log.

`Store` (store.py) reads and writes them; its batching writer (store_writer.py) appends log rows.
Columns added after the first release carry a server default, so `db.create_tables` adds them to
databases made by older gpupools in place.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import BigInteger, Boolean, Float, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    hint: Mapped[str] = mapped_column(String(16))  # first characters, for humans listing keys
    # The ledger account the key spends from (server defaults: added to older databases in place).
    account: Mapped[str] = mapped_column(String(64), default="", server_default="default")
    created_at: Mapped[float] = mapped_column(Float)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    # Per-key limits (gateway/money/limits.py); 0 = the gateway's default. Server defaults, so
    # `add_missing_columns` adds them to databases made by older gpupools in place.
    rpm: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    tpm: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    max_concurrency: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ProviderRow(Base):
    __tablename__ = "providers"
    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64))
    region: Mapped[str] = mapped_column(String(64))
    models: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)


class PeerEventRow(Base):
    """Misbehaviour and lifecycle of peers: bad signatures, garbage frames, disconnects."""

    __tablename__ = "peer_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    peer: Mapped[str] = mapped_column(String(128), index=True)  # node id, or address if unknown
    kind: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)


class RequestRow(Base):
    __tablename__ = "requests"
    # /v1/account pages a client's charges newest first: one index walk, not a scan.
    __table_args__ = (Index("ix_requests_account_at", "account", "at"),)
    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    key_id: Mapped[int] = mapped_column(Integer, index=True)
    account: Mapped[str] = mapped_column(String(64), index=True, default="", server_default="")
    model: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    cost: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # µcr charged
    images: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # images in the request
    image_cost: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # µcr of `cost` for them


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    account: str
    # Limits stored with the key; 0 = the gateway's default (GatewaySettings.key_*).
    rpm: int = 0
    tpm: int = 0
    concurrency: int = 0


# How long a gateway trusts what it read about a key: a revocation (from the CLI, the
