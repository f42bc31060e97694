"""The pure helpers behind the CLI's messages: gateway URLs, money, redaction, JSON log lines."""

from __future__ import annotations

import json
import logging

import pytest

from gpupool.cli_support import credits, redact, sqlite_path
from gpupool.logs import JsonFormatter
from gpupool.urls import http_url, ws_url


def test_gateway_urls_in_any_form() -> None:
    assert ws_url("http://gw:8000/") == "ws://gw:8000"
    assert ws_url("https://gw.example") == "wss://gw.example"
    assert ws_url("wss://gw.example") == "wss://gw.example"
    assert ws_url("gw:8000") == "ws://gw:8000"
    assert http_url("wss://gw.example/") == "https://gw.example"
    assert http_url("ws://127.0.0.1:8000") == "http://127.0.0.1:8000"
    for bad in ("ftp://gw", "http://", "ws:///path"):
        with pytest.raises(ValueError, match="gateway URL"):
            ws_url(bad)


def test_money_and_urls_people_read() -> None:
    assert credits(5_000_000) == "5.000000 cr (5,000,000 µcr)"
    assert credits(1) == "0.000001 cr (1 µcr)"
    assert credits(None) == "-"
    assert redact("postgresql+asyncpg://me:secret@db:5432/x") == "postgresql+asyncpg://me:***@db:5432/x"
    assert redact("postgresql+asyncpg://me@db/x") == "postgresql+asyncpg://me@db/x"
    assert str(sqlite_path("sqlite+aiosqlite:////tmp/a.db")) == "/tmp/a.db"
    assert sqlite_path("postgresql+asyncpg://h/x") is None and sqlite_path("sqlite+aiosqlite:///:memory:") is None


def test_json_log_lines_carry_a_request_lines_fields() -> None:
    record = logging.LogRecord("gpupool.requests", logging.INFO, __file__, 1, "request %s", ("r1",), None)
    record.fields = {"request_id": "r1", "cost_ucr": 3}
    row = json.loads(JsonFormatter().format(record))
    assert row["msg"] == "request r1" and row["level"] == "info" and row["cost_ucr"] == 3 and "T" in row["ts"]
