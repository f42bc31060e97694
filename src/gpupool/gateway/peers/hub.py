"""The provider hub: the WebSocket endpoint providers dial, and the registry of live ones.

Each connected provider is a `ProviderSession`: its verified offer, its open
request channels, its measured round-trip time. A provider that breaks the
protocol (bad signature, unknown version, garbage frame, lying receipt) is
disconnected with a clear close reason and recorded in the store's peer events;
its in-flight requests see `ProviderLost` and the dispatcher moves them.

Peers are strangers, so everything one can make the gateway hold is bounded
(docs/operations.md, "Peer limits"): before a peer has proven its key the transport takes
no frame over 256 KiB (refused from its header, never buffered) and only frames of a few
KiB are decoded; after, its offer (models, name lengths, prices), statements,
batches and the answer frames queued per request have limits, and output beyond a
request's `max_tokens` is a violation. A session is registered only once its handshake
completed (a peer that vanishes half-way leaves nothing behind), and the table of
models ever offered forgets a model nobody has offered for a while. Checkers are
admitted by the operator (`--checker NODE_ID`) or by stake, never by their own say.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable

from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from gpupool import protocol
from gpupool.config import GatewaySettings
from gpupool.gateway.peers.handshake import Handshake, recv_frame
from gpupool.gateway.peers.peer_limits import check_offer
from gpupool.gateway.peers.listeners import HubListeners
from gpupool.gateway.peers.model_index import ModelIndex
from gpupool.gateway.peers.pacing import Arrivals, HandshakeGate, PingScheduler
from gpupool.gateway.peers.session import (
    Event,
    PeerViolation,
    ProviderLost,
    ProviderSession,
    drop_upgrade,
    set_close_timeout,
    set_frame_limit,
    share_strings,
)
from gpupool.gateway.store import Store
from gpupool.identity import Identity
from gpupool.protocol import (
    Batch,
    Chunk,
    Done,
    Drain,
    Fail,
    HardwareAnswer,
    LoadReport,
    ModelOffer,
    Offer,
    Ping,
    Pong,
    SettlementAddress,
    Statement,
    Verdict,
    Welcome,
)
from gpupool.routing import smooth_rtt

__all__ = ["Event", "Hub", "PeerViolation", "ProviderLost", "ProviderSession"]

log = logging.getLogger("gpupool.gateway.hub")
# Peer events recorded per minute; beyond this a flood of bad peers is counted, not written
# row by row (the events table would otherwise grow at whatever rate strangers connect).
EVENTS_PER_MINUTE = 600
# Connected providers' rows are re-stamped this often (one batch), and a start remembers the models of
# providers stamped within REMEMBER_S: what was served when the gateway stopped, however it stopped.
REFRESH_S = 300.0
REMEMBER_S = 2 * REFRESH_S + 60


class Hub:
    """The registry of connected peers and their offers; changes are published to `listeners`.

    `stake_of` (admission by stake, `checker_min_stake`): the µcr a node has staked in the
    ledger. `settlement`: on an EVM ledger, (contract, chain id) announced in each Welcome."""

    def __init__(self, settings: GatewaySettings, identity: Identity, store: Store, *,
                 stake_of: Callable[[str], Awaitable[int]] | None = None,
                 settlement: tuple[str, int] | None = None):
        self.settings = settings
        self.identity = identity
        self.store = store
        self.sessions: dict[str, ProviderSession] = {}
        self.checkers: dict[str, ProviderSession] = {}  # role "checker": audit jobs only, never client traffic
        self.changes = 0  # bumped when who serves or checks what changes (a join, leave, drain or new offer)
        self.busy: set[ProviderSession] = set()  # open sessions with open request channels (ProviderSession.busy)
        # Every model any provider offered since start: tells "unknown model" (404)
        # apart from "known, but nobody serves it right now" (503).
        self.known_models: dict[str, ModelOffer] = {}
        self._unoffered: dict[str, float] = {}  # known model -> since when nobody offers it
        self._largest_context: int | None = None  # cache of largest_context(), reset when offers change
        self._generation_reads_images = False  # computed with _largest_context
        self.settlement = settlement
        self.listeners = HubListeners()
        self._events_window = (0.0, 0, 0)  # (window start, recorded, suppressed)
        self._ping_nonce = itertools.count()
        self.handshake = Handshake(settings, identity, store, self.sessions, self.busy, stake_of)
        # model -> live sessions and the fair share's figures, kept on every change (O(1) per request).
        self.index = ModelIndex(settings.max_session_slots)
        self.pings = PingScheduler(settings, lambda: len(self.sessions) + len(self.checkers), self._ping,
                                   self._unresponsive, self._housekeeping)
        self.gate = HandshakeGate(settings.handshakes_per_s, settings.handshake_queue_s)
        self.arrivals = Arrivals(settings.restart_grace_s)
        self._refreshed = time.monotonic()

    async def start(self) -> None:
        """Recall the models providers served before this start (restart grace, `Arrivals`)."""
        since = time.time() - REMEMBER_S
        self.arrivals.remember(await self.store.recent_models(since))

    async def returning(self) -> set[str]:
        """The providers connected before this start (the store's record), at most the session bound."""
        return await self.store.recent_providers(time.time() - REMEMBER_S, self.settings.max_provider_sessions)

    # ------------------------------------------------------------ queries

    def offering(self, model: str) -> list[ProviderSession]:
        """The open provider sessions that offer `model` (whether trust lets them serve is the router's call).
        The index's own list: callers must not change it."""
        pool = self.index.pools.get(model)
        return pool.sessions if pool is not None else []

    def model_verified(self, model: str) -> bool:
        """Whether an admitted checker holds `model` now, i.e. its answers can be audited."""
        return any(model in c.models and not c.closed for c in self.checkers.values())

    def live_models(self) -> dict[str, list[ProviderSession]]:
        """Model -> its live sessions (the index's lists: callers must not change them)."""
        return {name: pool.sessions for name, pool in self.index.pools.items()}

    # ------------------------------------------------------------ connection lifecycle

    async def handle(self, ws: WebSocket) -> None:
        # Until the key is proven the transport takes no frame over the Offer's limit: a bigger
        # one is refused from its header (close 1009), before its payload is even buffered.
        peer = f"{ws.client.host}:{ws.client.port}" if ws.client else "unknown"
        now = time.monotonic()
        wait = self.gate.turn(now)
        if wait is None:
            # Refused before the upgrade: the cheapest answer, with when to come back.
            retry = math.ceil(self.gate.retry_after(now))
            self.record_event(peer, "handshake_deferred", f"too many handshakes queued; retry in {retry} s")
            await ws.send_denial_response(Response("gateway busy with other providers' handshakes; retry later\n",
                                                   503, {"retry-after": str(retry)}))
            return
        if wait > 0:
            await asyncio.sleep(wait)
        set_frame_limit(ws, protocol.MAX_OFFER_FRAME_BYTES)
        set_close_timeout(ws)
        await ws.accept()
        drop_upgrade(ws)
        session: ProviderSession | None = None
        try:
            # Not wait_for: its task and a refusal's traceback hold each other (and through the
            # traceback the refused frame) until a full collection, which the raised thresholds
            # make rare: 124 refused 180 KB offers kept 22 MiB (bench/hostile long_strings).
            async with asyncio.timeout(self.settings.handshake_timeout_s):
                session = await self.handshake(ws)
            session.apply_frame_limit(session.base_frame_bytes)
            # Registered only now: a peer that vanished during the handshake was never
            # registered, and a registered one is removed in `finally` whatever happens
            # (liveness pings start with `_serve`, right after its Welcome).
            self._register(session, peer)
            # Welcomed once registered, so a peer that has its Welcome counts (e.g. against the
            # session bound); if this send fails, `finally` removes the session again.
            contract, chain_id = self.settlement or ("", 0)
            await ws.send_bytes(protocol.encode(Welcome(secrets.token_hex(8), session.node_id, contract, chain_id)))
            await self._serve(session)
        except TimeoutError:
            self.record_event(peer, "handshake_timeout", "no complete handshake in time")
            await self._close(ws, protocol.CLOSE_HANDSHAKE_TIMEOUT, "handshake timed out")
        except PeerViolation as exc:
            self.record_event(session.node_id if session else exc.node_id or peer, exc.kind, exc.reason)
            await self._close(ws, exc.code, exc.reason)
        except WebSocketDisconnect:
            pass
        except asyncio.CancelledError:
            await self._close(ws, protocol.CLOSE_GATEWAY_SHUTDOWN, "gateway shutting down")
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a send to a peer that already left
            log.info("peer %s dropped: %s: %s", session.node_id[:12] if session else peer, type(exc).__name__, exc)
            await self._close(ws, protocol.CLOSE_PROTOCOL_ERROR, "connection failed")
        finally:
            if session is not None:
                self._remove(session, "provider disconnected")

    def record_event(self, peer: str, kind: str, detail: str) -> None:
        """Record a peer event, at most EVENTS_PER_MINUTE a minute; the rest are counted in one row."""
        now = time.monotonic()
        start, recorded, suppressed = self._events_window
        if now - start >= 60:
            if suppressed:
                self.store.record_event("gateway", "events_suppressed",
                                        f"{suppressed} peer events over the limit of {EVENTS_PER_MINUTE} a minute "
                                        "were not recorded")
            start, recorded, suppressed = now, 0, 0
        if recorded < EVENTS_PER_MINUTE:
            self.store.record_event(peer, kind, detail)
            recorded += 1
        else:
            suppressed += 1
        self._events_window = (start, recorded, suppressed)

    async def _close(self, ws: WebSocket, code: int, reason: str) -> None:
        if ws.application_state == WebSocketState.CONNECTED:
            try:
                await ws.close(code, reason[:120])  # close reasons are limited to 123 bytes
            except Exception:  # noqa: BLE001 - the peer may already be gone
                pass

    def _register(self, session: ProviderSession, peer: str) -> None:
        pool = self.checkers if session.offer.role == "checker" else self.sessions
        old = pool.get(session.node_id)
        if old is not None:
            # Same key reconnected (e.g. after a network blip): the new link wins.
            self._remove(old, "replaced by a newer connection")
            asyncio.ensure_future(self._close(old.ws, protocol.CLOSE_DUPLICATE, "replaced by a newer connection"))
        pool[session.node_id] = session
        self.changes += 1
        if session.offer.role == "provider":
            self.index.add(session)
            self._offered(session.models)
            self.arrivals.joined(session.models)
        # The first ping at once (RTT before the first request), then on the shared schedule.
        self.pings.add(session)
        log.info("%s %s connected from %s: %s in %s", session.offer.role, session.node_id[:12], peer,
                 ", ".join(session.models), session.offer.region)

    def largest_context(self) -> int | None:
        """The most prompt tokens any known generation model takes (None: no such model is known)."""
        if self._largest_context is None:
            generators = [o for o in self.known_models.values() if o.task == "generate"]
            self._largest_context = max((o.max_input_tokens for o in generators), default=0)
            self._generation_reads_images = any("image" in o.accepts for o in generators)
        return self._largest_context or None

    def generation_reads_images(self) -> bool:
        """Whether a known generation model reads images: then a chat body is sized by its images,
        not by the largest context (its prompt text)."""
        self.largest_context()
        return self._generation_reads_images

    def _offered(self, models: Iterable[str] | dict[str, ModelOffer]) -> None:
        if isinstance(models, dict):
            self.known_models.update(models)
            self._largest_context = None
        for name in models:
            self._unoffered.pop(name, None)

    def _unoffer(self, names: Iterable[str]) -> None:
        """These models may have lost their last provider: start (or finish) forgetting them."""
        now = time.monotonic()
        live = self.index.pools
        for name in names:
            if name not in live and name in self.known_models:
                self._unoffered.setdefault(name, now)
        for name, since in list(self._unoffered.items()):
            if name in live:
                del self._unoffered[name]
            elif now - since >= self.settings.known_model_ttl_s:
                del self._unoffered[name]
                self.known_models.pop(name, None)
                self._largest_context = None

    async def _serve(self, session: ProviderSession) -> None:
        if session.offer.role == "provider":
            for joined in self.listeners.joined:
                joined(session)
        while True:
            msg = await recv_frame(session.ws, lambda: session.frame_limit, self.settings)
            session.last_seen = time.monotonic()
            if isinstance(msg, (Chunk, Done, Fail)):
                session.deliver(msg)
            elif isinstance(msg, Batch):
                if len(msg.items) > self.settings.max_queued_events:
                    raise PeerViolation("flood", f"batch of {len(msg.items)} items exceeds "
                                        f"{self.settings.max_queued_events}", protocol.CLOSE_LIMIT)
                for item in msg.items:
                    session.deliver(item)
            elif isinstance(msg, Statement):
                if len(msg.digests) > self.settings.max_statement_digests:
                    raise PeerViolation("statement_too_large", f"statement lists {len(msg.digests)} digests; "
                                        f"at most {self.settings.max_statement_digests}", protocol.CLOSE_LIMIT)
                if not protocol.verify_statement(msg, session.public_key):
                    raise PeerViolation("bad_signature", "receipt statement signature does not verify",
                                        protocol.CLOSE_BAD_SIGNATURE)
                for listener in self.listeners.statement:
                    listener(session.node_id, msg.digests)
            elif isinstance(msg, Verdict) and session.offer.role == "checker":
                if msg.checker != session.node_id or not protocol.verify_claim(msg, session.public_key):
                    raise PeerViolation("bad_signature", "verdict signature does not verify",
                                        protocol.CLOSE_BAD_SIGNATURE)
                for on_verdict in self.listeners.verdict:
                    await on_verdict(session, msg)
            elif isinstance(msg, HardwareAnswer):
                for on_answer in self.listeners.hardware_answer:
                    on_answer(session, msg)
            elif isinstance(msg, SettlementAddress):
                for on_address in self.listeners.settlement_address:
                    on_address(session.node_id, msg)
            elif isinstance(msg, Pong):
                # Timed from this gateway's own record of the nonce it sent: a Pong's
                # `sent_at` is the provider's word, and a forged one could claim any RTT.
                sent = session.pings.pop(msg.nonce, None)
                if sent is not None:
                    session.rtt_s = smooth_rtt(session.rtt_s, time.monotonic() - sent)
            elif isinstance(msg, LoadReport):
                self.index.set_load(session, msg)  # moves the fair share's figures only if capacity did
            elif isinstance(msg, Drain):
                session.draining = True
                self.changes += 1
                log.info("provider %s is draining: %s", session.node_id[:12], msg.reason)
            elif isinstance(msg, Offer):
                check_offer(msg, session.public_key, session.node_id, self.settings)
                share_strings(msg)
                if msg.role != session.offer.role:
                    raise PeerViolation("bad_offer", "a session cannot change its role")
                old = session.models
                if msg.role != "provider":
                    session.offer, session.models = msg, {m.name: m for m in msg.models}
                    self.changes += 1
                elif self.index.reoffer(session, msg):  # diffed: a re-sent, unchanged offer moves nothing
                    self.changes += 1
                    self._offered(session.models)
                    self.arrivals.joined(session.models)
                    self._unoffer(set(old) - set(session.models))
                    for changed in self.listeners.offer_changed:
                        changed(session)
            else:
                raise PeerViolation("unexpected_message", f"unexpected {type(msg).__name__} after handshake")

    def _unresponsive(self, session: ProviderSession) -> None:
        """Silent past the liveness timeout (the ping scheduler's verdict): dropped."""
        self.record_event(session.node_id, "unresponsive", "no message within the liveness timeout")
        self._remove(session, "provider unresponsive")
        asyncio.create_task(self._close(session.ws, protocol.CLOSE_PROTOCOL_ERROR, "unresponsive"))

    def _housekeeping(self) -> None:
        """About once a second: finish forgetting models whose time is up; now and then, refresh the
        store's record of who is connected (what a restart remembers), in one batch."""
        self._unoffer(())
        now = time.monotonic()
        if now - self._refreshed >= REFRESH_S:
            self._refreshed = now
            for s in self.sessions.values():
                self.store.note_provider(s.node_id, s.public_key, s.offer.region, list(s.models))

    def ping_now(self, session: ProviderSession) -> None:
        """Ping `session` outside the schedule (the stall watch asks, for a quiet one with work in
        flight); a task, so a peer whose socket no longer drains holds nobody up."""
        task = asyncio.create_task(self._ping(session))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a dead socket: its reader removes it

    async def _ping(self, session: ProviderSession) -> None:
        nonce = next(self._ping_nonce)
        session.ping_sent(nonce)
        await session.send(Ping(nonce, time.monotonic()))

    def _remove(self, session: ProviderSession, reason: str) -> None:
        if session.closed:
            return
        session.closed = True
        self.changes += 1
        self.busy.discard(session)
        if self.sessions.get(session.node_id) is session:
            del self.sessions[session.node_id]
        if self.checkers.get(session.node_id) is session:
            del self.checkers[session.node_id]
        for channel in session.channels.values():
            if channel.full():  # a flooded queue: what is in it no longer matters
                channel.get_nowait()
            channel.put_nowait(ProviderLost(reason))
        if session.offer.role == "provider":
            self.index.remove(session)
            self._unoffer(session.models)
            # Its row's last_seen says it served until now (what a restart remembers).
            self.store.note_provider(session.node_id, session.public_key, session.offer.region,
                                     list(session.models))
            for left in self.listeners.left:
                left(session)
        log.info("%s %s left: %s", session.offer.role, session.node_id[:12], reason)

    def disconnect(self, session: ProviderSession, kind: str, reason: str) -> None:
        """Throw out a provider that lied (e.g. a bad receipt); its work is moved elsewhere."""
        self.record_event(session.node_id, kind, reason)
        self._remove(session, reason)
        asyncio.create_task(self._close(session.ws, protocol.CLOSE_PROTOCOL_ERROR, reason))

    async def close_all(self) -> None:
        await self.pings.close()
        for session in [*self.sessions.values(), *self.checkers.values()]:
            self._remove(session, "gateway shutting down")
            await self._close(session.ws, protocol.CLOSE_GATEWAY_SHUTDOWN, "gateway shutting down")
