"""The batch tables in the gateway's database: input and output files, batches, their items,
and how many items each provider was sent (batches/store.py holds the queries over them).

An item moves `pending` → `leased` (a gateway claimed it, until `lease_until`) →
`charging` (its result is stored; the charge for its run is on its way to the ledger)
→ `done`.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Float, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL = ("completed", "failed", "expired", "cancelled")


class Base(DeclarativeBase):
    pass


class FileRow(Base):
    __tablename__ = "batch_files"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(256))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # input files only
    batch_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # output/error files: lines of
    kind: Mapped[str] = mapped_column(String(16), default="input")  # input | output | error


class BatchRow(Base):
    __tablename__ = "batches"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account: Mapped[str] = mapped_column(String(64), index=True)
    key_id: Mapped[int] = mapped_column(Integer)
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    input_file_id: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    stamps: Mapped[str] = mapped_column(Text, default="{}")  # in_progress_at, completed_at, ... (JSON)
    meta: Mapped[str] = mapped_column(Text, default="{}")  # the client's metadata (JSON)
    total: Mapped[int] = mapped_column(Integer)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    cost_ucr: Mapped[int] = mapped_column(BigInteger, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    max_share: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_cost: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_weight: Mapped[int] = mapped_column(Integer, default=1)  # most inputs on one line (shard packing)
    output_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    errors: Mapped[str] = mapped_column(Text, default="")  # why the batch failed (JSON list), if it did


class ItemRow(Base):
    __tablename__ = "batch_items"
    batch_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)  # line number - 1
    seq: Mapped[int] = mapped_column(Integer)  # shuffled order in which items are claimed
    custom_id: Mapped[str] = mapped_column(String(512))
    body: Mapped[str] = mapped_column(Text)  # the request body (JSON), validated at upload
    weight: Mapped[int] = mapped_column(Integer)  # inputs (embeddings) or 1
    state: Mapped[str] = mapped_column(String(16), default="pending")
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    owner: Mapped[str] = mapped_column(String(64), default="")
    lease_until: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reserved: Mapped[int] = mapped_column(BigInteger, default=0)  # µcr bound while leased (cost caps)
    ok: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    provider: Mapped[str] = mapped_column(String(64), default="")
    line: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # the output or error line

    __table_args__ = (Index("ix_batch_items_claim", "batch_id", "state", "seq"),)


class ExposureRow(Base):
    """How many of a batch's items each provider was sent (the privacy cap counts these)."""

    __tablename__ = "batch_exposure"
    batch_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    items: Mapped[int] = mapped_column(Integer, default=0)
