"""A dialling peer's handshake, and the one reader every peer frame goes through.

    Hello (its public key) ─▶ ◀─ Challenge (a nonce, this gateway's id)
    Proof (the nonce and the host it dialled, signed) ─▶   Offer (signed) ─▶

`Handshake` proves the key (a Proof signed for another host is a relayed handshake:
refused), limits how often one key may complete it, checks the Offer against this
gateway's limits, admits checkers (by the operator or by stake, never by their say), and
returns the session; the hub registers it. `recv_frame` refuses a frame over its size
limit before decoding it, and counts a big frame's lists from their headers first.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Mapping

from starlette.websockets import WebSocket, WebSocketDisconnect

from gpupool import protocol, protocol_handshake
from gpupool.config import GatewaySettings
from gpupool.gateway.peers.peer_limits import HandshakeRate, check_lists, check_offer
from gpupool.gateway.peers.session import (
    ANSWER_FRAME_BYTES,
    CLOSE_MESSAGE_TOO_BIG,
    PeerViolation,
    ProviderSession,
    hardware_answer_bytes,
    share_strings,
)
from gpupool.gateway.store import Store
from gpupool.identity import Identity, node_id_for, verify_signature
from gpupool.protocol import Challenge, Hello, Offer, Proof

# Frames above this size have their lists counted before they are decoded (below it, decoding is cheap).
BIG_FRAME_BYTES = 64 * 1024


async def recv_frame(ws: WebSocket, limit: int | Callable[[], int], settings: GatewaySettings) -> protocol.Message:
        """The next frame, decoded. `limit` may be a callable: a session's limit can grow while
        we wait (a Run was sent meanwhile), so it is read once the frame is here."""
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            if message.get("code") == CLOSE_MESSAGE_TOO_BIG:  # the transport refused a frame over its limit
                raise PeerViolation("frame_too_large", "frame exceeds the size allowed here", CLOSE_MESSAGE_TOO_BIG)
            raise WebSocketDisconnect(message.get("code", 1000))
        data = message.get("bytes")
        if data is None:
            raise PeerViolation("garbage_frame", "text frame received; expected binary msgpack")
        if callable(limit):
            limit = limit()
        if len(data) > limit:  # the raw size, before any decoding
            raise PeerViolation("frame_too_large", f"frame of {len(data)} bytes exceeds the {limit} allowed here",
                                protocol.CLOSE_LIMIT)
        if len(data) > BIG_FRAME_BYTES:
            check_lists(data, settings)
        try:
            return protocol.decode(data)
        except protocol.ProtocolError as exc:
            raise PeerViolation("garbage_frame", str(exc)[:200]) from exc


class Handshake:
    """`await handshake(ws)`: a proven, checked peer's `ProviderSession`, or a `PeerViolation`.

    `sessions`: the hub's live provider sessions (a full gateway refuses new keys);
    `busy`: the hub's set of sessions with work open, handed to each new session;
    `stake_of` (admission by stake, `checker_min_stake`): the µcr a node has staked."""

    def __init__(self, settings: GatewaySettings, identity: Identity, store: Store,
                 sessions: Mapping[str, ProviderSession], busy: set[ProviderSession],
                 stake_of: Callable[[str], Awaitable[int]] | None = None):
        self.settings = settings
        self.identity = identity
        self.store = store
        self.sessions = sessions
        self.busy = busy
        self.stake_of = stake_of
        self.public_hosts = protocol_handshake.parse_hosts(settings.public_hosts)  # names peers may sign for
        self.rate = HandshakeRate()

    async def __call__(self, ws: WebSocket) -> ProviderSession:
        """The peer's session once its key is proven and its Offer checked (not registered yet)."""
        hello = await recv_frame(ws, protocol.MAX_UNPROVEN_FRAME_BYTES, self.settings)
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
        proof = await recv_frame(ws, protocol.MAX_UNPROVEN_FRAME_BYTES, self.settings)
        if not isinstance(proof, Proof):
            raise PeerViolation("bad_handshake", f"expected proof, got {type(proof).__name__}")
        if not verify_signature(hello.public_key, proof.signature,
                                protocol_handshake.challenge_bytes(nonce, self.identity.node_id, proof.host)):
            raise PeerViolation("bad_signature", "challenge signature does not verify",
                                protocol.CLOSE_BAD_SIGNATURE)
        if not protocol_handshake.signed_for_here(proof.host, ws.headers.get("host", ""), self.public_hosts):
            # Signed for a gateway at another address: relayed by that gateway to impersonate its peer here.
            raise PeerViolation("relayed_handshake", f"the proof was signed for host {proof.host[:100]!r}, which "
                                "is not this gateway's", protocol.CLOSE_BAD_SIGNATURE, node_id)
        if not self.rate.admit(node_id, time.monotonic()):  # its key proven: nobody else is locked out
            raise PeerViolation("reconnecting_too_often", f"more than {self.rate.per_minute} handshakes a "
                                "minute from this node; wait a minute", protocol.CLOSE_LIMIT, node_id)
        offer = await recv_frame(ws, protocol.MAX_OFFER_FRAME_BYTES, self.settings)
        if not isinstance(offer, Offer):
            raise PeerViolation("bad_handshake", f"expected offer, got {type(offer).__name__}")
        check_offer(offer, hello.public_key, node_id, self.settings)
        share_strings(offer)
        if offer.role not in ("provider", "checker"):
            raise PeerViolation("bad_offer", f"unknown role {offer.role!r}")
        if offer.role == "checker":
            await self._admit_checker(node_id)
        elif node_id not in self.sessions and len(self.sessions) >= self.settings.max_provider_sessions:
            # Keys cost nothing to make: the number of sessions is bounded, not only what each holds.
            raise PeerViolation("gateway_full", f"this gateway holds its limit of {len(self.sessions)} provider "
                                "connections; try another gateway or later", protocol.CLOSE_LIMIT, node_id)
        session = ProviderSession(
            node_id=node_id, public_key=hello.public_key, offer=offer, ws=ws,
            connected_at=time.monotonic(), last_seen=time.monotonic(),
            models={m.name: m for m in offer.models}, max_queued=max(1, self.settings.max_queued_events),
            busy=self.busy if offer.role == "provider" else None,  # checkers' audits are not watched for stalls
            base_frame_bytes=max(ANSWER_FRAME_BYTES, hardware_answer_bytes(self.settings.hardware_proof_max_n)),
        )
        # Written in the store's next batch (one transaction for many joins, never awaited here).
        self.store.note_provider(node_id, hello.public_key, offer.region, list(session.models))
        return session

    async def _admit_checker(self, node_id: str) -> None:
        """A checker sees clients' prompts and its verdicts move money: only the operator admits one."""
        if node_id in self.settings.admitted_checkers:
            return
        need = self.settings.checker_min_stake
        if need > 0 and self.stake_of is not None:
            staked = await self.stake_of(node_id)
            if staked >= need:
                return
            raise PeerViolation("checker_not_admitted",
                                f"checker {node_id} is not admitted: {staked} µcr staked, {need} needed",
                                protocol.CLOSE_NOT_ADMITTED, node_id)
        raise PeerViolation("checker_not_admitted",
                            f"checker {node_id} is not admitted by this gateway (operator: --checker {node_id})",
                            protocol.CLOSE_NOT_ADMITTED, node_id)
