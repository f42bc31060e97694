"""One connected peer as the gateway sees it: its verified offer, its open request channels,
what each of its runs may answer, and the frame limits that follow from them.

`Hub` (gateway/peers/hub.py) creates a session once a peer's handshake completes and reads its
frames; everything here is what the rest of the gateway (dispatch, streams, audits,
routing) touches of a live provider. A peer may only make the gateway hold what this
session bounds: answer frames queued per request (`max_queued`), output per run
(`max_tokens`), and frame size: after the handshake a frame may be at most
`ANSWER_FRAME_BYTES` plus what the runs now open there could legitimately answer (an
embedding of 2,048 inputs is megabytes), so a provider cannot make the gateway read a
16 MiB frame it never asked for.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket

from gpupool import protocol
from gpupool.identity import node_id_for
from gpupool.protocol import Chunk, Done, EmbedPayload, Fail, GeneratePayload, LoadReport, ModelOffer, Offer, Run

# Pings whose Pong may still come: older nonces are forgotten (their Pong is then ignored).
PINGS_REMEMBERED = 8
# Offers remembered per session for requests already dispatched (the price they are charged at).
DISPATCH_OFFERS_REMEMBERED = 4096
# A chunk normally carries at least one token; a little slack for providers that split text.
CHUNK_SLACK = 8
CLOSE_MESSAGE_TOO_BIG = 1009  # RFC 6455: what the transport closes with when a frame is over its limit
CLOSE_TIMEOUT_S = 2.0  # how long a peer has to answer our close frame before its socket is dropped
# A frame from a proven peer with no big answer due: statements, load reports, chunks,
# generated text (2,048 tokens of text with ids and logprobs is ~100 KiB), hardware answers.
ANSWER_FRAME_BYTES = 1024 * 1024
# Bytes an answer may take per generated token (text, id, logprob, msgpack framing), and per
# embedding input beyond its floats; dimensions assumed when an offer does not state them.
BYTES_PER_TOKEN = 64
BYTES_PER_INPUT = 64
ASSUMED_DIMENSIONS = 4096


def _transport(ws: WebSocket) -> object | None:
    """uvicorn's websockets-sansio protocol object behind `ws` (None with other servers)."""
    return getattr(getattr(ws, "_receive", None), "__self__", None)


def set_frame_limit(ws: WebSocket, max_bytes: int) -> None:
    """The transport refuses a bigger frame from its header (close 1009), before buffering it,
    where the server exposes its limit; elsewhere `Hub._recv`'s check of the raw size, before
    decoding, still stands."""
    conn = _connection(ws)
    if conn is not None:
        conn.max_message_size = max_bytes


def _connection(ws: WebSocket) -> Any:
    """The websockets protocol state behind `ws`, whose frame limit can be set (None elsewhere)."""
    conn = getattr(_transport(ws), "conn", None)
    return conn if hasattr(conn, "max_message_size") else None


def set_close_timeout(ws: WebSocket) -> None:
    """After our close frame a peer that never answers it would keep its socket for the
    server's default 10 s; an honest peer answers within a round trip."""
    proto = _transport(ws)
    if proto is not None and hasattr(proto, "close_timeout"):
        proto.close_timeout = CLOSE_TIMEOUT_S


def drop_upgrade(ws: WebSocket) -> None:
    """uvicorn's protocol keeps the upgrade's parsed request and response (their headers,
    twice over) for the connection's life though it never reads them after the accept:
    ~1.4 KiB per provider session for the response (tracemalloc), dropped once accepted.
    (websockets' parser still holds the request, a local of its generator.)"""
    proto = _transport(ws)
    if proto is not None and getattr(proto, "handshake_complete", False):
        for name in ("request", "response"):
            if hasattr(proto, name):
                setattr(proto, name, None)


def share_strings(offer: Offer) -> Offer:
    """Each decoded offer brings its own copy of every model's name, task and backend: with
    thousands of providers of the same models those are thousands of equal strings per model,
    ~1.5 KiB per session of 8 models (estimated from their sizes). Interned in place (the values, hence the offer's
    signature, are unchanged); an interned string goes when its last holder does."""
    for m in offer.models:
        m.name, m.task, m.backend = sys.intern(m.name), sys.intern(m.task), sys.intern(m.backend)
        if m.description:
            m.description = sys.intern(m.description)
    offer.region = sys.intern(offer.region)
    return offer


def hardware_answer_bytes(max_n: int) -> int:
    """The most a hardware proof's answers take for a matrix of side `max_n`: one SHA-256 per
    row, then 16 spot-checked rows of int64 (verify.hardware), with framing to spare."""
    return max_n * 32 + 16 * max_n * 8 + 64 * 1024


def answer_bound(run: Run, offer: ModelOffer | None) -> int:
    """The most bytes a correct answer to `run` can take, beyond a frame's usual size."""
    if isinstance(run.payload, EmbedPayload):
        dims = offer.dimensions if offer is not None and offer.dimensions > 0 else ASSUMED_DIMENSIONS
        return len(run.payload.inputs) * (4 * dims + BYTES_PER_INPUT)
    if isinstance(run.payload, GeneratePayload):
        return max(0, run.payload.max_tokens) * BYTES_PER_TOKEN
    return 0


@dataclass(frozen=True)
class ProviderLost:
    reason: str


Event = Chunk | Done | Fail | ProviderLost


class PeerViolation(Exception):
    """A provider broke the protocol; it is disconnected with `code` and `reason`."""

    def __init__(self, kind: str, reason: str, code: int = protocol.CLOSE_PROTOCOL_ERROR, node_id: str = ""):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.code = code
        self.node_id = node_id  # the peer's proven node id, when known before its session exists


@dataclass
class RunWatch:
    """What the gateway asked of one run, to hold the provider's answer to it."""

    max_tokens: int  # 0: not a generation (no output limit to enforce)
    answer_bytes: int = 0  # the most its answer may take (`answer_bound`)
    chunks: int = 0


@dataclass(eq=False)
class ProviderSession:
    node_id: str
    public_key: bytes
    offer: Offer
    ws: WebSocket
    connected_at: float
    models: dict[str, ModelOffer] = field(default_factory=dict)
    channels: dict[str, asyncio.Queue[Event]] = field(default_factory=dict)
    draining: bool = False
    rtt_s: float | None = None
    last_seen: float = 0.0  # when its last frame came (time.monotonic())
    # When it last went from no open request to one: its silence is judged from then, not from
    # a frame that may be a whole (stretched) ping interval old (`quiet_since`).
    busy_since: float = 0.0
    pinged_at: float = 0.0  # when this gateway last sent it a Ping
    load: LoadReport | None = None
    closed: bool = False
    max_queued: int = 4096  # answer frames waiting per request (GatewaySettings.max_queued_events)
    # Ping nonce -> when this gateway sent it (its own clock): RTT never comes from the provider.
    pings: dict[int, float] = field(default_factory=dict)
    runs: dict[str, RunWatch] = field(default_factory=dict)  # open request id -> its limits
    # Run id -> the model offer it was dispatched under: a later Offer must not reprice it.
    dispatch_offers: OrderedDict[str, ModelOffer] = field(default_factory=OrderedDict)
    # Largest frame this peer may send now: ANSWER_FRAME_BYTES plus its open runs' answers.
    base_frame_bytes: int = ANSWER_FRAME_BYTES  # raised by the hub where hardware proofs need more
    frame_limit: int = 0  # set by the hub once the handshake completes
    due_bytes: int = 0  # sum of the open runs' answer_bytes
    _conn: Any = None  # the transport's frame-limit holder (False: the server exposes none)
    # The hub's set of sessions with open request channels (`Hub.busy`): what the stall watch
    # walks four times a second, rather than every session of a pool of thousands mostly idle.
    busy: set[ProviderSession] | None = None

    @property
    def operator(self) -> str:
        """Who runs this node: its operator key's node id where the offer names one (verified at
        the handshake), else the node itself. Nodes of one operator never audit each other."""
        return node_id_for(self.offer.operator) if self.offer.operator else self.node_id

    def open_channel(self, request_id: str) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue(self.max_queued + 1)  # +1: room for ProviderLost
        if not self.channels:
            self.busy_since = time.monotonic()
        self.channels[request_id] = queue
        if self.busy is not None and not self.closed:
            self.busy.add(self)
        return queue

    def close_channel(self, request_id: str) -> None:
        self.channels.pop(request_id, None)
        if not self.channels and self.busy is not None:
            self.busy.discard(self)
        watch = self.runs.pop(request_id, None)
        if watch is not None and watch.answer_bytes:
            self._owe(-watch.answer_bytes)

    def offer_at_dispatch(self, request_id: str, model: str) -> ModelOffer | None:
        """The offer (prices) `request_id` was sent under; the current one if it is not remembered."""
        return self.dispatch_offers.get(request_id) or self.models.get(model)

    async def send(self, msg: protocol.Message) -> None:
        if self.closed:
            raise ConnectionError("provider connection is closed")
        if isinstance(msg, Run):
            self._dispatched(msg)
        try:
            await self.ws.send_bytes(protocol.encode(msg))
        except Exception as exc:  # starlette/uvicorn raise several types for a dead socket
            raise ConnectionError(f"provider connection is closed: {exc}") from exc

    def _dispatched(self, run: Run) -> None:
        offer = self.models.get(run.model)
        if offer is not None:
            self.dispatch_offers[run.request_id] = offer
            while len(self.dispatch_offers) > DISPATCH_OFFERS_REMEMBERED:
                self.dispatch_offers.popitem(last=False)
        limit = run.payload.max_tokens if isinstance(run.payload, GeneratePayload) else 0
        if run.request_id in self.channels and run.request_id not in self.runs:
            watch = self.runs[run.request_id] = RunWatch(max(limit, 0), answer_bound(run, offer))
            if watch.answer_bytes:
                self._owe(watch.answer_bytes)

    def _owe(self, delta: int) -> None:
        """The answers due grew or shrank: so does the largest frame this peer may send (several
        answers may come in one Batch frame, so the bound is their sum)."""
        self.due_bytes = max(0, self.due_bytes + delta)
        self.apply_frame_limit(min(protocol.MAX_FRAME_BYTES, self.base_frame_bytes + self.due_bytes))

    def apply_frame_limit(self, limit: int) -> None:
        if limit != self.frame_limit:
            self.frame_limit = limit
            if self._conn is None:  # looked up once: this runs on every dispatch of a big answer
                self._conn = _connection(self.ws) or False
            if self._conn:
                self._conn.max_message_size = limit

    def quiet_since(self) -> float:
        """Since when this session, with work in flight, has been quiet: its last frame, or the
        moment it got work if that is later (an idle session in a big pool is pinged only every
        ~40 s, so its last frame says nothing about the request it just got)."""
        return max(self.last_seen, self.busy_since)

    def ping_sent(self, nonce: int) -> None:
        self.pinged_at = self.pings[nonce] = time.monotonic()
        while len(self.pings) > PINGS_REMEMBERED:
            del self.pings[next(iter(self.pings))]

    def deliver(self, msg: Chunk | Done | Fail) -> None:
        """Queue a provider's answer frame for the request it belongs to; raises PeerViolation."""
        channel = self.channels.get(msg.request_id)
        if channel is None:
            return  # a late answer for a cancelled or timed-out request; drop it
        watch = self.runs.get(msg.request_id)
        if watch is not None and watch.max_tokens:
            if isinstance(msg, Chunk):
                watch.chunks += 1
                over = watch.chunks > watch.max_tokens + CHUNK_SLACK
            elif isinstance(msg, Done):
                over = max(msg.receipt.usage.completion_tokens, len(msg.token_ids)) > watch.max_tokens
            else:
                over = False
            if over:
                raise PeerViolation("output_over_max_tokens", f"request {msg.request_id[:40]} asked for at most "
                                    f"{watch.max_tokens} tokens; the provider sent more")
        if channel.qsize() >= self.max_queued:
            raise PeerViolation("flood", f"more than {self.max_queued} answer frames queued for one request",
                                protocol.CLOSE_LIMIT)
        channel.put_nowait(msg)
