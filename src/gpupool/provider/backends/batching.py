"""Dynamic batching: concurrent embedding calls share one forward pass.

A provider serving several requests at once, or a checker auditing several answers,
would otherwise run the model once per request. On a CPU, MiniLM costs ~11 ms of CPU
for one short text alone and ~3 ms per text in a batch of 8 (measured, one torch
thread); a GPU gains more. `InputBatcher` queues each call's inputs; whenever the model
thread is free it takes everything queued (up to `max_inputs`) as one batch, runs it and
hands each caller its own rows. With `window_s` = 0 (providers) nobody waits for a batch
to fill: batches form only from calls that arrive while the model is busy. A checker,
whose routine verdicts nobody waits on, sets a window so that its rare audits meet in
one pass; an urgent call cuts the window short for the batch it joins.

If a merged batch fails, each call is retried alone, so one bad input cannot fail
another client's request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gpupool.provider.backends.base import ModelThread

# (rows [n, dims] float32, model tokens per input) for a list of n inputs.
RunBatch = Callable[[list[str]], tuple[np.ndarray, list[int]]]


@dataclass
class _Call:
    inputs: list[str]
    done: asyncio.Future[tuple[np.ndarray, list[int]]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class InputBatcher:
    def __init__(self, thread: ModelThread, run: RunBatch, max_inputs: int = 256, window_s: float = 0.0):
        self._thread = thread
        self._run = run
        self.max_inputs = max_inputs
        self.window_s = window_s
        self._queue: list[_Call] = []
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # model calls made (for tests and stats)

    async def run(self, inputs: list[str], urgent: bool = False) -> tuple[np.ndarray, list[int]]:
        """This call's rows and token counts, computed in a batch with whatever else is queued.

        `urgent`: someone waits on the answer; the batch it joins starts without the window.
        """
        if self._task is None or self._task.done():
            # (Re)started in the running loop: a backend can outlive a loop (tests).
            self._queue = [c for c in self._queue if not c.done.done()]
            self._wake, self._hurry = asyncio.Event(), asyncio.Event()
            self._task = asyncio.create_task(self._drain(), name="input-batcher")
        call = _Call(inputs)
        self._queue.append(call)
        if urgent:
            self._hurry.set()
        self._wake.set()
        try:
            return await asyncio.shield(call.done)
        except asyncio.CancelledError:
            call.done.cancel()  # still queued: dropped from the next batch
            raise

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            if task.get_loop() is asyncio.get_running_loop():
                await asyncio.gather(task, return_exceptions=True)
        for call in self._queue:
            call.done.cancel()
        self._queue.clear()

    async def _drain(self) -> None:
        while True:
            await self._wake.wait()
            if self.window_s > 0 and not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), self.window_s)
            self._wake.clear()
            self._hurry.clear()
            batch = self._take()
            if batch:
                await self._run_batch(batch)
            if self._queue:
                self._wake.set()

    def _take(self) -> list[_Call]:
        """The queued live calls, in order, up to max_inputs (always at least one call)."""
        batch: list[_Call] = []
        size = 0
        while self._queue:
            call = self._queue[0]
            if call.done.done():  # its caller gave up
                self._queue.pop(0)
                continue
            if batch and size + len(call.inputs) > self.max_inputs:
                break
            batch.append(self._queue.pop(0))
            size += len(call.inputs)
        return batch

    async def _run_batch(self, batch: list[_Call]) -> None:
        inputs = [text for call in batch for text in call.inputs]
        self.batches += 1
        try:
            rows, tokens = await self._thread.call(self._run, inputs)
        except Exception as exc:  # noqa: BLE001 - handed to the callers
            if len(batch) == 1:
                _settle(batch[0], exc=exc)
            else:
                for call in batch:  # alone, so one bad input fails only its own request
                    await self._run_batch([call])
            return
        start = 0
        for call in batch:
            end = start + len(call.inputs)
            _settle(call, result=(rows[start:end], tokens[start:end]))
            start = end


def _settle(call: _Call, result: tuple[np.ndarray, list[int]] | None = None, exc: BaseException | None = None) -> None:
    if call.done.done():
        return
    if exc is not None:
        call.done.set_exception(exc)
    else:
        assert result is not None
        call.done.set_result(result)


__all__ = ["InputBatcher", "RunBatch"]
