"""A minimal discrete-event engine: a virtual clock and a queue of callbacks.

    eng = Engine()
    h = eng.after(1.5, handler, arg1, arg2)   # handler(arg1, arg2) runs at t=1.5
    eng.cancel(h)                             # ...or not
    eng.run()                                 # until no events are left (or `until`)
    eng.now                                   # the virtual time, seconds

    verdicts = eng.lane()                     # events whose times never go down (a fixed delay
    verdicts.after(30.0, handler, arg)        # after now, or a schedule known in advance)

Events at the same time run in the order they were scheduled, so a run is
deterministic given the seeds of whatever schedules them.

Why lanes: a heap operation costs ~log2(size) comparisons, each reading an event
somewhere in memory. A simulated day pre-schedules thousands of periodic events and
keeps hundreds of audit verdicts (all 30 s after their answer) pending; each of those
sequences is already in time order, so a lane keeps it in a FIFO and only its next
event in the heap. The order in which events run is exactly the one-heap order (the
heap always holds every lane's earliest event; ties still go by scheduling order).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from typing import Any

# An event is a list [time, seq, callback, args, lane or None]; cancel sets callback to None.
# (A list, not a tuple, so cancelling is O(1) without a search; `seq` is unique,
# so heap comparisons never reach the callback.)
Handle = list[Any]


class Lane:
    """Events scheduled in time order; only the earliest waits in the engine's heap."""

    __slots__ = ("_eng", "_waiting", "_queued", "_last")

    def __init__(self, eng: Engine) -> None:
        self._eng = eng
        self._waiting: deque[Handle] = deque()
        self._queued = False  # this lane's earliest event is in the heap
        self._last = float("-inf")

    def at(self, t: float, fn: Callable[..., Any], *args: Any) -> Handle:
        eng = self._eng
        if t < eng.now:
            t = eng.now
        if t < self._last:
            raise ValueError(f"a lane's events must come in time order ({t} after {self._last})")
        self._last = t
        eng._seq += 1
        event: Handle = [t, eng._seq, fn, args, self]
        if self._queued:
            self._waiting.append(event)
        else:
            self._queued = True
            heapq.heappush(eng._queue, event)
        return event

    def after(self, delay: float, fn: Callable[..., Any], *args: Any) -> Handle:
        return self.at(self._eng.now + max(delay, 0.0), fn, *args)


class Engine:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._queue: list[Handle] = []
        self._seq = 0
        self._lanes: list[Lane] = []
        self.processed = 0

    def at(self, t: float, fn: Callable[..., Any], *args: Any) -> Handle:
        if t < self.now:
            t = self.now  # never schedule into the past; the clock only moves forward
        self._seq += 1
        event: Handle = [t, self._seq, fn, args, None]
        heapq.heappush(self._queue, event)
        return event

    def after(self, delay: float, fn: Callable[..., Any], *args: Any) -> Handle:
        return self.at(self.now + max(delay, 0.0), fn, *args)

    def lane(self) -> Lane:
        """A queue for events scheduled in time order (see the module docstring)."""
        lane = Lane(self)
        self._lanes.append(lane)
        return lane

    @staticmethod
    def cancel(event: Handle | None) -> None:
        if event is not None:
            event[2] = None

    def run(self, until: float | None = None) -> int:
        """Process events in time order; returns how many ran."""
        queue, pop, push = self._queue, heapq.heappop, heapq.heappush
        ran = 0
        while queue:
            if until is not None and queue[0][0] > until:
                self.now = until
                break
            t, _, fn, args, lane = pop(queue)
            if lane is not None:
                # Its earliest event left the heap: the one after it takes its place.
                if lane._waiting:
                    push(queue, lane._waiting.popleft())
                else:
                    lane._queued = False
            if fn is None:
                continue
            self.now = t
            fn(*args)
            ran += 1
        self.processed += ran
        return ran

    def __len__(self) -> int:
        """Events scheduled and not yet run (cancelled ones included)."""
        return len(self._queue) + sum(len(lane._waiting) for lane in self._lanes)
