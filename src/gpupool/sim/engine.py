"""A minimal discrete-event engine: a virtual clock and a queue of callbacks.

    eng = Engine()
    h = eng.after(1.5, handler, arg1, arg2)   # handler(arg1, arg2) runs at t=1.5
    eng.cancel(h)                             # ...or not
    eng.run()                                 # until no events are left (or `until`)
    eng.now                                   # the virtual time, seconds

Events at the same time run in the order they were scheduled, so a run is
deterministic given the seeds of whatever schedules them.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

# An event is a list [time, seq, callback, args]; cancel sets callback to None.
# (A list, not a tuple, so cancelling is O(1) without a search; `seq` is unique,
# so heap comparisons never reach the callback.)
Handle = list[Any]


class Engine:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._queue: list[Handle] = []
        self._seq = 0
        self.processed = 0

    def at(self, t: float, fn: Callable[..., Any], *args: Any) -> Handle:
        if t < self.now:
            t = self.now  # never schedule into the past; the clock only moves forward
        self._seq += 1
        event: Handle = [t, self._seq, fn, args]
        heapq.heappush(self._queue, event)
        return event

    def after(self, delay: float, fn: Callable[..., Any], *args: Any) -> Handle:
        return self.at(self.now + max(delay, 0.0), fn, *args)

    @staticmethod
    def cancel(event: Handle | None) -> None:
        if event is not None:
            event[2] = None

    def run(self, until: float | None = None) -> int:
        """Process events in time order; returns how many ran."""
        queue, pop = self._queue, heapq.heappop
        ran = 0
        while queue:
            if until is not None and queue[0][0] > until:
                self.now = until
                break
            t, _, fn, args = pop(queue)
            if fn is None:
                continue
            self.now = t
            fn(*args)
            ran += 1
        self.processed += ran
        return ran

    def __len__(self) -> int:
        return len(self._queue)
