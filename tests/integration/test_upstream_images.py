"""The `upstream` backend passes images through to a vision engine, and says it reads them only
when told to (`accepts=image`). The engine is a stand-in for vLLM or Ollama: a small
OpenAI-compatible HTTP server in this test that records what it received."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest

pytest.importorskip("PIL", reason="needs the ml extra")

from PIL import Image as PILImage  # noqa: E402

from gpupool.devnet import Network  # noqa: E402
from tests.integration.conftest import client_for  # noqa: E402


class Engine(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def log_message(self, *_args: object) -> None:
        pass

    def _json(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self._json({"object": "list", "data": [{"id": "vlm", "object": "model"}]})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.received.append({"path": self.path, **body})
        if self.path.endswith("/embeddings"):
            self._json({"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [1.0, float(i)]}
                                                   for i in range(len(body["input"]))],
                        "usage": {"prompt_tokens": 7, "total_tokens": 7}})
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for event in ({"choices": [{"index": 0, "delta": {"content": "a photo"}, "finish_reason": None}]},
                      {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 300, "completion_tokens": 2}}):
            self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture
def engine() -> Iterator[str]:
    Engine.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Engine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


def png() -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (20, 10), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def test_upstream_passes_images_through_to_a_vision_engine(tmp_path: Path, engine: str) -> None:
    image = png()
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    with Network(tmp_path / "net") as net:
        net.start_gateway()
        net.start_provider([f"vlm=upstream:{engine}?model=vlm&accepts=image",
                            f"vemb=upstream:{engine}?task=embeddings&accepts=image",
                            f"plain=upstream:{engine}?model=vlm"])
        # The same model from a second provider whose engine reads text only (its offer says so).
        net.start_provider([f"vlm=upstream:{engine}?model=text-only"])
        net.wait_for_models({"vlm": 2, "vemb": 1, "plain": 1}, timeout=60)
        client = client_for(net)
        models = {m.id: m for m in client.models.list().data}
        assert models["vlm"].gpupool["accepts"] == ["text", "image"]  # type: ignore[attr-defined]
        assert models["plain"].gpupool["accepts"] == ["text"]  # type: ignore[attr-defined]

        reply = client.chat.completions.create(model="vlm", messages=[
            {"role": "user", "content": [{"type": "text", "text": "What is "},
                                         {"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": " about?"}]}])
        assert reply.choices[0].message.content == "a photo"
        sent = Engine.received[-1]
        assert sent["path"] == "/v1/chat/completions" and "response_format" not in sent
        assert sent["messages"] == [{"role": "user", "content": [
            {"type": "text", "text": "What is "}, {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": " about?"}]}]

        for _ in range(6):  # requests with images go only to the provider whose offer reads them
            client.chat.completions.create(model="vlm", messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
        assert {r["model"] for r in Engine.received[-6:]} == {"vlm"}

        client.embeddings.create(model="vemb", input=["red", url])
        assert Engine.received[-1]["input"] == ["red", url]

        seen = len(Engine.received)
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="plain", messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
        assert "'plain'" in err.value.message and len(Engine.received) == seen
