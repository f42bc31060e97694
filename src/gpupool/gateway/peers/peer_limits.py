"""What a peer may send the gateway: its Offer and the lists inside big frames, against the
operator's limits (GatewaySettings; docs/operations.md, "Peer limits"), and how often one
node may complete a handshake (`HandshakeRate`).

Each check raises `PeerViolation`; the hub then closes the connection with its code and
records the event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpupool import protocol
from gpupool.config import GatewaySettings
from gpupool.gateway.peers.session import PeerViolation
from gpupool.protocol import Offer


def check_offer(offer: Offer, public_key: bytes, node_id: str, s: GatewaySettings) -> None:
    """A peer's Offer, at the handshake or re-sent: signed by its key (and its operator's, where
    it names one), and within this gateway's limits on models, names and prices."""
    if offer.node_id != node_id:
        raise PeerViolation("bad_offer", "offer node id does not match the handshake key")
    if not protocol.verify_claim(offer, public_key):
        raise PeerViolation("bad_signature", "offer signature does not verify", protocol.CLOSE_BAD_SIGNATURE)
    if not protocol.operator_ok(offer):
        raise PeerViolation("bad_signature", "the offer's operator key does not vouch for this node",
                            protocol.CLOSE_BAD_SIGNATURE)
    if not offer.models:
        raise PeerViolation("bad_offer", "offer lists no models")
    if offer.max_concurrency < 1:
        raise PeerViolation("bad_offer", "max_concurrency must be at least 1")
    if len(offer.models) > s.max_offer_models:
        raise PeerViolation("offer_too_large", f"offer lists {len(offer.models)} models; this gateway accepts "
                            f"at most {s.max_offer_models}", protocol.CLOSE_LIMIT)
    for m in offer.models:
        if not m.name or len(m.name) > s.max_model_name:
            raise PeerViolation("bad_offer", f"model names must be 1-{s.max_model_name} characters "
                                f"(got {len(m.name)})", protocol.CLOSE_LIMIT)
        if not 0 <= m.price_in <= s.max_price_in or not 0 <= m.price_out <= s.max_price_out:
            raise PeerViolation("price_out_of_bounds",
                                f"{m.name[:40]}: price {m.price_in}/{m.price_out} µcr per 1M tokens is outside "
                                f"this gateway's bounds 0-{s.max_price_in}/0-{s.max_price_out}",
                                protocol.CLOSE_LIMIT)
        if not 0 <= m.price_image <= s.max_price_image:
            raise PeerViolation("price_out_of_bounds", f"{m.name[:40]}: price {m.price_image} µcr per image is "
                                f"outside this gateway's bounds 0-{s.max_price_image}", protocol.CLOSE_LIMIT)


def check_lists(frame: bytes, s: GatewaySettings) -> None:
    """A big frame's lists are counted from their headers before it is decoded: decoding (and
    for a Statement, hashing and verifying) an oversized one would stall every other peer."""
    try:
        lengths = protocol.list_lengths(frame)
    except protocol.ProtocolError as exc:
        raise PeerViolation("garbage_frame", str(exc)[:200]) from exc
    # (list, its limit, the event kind the same violation has when found after decoding)
    limits = [("digests", s.max_statement_digests, "statement_too_large"), ("items", s.max_queued_events, "flood"),
              ("models", s.max_offer_models, "offer_too_large"),
              ("token_ids", s.max_output_tokens, "output_over_max_tokens"),
              ("logprobs", s.max_output_tokens, "output_over_max_tokens")]
    for name, most, kind in limits:
        if lengths[name] > most:
            raise PeerViolation(kind, f"a frame lists {lengths[name]} {name}; at most {most}", protocol.CLOSE_LIMIT)


# Handshakes one node (one proven key) may complete a minute. Each stores its offer and
# replaces its session; an honest provider reconnects a few times after a network blip.
HANDSHAKES_PER_MINUTE = 30


@dataclass
class HandshakeRate:
    """How often each node completed a handshake lately: `admit(node_id, now)` is False once a
    node is over `per_minute` within its current minute. Keyed by proven keys only (asked after
    the challenge is answered), and forgotten after a minute (`max_nodes` bounds the table)."""

    per_minute: int = HANDSHAKES_PER_MINUTE
    max_nodes: int = 100_000
    _windows: dict[str, tuple[float, int]] = field(default_factory=dict)  # node -> (window start, count)

    def admit(self, node_id: str, now: float) -> bool:
        start, count = self._windows.get(node_id, (now, 0))
        if now - start >= 60:
            start, count = now, 0
        if count >= self.per_minute:
            return False
        if node_id not in self._windows and len(self._windows) >= self.max_nodes:
            self._forget(now)
        self._windows[node_id] = (start, count + 1)
        return True

    def _forget(self, now: float) -> None:
        for node, (start, _) in list(self._windows.items()):
            if now - start >= 60:
                del self._windows[node]
        while len(self._windows) >= self.max_nodes:  # all recent: the oldest entry goes
            del self._windows[next(iter(self._windows))]
