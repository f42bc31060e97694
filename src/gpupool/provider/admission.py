"""Admission control: a bounded number of requests run, a bounded number wait.

Work beyond `max_concurrency + max_queue` is refused at once (the gateway then
tries another provider) rather than queued without bound: a provider that says
yes to everything just moves the wait to the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class OverCapacity(Exception):
    pass


class Admission:
    def __init__(self, max_concurrency: int, max_queue: int):
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.max_concurrency = max_concurrency
        self.max_queue = max(0, max_queue)
        self._slots = asyncio.Semaphore(max_concurrency)
        self.in_flight = 0
        self.queued = 0

    @property
    def capacity(self) -> int:
        return self.max_concurrency + self.max_queue

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.in_flight + self.queued >= self.capacity:
            raise OverCapacity(
                f"{self.in_flight} running and {self.queued} queued (limit "
                f"{self.max_concurrency}+{self.max_queue})"
            )
        self.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._slots.release()
