"""The hub's clockwork, sized for ten thousand sessions: one ping scheduler, one handshake gate.

- `PingScheduler`: every provider session is pinged (RTT, liveness) from one heap of
  due times, not a task per session: the gateway's per-second work is one ping per
  session per interval, and the interval stretches so that all of them together stay
  under `max_pings_per_s` (10,000 sessions at 250/s: every 40 s; silence is then
  judged over 3 intervals). Nothing per tick walks every session.
- `HandshakeGate`: handshakes are admitted at `handshakes_per_s`, in arrival order,
  with a burst of one second's worth; a dial that would wait longer than
  `handshake_queue_s` is refused before the upgrade with a 503 whose Retry-After says
  when the queue will have drained (the provider waits that long, jittered), so a
  reconnect storm after a restart is spread out rather than starving client requests,
  and refusing it costs one answer per provider, not one per exponential-backoff retry.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable

from gpupool.config import GatewaySettings
from gpupool.gateway.peers.session import ProviderSession

log = logging.getLogger("gpupool.gateway.hub")
# Pings sent before the scheduler yields to the event loop (a burst of due pings must not
# hold client requests back).
PINGS_PER_SLICE = 200
# The scheduler wakes at most this often and sends every ping then due (one wake-up per ping
# would cost the event loop a switch per ping at hundreds a second).
WAKE_S = 0.05


class PingScheduler:
    """`ping(session)` each session every `interval()`; `expire(session)` one silent past `liveness()`;
    `tick()` about once a second (the hub's slow housekeeping)."""

    def __init__(self, settings: GatewaySettings, count: Callable[[], int],
                 ping: Callable[[ProviderSession], Awaitable[None]], expire: Callable[[ProviderSession], None],
                 tick: Callable[[], None]):
        self.settings = settings
        self.count = count
        self.ping, self.expire, self.tick = ping, expire, tick
        self.heap: list[tuple[float, int, ProviderSession]] = []
        self._seq = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self._ticked = 0.0
        # Set when a session joins with a ping due before the scheduler's next wake-up: a new
        # provider's RTT is unknown until its first ping, and routing ranks it worse meanwhile.
        self._wake = asyncio.Event()

    def interval(self) -> float:
        s = self.settings
        return max(s.ping_interval_s, self.count() / max(1e-3, s.max_pings_per_s))

    def liveness(self) -> float:
        return max(self.settings.liveness_timeout_s, 3 * self.interval())

    def add(self, session: ProviderSession, first_in: float = 0.0) -> None:
        """Schedule `session`'s pings, the first one `first_in` seconds from now."""
        heapq.heappush(self.heap, (time.monotonic() + first_in, next(self._seq), session))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="hub-pings")
        elif self.heap[0][2] is session:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self._due()
                if time.monotonic() - self._ticked >= 1.0:
                    self._ticked = time.monotonic()
                    self.tick()
            except Exception:  # noqa: BLE001 - the clock of every session must keep running
                log.exception("ping scheduler step failed")
            heap = self.heap
            delay = 1.0 if not heap else min(1.0, heap[0][0] - time.monotonic())
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(WAKE_S, delay))
            except asyncio.TimeoutError:
                pass

    async def _due(self) -> None:
        heap = self.heap
        now = time.monotonic()
        interval, liveness = self.interval(), self.liveness()
        sent = 0
        while heap and heap[0][0] <= now:
            _, _, session = heapq.heappop(heap)
            if session.closed:
                continue  # left since: it is simply not rescheduled
            if now - session.last_seen > liveness:
                self.expire(session)
                continue
            heapq.heappush(heap, (now + interval * self._rng.uniform(0.9, 1.1), next(self._seq), session))
            try:
                await self.ping(session)
            except Exception:  # noqa: BLE001 - a dead socket: its session's reader notices and removes it
                pass
            sent += 1
            if sent % PINGS_PER_SLICE == 0:
                await asyncio.sleep(0)
                now = time.monotonic()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


class HandshakeGate:
    """Admission of handshakes at `rate` per second, first come first served."""

    def __init__(self, rate: float, max_wait_s: float):
        self.rate = rate
        self.max_wait_s = max_wait_s
        self._next = 0.0  # when the next handshake may start
        self.refused = 0
        self._told = 0.0  # the latest time a refused dial was told to come back (Retry-After)

    def turn(self, now: float) -> float | None:
        """Seconds to wait before this handshake may start; None: refuse it (the queue is too long)."""
        if self.rate <= 0:
            return 0.0
        start = max(now - 1.0, self._next)  # up to one second's worth at once after a quiet spell
        wait = max(0.0, start - now)
        if wait > self.max_wait_s:
            self.refused += 1
            return None
        self._next = start + 1.0 / self.rate
        return wait

    def retry_after(self, now: float) -> float:
        """Seconds a refused dial should wait: each refusal books a later turn, so a storm of N
        dials is told to come back spread over N / rate seconds rather than all at once."""
        self._told = max(self._told, self._next, now) + 1.0 / max(self.rate, 1e-3)
        return min(300.0, max(1.0, self._told - now))


class Arrivals:
    """After a start: the models providers served before it (the store remembers them) and the
    requests waiting for one of their providers to come back, within `grace_s` of the start."""

    MAX_REMEMBERED = 10_000  # model names come from peers' offers: bounded

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self.started = time.monotonic()
        self.remembered: set[str] = set()
        self._waiters: dict[str, asyncio.Event] = {}

    def remember(self, models: set[str]) -> None:
        self.started = time.monotonic()
        self.remembered = set(sorted(models)[:self.MAX_REMEMBERED])

    def grace_left(self, model: str) -> float:
        """Seconds of grace left for `model` (0: none; it was not served before, or grace is over)."""
        if model not in self.remembered:
            return 0.0
        left = self.started + self.grace_s - time.monotonic()
        if left <= 0:
            self.remembered.clear()  # grace is over for every model
            self._waiters.clear()
            return 0.0
        return left

    async def wait(self, model: str, timeout_s: float) -> bool:
        """Wait at most `timeout_s` for a provider of `model` to join; True if one did."""
        event = self._waiters.get(model)
        if event is None:
            event = self._waiters[model] = asyncio.Event()
        try:
            await asyncio.wait_for(event.wait(), max(0.0, timeout_s))
            return True
        except TimeoutError:
            return False

    def joined(self, models: dict[str, object]) -> None:
        if self._waiters:
            for name in models:
                event = self._waiters.pop(name, None)
                if event is not None:
                    event.set()
