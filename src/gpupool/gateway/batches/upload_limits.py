"""How fast one account may upload batch files: one upload at a time, and a byte rate.

    limits = UploadLimits(bytes_per_s=4 << 20, burst_bytes=100 << 20)
    wait = limits.admit(account, content_length, now)   # None: go ahead; else seconds to wait (429)
    hold = limits.refused(account, wait, now)            # back before its Retry-After: hold the 429 this long
    ... receive, check, store ...
    limits.done(account)

A file costs the gateway its bytes on the socket, on disk and in the database, and a
parse (parse_pool.py). Quotas on what an account keeps (routes.py) bound the disk; these
bound the rate, so one key uploading 8 MiB files from four workers cannot keep the
gateway busy receiving and storing while others wait. The bytes are charged from the
request's Content-Length before a byte of the body is read (a body longer than it
declared is cut by the server). A token bucket per account: `burst_bytes` (at least one
largest file) refilled at `bytes_per_s`. Keyed by account, which only the operator
creates; entries of accounts that are idle and full again are dropped past `MAX_ENTRIES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_ENTRIES = 10_000
EARLY_HOLD_S = 1.0


@dataclass
class _Bucket:
    tokens: float
    at: float
    uploading: int = 0
    retry_at: float = 0.0  # the Retry-After of its last refusal


@dataclass
class UploadLimits:
    bytes_per_s: float
    burst_bytes: float
    buckets: dict[str, _Bucket] = field(default_factory=dict)

    def admit(self, account: str, size: int, now: float) -> float | None:
        """None and the upload is counted as started; else the seconds until it would be let in."""
        b = self.buckets.get(account)
        if b is None:
            if len(self.buckets) >= MAX_ENTRIES:
                self._prune(now)
            b = self.buckets[account] = _Bucket(self.burst_bytes, now)
        b.tokens = min(self.burst_bytes, b.tokens + (now - b.at) * self.bytes_per_s)
        b.at = now
        if b.uploading:
            return 1.0  # one at a time: the next one may start once this one is stored
        size = min(size, self.burst_bytes)  # a file bigger than the burst is refused by size elsewhere
        if size > b.tokens:
            return (size - b.tokens) / self.bytes_per_s if self.bytes_per_s > 0 else 3600.0
        b.tokens -= size
        b.uploading += 1
        return None

    def refused(self, account: str, wait: float, now: float) -> float:
        """A refusal with Retry-After `wait` goes out: how long to hold it back first. Only for a
        client back before its last Retry-After: each refusal still costs a connection and the
        start of a body, and four workers retrying at once made ~30 of them a second."""
        b = self.buckets.get(account)
        if b is None:
            return 0.0
        early = now < b.retry_at
        b.retry_at = max(b.retry_at, now + wait)
        return EARLY_HOLD_S if early else 0.0

    def done(self, account: str) -> None:
        b = self.buckets.get(account)
        if b is not None and b.uploading:
            b.uploading -= 1

    def _prune(self, now: float) -> None:
        for account in [a for a, b in self.buckets.items()
                        if not b.uploading and b.tokens + (now - b.at) * self.bytes_per_s >= self.burst_bytes]:
            del self.buckets[account]
