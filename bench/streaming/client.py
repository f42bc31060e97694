"""Many concurrent SSE chat streams from one process, timing every token as it arrives.

Raw asyncio sockets (uvloop when installed), HTTP/1.1, one connection per stream;
no HTTP library, so the client's own cost per token is a `bytes.count` and a clock
read. Started by bench/streaming/run.py, which merges the JSON it writes:

    python bench/streaming/client.py --url http://127.0.0.1:8000 --key K --streams 500 \
        --tokens 100 --start-at MONOTONIC --ramp-s 1.0 --out result.json

Per stream it records when the connection opened, the first token, each gap
between consecutive content tokens (ms) and when the stream ended. Times are
time.monotonic(), which is CLOCK_MONOTONIC and so comparable across processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from urllib.parse import urlsplit

# A content delta, in gpupool's and the minimal backend's chunks alike:
# "delta":{"content":"w1"} -- the opening role chunk is "delta":{"role":...} and never matches.
TOKEN = b'"delta":{"content":'
CONTENT = re.compile(rb'"delta":\{"content":"([^"]*)"')
DONE = b"data: [DONE]"


async def one_stream(host: str, port: int, request: bytes, start: float, out: dict, timeout: float) -> None:
    delay = start - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    out["t_open"] = time.monotonic()
    times: list[float] = []
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            out["t_connected"] = time.monotonic()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            out["t_headers"] = time.monotonic()
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"x-gpupool-provider:"):
                    out["provider"] = line.split(b":", 1)[1].strip().decode()[:16]
            status = int(head.split(b" ", 2)[1])
            out["status"] = status
            if status != 200:
                out["error"] = f"HTTP {status}: {(head + await reader.read(2000))[:400]!r}"
                return
            buf = b""
            done = False
            while not done:
                data = await reader.read(65536)
                if not data:
                    break
                now = time.monotonic()
                buf += data
                end = 0
                for m in CONTENT.finditer(buf):
                    # Count words, not events: under load the gateway coalesces waiting
                    # tokens into one event; each word gets that event's arrival time.
                    times.extend([now] * len(m.group(1).split()))
                    end = m.end()
                if DONE in buf:
                    done = True
                elif b'"error"' in buf:
                    out["error"] = buf[:400].decode(errors="replace")
                    break
                buf = buf[end:][-4096:]  # an event split across reads is counted once, when whole
            out["completed"] = done
    except TimeoutError:
        out["error"] = "timeout"
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        out["t_end"] = time.monotonic()
        out["tokens"] = len(times)
        if times:
            out["t_first"] = times[0]
            out["gaps_ms"] = [round((b - a) * 1000, 3) for a, b in zip(times, times[1:])]
        if writer is not None:
            writer.close()


async def main(args: argparse.Namespace) -> None:
    u = urlsplit(args.url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    body = json.dumps({
        "model": args.model,
        "messages": [{"role": "user", "content": " ".join(f"w{i}" for i in range(args.tokens))}],
        "max_tokens": args.tokens,
        "stream": True,
    }, separators=(",", ":")).encode()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Authorization: Bearer {args.key}\r\nContent-Type: application/json\r\n"
               f"Accept: text/event-stream\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode() + body
    start = args.start_at or time.monotonic()
    results: list[dict] = [{} for _ in range(args.streams)]
    step = args.ramp_s / max(1, args.streams)
    # Interleave with the other client processes: stream i of process k starts at slot i*procs+k.
    tasks = [one_stream(host, port, request, start + (i * args.procs + args.index) * step / args.procs,
                        results[i], args.timeout) for i in range(args.streams)]
    await asyncio.gather(*tasks)
    with open(args.out, "w") as f:
        json.dump({"streams": results}, f)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", default="none")
    ap.add_argument("--model", default="echo")
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--start-at", type=float, default=0.0, help="time.monotonic() to start the ramp at")
    ap.add_argument("--ramp-s", type=float, default=1.0, help="spread stream starts over this long")
    ap.add_argument("--procs", type=int, default=1, help="client processes in all (for interleaving)")
    ap.add_argument("--index", type=int, default=0, help="this process's index among them")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    try:
        import uvloop

        uvloop.run(main(a))
    except ImportError:
        asyncio.run(main(a))
    sys.exit(0)
