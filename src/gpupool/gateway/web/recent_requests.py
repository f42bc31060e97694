"""The last finished inference requests, behind `/v1/stats`: a fixed-size ring of numbers.

    recent = RecentRequests(50_000)
    recent.add(time.time(), "llama", latency_s=0.8, ok=True, ttft_s=0.1)
    samples = recent.samples()        # oldest first, as Sample tuples, for summarize_window

One request's record is five numbers in preallocated arrays, not a tuple of Python
objects: a flood of requests leaves no objects behind that would pin the allocator's
arenas (after a burst, scattered survivors kept ~9 MiB of the gateway's heap from going
back to the OS; bench/hostile measures RSS after each attack). Tuples are made only
when `/v1/stats` asks, at most once a second.
"""

from __future__ import annotations

import math
from array import array
from typing import NamedTuple


class Sample(NamedTuple):
    """One finished inference request."""

    at: float  # time.time()
    model: str
    latency_s: float
    ok: bool
    ttft_s: float | None


class RecentRequests:
    """The last `size` requests; model labels must come from a bounded set (metrics' labels)."""

    def __init__(self, size: int):
        self.size = size
        self._at = array("d", bytes(8 * size))
        self._latency = array("d", bytes(8 * size))
        self._ttft = array("d", bytes(8 * size))  # NaN: not a stream
        self._ok = array("b", bytes(size))
        self._model = array("H", bytes(2 * size))  # index into _labels
        self._labels: list[str] = []
        self._label_index: dict[str, int] = {}
        self._next = 0  # the slot the next request goes to
        self.count = 0  # requests held (at most `size`)

    def add(self, at: float, model: str, latency_s: float, ok: bool, ttft_s: float | None) -> None:
        index = self._label_index.get(model)
        if index is None:
            index = self._label_index[model] = len(self._labels)
            self._labels.append(model)
        i = self._next
        self._at[i], self._latency[i], self._ok[i], self._model[i] = at, latency_s, ok, index
        self._ttft[i] = math.nan if ttft_s is None else ttft_s
        self._next = (i + 1) % self.size
        if self.count < self.size:
            self.count += 1

    def samples(self) -> list[Sample]:
        """Every request held, oldest first."""
        first = (self._next - self.count) % self.size
        out = []
        for k in range(self.count):
            i = (first + k) % self.size
            ttft = self._ttft[i]
            out.append(Sample(self._at[i], self._labels[self._model[i]], self._latency[i], bool(self._ok[i]),
                              None if math.isnan(ttft) else ttft))
        return out
