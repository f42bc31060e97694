"""Provider-side attacks for the hostile benchmark (issue 18): what a peer with fresh keys, or a
client with a key and files, can make the gateway hold or compute.

Each is `async def attack(target, duration) -> dict` like those in attacks.py (which run.py
merges these into) and reports `contained`: whether the gateway refused, closed or bounded
the attack, whatever the bystander noticed.

| attack            | what it does                                                                 |
| ----------------- | ---------------------------------------------------------------------------- |
| statement_flood   | one session signs Statements of 4,096 made-up receipt digests, back to back  |
| long_strings      | fresh keys whose offers carry 60 KB region, description and hardware strings |
| nan_numbers       | offers with NaN / infinite coordinates, huge concurrency, huge LoadReports   |
| sybil_silent      | 20 fresh keys offer the honest models, take work (streams too), never answer |
| file_flood        | the attacker's key uploads 8 MiB batch files from 4 workers, listing them    |
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from typing import Any

import httpx
import websockets

from attacks import Target, _client, _loop, sign_statements
from gpupool import protocol
from gpupool.identity import Identity
from gpupool.protocol import Hardware, LoadReport, ModelOffer, Offer, Run
from peers import WS_ERRORS, decline_runs, handshake, keep_alive, signed_offer

LONG = 60_000  # characters in each long string (the repro)


async def _session(t: Target, offer: Offer, ident: Identity) -> Any:
    return await handshake(t.ws_url, ident, [], offer=offer)


async def statement_flood(t: Target, duration: float, digests: int = 4096) -> dict[str, Any]:
    """Statements at the per-statement limit, as fast as the socket takes them (issue 18: 300 of
    them grew the gateway by 137 MB, never given back). Contained is judged by the runner's RSS
    check; here: what the peer could send."""
    return await sign_statements(t, duration, digests, 0.01)


async def long_strings(t: Target, duration: float, sessions: int = 31) -> dict[str, Any]:
    """Handshakes whose offers carry 60 KB strings; then one /v1/market read, whose size shows
    whether they were stored and copied into every model."""
    seen: Counter[str] = Counter()
    end = time.monotonic() + duration
    made = 0
    while time.monotonic() < end and made < sessions * 4:
        ident = Identity.generate()
        made += 1
        model = ModelOffer(f"long-{ident.node_id[2:10]}", "generate", "echo", description="d" * LONG)
        offer = signed_offer(ident, [model], region="r" * LONG, hardware=Hardware("c" * LONG, 1, 1024))
        try:
            ws = await _session(t, offer, ident)
            seen["accepted"] += 1
            await ws.close()
        except WS_ERRORS as exc:
            seen[str(exc)[:60]] += 1
    market_bytes = None
    try:
        r = httpx.get(t.url + "/v1/market", headers={"Authorization": f"Bearer {t.key}"}, timeout=30)
        market_bytes = len(r.content)
    except httpx.HTTPError:
        pass
    return {"handshakes": made, "outcomes": dict(seen), "market_body_bytes": market_bytes,
            "contained": not seen["accepted"] and (market_bytes or 0) < 1 << 20}


async def nan_numbers(t: Target, duration: float) -> dict[str, Any]:
    """Offers with NaN and infinite coordinates and a huge concurrency, and a LoadReport claiming
    2^40 slots; meanwhile /v1/providers must keep answering 200."""
    outcomes: Counter[str] = Counter()
    held: list[asyncio.Task[str]] = []
    variants = [{"latitude": math.nan}, {"longitude": math.inf}, {"latitude": -math.inf},
                {"max_concurrency": 2**31}, {"max_concurrency": 2**40}]
    for fields in variants:
        ident = Identity.generate()
        try:
            ws = await _session(t, signed_offer(ident, [ModelOffer(t.chat_model, "generate", "echo")], **fields), ident)
        except WS_ERRORS:
            outcomes[f"{next(iter(fields))}: refused"] += 1
            continue
        outcomes[f"{next(iter(fields))}: accepted"] += 1
        try:
            await ws.send(protocol.encode(LoadReport(in_flight=0, queued=0, capacity=2**40)))
        except websockets.ConnectionClosed:
            pass
        held.append(asyncio.create_task(keep_alive(ws, decline_runs)))
    statuses: Counter[int] = Counter()
    end = time.monotonic() + duration
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < end:
            try:
                statuses[(await client.get(t.url + "/v1/providers")).status_code] += 1
            except httpx.HTTPError:
                statuses[0] += 1
            await asyncio.sleep(0.5)
    for h in held:
        h.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    return {"offers": dict(outcomes), "providers_page_statuses": dict(statuses),
            "contained": set(statuses) <= {200} and not any(k.endswith("accepted") for k in outcomes)}


async def sybil_silent(t: Target, duration: float, sessions: int = 20) -> dict[str, Any]:
    """Fresh keys offering the honest chat model with many slots; each takes the Runs it is sent
    and never answers them (it answers Pings, so liveness keeps it). `runs_streamed`: of those,
    Runs that asked for a stream, i.e. a client's stream the Sybil was to serve itself (the
    bystander streams one request in four)."""
    runs: Counter[str] = Counter()

    async def swallow(ws: Any, msg: Any) -> None:
        if isinstance(msg, Run):
            runs["taken"] += 1
            runs["streamed"] += msg.stream

    held: list[asyncio.Task[str]] = []
    refused = 0
    for _ in range(sessions):
        ident = Identity.generate()
        offer = signed_offer(ident, [ModelOffer(t.chat_model, "generate", "echo"),
                               ModelOffer(t.embed_model, "embeddings", "echo", dimensions=32)], max_concurrency=64)
        try:
            ws = await _session(t, offer, ident)
        except WS_ERRORS:
            refused += 1
            continue
        held.append(asyncio.create_task(keep_alive(ws, swallow)))
    await asyncio.sleep(duration)
    for h in held:
        h.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    # Contained is the bystander's numbers (run.py); here: how much work the Sybils were handed.
    return {"sessions": len(held), "refused": refused, "runs_taken": runs["taken"], "runs_streamed": runs["streamed"]}


def _batch_file(size: int) -> bytes:
    """A valid batch input file of about `size` bytes (distinct custom ids, as the format requires)."""
    lines, total, i = [], 0, 0
    while total < size:
        line = json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                           "body": {"model": "echo", "messages": [{"role": "user", "content": "y" * 900}]}}) + "\n"
        lines.append(line)
        total += len(line)
        i += 1
    return "".join(lines).encode()


async def file_flood(t: Target, duration: float, workers: int = 4, size: int = 8 << 20) -> dict[str, Any]:
    """Uploads of 8 MiB batch input files from `workers` at once, and a GET /v1/files now and then
    (which before issue 18 loaded every stored file's bytes)."""
    data = _batch_file(size)
    listing_s: list[float] = []
    async with _client(t, connections=workers + 1, timeout=60) as client:

        async def one(i: int) -> str:
            if i % 10 == 9:
                began = time.monotonic()
                r = await client.get("/v1/files")
                listing_s.append(time.monotonic() - began)
                return f"list {r.status_code}"
            r = await client.post("/v1/files", files={"file": (f"f{i}.jsonl", data, "application/jsonl")},
                                  data={"purpose": "batch"})
            return f"upload {r.status_code}"

        seen = await _loop(duration, workers, one)
    uploaded = seen.get("upload 200", 0)
    return {"outcomes": dict(seen), "bytes_accepted": uploaded * len(data),
            "slowest_listing_s": round(max(listing_s), 2) if listing_s else None,
            # Contained: uploads stop at a quota (refused) rather than all being stored.
            "contained": any(k.startswith("upload 4") for k in seen)}


PROVIDER_ATTACKS = {
    "statement_flood": statement_flood,
    "long_strings": long_strings,
    "nan_numbers": nan_numbers,
    "sybil_silent": sybil_silent,
    "file_flood": file_flood,
}
