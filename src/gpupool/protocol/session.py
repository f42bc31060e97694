"""Messages of a connection's life: the handshake, the settlement address, keep-alive pings, draining.

    provider                         gateway
       Hello(version, public key) ──▶
                                  ◀── Challenge(nonce)       (or close: bad version)
       Proof(sig over nonce, host dialled), Offer ─▶   (protocol_handshake.py)
                                  ◀── Welcome(session)       (or close: bad signature)
"""

from __future__ import annotations

from gpupool.protocol.base import PROTOCOL_VERSION, _Msg
from gpupool.protocol_limits import ShortStr


class Hello(_Msg, tag="hello"):
    version: int
    public_key: bytes  # raw 32-byte ed25519 public key
    agent: str = ""  # software name/version, informational


class Challenge(_Msg, tag="challenge"):
    nonce: bytes
    gateway_id: str
    version: int = PROTOCOL_VERSION


class Proof(_Msg, tag="proof"):
    signature: bytes  # ed25519 over protocol_handshake.challenge_bytes(nonce, gateway_id, host)
    host: ShortStr = ""  # the host[:port] the peer dialled (what its WebSocket request's Host said)


class Welcome(_Msg, tag="welcome"):
    session: str
    node_id: str
    # Set when the gateway settles on an EVM ledger: providers then sign each receipt's
    # cost with their secp256k1 settlement key too (see ledger/settlement_key.py).
    contract: str = ""
    chain_id: int = 0


class SettlementAddress(_Msg, tag="settlement_address"):
    """Provider -> gateway after a Welcome naming a contract: its settlement key, and its consent
    (`registration`: the key's signature binding it to this provider in that contract)."""

    address: str
    registration: bytes


class Drain(_Msg, tag="drain"):
    reason: str = ""


class Ping(_Msg, tag="ping"):
    nonce: int
    sent_at: float


class Pong(_Msg, tag="pong"):
    nonce: int
    sent_at: float
