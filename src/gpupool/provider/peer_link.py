"""A node's outbound link to one gateway, shared by providers and checkers.

    class MyLink(PeerLink):
        async def _session(self, ws):        # after the Welcome: serve messages until the connection ends
            async for msg in self._messages(ws): ...
    await MyLink(node, url, client=f"gpupool/{__version__}", reconnect_max_s=30.0, silence_s=60.0).run()

`PeerLink.run` dials the gateway (verifying a wss:// certificate), runs the one
`handshake` every peer role uses (Hello, Challenge, Proof, Offer, Welcome), hands the
connection to the subclass's `_session` (which reads the gateway's messages from
`_messages`: Pings are answered there), and reconnects with exponential backoff and
jitter until the node drains. The link sends no keep-alives of its own: the gateway's
Pings are its liveness signal, and only a gateway silent for longer than its cadence
says is checked with one WebSocket ping (provider/silence.py, which states the bound).
The provider's `GatewayLink` and the checker's `CheckerLink` are its two subclasses; a
checker may import this module, and nothing here knows either role.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import websockets
from websockets.asyncio.client import ClientConnection, connect

from gpupool import protocol
from gpupool.identity import Identity
from gpupool.protocol import Challenge, Hello, Offer, Ping, Pong, Welcome
from gpupool.protocol_handshake import answer
from gpupool.provider.silence import Silence
from gpupool.tls import certificate_problem, client_context

# Both roles' links have always logged here; operators' log filters rely on it.
log = logging.getLogger("gpupool.provider")
# How long the gateway may take to send each handshake reply.
HANDSHAKE_REPLY_TIMEOUT_S = 15
# How long a dial may take until the upgrade is answered. A busy gateway queues a dial at its
# handshake gate for up to its --handshake-queue-s (5 s) before answering, after the SYNs a full
# listen backlog dropped and the kernel resent (1 s, 3 s, ...). At 10 s, thousands of dials
# reconnecting at once gave up while queued, and the gate's turns they held went unused:
# no handshake at all for 6 s of a 10,000-provider reconnect (bench/README.md, "scale").
OPEN_TIMEOUT_S = 30
# After a welcomed connection is lost (the gateway died, restarted or went away: no close
# frame, or its shutdown close), dial again at least every FAST_RETRY_MAX_S for
# FAST_RETRY_FOR_S, not on the doubling backoff: a restarted gateway is back within
# seconds, and each doubling step it falls between cost its clients that much more
# (issue 18: the restart's worst case). A refused dial is one SYN and RST; a storm of
# dials at a gateway that is back queues at its handshake pacing (Retry-After), as before.
FAST_RETRY_FOR_S = 30.0
FAST_RETRY_MAX_S = 0.5
# Close codes that say "gone for now, come back": a shutdown (ours), going away, restarting.
_COMING_BACK = frozenset({protocol.CLOSE_GATEWAY_SHUTDOWN, 1001, 1012})


class LinkedNode(Protocol):
    """What a link reads from the node (provider or checker) it belongs to."""

    identity: Identity
    draining: bool  # once set, a link that loses its connection does not dial again

    def make_offer(self) -> Offer: ...


async def handshake(ws: ClientConnection, identity: Identity, client: str,
                    make_offer: Callable[[], Offer], on_gateway: Callable[[str], None] | None = None) -> Welcome:
    """Prove `identity` to the gateway on `ws` and announce the node's offer; the gateway's Welcome.

    The offer is made after the challenge is answered, so its `issued_at` is fresh.
    `on_gateway` is told the gateway's node id (from its challenge). ProtocolError when
    the gateway answers out of turn; the caller reconnects."""
    await ws.send(protocol.encode(Hello(protocol.PROTOCOL_VERSION, identity.public_key, client)))
    msg = protocol.decode(await asyncio.wait_for(ws.recv(), HANDSHAKE_REPLY_TIMEOUT_S))
    if not isinstance(msg, Challenge):
        raise protocol.ProtocolError(f"expected challenge, got {type(msg).__name__}")
    if on_gateway is not None:
        on_gateway(msg.gateway_id)
    # Signed with the host this link dialled: a gateway relaying another's challenge cannot use it.
    await ws.send(protocol.encode(answer(identity, msg, ws.request.headers["Host"] if ws.request else "")))
    await ws.send(protocol.encode(make_offer()))
    msg = protocol.decode(await asyncio.wait_for(ws.recv(), HANDSHAKE_REPLY_TIMEOUT_S))
    if not isinstance(msg, Welcome):
        raise protocol.ProtocolError(f"expected welcome, got {type(msg).__name__}")
    return msg


def reconnect_delay(backoff: float, reconnect_max_s: float, fast: bool, told: float, rng: random.Random) -> float:
    """Seconds to wait before the next dial (pure): the backoff with jitter, capped at
    FAST_RETRY_MAX_S while `fast` (a lost gateway may be back any moment), and never
    before a busy gateway's Retry-After (`told`), spread within a second."""
    ceiling = min(backoff, reconnect_max_s, FAST_RETRY_MAX_S if fast else reconnect_max_s)
    delay = ceiling * rng.uniform(0.5, 1.0)
    if told:
        # The gateway is admitting a storm of handshakes at its pace and booked us a later
        # turn (each refused dial a later one): come then, not at every backoff step until
        # it. Spread over the second the whole-second Retry-After rounds away, no more: a
        # proportional spread (it was up to +20%) made the last of 10,000 providers told
        # ~50 s come back at up to ~60 s.
        delay = max(delay, told + rng.uniform(0.0, 1.0))
    return delay


def next_backoff(backoff: float, reconnect_max_s: float, fast: bool) -> float:
    """The backoff after one more failed dial (pure): doubled, up to `reconnect_max_s`; unchanged
    while `fast`. The doubling starts where the fast window ends: had the window's dials (every
    0.5 s) doubled it, a provider still not back when the window closed would wait 15-30 s at
    once. Measured (bench/scale, 10,000 reconnecting at the gate's 200 a second): the gate sat
    idle ~15 of 70 s waiting for providers on that long a backoff."""
    return backoff if fast else min(backoff * 2, reconnect_max_s)


def retry_after(exc: BaseException) -> float:
    """The Retry-After (seconds, at most 300) of a gateway that refused the upgrade with 503; 0 otherwise."""
    response = getattr(exc, "response", None)
    if getattr(response, "status_code", None) != 503:
        return 0.0
    try:
        return min(300.0, max(0.0, float(response.headers.get("Retry-After", "0"))))  # type: ignore[union-attr]
    except ValueError:
        return 0.0


class PeerLink:
    """One gateway connection: dial, handshake, the subclass's session, reconnect with backoff."""

    def __init__(self, node: LinkedNode, url: str, *, client: str, reconnect_max_s: float,
                 ca_cert: Path | None = None, silence_s: float = 60.0):
        self.node = node
        self.client = client  # the Hello's software name, e.g. "gpupool/0.1"
        self.reconnect_max_s = reconnect_max_s
        self.url = url.rstrip("/")
        if not self.url.endswith("/v1/providers/ws"):
            self.url += "/v1/providers/ws"
        # wss://: the gateway's certificate is verified (the system's CAs, or --ca-cert); a bad
        # --ca-cert stops the start with one line rather than failing every reconnect.
        self._tls = client_context(ca_cert) if self.url.startswith("wss://") else None
        self._ws: ClientConnection | None = None
        self._last_said = ""  # the last connection problem logged at WARNING
        self.gateway_id = ""  # the node id of the gateway behind this URL, once a handshake told it
        self.silence = Silence(silence_s)  # what this connection heard from the gateway, and when

    def _gateway_is(self, node_id: str) -> None:
        self.gateway_id = node_id

    @property
    def connected(self) -> bool:
        return self._ws is not None

    async def _session(self, ws: ClientConnection) -> None:
        """Serve the gateway's frames on a welcomed connection until it ends."""
        raise NotImplementedError

    async def _welcomed(self, ws: ClientConnection, welcome: Welcome) -> None:  # noqa: B027 - optional hook
        """Act on the gateway's Welcome before the session starts."""

    def _disconnected(self) -> None:  # noqa: B027 - optional hook
        """Drop what belonged to the connection that just ended."""

    async def run(self) -> None:
        backoff = 0.25
        lost_at = float("-inf")  # when a welcomed connection last ended in a way that may come back
        rng = random.Random()
        while True:
            started = time.monotonic()
            told = 0.0  # a busy gateway's Retry-After (seconds), if it refused us with one
            welcomed = False
            coming_back = True  # False once the gateway said not to hurry (a close code, a TLS problem)
            try:
                async with connect(
                    self.url,
                    ssl=self._tls,
                    max_size=protocol.MAX_FRAME_BYTES,
                    # No keep-alive pings: the gateway's Pings say it is alive (`_watch`).
                    ping_interval=None,
                    ping_timeout=None,
                    open_timeout=OPEN_TIMEOUT_S,
                    compression=None,  # small msgpack frames: deflate cost more CPU than it saved
                ) as ws:
                    self._ws = ws
                    welcome = await handshake(ws, self.node.identity, self.client, self.node.make_offer,
                                              on_gateway=self._gateway_is)
                    welcomed = True
                    await self._welcomed(ws, welcome)
                    log.info("connected to %s", self.url)
                    self._last_said = ""
                    self.silence = Silence(self.silence.limit_s)
                    self.silence.heard(asyncio.get_running_loop().time())
                    watch = asyncio.create_task(self._watch(ws))
                    try:
                        await self._session(ws)
                    finally:
                        watch.cancel()
            except asyncio.CancelledError:
                raise
            except websockets.ConnectionClosed as exc:
                reason = exc.rcvd.reason if exc.rcvd else "connection lost"
                log.warning("gateway %s closed the connection: %s", self.url, reason)
                coming_back = exc.rcvd is None or exc.rcvd.code in _COMING_BACK
                if exc.rcvd and exc.rcvd.code in (protocol.CLOSE_BAD_VERSION, protocol.CLOSE_BAD_SIGNATURE):
                    backoff = self.reconnect_max_s  # retrying fast won't help
            except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
                told = retry_after(exc)
                tls_problem = certificate_problem(exc)
                if tls_problem:
                    # Not a network blip: retrying fast won't help, and the fix is the operator's.
                    log.error("cannot connect to gateway %s: %s (a private CA: pass --ca-cert FILE)",
                              self.url, tls_problem)
                    backoff = self.reconnect_max_s
                    coming_back = False
                else:
                    # Once per distinct cause, then quiet until it changes: a gateway down for an
                    # hour is one line, not one per retry.
                    said = f"cannot reach gateway {self.url}: {exc}"
                    if said != self._last_said:
                        log.warning("%s (retrying, at most every %g s)", said, self.reconnect_max_s)
                    else:
                        log.debug("%s", said)
                    self._last_said = said
            finally:
                self._ws = None
                self._disconnected()
            if self.node.draining:
                return
            now = time.monotonic()
            if welcomed:
                lost_at = now if coming_back else float("-inf")
            if now - started > 30:
                backoff = 0.25  # the connection was healthy for a while: start over
            fast = coming_back and now - lost_at < FAST_RETRY_FOR_S
            await asyncio.sleep(reconnect_delay(backoff, self.reconnect_max_s, fast, told, rng))
            backoff = next_backoff(backoff, self.reconnect_max_s, fast)

    async def _messages(self, ws: ClientConnection) -> AsyncIterator[protocol.Message]:
        """The gateway's messages on `ws`, decoded, until the connection ends; its Pings are
        answered here (and time the silence watch), not passed on. A bad frame from our
        gateway raises ProtocolError, which ends the connection."""
        loop = asyncio.get_running_loop()
        silence = self.silence
        async for frame in ws:
            msg = protocol.decode(frame)
            if isinstance(msg, Ping):
                silence.heard(loop.time(), ping=True)
                await self._send(Pong(msg.nonce, msg.sent_at))
                continue
            silence.heard(loop.time())
            yield msg

    async def _watch(self, ws: ClientConnection) -> None:
        """Check the connection when the gateway has been silent for longer than its cadence says:
        one WebSocket ping; no pong in time and the socket is dropped (the run loop dials again)."""
        loop = asyncio.get_running_loop()
        silence = self.silence
        while True:
            wait = silence.due_in(loop.time())
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            quiet = loop.time() - silence.heard_at
            try:
                async with asyncio.timeout(silence.probe_timeout_s()):
                    await (await ws.ping())
            except TimeoutError:
                log.warning("gateway %s silent for %.0f s and no answer to a ping within %g s: reconnecting",
                            self.url, quiet, silence.probe_timeout_s())
                if ws.transport is not None:
                    ws.transport.abort()  # no close handshake with a peer that does not answer
                return
            except websockets.ConnectionClosed:
                return
            silence.heard(loop.time())

    async def _send(self, msg: protocol.Message) -> None:
        ws = self._ws
        if ws is None:
            return
        try:
            await ws.send(protocol.encode(msg))
        except websockets.ConnectionClosed:
            pass  # the run loop notices and reconnects
