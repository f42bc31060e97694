"""A rate per client address for requests that carry no valid API key, and for every public read.

Public reads (`/v1/market`, `/v1/providers` with earnings and reputation, `/v1/stats`, the
dashboard, `/metrics`) and 401s cost the gateway CPU but no credits, so nothing else holds
back a client that floods them. Only a request to a keyed route (`KEYED_PATHS`) whose
`Authorization` holds a key the gateway knows skips the address's rate (its key has its own
limits, gateway/money/limits.py), so a flood from an address does not lock out the paying
clients behind the same NAT. Any other header counts like none: a made-up key is counted
against the address (then 401 from the route), and a public route counts every request,
with or without a key, since it never reads one.

Over its rate a request gets 429 with Retry-After, and the answer is held back for
`hold_s` first (`HoldBack`, also used for keyed clients that come back before their
Retry-After): a flooder that waits for each answer before sending the next (most do)
is slowed to a request per connection per second at the cost of a sleeping
coroutine, where an immediate 429 would only let it ask again at once.

    limiter = AddressLimiter(rate=20, burst_s=10)
    wait = limiter.admit("203.0.113.9", now)      # 0.0: go ahead; else seconds until allowed

Behind a reverse proxy every client has the proxy's address: list the proxy in
`--trusted-proxies` (its X-Forwarded-For then gives the client's), or raise `--anonymous-rate`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from gpupool import errors
from gpupool.gateway.edge.http import error_response
from gpupool.gateway.money.limits import Bucket


class AddressLimiter:
    """Token buckets per client address: pure policy, `now` passed in, bounded table."""

    def __init__(self, rate: float, burst_s: float = 10.0, max_addresses: int = 100_000):
        self.rate = rate
        self.burst_s = burst_s
        self.max_addresses = max_addresses
        self.buckets: dict[str, Bucket] = {}
        self._swept = 0.0

    def admit(self, address: str, now: float) -> float:
        """0.0 if `address` may make a request now (it is counted), else the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        bucket = self.buckets.get(address)
        if bucket is None:
            self._sweep(now)
            bucket = self.buckets[address] = Bucket.full(int(self.rate * 60), self.burst_s, now)
        wait = bucket.wait_for(1, now)
        if wait == 0.0:
            bucket.take(1)
        return wait

    def _sweep(self, now: float) -> None:
        """Forget full buckets (they hold nothing); when still full, drop the oldest entries."""
        if len(self.buckets) < self.max_addresses and now - self._swept < 10.0:
            return
        self._swept = now
        self.buckets = {a: b for a, b in self.buckets.items() if b.full_at() > now}
        while len(self.buckets) >= self.max_addresses:
            del self.buckets[next(iter(self.buckets))]


class HoldBack:
    """Answers held back before they are sent, at most `max_held` at a time (beyond that they go
    out at once): a refused client that waits for each answer before asking again (most
    do) is slowed to one request per connection per hold, at the cost of a sleeping coroutine.

    Each hold lasts between `seconds` and `spread` times that, at random: a flood refused all
    at once would otherwise come back all at once, every second, and each of those waves
    (hundreds of requests to read, parse and refuse back to back) delays everyone else's
    requests by as long as it takes."""

    def __init__(self, max_held: int = 256, spread: float = 1.5, rng: random.Random | None = None):
        self.max_held = max_held
        self.spread = spread
        self.rng = rng or random.Random()
        self.held = 0

    def duration(self, seconds: float) -> float:
        return seconds * self.rng.uniform(1.0, self.spread)

    async def hold(self, seconds: float) -> None:
        if seconds <= 0 or self.held >= self.max_held:
            return
        self.held += 1
        try:
            await asyncio.sleep(self.duration(seconds))
        finally:
            self.held -= 1


# Routes that read the caller's key (client keys, or the admin token for /admin/): only these
# let a known key skip the address's rate. Anything else, including routes added later, counts.
KEYED_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/account",
               "/v1/files", "/v1/batches", "/admin/")


def bearer_token(scope: Scope) -> str:
    """The token of an `Authorization: Bearer <token>` header ("" if none, or another scheme)."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


class AnonymousLimit:
    """Requests without a known key, and every request to a public route, count against their
    address's rate and, over it, get a held-back 429 (`middleware`).

    `known_key(token)`: whether the token is a live client key or the admin token (the store
    caches lookups, misses included, so a flood of made-up keys costs no queries)."""

    def __init__(self, limiter: AddressLimiter, holdback: HoldBack, known_key: Callable[[str], Awaitable[bool]],
                 hold_s: float = 1.0):
        self.limiter = limiter
        self.holdback = holdback
        self.known_key = known_key
        # The full `hold_s`, not just until the next request would be allowed (a few ms at
        # 20/s): the point is to slow each of the flooder's connections to a request a second.
        self.hold_s = hold_s

    def middleware(self, app: ASGIApp) -> ASGIApp:
        async def limited(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or self.limiter.rate <= 0:
                return await app(scope, receive, send)
            token = bearer_token(scope) if scope["path"].startswith(KEYED_PATHS) else ""
            if token and len(token) <= 512 and await self.known_key(token):
                # A known key passes untouched (no wrapper on its sends: a stream makes thousands).
                return await app(scope, receive, send)
            address = scope["client"][0] if scope.get("client") else "unknown"
            wait = self.limiter.admit(address, time.monotonic())
            if wait == 0.0:
                return await app(scope, receive, send)
            await self.holdback.hold(self.hold_s)
            if token:
                # A wrong key on a keyed route is held back as any flood, then told it is wrong
                # (401): a client with a typo learns that, not to retry later.
                return await app(scope, receive, send)
            exc = errors.RateLimited(f"too many requests without a valid API key from {address}; send your key, "
                                     f"or retry in {wait:.1f}s", retry_after_s=wait)
            await error_response(exc)(scope, receive, send)

        return limited
