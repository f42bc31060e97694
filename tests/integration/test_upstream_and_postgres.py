"""The `upstream` backend against a real OpenAI-compatible server, and a gateway on PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from gpupool.devnet import Network
from tests.integration.conftest import PG_URL, client_for, pg_available, pg_database


def test_upstream_backend_forwards_to_an_openai_compatible_engine(tmp_path: Path) -> None:
    """Provider B wraps engine A (itself a gpupool gateway: a real OpenAI-compatible server)."""
    with Network(tmp_path / "engine") as engine, Network(tmp_path / "front") as front:
        engine.start_gateway()
        engine.start_provider(["echo=echo:chat", "vec=echo:embeddings"])
        engine.wait_for_models({"echo": 1, "vec": 1}, timeout=60)
        engine_key = engine.dev_key()

        front.start_gateway()
        env = {"ENGINE_KEY": engine_key}
        base = engine.gateway_url + "/v1"
        front.start_provider([f"chat=upstream:{base}?model=echo&key=ENGINE_KEY",
                              f"emb=upstream:{base}?model=vec&task=embeddings&key=ENGINE_KEY"], env=env)
        front.wait_for_models({"chat": 1, "emb": 1}, timeout=60)
        client = client_for(front)

        out = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "via upstream"}])
        assert out.choices[0].message.content == "via upstream"
        assert out.model == "chat"
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "a b c d"}], stream=True) if c.choices)
        assert streamed == "a b c d"
        direct = client_for(engine).embeddings.create(model="vec", input=["x", "y"])
        via = client.embeddings.create(model="emb", input=["x", "y"])
        for a, b in zip(via.data, direct.data, strict=True):
            assert a.embedding == pytest.approx(b.embedding, abs=1e-6)


@pytest.mark.skipif(not pg_available(), reason=f"PostgreSQL not reachable at {PG_URL}")
def test_gateway_on_postgresql_serves_and_records(tmp_path: Path) -> None:
    with pg_database("gpupool_upstream") as db, Network(tmp_path / "pg", db=db) as net:
        net.start_gateway()
        net.start_provider(["echo=echo:chat"])
        net.wait_for_models({"echo": 1}, timeout=60)
        client = client_for(net)  # the dev key is created in PostgreSQL
        marker = uuid.uuid4().hex
        out = client.chat.completions.with_raw_response.create(
            model="echo", messages=[{"role": "user", "content": marker}])
        assert out.parse().choices[0].message.content == marker
        rid = out.headers["x-request-id"]
        import time

        for _ in range(50):
            rows = [r for r in net.admin("/admin/requests?limit=50") if r["request_id"] == rid]
            if rows:
                break
            time.sleep(0.1)
        assert rows and rows[0]["status"] == "ok" and rows[0]["completion_tokens"] == 1
