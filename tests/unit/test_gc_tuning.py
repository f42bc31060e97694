"""The serving processes' garbage-collector settings (gpupool/gc_tuning.py), on the real collector."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from gpupool import gc_tuning


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def _old_cycle() -> weakref.ref[_Node]:
    """A garbage cycle that already lives in the old generation (young passes skip it)."""
    node = _Node()
    ref = weakref.ref(node)
    gc.collect(1)  # moves it past the young and middle generations
    del node
    return ref


def test_start_up_heap_is_frozen_and_young_collections_are_rarer(restored_gc: None) -> None:
    gc_tuning.freeze_startup_heap()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (gc_tuning.YOUNG_THRESHOLD, gc_tuning.MIDDLE_THRESHOLD, gc_tuning.OLD_THRESHOLD)


def test_old_garbage_is_collected_once_quiet_and_not_while_busy(restored_gc: None) -> None:
    gc.set_threshold(gc_tuning.YOUNG_THRESHOLD, gc_tuning.MIDDLE_THRESHOLD, gc_tuning.OLD_THRESHOLD)
    state = {"quiet": False}

    async def run(ref: weakref.ref[_Node]) -> bool:
        task = asyncio.create_task(gc_tuning.hand_back_memory(quiet=lambda: state["quiet"], every_s=0.01))
        try:
            await asyncio.sleep(0.1)
            busy_alive = ref() is not None
            gc.collect(0)  # a young collection since the last full pass: garbage may be waiting
            state["quiet"] = True
            await asyncio.sleep(0.1)
            assert ref() is None, "a quiet gateway should have collected the old garbage cycle"
            return busy_alive
        finally:
            task.cancel()

    gc.disable()  # only hand_back_memory may run a full pass here
    try:
        assert asyncio.run(run(_old_cycle())), "no full pass may run while the gateway is busy"
    finally:
        gc.enable()
