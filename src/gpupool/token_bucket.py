"""A token bucket: per-key request and token limits, the anonymous limit, and the gateway's
rate of provider trials all meter with it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Bucket:
    """A token bucket: `level` tokens at time `updated`; refills `rate` per second up to `capacity`."""

    rate: float
    capacity: float
    level: float
    updated: float

    @classmethod
    def full(cls, per_minute: float, burst_s: float, now: float) -> Bucket:
        rate = per_minute / 60.0
        capacity = max(1.0, rate * burst_s)
        return cls(rate, capacity, capacity, now)

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` (at most the capacity) is available; 0 if it is now."""
        self.refill(now)
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        # A request bigger than the whole bucket may pass when it is full, leaving it empty.
        self.level -= min(amount, self.capacity)

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)

    def full_at(self) -> float:
        return self.updated + (self.capacity - self.level) / self.rate
