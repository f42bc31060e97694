"""How long a node's link waits, hearing nothing from its gateway, before it checks the connection (pure).

    silence = Silence(limit_s=60.0)
    silence.heard(now, ping=True)         # on every frame from the gateway (ping: it was a protocol Ping)
    silence.due_in(now)                   # seconds until the link must check (<= 0: check now)
    silence.probe_timeout_s()             # how long the check's WebSocket ping may wait for its pong

A gateway pings each of its peers on its own schedule (`gateway/peers/pacing.py`: every
`--ping-interval-s`, stretched to sessions / `--max-pings-per-s` in a big pool: every 40 s at
10,000 sessions), and any frame it sends says it is alive. So a link keeps no keep-alive of
its own: one WebSocket ping per session every 10 s was 80% of the frames an idle gateway of
10,000 sessions would handle (bench/README.md, "scale"). It learns the gateway's cadence
from the gap between its last two Pings and, after SILENCE_FACTOR such gaps with nothing
heard (at least SILENCE_MIN_S, at most `limit_s`; `limit_s` until a gap is known), sends one
WebSocket ping; no pong within the probe timeout and the connection is dropped and dialled
again (`PeerLink`).

The bound: a gateway that stops sending (hung, stopped, cut off without a FIN or RST) is
noticed at most `limit_s` + PROBE_TIMEOUT_S after its last frame: 70 s at the default
`--gateway-silence-s` 60; 20 s while it pings every 3.3 s or less (up to ~800 sessions at a
gateway's defaults). A gateway process that dies is noticed at once: its kernel closes the
socket.
"""

from __future__ import annotations

from dataclasses import dataclass

# Missed gateway Pings before the link checks: its pings are jittered ±10%, and the interval
# grows as the pool grows, so one late Ping must not count as silence.
SILENCE_FACTOR = 3.0
# Never check sooner than this after the last frame (a gateway pinging every 2 s is not
# worth checking every 6 s).
SILENCE_MIN_S = 10.0
# How long the check's ping waits for the gateway's pong.
PROBE_TIMEOUT_S = 10.0


@dataclass
class Silence:
    """What a link has heard from its gateway, and when it should check the connection."""

    limit_s: float  # the longest silence before a check (`--gateway-silence-s`)
    heard_at: float = 0.0  # when the last frame came (the caller's clock)
    pinged_at: float | None = None  # when the gateway's last Ping came
    gap_s: float | None = None  # the gap between the gateway's last two Pings

    def heard(self, now: float, ping: bool = False) -> None:
        self.heard_at = now
        if ping:
            if self.pinged_at is not None:
                self.gap_s = now - self.pinged_at
            self.pinged_at = now

    def allowed_s(self) -> float:
        """Seconds of silence before the connection is checked."""
        if self.gap_s is None:
            return self.limit_s
        return min(self.limit_s, max(SILENCE_MIN_S, SILENCE_FACTOR * self.gap_s))

    def due_in(self, now: float) -> float:
        return self.heard_at + self.allowed_s() - now

    def probe_timeout_s(self) -> float:
        return min(PROBE_TIMEOUT_S, self.limit_s)
