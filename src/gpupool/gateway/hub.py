"""The provider hub: the WebSocket endpoint providers dial, and the registry of live ones.

Each connected provider is a `ProviderSession`: its verified offer, its open
request channels, its measured round-trip time. A provider that breaks the
protocol (bad signature, unknown version, garbage frame, lying receipt) is
disconnected with a clear close reason and recorded in the store's peer events;
its in-flight requests see `ProviderLost` and the dispatcher moves them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from gpupool import protocol
from gpupool.config import GatewaySettings
from gpupool.gateway.store import Store
from gpupool.identity import Identity, node_id_for, verify_signature
from gpupool.protocol import (
    Batch,
    Challenge,
    Chunk,
    Done,
    Drain,
    Fail,
    HardwareAnswer,
    Hello,
    LoadReport,
    ModelOffer,
    Offer,
    Ping,
    Pong,
    SettlementAddress,
    Statement,
    Verdict,
    Proof,
    Welcome,
)
from gpupool.gateway.router import LiveRouter
from gpupool.routing import smooth_rtt

log = logging.getLogger("gpupool.gateway.hub")


@dataclass(frozen=True)
class ProviderLost:
    reason: str


Event = Chunk | Done | Fail | ProviderLost


class PeerViolation(Exception):
    """A provider broke the protocol; it is disconnected with `code` and `reason`."""

    def __init__(self, kind: str, reason: str, code: int = protocol.CLOSE_PROTOCOL_ERROR):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.code = code


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
    last_seen: float = 0.0
    load: LoadReport | None = None
    closed: bool = False

    def open_channel(self, request_id: str) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self.channels[request_id] = queue
        return queue

    def close_channel(self, request_id: str) -> None:
        self.channels.pop(request_id, None)

    async def send(self, msg: protocol.Message) -> None:
        if self.closed:
            raise ConnectionError("provider connection is closed")
        try:
            await self.ws.send_bytes(protocol.encode(msg))
        except Exception as exc:  # starlette/uvicorn raise several types for a dead socket
            raise ConnectionError(f"provider connection is closed: {exc}") from exc


class Hub:
    def __init__(self, settings: GatewaySettings, identity: Identity, store: Store):
        self.settings = settings
        self.identity = identity
        self.store = store
        self.sessions: dict[str, ProviderSession] = {}
        self.checkers: dict[str, ProviderSession] = {}  # role "checker": audit jobs only, never client traffic
        # Every model any provider offered since start: tells "unknown model" (404)
        # apart from "known, but nobody serves it right now" (503).
        self.known_models: dict[str, ModelOffer] = {}
        self._ping_nonce = itertools.count()
        self.router = LiveRouter(self, settings)
        # Called with (node id, receipt digests) for each verified Statement; billing listens.
        self.on_statement: Callable[[str, list[bytes]], None] = lambda node_id, digests: None
        # On an EVM ledger: (contract, chain id) announced in Welcome, and who registers settlement keys.
        self.settlement: tuple[str, int] | None = None
        self.on_settlement_address: Callable[[str, SettlementAddress], None] = lambda node_id, msg: None
        # Verification (gateway/audits.py): verdicts from checkers, and who is suspended.
        self.on_verdict: Callable[[ProviderSession, Verdict], Awaitable[None]] | None = None
        self.is_suspended: Callable[[str], bool] = lambda node_id: False
        self.is_held_back: Callable[[str], bool] = lambda node_id: False
        self.reputation_of: Callable[[str], float] = lambda node_id: 0.5
        # Whether a provider's hardware proof has passed: until then its speed claims are ignored.
        self.hardware_verified: Callable[[str], bool] = lambda node_id: True
        # Its verified GFLOP/s from the last passed proof (None: none yet, or proofs are off).
        self.hardware_gflops: Callable[[str], float | None] = lambda node_id: None
        # Hardware proof (gateway/hardware_checks.py): told of each provider-role session once it is
        # registered (it then sends challenges), and handed the provider's answers.
        self.on_provider_connected: Callable[[ProviderSession], None] = lambda session: None
        self.on_hardware_answer: Callable[[ProviderSession, HardwareAnswer], None] = lambda session, msg: None

    # ------------------------------------------------------------ queries

    def serving(self, model: str) -> list[ProviderSession]:
        live = [s for s in self.sessions.values()
                if model in s.models and not s.closed and not self.is_suspended(s.node_id)]
        # Providers whose answers mostly await audit verdicts wait, unless nobody else can serve.
        ready = [s for s in live if not self.is_held_back(s.node_id)]
        return ready or live

    def live_models(self) -> dict[str, list[ProviderSession]]:
        out: dict[str, list[ProviderSession]] = {}
        for session in self.sessions.values():
            for name in session.models:
                out.setdefault(name, []).append(session)
        return out

    # ------------------------------------------------------------ connection lifecycle

    async def handle(self, ws: WebSocket) -> None:
        await ws.accept()
        peer = f"{ws.client.host}:{ws.client.port}" if ws.client else "unknown"
        session: ProviderSession | None = None
        try:
            session = await asyncio.wait_for(self._handshake(ws, peer), self.settings.handshake_timeout_s)
            await self._serve(session)
        except TimeoutError:
            self.store.record_event(peer, "handshake_timeout", "no complete handshake in time")
            await self._close(ws, protocol.CLOSE_HANDSHAKE_TIMEOUT, "handshake timed out")
        except PeerViolation as exc:
            self.store.record_event(session.node_id if session else peer, exc.kind, exc.reason)
            await self._close(ws, exc.code, exc.reason)
        except WebSocketDisconnect:
            pass
        except asyncio.CancelledError:
            await self._close(ws, protocol.CLOSE_GATEWAY_SHUTDOWN, "gateway shutting down")
            raise
        finally:
            if session is not None:
                self._remove(session, "provider disconnected")

    async def _close(self, ws: WebSocket, code: int, reason: str) -> None:
        if ws.application_state == WebSocketState.CONNECTED:
            try:
                await ws.close(code, reason[:120])  # close reasons are limited to 123 bytes
            except Exception:  # noqa: BLE001 - the peer may already be gone
                pass

    async def _recv(self, ws: WebSocket) -> protocol.Message:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        data = message.get("bytes")
        if data is None:
            raise PeerViolation("garbage_frame", "text frame received; expected binary msgpack")
        try:
            return protocol.decode(data)
        except protocol.ProtocolError as exc:
            raise PeerViolation("garbage_frame", str(exc)[:200]) from exc

    async def _handshake(self, ws: WebSocket, peer: str) -> ProviderSession:
        hello = await self._recv(ws)
        if not isinstance(hello, Hello):
            raise PeerViolation("bad_handshake", f"expected hello, got {type(hello).__name__}")
        if hello.version not in protocol.SUPPORTED_VERSIONS:
            raise PeerViolation(
                "bad_version",
                f"unsupported protocol version {hello.version}; this gateway speaks "
                f"{sorted(protocol.SUPPORTED_VERSIONS)}",
                protocol.CLOSE_BAD_VERSION,
            )
        if len(hello.public_key) != 32:
            raise PeerViolation("bad_handshake", "public key must be 32 raw ed25519 bytes")
        node_id = node_id_for(hello.public_key)
        nonce = secrets.token_bytes(32)
        await ws.send_bytes(protocol.encode(Challenge(nonce, self.identity.node_id)))
        proof = await self._recv(ws)
        if not isinstance(proof, Proof):
            raise PeerViolation("bad_handshake", f"expected proof, got {type(proof).__name__}")
        if not verify_signature(hello.public_key, proof.signature,
                                protocol.challenge_bytes(nonce, self.identity.node_id)):
            raise PeerViolation("bad_signature", "challenge signature does not verify",
                                protocol.CLOSE_BAD_SIGNATURE)
        offer = await self._recv(ws)
        if not isinstance(offer, Offer):
            raise PeerViolation("bad_handshake", f"expected offer, got {type(offer).__name__}")
        self._check_offer(offer, hello.public_key, node_id)
        session = ProviderSession(
            node_id=node_id, public_key=hello.public_key, offer=offer, ws=ws,
            connected_at=time.monotonic(), last_seen=time.monotonic(),
            models={m.name: m for m in offer.models},
        )
        if offer.role not in ("provider", "checker"):
            raise PeerViolation("bad_offer", f"unknown role {offer.role!r}")
        pool = self.checkers if offer.role == "checker" else self.sessions
        old = pool.get(node_id)
        if old is not None:
            # Same key reconnected (e.g. after a network blip): the new link wins.
            self._remove(old, "replaced by a newer connection")
            await self._close(old.ws, protocol.CLOSE_DUPLICATE, "replaced by a newer connection")
        pool[node_id] = session
        if offer.role == "provider":
            self.known_models.update(session.models)
        contract, chain_id = self.settlement or ("", 0)
        await ws.send_bytes(protocol.encode(Welcome(secrets.token_hex(8), node_id, contract, chain_id)))
        await self.store.upsert_provider(node_id, hello.public_key, offer.region, list(session.models))
        log.info("provider %s connected from %s: %s in %s", node_id[:12], peer,
                 ", ".join(session.models), offer.region)
        return session

    def _check_offer(self, offer: Offer, public_key: bytes, node_id: str) -> None:
        if offer.node_id != node_id:
            raise PeerViolation("bad_offer", "offer node id does not match the handshake key")
        if not protocol.verify_claim(offer, public_key):
            raise PeerViolation("bad_signature", "offer signature does not verify", protocol.CLOSE_BAD_SIGNATURE)
        if not offer.models:
            raise PeerViolation("bad_offer", "offer lists no models")
        if offer.max_concurrency < 1:
            raise PeerViolation("bad_offer", "max_concurrency must be at least 1")

    async def _serve(self, session: ProviderSession) -> None:
        pinger = asyncio.create_task(self._ping_loop(session))
        if session.offer.role == "provider":
            self.on_provider_connected(session)
        try:
            while True:
                msg = await self._recv(session.ws)
                session.last_seen = time.monotonic()
                if isinstance(msg, (Chunk, Done, Fail)):
                    self._deliver(session, msg)
                elif isinstance(msg, Batch):
                    for item in msg.items:
                        self._deliver(session, item)
                elif isinstance(msg, Statement):
                    if not protocol.verify_statement(msg, session.public_key):
                        raise PeerViolation("bad_signature", "receipt statement signature does not verify",
                                            protocol.CLOSE_BAD_SIGNATURE)
                    self.on_statement(session.node_id, msg.digests)
                elif isinstance(msg, Verdict) and session.offer.role == "checker":
                    if msg.checker != session.node_id or not protocol.verify_claim(msg, session.public_key):
                        raise PeerViolation("bad_signature", "verdict signature does not verify",
                                            protocol.CLOSE_BAD_SIGNATURE)
                    if self.on_verdict is not None:
                        await self.on_verdict(session, msg)
                elif isinstance(msg, HardwareAnswer):
                    self.on_hardware_answer(session, msg)
                elif isinstance(msg, SettlementAddress):
                    self.on_settlement_address(session.node_id, msg)
                elif isinstance(msg, Pong):
                    sample = time.monotonic() - msg.sent_at
                    if 0 <= sample < 60:
                        session.rtt_s = smooth_rtt(session.rtt_s, sample)
                elif isinstance(msg, LoadReport):
                    session.load = msg
                elif isinstance(msg, Drain):
                    session.draining = True
                    log.info("provider %s is draining: %s", session.node_id[:12], msg.reason)
                elif isinstance(msg, Offer):
                    self._check_offer(msg, session.public_key, session.node_id)
                    session.offer, session.models = msg, {m.name: m for m in msg.models}
                    self.known_models.update(session.models)
                else:
                    raise PeerViolation("unexpected_message", f"unexpected {type(msg).__name__} after handshake")
        finally:
            pinger.cancel()

    @staticmethod
    def _deliver(session: ProviderSession, msg: Chunk | Done | Fail) -> None:
        channel = session.channels.get(msg.request_id)
        if channel is not None:
            channel.put_nowait(msg)
        # else: a late answer for a cancelled or timed-out request; drop it.

    async def _ping_loop(self, session: ProviderSession) -> None:
        interval = self.settings.ping_interval_s
        try:
            await session.send(Ping(next(self._ping_nonce), time.monotonic()))
            while True:
                await asyncio.sleep(interval)
                if time.monotonic() - session.last_seen > self.settings.liveness_timeout_s:
                    self.store.record_event(session.node_id, "unresponsive", "no message within the liveness timeout")
                    self._remove(session, "provider unresponsive")
                    await self._close(session.ws, protocol.CLOSE_PROTOCOL_ERROR, "unresponsive")
                    return
                await session.send(Ping(next(self._ping_nonce), time.monotonic()))
        except (ConnectionError, RuntimeError, WebSocketDisconnect):
            return

    def _remove(self, session: ProviderSession, reason: str) -> None:
        if session.closed:
            return
        session.closed = True
        if self.sessions.get(session.node_id) is session:
            del self.sessions[session.node_id]
        if self.checkers.get(session.node_id) is session:
            del self.checkers[session.node_id]
        for channel in session.channels.values():
            channel.put_nowait(ProviderLost(reason))
        log.info("provider %s left: %s", session.node_id[:12], reason)

    def disconnect(self, session: ProviderSession, kind: str, reason: str) -> None:
        """Throw out a provider that lied (e.g. a bad receipt); its work is moved elsewhere."""
        self.store.record_event(session.node_id, kind, reason)
        self._remove(session, reason)
        asyncio.create_task(self._close(session.ws, protocol.CLOSE_PROTOCOL_ERROR, reason))

    async def close_all(self) -> None:
        for session in [*self.sessions.values(), *self.checkers.values()]:
            self._remove(session, "gateway shutting down")
            await self._close(session.ws, protocol.CLOSE_GATEWAY_SHUTDOWN, "gateway shutting down")
