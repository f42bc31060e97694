"""InputBatcher: merging concurrent calls, giving each its own rows, isolating failures,
and dropping callers that gave up. The model here is a plain function on the model thread."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from gpupool.provider.backends.base import ModelThread
from gpupool.provider.backends.batching import InputBatcher


class Model:
    """Rows [len(text), index in its batch]; fails a batch holding "boom"; can be held busy."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # a call has reached the model thread

    async def wait_busy(self) -> None:
        """Until a call holds the model thread (a fixed sleep raced slow machines)."""
        assert await asyncio.to_thread(self.entered.wait, 30), "the first call never reached the model"

    def __call__(self, inputs: list[str]) -> tuple[np.ndarray, list[int]]:
        self.entered.set()
        self.gate.wait(30)
        self.batches.append(list(inputs))
        if "boom" in inputs:
            raise ValueError("the model cannot read 'boom'")
        return np.array([[len(t), i] for i, t in enumerate(inputs)], dtype=np.float32), [len(t) for t in inputs]


async def test_calls_queued_behind_a_busy_model_run_as_one_batch() -> None:
    model = Model()
    batcher = InputBatcher(ModelThread("t"), model)
    model.gate.clear()  # the first call holds the model thread
    first = asyncio.create_task(batcher.run(["a"]))
    await model.wait_busy()
    rest = [asyncio.create_task(batcher.run([f"x{i}", f"yy{i}"])) for i in range(4)]
    await asyncio.sleep(0.05)
    model.gate.set()
    rows, tokens = await first
    assert rows.tolist() == [[1, 0]] and tokens == [1]
    results = await asyncio.gather(*rest)
    assert model.batches == [["a"], ["x0", "yy0", "x1", "yy1", "x2", "yy2", "x3", "yy3"]]
    for i, (rows, tokens) in enumerate(results):  # each caller gets its own slice, in order
        assert rows[:, 1].tolist() == [2 * i, 2 * i + 1] and tokens == [2, 3]
    await batcher.close()


async def test_a_failing_input_fails_only_its_own_call() -> None:
    model = Model()
    batcher = InputBatcher(ModelThread("t"), model, window_s=0.05)
    calls = [batcher.run(["fine"]), batcher.run(["boom"]), batcher.run(["also fine"])]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[1], ValueError)
    assert results[0][1] == [4] and results[2][1] == [9]  # type: ignore[index]
    # One merged try, then each alone.
    assert model.batches == [["fine", "boom", "also fine"], ["fine"], ["boom"], ["also fine"]]
    await batcher.close()


async def test_max_inputs_splits_batches_and_a_cancelled_caller_is_dropped() -> None:
    model = Model()
    batcher = InputBatcher(ModelThread("t"), model, max_inputs=3)
    model.gate.clear()
    busy = asyncio.create_task(batcher.run(["0"]))
    await model.wait_busy()
    gone = asyncio.create_task(batcher.run(["gone"]))
    kept = [asyncio.create_task(batcher.run([c])) for c in "abcd"]
    await asyncio.sleep(0.05)
    gone.cancel()
    model.gate.set()
    await busy
    assert [r[1] for r in await asyncio.gather(*kept)] == [[1]] * 4
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert model.batches == [["0"], ["a", "b", "c"], ["d"]]
    await batcher.close()


async def test_an_urgent_call_cuts_the_window_short_for_its_batch() -> None:
    model = Model()
    batcher = InputBatcher(ModelThread("t"), model, window_s=3600.0)  # an hour: only urgency ends it
    routine = asyncio.create_task(batcher.run(["routine"]))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(batcher.run(["urgent"], urgent=True), 30)
    await asyncio.wait_for(routine, 30)
    assert model.batches == [["routine", "urgent"]]  # the routine one rode along
    await batcher.close()
