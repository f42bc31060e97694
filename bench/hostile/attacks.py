"""The attacks of issue 9, each a small bounded function against a running gateway.

    sys.path.insert(0, "bench/hostile")          # attacks.py and peers.py import each other by name
    from attacks import ATTACKS, Target
    result = asyncio.run(ATTACKS["huge_numbers"](Target(url, key, admin_token), 15))

Every attack runs for about `duration` seconds (a few take a fixed amount of work and
stop early), cleans up what it opened, and returns what the attacker saw: status
counts, connections the gateway closed or kept, what the gateway's admin view showed,
and `contained`: whether the gateway refused or bounded the attack itself (a 400 for a
bad number, a closed slow connection, a refused peer), apart from whether a bystander
noticed. An attack can be uncontained and still harmless on this small network (300
held connections do not exhaust a gateway's file descriptors) or the other way round.
bench/hostile/run.py runs them in turn while a bystander client measures the harm;
tests may call them directly. None of them needs anything but a gateway URL, an API
key of the attacker's own and (for the observations only) the admin token.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import websockets

from gpupool import protocol
from gpupool.identity import Identity
from gpupool.protocol import AuditJob, Hello, ModelOffer, Statement, Verdict

from peers import WS_ERRORS, close_text, decline_runs, handshake, keep_alive, open_ws, prove, signed_offer


@dataclass
class Target:
    url: str  # http://127.0.0.1:PORT
    key: str  # the attacker's own API key
    admin_token: str = ""
    chat_model: str = "echo"
    embed_model: str = "echo-embed"

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)

    def admin(self, path: str) -> Any:
        r = httpx.get(self.url + path, headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=10)
        r.raise_for_status()
        return r.json().get("data", r.json())


Attack = Callable[[Target, float], Awaitable[dict[str, Any]]]


def _client(t: Target, connections: int = 64, timeout: float = 30) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=t.url, headers={"Authorization": f"Bearer {t.key}"}, timeout=timeout,
                             limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections))


async def _loop(duration: float, workers: int, one: Callable[[int], Awaitable[str]]) -> Counter[str]:
    """Run `one(i)` back to back in `workers` tasks until `duration` is over; count what each returned."""
    seen: Counter[str] = Counter()
    end = time.monotonic() + duration

    async def worker(w: int) -> None:
        i = w
        while time.monotonic() < end:
            try:
                seen[await one(i)] += 1
            except (httpx.HTTPError, *WS_ERRORS) as exc:
                seen[type(exc).__name__] += 1
            i += workers

    await asyncio.gather(*(worker(w) for w in range(workers)))
    return seen


async def _raw_post(t: Target, path: str, body: bytes) -> str:
    """POST `body` on a connection of its own and read the answer to its end in big reads, without
    parsing it (the cheapest client there is); returns the HTTP status."""
    u = urlsplit(t.url)
    if u.scheme != "http":
        raise ValueError(f"raw requests need an http:// gateway URL, not {t.url}")
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    try:
        writer.write((f"POST {path} HTTP/1.1\r\nHost: {u.netloc}\r\nAuthorization: Bearer {t.key}\r\n"
                      f"Content-Type: application/json\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
                      ).encode() + body)
        head = await reader.readuntil(b"\r\n\r\n")
        while await reader.read(1 << 16):
            pass
        return head.split(b" ", 2)[1].decode()
    finally:
        writer.close()


def _chat(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "echo", "messages": [{"role": "user", "content": content}], **extra}


# ---------------------------------------------------------------- clients


async def huge_numbers(t: Target, duration: float) -> dict[str, Any]:
    """Integers outside every sane range: seed 2^64, max_tokens 2^64 and beyond, negative ones.
    Before the fix: 503s that counted as provider failures and opened every breaker."""
    bodies = [_chat(seed=2**64), _chat(max_tokens=2**64), _chat(seed=-(2**63) - 1), _chat(max_tokens=10**30),
              _chat(max_tokens=-1), _chat(seed=2**64, stream=True), _chat(n=2**64), _chat(top_logprobs=2**64)]
    for b in bodies:
        b["model"] = t.chat_model
    async with _client(t) as http:
        async def one(i: int) -> str:
            r = await http.post("/v1/chat/completions", json=bodies[i % len(bodies)])
            return str(r.status_code)

        statuses = await _loop(duration, 4, one)
    # Contained: refused as the client's mistake (4xx), never a 5xx that blames a provider.
    return {"statuses": dict(statuses), "contained": not any(k.startswith("5") for k in statuses)}


async def bad_timeout(t: Target, duration: float) -> dict[str, Any]:
    """X-Gpupool-Timeout values that are not a deadline (negative, zero, NaN, infinite), which must
    get a 400, and two odd but finite ones (a tiny one may honestly time out: 504; a huge one may
    be clamped to the operator's limit and served)."""
    refuse = ["-1", "nan", "-inf", "inf", "1e309", "0", "-0", "NaN"]
    odd = ["1e-300", "99999999999999999999"]
    values = refuse + odd
    by_value: dict[str, Counter[str]] = {v: Counter() for v in values}
    async with _client(t) as http:
        async def one(i: int) -> str:
            value = values[i % len(values)]
            r = await http.post("/v1/chat/completions", json=_chat(model=t.chat_model),
                                headers={"X-Gpupool-Timeout": value})
            by_value[value][str(r.status_code)] += 1
            return str(r.status_code)

        statuses = await _loop(duration, 4, one)
    accepted = {v: dict(c) for v, c in by_value.items() if v in refuse and set(c) - {"400"}}
    return {"statuses": dict(statuses), "by_value": {v: dict(c) for v, c in by_value.items()},
            "not_refused": accepted, "contained": not accepted}


async def stream_flood(t: Target, duration: float, streams: int = 200, words: int = 2000) -> dict[str, Any]:
    """One key keeps `streams` long streams open at once (each restarted when it ends); `words`
    stays under the models' 2,048-token output limit so that the flood is not refused for that.

    Read over raw sockets (`_raw_post`): the gateway sees what any client would send, but the
    attacker's own CPU stays small. With httpx reading 200 streams this process took a whole
    core of the two, and the bystander measured the attacker's machine, not the gateway."""
    body = msgspec.json.encode(_chat(" ".join(f"w{i}" for i in range(words)), model=t.chat_model,
                                     stream=True, max_tokens=words))
    end = time.monotonic() + duration

    async def one(_i: int) -> str:
        try:
            async with asyncio.timeout(max(1.0, end - time.monotonic())):
                return await _raw_post(t, "/v1/chat/completions", body)
        except TimeoutError:
            return "open at end"

    async def sample_in_flight() -> list[dict[str, int]]:
        """What the providers hold near the end of the flood (admin view), every second."""
        seen = []
        while time.monotonic() < end - 0.5:
            await asyncio.sleep(1.0)
            if t.admin_token:
                rows = await asyncio.to_thread(t.admin, "/admin/providers")
                seen.append({"in_flight": sum(p["in_flight"] for p in rows),
                             "slots": sum(p["max_concurrency"] for p in rows)})
        return seen

    statuses, samples = await asyncio.gather(_loop(duration, streams, one), sample_in_flight())
    # Contained: the flood was refused (429) beyond a share of the slots, so it never held every
    # slot (nor queued behind them). "open at end" counts requests unanswered when the attack
    # stopped: streams, and 429s the gateway held back because the key ignored Retry-After.
    late = samples[len(samples) // 2:]
    most = max((x["in_flight"] for x in late), default=None)
    slots = late[-1]["slots"] if late else None
    return {"statuses": dict(statuses), "providers_in_flight_max": most, "provider_slots": slots,
            "contained": statuses.get("429", 0) > 0 and most is not None and slots is not None and most < slots}


async def reputation_reads(t: Target, duration: float, reads: int = 10_000) -> dict[str, Any]:
    """Unauthenticated GET /v1/providers/{random id}/reputation, `reads` times (or until `duration`)."""
    done = 0
    rows_before = _audit_rows(t)
    async with httpx.AsyncClient(base_url=t.url, timeout=30,
                                 limits=httpx.Limits(max_connections=16, max_keepalive_connections=16)) as http:
        async def one(_i: int) -> str:
            nonlocal done
            if done >= reads:
                await asyncio.sleep(0.05)
                return "idle"
            done += 1
            r = await http.get(f"/v1/providers/gp{os.urandom(20).hex()}/reputation")
            return str(r.status_code)

        statuses = await _loop(duration, 16, one)
    statuses.pop("idle", None)
    rows_after = _audit_rows(t)
    grew = rows_after - rows_before if rows_before is not None and rows_after is not None else None
    # Contained: reads of unknown ids leave nothing behind (the gateway's per-provider table did not grow).
    return {"reads": done, "statuses": dict(statuses), "provider_records_added": grew,
            "contained": grew is not None and grew < max(10, done // 100)}


def _audit_rows(t: Target) -> int | None:
    """How many providers the gateway keeps audit/reputation state for (admin view)."""
    if not t.admin_token:
        return None
    try:
        return len(t.admin("/admin/audits"))
    except (httpx.HTTPError, ValueError, TypeError):
        return None


async def big_prompt(t: Target, duration: float, workers: int = 4) -> dict[str, Any]:
    """A 4 MB prompt with a huge (but 64-bit) max_tokens, non-streaming: before the fix the
    gateway did not clamp max_tokens, so each kept a provider slot busy for minutes."""
    body = _chat(" ".join(["word"] * 800_000), model=t.chat_model, max_tokens=10**9)  # ~4.0 MB of prompt
    slow = 0
    async with _client(t, timeout=duration + 5) as http:
        end = time.monotonic() + duration

        async def one(_i: int) -> str:
            nonlocal slow
            started = time.monotonic()
            try:
                async with asyncio.timeout(max(1.0, end - started)):
                    r = await http.post("/v1/chat/completions", json=body)
            except TimeoutError:
                slow += 1
                return "unanswered at end"
            return str(r.status_code)

        statuses = await _loop(duration, workers, one)
    in_flight = sum(p.get("in_flight", 0) for p in t.admin("/admin/providers")) if t.admin_token else None
    # Contained: each such request is answered (refused, or cut at the model's limit) within the attack.
    return {"statuses": dict(statuses), "provider_in_flight_after": in_flight, "contained": slow == 0}


# ---------------------------------------------------------------- raw connections


async def _hold_connections(t: Target, n: int, duration: float, start: bytes, trickle: bytes | None) -> dict[str, Any]:
    """Open `n` TCP connections, send `start`, then one byte of `trickle` per second (None: nothing);
    count how many the gateway closed before `duration` ended."""
    host, port = t.url.split("://", 1)[1].split(":")
    closed_after: list[float] = []
    close_frames = 0
    opened = 0
    writers: list[asyncio.StreamWriter] = []

    async def one() -> None:
        nonlocal opened, close_frames
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            return
        opened += 1
        writers.append(writer)
        began = time.monotonic()
        writer.write(start)
        got = b""
        try:
            while True:
                if trickle is None:
                    data = await reader.read(65536)
                    if not data:
                        break
                    # The 101 answer to an upgrade, then maybe a WebSocket close frame (opcode 0x8):
                    # the gateway gave up on the peer, but the socket stays until one side closes it.
                    got += data
                    head, sep, frames = got.partition(b"\r\n\r\n")
                    if sep and frames[:1] == b"\x88":
                        close_frames += 1
                        got = b"\r\n\r\n"  # count it once
                    continue
                try:
                    data = await asyncio.wait_for(reader.read(65536), 1.0)
                    if not data:
                        break
                except TimeoutError:
                    writer.write(trickle)
                    await writer.drain()
        except (OSError, ConnectionError):
            pass
        closed_after.append(time.monotonic() - began)

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await asyncio.sleep(duration)
    still_open = sum(1 for task in tasks if not task.done())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for w in writers:
        w.close()
    return {"opened": opened, "closed_by_gateway": len(closed_after), "still_open_at_end": still_open,
            "websocket_close_frames": close_frames,
            "median_s_to_close": round(sorted(closed_after)[len(closed_after) // 2], 1) if closed_after else None,
            "contained": opened > 0 and still_open == 0}


async def slow_headers(t: Target, duration: float, connections: int = 300) -> dict[str, Any]:
    """Connections sending their request headers at one byte per second."""
    start = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nX-Slow: "
    return await _hold_connections(t, connections, duration, start, b"a")


async def slow_upgrades(t: Target, duration: float, connections: int = 300) -> dict[str, Any]:
    """WebSocket upgrades left unfinished: half stop mid-request (headers trickle), half complete
    the upgrade and then never send a Hello."""
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    full = (f"GET /v1/providers/ws HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    partial = b"GET /v1/providers/ws HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nX-Slow: "
    half = connections // 2
    silent, trickling = await asyncio.gather(
        _hold_connections(t, half, duration, full, None),
        _hold_connections(t, connections - half, duration, partial, b"a"))
    return {"upgraded_then_silent": silent, "partial_upgrade_trickling": trickling,
            "contained": silent["contained"] and trickling["contained"]}


async def huge_hello(t: Target, duration: float, field_mb: float = 16, workers: int = 2) -> dict[str, Any]:
    """A Hello whose `agent` field is ~16 MB, before the peer has proven any key."""
    ident = Identity.generate()
    base = len(protocol.encode(Hello(protocol.PROTOCOL_VERSION, ident.public_key, "")))
    frame = protocol.encode(Hello(protocol.PROTOCOL_VERSION, ident.public_key,
                                  "x" * (int(field_mb * 1024 * 1024) - base - 16)))

    async def one(_i: int) -> str:
        ws = await open_ws(t.ws_url)
        try:
            await ws.send(frame)
            reply = protocol.decode(await asyncio.wait_for(ws.recv(), 30))
            return f"answered {type(reply).__name__}"
        except websockets.ConnectionClosed as exc:
            return close_text(exc)
        finally:
            await ws.close()

    statuses = await _loop(duration, workers, one)
    # Contained: the frame is refused before it is decoded, so no Challenge ever comes back.
    return {"frame_bytes": len(frame), "outcomes": dict(statuses),
            "contained": not any(k.startswith("answered") for k in statuses)}


# ---------------------------------------------------------------- provider-side peers


async def fake_offers(t: Target, duration: float, sessions: int = 20, models: int = 10_000) -> dict[str, Any]:
    """Waves of `sessions` fresh keys, each offering `models` made-up models, held ~3 s, then dropped."""
    waves = accepted = refused = 0
    most_listed = 0
    end = time.monotonic() + duration
    while time.monotonic() < end - 2:
        waves += 1

        async def one(s: int) -> Any:
            ident = Identity.generate()
            offers = [ModelOffer(f"fake-{ident.node_id[2:10]}-{i}", "generate", "echo") for i in range(models)]
            return await handshake(t.ws_url, ident, offers)

        got = await asyncio.gather(*(one(s) for s in range(sessions)), return_exceptions=True)
        live = [g for g in got if not isinstance(g, BaseException)]
        accepted += len(live)
        refused += len(got) - len(live)
        holders = [asyncio.create_task(keep_alive(ws, decline_runs)) for ws in live]
        await asyncio.sleep(min(3.0, max(0.0, end - time.monotonic())))
        if t.admin_token:
            try:
                listed = httpx.get(t.url + "/v1/models", headers={"Authorization": f"Bearer {t.key}"}, timeout=30)
                most_listed = max(most_listed, len(listed.json().get("data", [])))
            except (httpx.HTTPError, ValueError):
                pass
        for h in holders:
            h.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
    # Contained: no session got its whole catalogue of made-up models listed.
    return {"waves": waves, "sessions_accepted": accepted, "sessions_refused": refused,
            "most_models_listed": most_listed, "contained": most_listed < models}


async def sign_statements(t: Target, duration: float, per_frame: int, pause_s: float) -> dict[str, Any]:
    """One fresh provider signing Statements of `per_frame` made-up receipt digests every `pause_s`,
    until `duration` is over or the gateway closes it (big_statement and statement_flood)."""
    ident = Identity.generate()
    try:
        ws = await handshake(t.ws_url, ident, [ModelOffer("stmt-bait", "generate", "echo")])
    except WS_ERRORS as exc:
        return {"refused_at_handshake": str(exc), "connection": "refused at handshake"}
    holder = asyncio.create_task(keep_alive(ws, decline_runs))
    sent = 0
    end = time.monotonic() + duration
    ended = ""
    try:
        while time.monotonic() < end and not holder.done():
            batch = [os.urandom(32) for _ in range(per_frame)]
            st = Statement(seq=sent, digests=batch)
            st = msgspec.structs.replace(st, signature=ident.sign(protocol.statement_bytes(st.seq, batch)))
            await ws.send(protocol.encode(st))
            sent += 1
            await asyncio.sleep(pause_s)
    except websockets.ConnectionClosed as exc:
        ended = close_text(exc)
    holder.cancel()
    ended = ended or str((await asyncio.gather(holder, return_exceptions=True))[0])
    return {"statements_sent": sent, "digests_sent": sent * per_frame, "connection": ended}


async def big_statement(t: Target, duration: float, digests: int = 500_000) -> dict[str, Any]:
    """A provider that signs Statements of `digests` made-up receipt digests, again and again.
    (One frame of 500k digests is 17 MB, over the 16 MiB frame limit: it goes as two frames.)"""
    seen = await sign_statements(t, duration, min(digests, 250_000), 0.5)
    # Contained: the gateway closed the connection (or refused the peer) rather than keep taking digests.
    return {**seen, "contained": seen["connection"] != "closed by us"}


async def ghost_sessions(t: Target, duration: float, ghosts: int = 50) -> dict[str, Any]:
    """Fresh keys offering the honest providers' model, each closing right after its Offer
    (without waiting for Welcome). Before the fix such a session stayed registered forever."""
    sent = 0
    listed_before = len(t.admin("/admin/providers")) if t.admin_token else None
    for _ in range(ghosts):
        ident = Identity.generate()
        try:
            ws = await open_ws(t.ws_url)
            await prove(ws, ident)
            await ws.send(protocol.encode(signed_offer(ident, [ModelOffer(t.chat_model, "generate", "echo")])))
            await ws.close()
            sent += 1
        except WS_ERRORS:
            pass
    await asyncio.sleep(max(0.0, duration - 2))
    listed = len(t.admin("/admin/providers")) if t.admin_token else None
    # Contained: none of them is still registered once the attack is over.
    return {"ghosts_sent": sent, "sessions_listed_before": listed_before, "sessions_listed_at_end": listed,
            "contained": listed is not None and listed_before is not None and listed <= listed_before}


async def price_bomb(t: Target, duration: float, price: int = 10**15) -> dict[str, Any]:
    """A fresh key offers the honest providers' model at `price` µcr per 1M tokens and stays
    connected (answering pings, declining work). Before the fix every uncapped client got 402."""
    ident = Identity.generate()
    offer = ModelOffer(t.chat_model, "generate", "echo", price_in=price, price_out=price)
    try:
        ws = await handshake(t.ws_url, ident, [offer])
    except WS_ERRORS as exc:
        return {"refused_at_handshake": str(exc), "contained": True}
    holder = asyncio.create_task(keep_alive(ws, decline_runs))
    await asyncio.sleep(duration)
    holder.cancel()
    ended = (await asyncio.gather(holder, return_exceptions=True))[0]
    # Contained only if refused: an offer outside the operator's price bounds has no place in routing.
    return {"accepted": True, "connection": str(ended), "contained": False}


async def rogue_checkers(t: Target, duration: float, checkers: int = 2) -> dict[str, Any]:
    """Fresh keys connecting as checkers for the honest models and failing every audit they get
    (hard: "wrong model"). Before checker admission this suspended honest providers."""
    jobs: Counter[str] = Counter()

    def make_handler(ident: Identity) -> Callable[[Any, Any], Awaitable[None]]:
        async def on_message(ws: Any, msg: Any) -> None:
            if not isinstance(msg, AuditJob):
                return
            jobs[msg.receipt.node_id[:12]] += 1
            verdict = Verdict(job_id=msg.job_id, request_id=msg.receipt.request_id, provider=msg.receipt.node_id,
                              checker=ident.node_id, passed=False, hard=True, reason="wrong model (rogue)",
                              score=0.0, issued_at=time.time())
            verdict = msgspec.structs.replace(verdict, signature=ident.sign(protocol.signed_bytes(verdict)))
            await ws.send(protocol.encode(verdict))

        return on_message

    held: list[asyncio.Task[str]] = []
    refused: list[str] = []
    models = [ModelOffer(t.chat_model, "generate", "echo"), ModelOffer(t.embed_model, "embeddings", "echo")]
    for _ in range(checkers):
        ident = Identity.generate()
        try:
            ws = await handshake(t.ws_url, ident, models, role="checker")
        except WS_ERRORS as exc:
            refused.append(str(exc))
            continue
        held.append(asyncio.create_task(keep_alive(ws, make_handler(ident))))
    await asyncio.sleep(duration)
    for h in held:
        h.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    suspended = None
    if t.admin_token:
        try:
            suspended = sum(1 for row in t.admin("/admin/audits") if row.get("suspended"))
        except (httpx.HTTPError, TypeError, AttributeError):
            pass
    # Contained: unadmitted checkers get no audit jobs (no prompts) and suspend nobody.
    return {"admitted": len(held), "refused": refused[:3], "audit_jobs_received": sum(jobs.values()),
            "providers_suspended": suspended, "contained": not jobs and not suspended}


# The order run.py uses: attacks whose damage outlasts them (before the fixes) come last.
ATTACKS: dict[str, Attack] = {
    "huge_numbers": huge_numbers,
    "bad_timeout": bad_timeout,
    "stream_flood": stream_flood,
    "reputation_reads": reputation_reads,
    "slow_headers": slow_headers,
    "slow_upgrades": slow_upgrades,
    "huge_hello": huge_hello,
    "fake_offers": fake_offers,
    "big_statement": big_statement,
    "big_prompt": big_prompt,
    "price_bomb": price_bomb,
    "ghost_sessions": ghost_sessions,
    "rogue_checkers": rogue_checkers,
}
