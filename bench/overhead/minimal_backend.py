"""The smallest fast OpenAI-shaped HTTP server we could write: the "direct" baseline.

A raw asyncio Protocol (uvloop when installed) with httptools' HTTP/1.1 parser; no
framework, no JSON work on the hot path. `POST /v1/chat/completions` (or
`/chat/completions`) answers a fixed, valid ChatCompletion whose content is
"hello" -- the same text gpupool's `echo` backend returns for the bench request.

With `"stream": true` in the body it streams instead, shaped like gpupool's SSE
(a role chunk, one chunk per word of the last user message spaced by
`--stream-delay-ms`, a finish chunk, `data: [DONE]`), chunked, so the streaming
benchmark can use it as the no-gateway baseline with the very same client.

    python bench/overhead/minimal_backend.py --port 9100 [--stream-delay-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

import httptools

MODEL = "echo"
CONTENT = "hello"
BODY = json.dumps({
    "id": "chatcmpl-minimal",
    "object": "chat.completion",
    "created": 1763769600,
    "model": MODEL,
    "system_fingerprint": "minimal",
    "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": CONTENT, "refusal": None},
        "finish_reason": "stop",
        "logprobs": None,
    }],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}, separators=(",", ":")).encode()


def _response(status: bytes, body: bytes, keep_alive: bool, ctype: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: " + ctype + b"\r\ncontent-length: "
            + str(len(body)).encode() + (b"\r\n\r\n" if keep_alive else b"\r\nconnection: close\r\n\r\n")
            + body)


OK_KEEP = _response(b"200 OK", BODY, True)
OK_CLOSE = _response(b"200 OK", BODY, False)
MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0,
                                                 "owned_by": "bench"}]}).encode()
STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
               b"transfer-encoding: chunked\r\n\r\n")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class Http(asyncio.Protocol):
    delay = 0.0

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.streaming: asyncio.Task[None] | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(_response(b"400 Bad Request", b"{}", False))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None:
            self.streaming.cancel()

    # -- httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        t = self.transport
        assert t is not None
        url, self.url = self.url, b""
        body = b"".join(self.body)
        self.body.clear()
        keep = self.parser.should_keep_alive()
        method = self.parser.get_method()
        path = url.split(b"?", 1)[0]
        if method == b"POST" and path in (b"/v1/chat/completions", b"/chat/completions"):
            if b'"stream"' in body and _wants_stream(body):
                self.streaming = asyncio.get_running_loop().create_task(self._stream(body, keep))
                return
            t.write(OK_KEEP if keep else OK_CLOSE)
        elif method == b"GET" and path in (b"/v1/models", b"/models"):
            t.write(_response(b"200 OK", MODELS, keep))
        elif method == b"GET" and path in (b"/health", b"/healthz"):
            t.write(_response(b"200 OK", b'{"status":"ok"}', keep))
        else:
            t.write(_response(b"404 Not Found", b'{"error":{"message":"not found"}}', keep))
        if not keep:
            t.close()

    async def _stream(self, body: bytes, keep: bool) -> None:
        t = self.transport
        assert t is not None
        req = json.loads(body)
        users = [m.get("content") or "" for m in req.get("messages", []) if m.get("role") == "user"]
        words = (users[-1] if users else "").split() or ["(empty)"]
        words = words[: int(req.get("max_tokens") or len(words))]
        rid, created = "chatcmpl-minimal", 1763769600

        def chunk(delta: dict[str, str], finish: str | None) -> bytes:
            return _chunk(_sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                                "model": MODEL, "choices": [{"index": 0, "delta": delta,
                                                             "finish_reason": finish, "logprobs": None}]}))

        t.write(STREAM_HEAD + chunk({"role": "assistant", "content": ""}, None))
        for i, w in enumerate(words):
            if self.delay:
                await asyncio.sleep(self.delay)
            if t.is_closing():
                return
            t.write(chunk({"content": w if i == 0 else " " + w}, None))
        t.write(chunk({}, "stop") + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        self.streaming = None
        if not keep:
            t.close()


def _wants_stream(body: bytes) -> bool:
    try:
        return bool(json.loads(body).get("stream"))
    except (ValueError, AttributeError):
        return False


async def main(host: str, port: int, ready_file: str | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, host, port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    if ready_file:
        with open(ready_file + ".tmp", "w") as f:
            f.write(str(bound))
        os.replace(ready_file + ".tmp", ready_file)
    print(f"minimal backend on http://{host}:{bound} (loop: {type(loop).__module__})", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9100)
    ap.add_argument("--ready-file")
    ap.add_argument("--stream-delay-ms", type=float, default=0.0, help="spacing between streamed words")
    args = ap.parse_args()
    Http.delay = args.stream_delay_ms / 1000.0
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # plain asyncio works, just slower
        runner = asyncio.run  # type: ignore[assignment]
    try:
        runner(main(args.host, args.port, args.ready_file))
    except KeyboardInterrupt:
        sys.exit(0)
