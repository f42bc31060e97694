"""The network-wide listings (`GET /v1/models`, `GET /v1/market`), built at most once per change
of who serves or checks what (`Hub.changes`) and at most once a second.

Each listing walks every session and its models: 80,000 steps at 10,000 providers of 8
models. Built on every call, a client reading them in a loop would make the gateway's cost
per request grow with the network; cached, a read costs a lookup and the JSON encoding, and
the walk happens at most once a second (per-second work linear in sessions). What changes
without a join, leave, drain or offer (load, measured speed) is at most a second old.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

MAX_AGE_S = 1.0


class ListingCache:
    def __init__(self, max_age_s: float = MAX_AGE_S, clock: Callable[[], float] = time.monotonic):
        self.max_age_s = max_age_s
        self._clock = clock
        self._bodies: dict[str, tuple[int, float, Any]] = {}  # name -> (changes, built at, body)

    def get(self, name: str, changes: int, build: Callable[[], Any]) -> Any:
        """`name`'s body: the one built last if nothing changed since and it is younger than max_age_s."""
        now = self._clock()
        held = self._bodies.get(name)
        if held is not None and held[0] == changes and now - held[1] < self.max_age_s:
            return held[2]
        body = build()
        self._bodies[name] = (changes, now, body)
        return body
