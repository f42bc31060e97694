"""Per-key request and token rates shared by every gateway of one network, kept in Redis.

    shared = SharedRates("redis://127.0.0.1:6379/0", burst_s=10)
    await shared.check()                    # StartupError (one line) when Redis does not answer
    refusal = await shared.hit(key_id, KeyLimits(rpm=60), tokens=300)   # None: admitted
    if refusal: ...                         # refusal.reason ("rpm" | "tpm"), .retry_after_s

Several gateways behind a load balancer each see part of a key's traffic; counted per
gateway, a key limited to 60 requests a minute could make 60 on each. With
`--redis-url`, the gateways count a key's requests and tokens in one place. The
counting is the `limits` library's (maintained, atomic Lua scripts in Redis, keys that
expire by themselves), not ours: requests in a moving window (exact), tokens in a
sliding window counter (two counters per key, whatever a request's size).

Budgets match the single gateway's token buckets (money/limits.py): a key may spend
`burst_s` seconds of its rate at once, and no more than its rate over time. The
window is the shortest whole number of seconds, at least `burst_s`, in which the rate
is a whole number of requests (`window_for`), so the long-run rate is exact.

Differences from the per-gateway buckets, on purpose: a token budget counts the
admission bound (prompt estimate + max_tokens) and keeps it, since Redis counters
cannot take unused tokens back; a request refused for tokens still counts one
request. Requests at once (`concurrency`) and the fair share stay per gateway: they
are about the providers' slots that gateway hands out.

When Redis stops answering, `hit` raises `SharedRatesDown`; the caller (money/quota.py)
falls back to its own per-gateway buckets until Redis answers again (`available`
turns true `RETRY_S` after the failure): fail open to per-gateway limits, so an outage
of the counter is not an outage of the network.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from gpupool import errors
from gpupool.gateway.money.limits import KeyLimits

log = logging.getLogger("gpupool.gateway.limits")

# After a failure, Redis is tried again this long later (until then: per-gateway buckets).
RETRY_S = 5.0
# A Redis round trip longer than this is a failure: a request must not wait on a stuck counter.
TIMEOUT_S = 0.5
KEY_PREFIX = "gpupool"


class SharedRatesDown(Exception):
    """Redis did not answer; the request is judged by the gateway's own buckets."""


@dataclass(frozen=True)
class Refusal:
    reason: str  # rpm | tpm
    message: str
    retry_after_s: float


def window_for(per_minute: int, burst_s: float) -> tuple[int, int]:
    """(amount, seconds): a window holding `amount` of a per-minute rate, at least `burst_s` long.

    The shortest whole number of seconds from `burst_s` up in which the rate is a whole
    number (60 s always is), so that amount/seconds is exactly the rate."""
    start = max(1, math.ceil(burst_s))
    for seconds in range(min(start, 60), 61):
        if per_minute * seconds % 60 == 0:
            return per_minute * seconds // 60, seconds
    return per_minute, 60  # unreachable: 60 s always divides


def check_url(url: str) -> str:
    """The URL in the `limits` library's async form; ValueError for anything but redis(s)://."""
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"--redis-url {url!r}: use redis://HOST:PORT[/DB], rediss:// (TLS) or unix://PATH")
    return "async+" + ("redis+unix://" + url.split("://", 1)[1] if scheme == "unix" else url)


class SharedRates:
    """The network-wide counters of per-key rates: a thin adapter over `limits` on Redis."""

    def __init__(self, url: str, burst_s: float):
        uri = check_url(url)  # a wrong URL says so first
        # Imported here: a gateway without --redis-url never loads the Redis client.
        try:
            from limits.aio.storage import RedisStorage
            from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
        except ImportError as exc:
            raise errors.StartupError(f"--redis-url needs the packages limits and redis ({exc}); reinstall "
                                      "gpupool") from None

        self.url = url
        self.burst_s = burst_s
        # redis-py's asyncio client (a core dependency), not coredis; errors come wrapped as StorageError.
        self.storage = RedisStorage(uri, implementation="redispy", wrap_exceptions=True,
                                    key_prefix=KEY_PREFIX, socket_timeout=TIMEOUT_S,
                                    socket_connect_timeout=TIMEOUT_S)
        self.requests = MovingWindowRateLimiter(self.storage)
        self.tokens = SlidingWindowCounterRateLimiter(self.storage)
        self.down_until = 0.0  # monotonic: until then Redis is not asked
        self.failures = 0  # calls that failed (for operators: /metrics)

    def available(self) -> bool:
        return time.monotonic() >= self.down_until

    async def check(self) -> None:
        """At start: StartupError in one line when Redis does not answer a PING."""
        try:
            await self._client().ping()
        except Exception as exc:  # noqa: BLE001 - any failure stops the start with its reason
            why = str(exc) or type(exc).__name__
            raise errors.StartupError(f"cannot reach Redis at {self.url}: {why} (start it, or drop --redis-url to "
                                      "count per-key limits per gateway)") from None

    async def hit(self, key: int, limits: KeyLimits, tokens: int) -> Refusal | None:
        """Count one request of `tokens` (at most) for `key`; a Refusal when either budget is spent."""
        from limits import RateLimitItemPerSecond

        try:
            if limits.rpm > 0:
                item = RateLimitItemPerSecond(*window_for(limits.rpm, self.burst_s), namespace="rpm")
                if not await self.requests.hit(item, str(key)):
                    stats = await self.requests.get_window_stats(item, str(key))
                    return Refusal("rpm", f"requests per min (RPM): limit {limits.rpm}, across the network's "
                                   "gateways", _retry_after(stats.reset_time))
            if limits.tpm > 0:
                item = RateLimitItemPerSecond(*window_for(limits.tpm, self.burst_s), namespace="tpm")
                # A request bigger than the whole budget may pass when it is unspent, as in the buckets.
                if not await self.tokens.hit(item, str(key), cost=max(1, min(tokens, item.amount))):
                    stats = await self.tokens.get_window_stats(item, str(key))
                    return Refusal("tpm", f"tokens per min (TPM): limit {limits.tpm}, requested {tokens} (prompt "
                                   "estimate + max_tokens), across the network's gateways",
                                   _retry_after(stats.reset_time))
        except Exception as exc:  # noqa: BLE001 - StorageError, a timeout, a refused connection: all the same here
            self.failures += 1
            if self.available():  # once per outage, not once per request
                log.error("Redis at %s failed (%s): per-key limits are counted by each gateway alone until it "
                          "answers (retried every %g s)", self.url, str(exc) or type(exc).__name__, RETRY_S)
            self.down_until = time.monotonic() + RETRY_S
            raise SharedRatesDown(str(exc)) from None
        return None

    async def close(self) -> None:
        try:
            await self._client().aclose()
        except Exception:  # noqa: BLE001 - closing a client whose server is gone
            pass


    def _client(self) -> Any:
        """redis-py's client inside the library's storage (a PING that says why it failed; closing)."""
        return self.storage.bridge.storage  # type: ignore[attr-defined]


def _retry_after(reset_time: float) -> float:
    # Rounded up: a client waiting exactly this long is never early (early ones are held back).
    return max(0.01, math.ceil((reset_time - time.time()) * 100) / 100)


async def check_redis(url: str) -> None:
    """Before a gateway starts: ValueError for a URL that is not Redis's, StartupError when it does not answer."""
    probe = SharedRates(url, burst_s=1.0)
    try:
        await probe.check()
    finally:
        await probe.close()
