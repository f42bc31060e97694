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


def test_full_passes_take_a_bounded_share_of_the_time(restored_gc: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full pass walks the whole heap (10,000 sessions: tens of ms): after one, the next waits
    in proportion to what it cost, so a busy join storm is not walked once a second."""
    gc.set_threshold(gc_tuning.YOUNG_THRESHOLD, gc_tuning.MIDDLE_THRESHOLD, gc_tuning.OLD_THRESHOLD)
    monkeypatch.setattr(gc_tuning, "FULL_PASS_SHARE", 1e-9)  # any pass then books the next one for ages

    async def run() -> tuple[bool, bool]:
        first = _old_cycle()
        gc.collect(0)
        task = asyncio.create_task(gc_tuning.hand_back_memory(every_s=0.01))
        try:
            await asyncio.sleep(0.1)
            first_collected = first() is None
            second = _old_cycle()
            gc.collect(0)  # a young collection since: without the bound the next tick would collect it
            await asyncio.sleep(0.1)
            return first_collected, second() is not None
        finally:
            task.cancel()

    gc.disable()
    try:
        first_collected, second_waits = asyncio.run(run())
    finally:
        gc.enable()
    assert first_collected, "the first quiet second should make a full pass"
    assert second_waits, "a second full pass came before the bound allowed it"


def test_a_big_heaps_churn_does_not_set_off_a_trim_each_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """`malloc_trim` walks the whole heap: on a big one (10,000 sessions: 400 MiB) it waits for a share
    of it to be free, not for 1 MiB, which the churn of pings alone freed about once a second."""
    glibc = gc_tuning._glibc_trim()
    if glibc is None:
        pytest.skip("not glibc: nothing is trimmed")
    free_of_heap, trim = glibc
    trims: list[int] = []
    monkeypatch.setattr(gc_tuning, "_glibc_trim", lambda: (free_of_heap, lambda: trims.append(1) or trim()))
    # 64 MiB held in blocks malloc serves from the heap (over pymalloc's 512 bytes, under mmap's threshold).
    held = [bytearray(1000) for _ in range(64_000)]
    assert free_of_heap()[1] >= 60_000_000

    async def churn() -> None:
        task = asyncio.create_task(gc_tuning.hand_back_memory(every_s=0.01))
        try:
            await asyncio.sleep(0.05)  # the first tick may trim what start-up left free
            trims.clear()
            for _ in range(15):  # 1.5 MiB allocated, seen, then freed and seen: over 1 MiB, under 1/32 of the heap
                junk = [bytearray(1000) for _ in range(1_500)]
                await asyncio.sleep(0.03)
                del junk
                await asyncio.sleep(0.03)
        finally:
            task.cancel()

    asyncio.run(churn())
    del held
    assert len(trims) <= 1, f"{len(trims)} trims for 15 rounds of churn on a 64 MiB heap"
