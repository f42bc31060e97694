"""Per-key limits and fair shares of the pool: a pure policy (state in, `now` in, decision out).

Each API key may be limited in requests per minute, tokens per minute and requests at
once (its own numbers, or the gateway's defaults), and under load every key gets a fair
share of the providers' slots for a model, so that one key's flood cannot starve
another key. Nothing here reads a clock, a socket or the database: the gateway passes
`now` (monotonic seconds) and the model's capacity, and turns a refusal into a 429.

    limiter = KeyLimiter(LimiterConfig(burst_s=10))
    d = limiter.admit(key_id, KeyLimits(rpm=60), "llama", tokens=300, slots=8, now=t)
    if not d.ok: ...                      # d.reason, d.retry_after_s
    limiter.release(key_id, "llama", reserved=300, used=120, now=t2)   # once per admitted request

Rates are token buckets: `rpm` refills rpm/60 requests per second and holds `burst_s`
seconds of them (at least one), so short bursts pass and a steady flood is held at the
rate. Tokens are counted at admission as the most the request may use (its prompt
bound plus `max_tokens`) and settled to the receipt's usage when it ends, as OpenAI
counts them.

The fair share is max-min over the providers' slots: a key alone may use the whole
pool, its queues included, less a few places kept spare for a newcomer's first request
(`spare`, at least one; before any report, the slots plus `headroom`). Once other keys
are active on the same providers (in flight, or seen within `active_window_s`), a key
may hold at most the slots (less `spare` of them) that the others leave, and always its
equal share: queued places are not shared out, since a request queued behind a flood's
long streams waits as long as one refused. Each other active key is kept one slot
beyond what it holds (up to its share), so a newcomer finds a free slot at once instead
of racing a flood for every freed one. Providers share their slots among the models they
serve, so the caller passes the models served by the same providers (`related`): a key's
requests for any of them count against its share. A key admitted beyond its equal share
while others are active is told so (`Decision.over_share`): the gateway then paces its
streams, since relaying its tokens costs the gateway's CPU, which the others share too.

State per key expires once it has nothing in flight and its buckets would be full again,
and the table never holds more than `max_keys` entries: whatever a client sends, memory
stays bounded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from gpupool.token_bucket import Bucket


@dataclass(frozen=True)
class KeyLimits:
    """One key's limits; 0 means unlimited (the fair share still applies)."""

    rpm: int = 0
    tpm: int = 0
    concurrency: int = 0


@dataclass(frozen=True)
class LimiterConfig:
    burst_s: float = 10.0  # a bucket holds this many seconds of its rate
    active_window_s: float = 2.0  # a key seen this recently counts for the fair share
    headroom: float = 1.0  # before providers report their queues: this share of the slots may queue
    spare: float = 0.125  # of the places providers report, this share (at least one) is kept for newcomers
    max_keys: int = 100_000


@dataclass(frozen=True)
class Decision:
    ok: bool
    reason: str = ""  # rpm | tpm | concurrency | fair_share
    message: str = ""
    retry_after_s: float = 0.0
    # Admitted while holding more than its equal share with other keys active: its streams
    # are paced (gateway/dispatch/stream.py), so its flood of tokens cannot take the gateway's CPU too.
    over_share: bool = False
    early: bool = False  # refused again before the Retry-After of its last refusal


ADMIT = Decision(True)
ADMIT_OVER_SHARE = Decision(True, over_share=True)


@dataclass
class KeyState:
    limits: KeyLimits
    requests: Bucket | None = None
    tokens: Bucket | None = None
    in_flight: dict[str, int] = field(default_factory=dict)  # per model
    total_in_flight: int = 0
    last_seen: float = 0.0
    retry_at: float = 0.0  # the Retry-After its last refusal gave
    ignoring_retry_after: bool = False  # its last refusal came before the Retry-After of the one before

    def idle_until(self) -> float:
        """When this entry carries no information any more (nothing in flight, buckets full)."""
        ends = [self.last_seen]
        ends += [b.full_at() for b in (self.requests, self.tokens) if b is not None]
        return max(ends)


class KeyLimiter:
    def __init__(self, config: LimiterConfig | None = None):
        self.config = config or LimiterConfig()
        self.keys: dict[int, KeyState] = {}
        # model -> key -> last time the key asked for the model (for the fair share)
        self.active: dict[str, dict[int, float]] = {}
        self._swept = 0.0

    # ------------------------------------------------------------ decisions

    def admit(self, key: int, limits: KeyLimits, model: str, tokens: int, slots: int, now: float,
              places: int | None = None, related: tuple[str, ...] = (), background: bool = False) -> Decision:
        """May this key start a request for `model` now? On ok the request is counted until `release`.

        `tokens`: the most the request may use (prompt bound + max_tokens). `slots`: the
        model's providers' concurrent slots (0 when nobody serves it: no fair share applies,
        routing answers that case; callers then pass a fixed `model`, since only served
        model names may become keys of the fair-share table). `places`: the requests the
        providers accept at once, slots plus queues (None: not known yet). `related`: other
        models served by the same providers, whose requests share their slots.

        A refusal says `early` when the key came back before the Retry-After of its last
        refusal: the gateway holds such answers back (a client spinning on 429s would
        otherwise take the CPU it was refused). `background`: work the gateway itself retries (a
        batch shard): its refusals set no Retry-After, so they never hold back the key's clients."""
        self._sweep(now)
        state = self._state(key, limits, now)
        decision = self._decide(state, key, limits, model, tokens, slots, now, places, related)
        if background:
            return decision
        if not decision.ok:
            early = now < state.retry_at
            state.retry_at = now + decision.retry_after_s
            state.ignoring_retry_after = early
            if early:
                decision = dataclasses.replace(decision, early=True)
        else:
            state.ignoring_retry_after = False
        return decision

    def refused_elsewhere(self, key: int, retry_after_s: float, now: float) -> bool:
        """A refusal decided outside this limiter (the network's shared rates, money/shared_limits.py),
        remembered like its own so that a key ignoring Retry-After is treated the same way.
        True when the key came back before its last Retry-After (`Decision.early`)."""
        state = self.keys.get(key)
        if state is None:
            return False
        early = now < state.retry_at
        state.retry_at = now + retry_after_s
        state.ignoring_retry_after = early
        return early

    def ignored_retry_after(self, key: int, now: float) -> float:
        """Seconds left of the key's last Retry-After if it came back early once already and is
        early again (a client ignoring Retry-After; 0.0 otherwise). Such a request can be
        refused before its body is read: one early retry may be another model or a
        concurrent thread, a second in a row is the client not waiting at all."""
        state = self.keys.get(key)
        if state is None or not state.ignoring_retry_after or now >= state.retry_at:
            return 0.0
        return state.retry_at - now

    def _decide(self, state: KeyState, key: int, limits: KeyLimits, model: str, tokens: int, slots: int,
                now: float, places: int | None, related: tuple[str, ...]) -> Decision:
        state.last_seen = now
        if slots > 0:
            self.active.setdefault(model, {})[key] = now
        if limits.concurrency and state.total_in_flight >= limits.concurrency:
            return Decision(False, "concurrency", f"concurrent requests: limit {limits.concurrency}, in flight "
                            f"{state.total_in_flight}", retry_after_s=1.0)
        over_share = False
        if slots > 0:
            cap, share = self._caps(key, model, slots, now, places, related)
            mine = sum(state.in_flight.get(m, 0) for m in (model, *related))
            over_share = share is not None and mine >= share
            if mine >= cap:
                return Decision(False, "fair_share", f"this key has {mine} requests in flight for {model!r}, its "
                                f"fair share of the pool's {slots} slots while others wait", retry_after_s=1.0)
        wait = state.requests.wait_for(1, now) if state.requests else 0.0
        if wait > 0:
            return Decision(False, "rpm", f"requests per min (RPM): limit {limits.rpm}", retry_after_s=wait)
        wait = state.tokens.wait_for(tokens, now) if state.tokens else 0.0
        if wait > 0:
            return Decision(False, "tpm", f"tokens per min (TPM): limit {limits.tpm}, requested {tokens} (prompt "
                            "estimate + max_tokens)", retry_after_s=wait)
        if state.requests:
            state.requests.take(1)
        if state.tokens:
            state.tokens.take(tokens)
        state.in_flight[model] = state.in_flight.get(model, 0) + 1
        state.total_in_flight += 1
        return ADMIT_OVER_SHARE if over_share else ADMIT

    def release(self, key: int, model: str, reserved: int, used: int, now: float) -> None:
        """An admitted request ended; `used` tokens (from its receipt, 0 if it failed) replace `reserved`."""
        state = self.keys.get(key)
        if state is None:
            return
        left = state.in_flight.get(model, 0) - 1
        if left > 0:
            state.in_flight[model] = left
        else:
            state.in_flight.pop(model, None)
        state.total_in_flight = max(0, state.total_in_flight - 1)
        state.last_seen = max(state.last_seen, now)
        if state.tokens and reserved > used:
            state.tokens.refill(now)
            state.tokens.give_back(min(reserved, state.tokens.capacity) - min(used, state.tokens.capacity))

    def fair_cap(self, key: int, model: str, slots: int, now: float, places: int | None = None,
                 related: tuple[str, ...] = ()) -> int:
        """Most requests `key` may have in flight for `model` (and `related`): max-min fair over the active keys."""
        return self._caps(key, model, slots, now, places, related)[0]

    def _caps(self, key: int, model: str, slots: int, now: float, places: int | None,
              related: tuple[str, ...]) -> tuple[int, int | None]:
        """(the fair cap, the equal share among active keys; None when the key is alone)."""
        models = (model, *related)
        others: dict[int, int] = {}  # other active key -> what it holds on these providers
        for m in models:
            for other, seen in self.active.get(m, {}).items():
                if other == key or other in others:
                    continue
                state = self.keys.get(other)
                held = sum(state.in_flight.get(x, 0) for x in models) if state else 0
                if held or now - seen <= self.config.active_window_s:
                    others[other] = held
        if not others:  # alone: the providers' queues too
            if places is not None:
                return max(1, places - max(1, math.floor(places * self.config.spare))), None
            return slots + max(1, math.floor(slots * self.config.headroom)), None
        total = max(1, slots - math.floor(slots * self.config.spare))
        share = math.ceil(total / (len(others) + 1))
        # Every other active key keeps one slot beyond what it holds, up to its share.
        reserved = sum(min(share, held + 1) for held in others.values())
        return max(share, total - reserved), share

    # ------------------------------------------------------------ bookkeeping

    def _state(self, key: int, limits: KeyLimits, now: float) -> KeyState:
        state = self.keys.get(key)
        if state is None or state.limits != limits:
            fresh = KeyState(limits)
            fresh.requests = Bucket.full(limits.rpm, self.config.burst_s, now) if limits.rpm > 0 else None
            fresh.tokens = Bucket.full(limits.tpm, self.config.burst_s, now) if limits.tpm > 0 else None
            if state is not None:  # the key's limits changed: keep what it has in flight
                fresh.in_flight, fresh.total_in_flight = state.in_flight, state.total_in_flight
            elif len(self.keys) >= self.config.max_keys:
                self._evict(now)
            self.keys[key] = state = fresh
        return state

    def _sweep(self, now: float) -> None:
        """Forget idle keys (at most once a second: the scan is over every key)."""
        if now - self._swept < 1.0:
            return
        self._swept = now
        window = self.config.active_window_s
        for key in [k for k, s in self.keys.items() if not s.total_in_flight and s.idle_until() + window < now]:
            del self.keys[key]
        for model in list(self.active):
            recent = self.active[model]
            for key in [k for k, seen in recent.items() if now - seen > window
                        and not (k in self.keys and self.keys[k].in_flight.get(model))]:
                del recent[key]
            if not recent:
                del self.active[model]

    def _evict(self, now: float) -> None:
        """Table full: drop the longest-idle key with nothing in flight (its buckets restart full)."""
        idle = [(s.last_seen, k) for k, s in self.keys.items() if not s.total_in_flight]
        if idle:
            del self.keys[min(idle)[1]]
