"""A tiny OpenAI-compatible engine with faults on demand, for failover tests and `bench/failover`.

It stands where vLLM or Ollama would behind a provider's `upstream` backend (or as a
gateway's fallback lane): `/v1/models`, `/v1/chat/completions` (streaming or not)
and `/v1/completions`. Its "model" is greedy and exact: the answer is the last user
message (or the prompt) echoed word by word, `delay_ms` apart, and a chat request
that extends a partial answer (`continue_final_message`) gets exactly the rest, so a
stream continued elsewhere must add up to the no-fault answer character for character.

Faults, set at start (`--fault stall --after 3`) or at run time (`POST /fault` with
`{"mode": ..., "after": N, "rate": R}`), hit a `rate` share of the requests that start
afresh (continuations are served honestly, as a healthy engine would):

| mode    | what the engine does                                                    |
| ------- | ----------------------------------------------------------------------- |
| `none`  | answers honestly                                                        |
| `stall` | sends `after` words, then nothing more while keeping the connection open |
| `drop`  | sends `after` words, then cuts the connection                           |
| `error` | answers HTTP 500                                                        |
| `hang`  | sends nothing at all and keeps the connection open (a dead engine)      |

Run: `python -m tests.fake_engine --port 8101 [--delay-ms 30] [--fault stall --after 3]`;
it prints `READY <port>` once listening. `GET /fault` says what it did (`requests`, `faulted`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

MODES = ("none", "stall", "drop", "error", "hang")


class Engine:
    def __init__(self, delay_s: float, mode: str = "none", after: int = 3, rate: float = 1.0, seed: int = 0):
        self.delay_s = delay_s
        self.set_fault(mode, after, rate)
        self.rng = random.Random(seed)
        self.requests = 0
        self.faulted = 0

    def set_fault(self, mode: str, after: int = 3, rate: float = 1.0) -> None:
        if mode not in MODES:
            raise ValueError(f"fault mode must be one of {MODES}")
        self.mode, self.after, self.rate = mode, max(0, int(after)), float(rate)

    def fault_for(self, continuing: bool) -> str:
        self.requests += 1
        if self.mode == "none" or continuing or self.rng.random() >= self.rate:
            return "none"
        self.faulted += 1
        return self.mode


def words(text: str) -> list[str]:
    """Tokens of the echo model: each word with the whitespace before it."""
    return re.findall(r"\s*\S+", text)


def plan_answer(body: dict[str, Any], chat: bool) -> tuple[list[str], int, bool]:
    """(tokens still to send, prompt tokens, whether this extends a partial answer)."""
    if chat:
        messages = body.get("messages") or []
        partial = ""
        if messages and messages[-1].get("role") == "assistant" and body.get("continue_final_message"):
            partial = str(messages[-1].get("content") or "")
            messages = messages[:-1]
        users = [str(m.get("content") or "") for m in messages if m.get("role") == "user"]
        full = users[-1] if users else ""
        prompt_tokens = sum(len(words(str(m.get("content") or ""))) for m in messages)
    else:
        prompt = str(body.get("prompt") or "")
        full, partial, prompt_tokens = prompt, "", len(words(prompt))  # continuations: chat only
    rest = full[len(partial):] if full.startswith(partial) else full
    tokens = words(rest)
    limit = int(body.get("max_tokens") or body.get("max_completion_tokens") or 1 << 30)
    return tokens[:limit], prompt_tokens, bool(partial)


def make_app(engine: Engine) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "test"}]})

    async def fault(request: Request) -> JSONResponse:
        if request.method == "POST":
            body = await request.json()
            engine.set_fault(body.get("mode", "none"), body.get("after", 3), body.get("rate", 1.0))
        return JSONResponse({"mode": engine.mode, "after": engine.after, "rate": engine.rate,
                             "requests": engine.requests, "faulted": engine.faulted})

    async def complete(request: Request, chat: bool) -> Any:
        body = await request.json()
        tokens, prompt_tokens, continuing = plan_answer(body, chat)
        mode = engine.fault_for(continuing)
        if mode == "error":
            return JSONResponse({"error": {"message": "engine failed (injected)", "type": "server_error"}}, 500)
        if mode == "hang":
            await asyncio.sleep(3600)
        finish = "length" if len(tokens) >= int(body.get("max_tokens") or 1 << 30) else "stop"
        rid, created, model = f"fake-{time.monotonic_ns()}", int(time.time()), body.get("model", "fake")
        obj = "chat.completion.chunk" if chat else "text_completion"

        def choice(piece: str, end: str | None) -> dict[str, Any]:
            if chat:
                return {"index": 0, "delta": {"content": piece} if piece else {}, "finish_reason": end}
            return {"index": 0, "text": piece, "finish_reason": end}

        if not body.get("stream"):
            for i in range(len(tokens)):
                if mode in ("stall", "drop") and i == engine.after:
                    await asyncio.sleep(3600)  # a non-streaming answer that never comes
                await asyncio.sleep(engine.delay_s)
            text = "".join(tokens)
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens),
                     "total_tokens": prompt_tokens + len(tokens)}
            out = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                   if chat else {"index": 0, "text": text, "finish_reason": finish})
            return JSONResponse({"id": rid, "object": "chat.completion" if chat else "text_completion",
                                 "created": created, "model": model, "choices": [out], "usage": usage})

        async def events() -> AsyncIterator[bytes]:
            for i, token in enumerate(tokens):
                if mode == "stall" and i == engine.after:
                    await asyncio.sleep(3600)
                if mode == "drop" and i == engine.after:
                    raise ConnectionResetError("engine dropped the stream (injected)")
                await asyncio.sleep(engine.delay_s)
                chunk = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice(token, None)]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            end = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice("", finish)]}
            yield f"data: {json.dumps(end)}\n\n".encode()
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens),
                     "total_tokens": prompt_tokens + len(tokens)}
            yield f"data: {json.dumps({**end, 'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def chat(request: Request) -> Any:
        return await complete(request, True)

    async def completions(request: Request) -> Any:
        return await complete(request, False)

    return Starlette(routes=[Route("/v1/models", models), Route("/v1/fault", fault, methods=["GET", "POST"]),
                             Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/completions", completions, methods=["POST"])])


class EngineProc:
    """A fake engine in its own process: `url` is its OpenAI base URL (…/v1)."""

    def __init__(self, *args: str, delay_ms: float = 30.0):
        import os
        import subprocess
        from pathlib import Path

        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
        self.popen = subprocess.Popen([sys.executable, "-m", "tests.fake_engine", "--delay-ms", str(delay_ms), *args],
                                      cwd=root, env=env, stdout=subprocess.PIPE, text=True)
        line = self.popen.stdout.readline() if self.popen.stdout else ""
        if not line.startswith("READY "):
            self.popen.kill()
            raise RuntimeError(f"fake engine did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def fault(self, mode: str, after: int = 3, rate: float = 1.0) -> dict[str, Any]:
        import httpx

        return httpx.post(self.url + "/fault", json={"mode": mode, "after": after, "rate": rate}, timeout=10).json()

    def stats(self) -> dict[str, Any]:
        import httpx

        return httpx.get(self.url + "/fault", timeout=10).json()

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(5)
        except Exception:  # noqa: BLE001 - it must go either way
            self.popen.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay-ms", type=float, default=30.0)
    ap.add_argument("--fault", choices=MODES, default="none")
    ap.add_argument("--after", type=int, default=3)
    ap.add_argument("--rate", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    port = args.port or free_port()
    engine = Engine(args.delay_ms / 1000.0, args.fault, args.after, args.rate, args.seed)
    config = uvicorn.Config(make_app(engine), host="127.0.0.1", port=port, log_level="critical", lifespan="off")
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.02)
        print(f"READY {port}", flush=True)
        await task

    asyncio.run(serve())
    sys.exit(0)


if __name__ == "__main__":
    main()
