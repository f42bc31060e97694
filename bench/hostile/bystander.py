"""The bystander: an honest client sending steady requests from its own key, in its own process.

    .venv/bin/python bench/hostile/bystander.py URL KEY OUT.tsv [--rate 10] [--model echo]

Open loop: a request starts every 1/rate seconds whatever the earlier ones are doing,
so a slow gateway shows as latency and failures, not as fewer requests. Cycles a short
chat completion, a one-input embedding, the same chat completion streamed, and another
embedding (--no-streams: chat and embedding only, as before 2026-12-07). One line per
finished request: `started_unix  latency_s  status  kind` (status 0: no answer, e.g.
refused or timed out; kind: chat, embed or stream). A stream's latency is to its last
event, and it counts as 200 only if it ended with `[DONE]` and no error event (else 502).
It runs in a process of its own so the attacks' CPU (in run.py) does not sit in its
event loop and distort its timings; it stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

import httpx

TIMEOUT_S = 30.0


async def streamed(http: httpx.AsyncClient, body: dict[str, object]) -> int:
    """A streamed chat completion read to its end: 200 if it finished cleanly, 502 if it broke off or
    carried an error event, the HTTP status if it was refused."""
    async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code
        finished = errored = False
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                finished = True
            elif line.startswith('data: {"error"'):
                errored = True
        return 200 if finished and not errored else 502


async def main(url: str, key: str, out_path: str, rate: float, chat_model: str, embed_model: str,
               streams: bool = True) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    out = open(out_path, "a", buffering=1)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=32)
    tasks: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT_S,
                                 limits=limits) as http:
        async def one(i: int) -> None:
            started, t0 = time.time(), time.perf_counter()
            status = 0
            kind = "embed" if i % 2 else "stream" if streams and i % 4 == 2 else "chat"
            chat = {"model": chat_model, "max_tokens": 8,
                    "messages": [{"role": "user", "content": f"bystander says hello {i}"}]}
            try:
                if kind == "embed":
                    r = await http.post("/v1/embeddings", json={"model": embed_model, "input": f"bystander {i}"})
                    status = r.status_code
                elif kind == "stream":
                    status = await streamed(http, chat)
                else:
                    status = (await http.post("/v1/chat/completions", json=chat)).status_code
            except httpx.HTTPError:
                status = 0
            out.write(f"{started:.6f}\t{time.perf_counter() - t0:.6f}\t{status}\t{kind}\n")

        i = 0
        next_at = time.perf_counter()
        while not stop.is_set():
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            next_at += 1.0 / rate
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.perf_counter()))
            except TimeoutError:
                pass
        if tasks:
            await asyncio.wait(tasks, timeout=TIMEOUT_S)
    out.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("out")
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--chat-model", default="echo")
    parser.add_argument("--embed-model", default="echo-embed")
    parser.add_argument("--no-streams", dest="streams", action="store_false",
                        help="no streamed chat completions: every other request a plain one")
    a = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(a.url, a.key, a.out, a.rate, a.chat_model, a.embed_model, a.streams))
