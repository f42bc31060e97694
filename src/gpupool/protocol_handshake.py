"""What a peer's handshake Proof signs: the gateway's challenge, bound to the address the peer dialled.

    proof = answer(identity, challenge, host=ws.request.headers["Host"])     # the peer (provider, checker)
    ok = signed_for_here(proof.host, host_header, public_hosts)               # the gateway

A Proof used to sign only (nonce, gateway_id), both chosen by whoever sent the Challenge:
a malicious gateway M could pass gateway B's Challenge to a provider that dialled M, pass
the provider's Proof back to B, and be that provider at B (its earnings, its reputation).
The peer now also signs the host it dialled (the `Host` of its WebSocket request, e.g.
`gw.example.com` or `127.0.0.1:8000`), and a gateway accepts a Proof only if that host is
one of its own: the names its operator lists (`--public-hosts`, which no dialler can fake),
else the `Host` header of the connection the Proof came on (this stops a plain relay; one
that fakes its Host header is stopped only by `--public-hosts`). Domain-separated from the
version-1 bytes, so no old Proof verifies as a new one (PROTOCOL_VERSION 2).
"""

from __future__ import annotations

from gpupool.identity import Identity
from gpupool.protocol import Challenge, Proof


def challenge_bytes(nonce: bytes, gateway_id: str, host: str) -> bytes:
    # The gateway id stops a proof being replayed to another gateway; the host, a live relay.
    return b"gpupool-challenge-v2\x00" + gateway_id.encode() + b"\x00" + normal_host(host).encode() + b"\x00" + nonce


def answer(identity: Identity, challenge: Challenge, host: str) -> Proof:
    """The Proof for `challenge`, received on a connection the peer dialled to `host`."""
    return Proof(identity.sign(challenge_bytes(challenge.nonce, challenge.gateway_id, host)), normal_host(host))


def normal_host(host: str) -> str:
    """`host[:port]` lowercased, without a default port (80, 443): as a WebSocket client writes Host."""
    host = host.strip().lower()
    for default in (":80", ":443"):
        if host.endswith(default):
            return host[: -len(default)]
    return host


def parse_hosts(text: str) -> frozenset[str]:
    """`--public-hosts`: comma-separated host[:port] names, normalized."""
    return frozenset(normal_host(h) for h in text.split(",") if h.strip())


def signed_for_here(signed: str, host_header: str, public_hosts: frozenset[str]) -> bool:
    """Whether a Proof signed for host `signed` was meant for this gateway."""
    if public_hosts:
        return normal_host(signed) in public_hosts
    return bool(signed) and normal_host(signed) == normal_host(host_header)
