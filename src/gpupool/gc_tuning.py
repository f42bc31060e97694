"""Keep the cyclic garbage collector from stalling long-running servers.

A full (generation-2) collection walks every tracked object in the process. After
start-up that is mostly what imports, the app and loaded models left behind, which
live as long as the process anyway. Measured on the 2-core bench machine while 1,000
SSE streams opened at once: gen-2 passes of 40-80 ms in the gateway, each one
delaying the next token of every open stream by as much (bench/streaming). Freezing
the start-up heap takes those objects out of every later collection, so a pass only
walks what was allocated since.

Python's default young-generation threshold (700 net allocations) is made for short
scripts: in a server holding a thousand open streams, every young collection finds
requests that are simply still running, moves them to the old generation, and that
growth soon triggers a full pass over all of them. Serving processes collect the
young generation only every `YOUNG_THRESHOLD` net allocations, and do the full pass
while quiet (`hand_back_memory`).

And hand freed memory back to the OS: after a burst glibc keeps the pages a process
freed, so its RSS would stay at the burst's peak (`hand_back_memory`).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable

# Net allocations of tracked objects between young collections (Python's default: 700).
# Measured with bench/streaming (1,000 streams opening within 1.5 s): p99 time to first
# token 740 and 1,152 ms with the default, 205 and 176 ms with this, interleaved runs.
YOUNG_THRESHOLD = 50_000
# Young collections per middle one, middle per full one (full passes also wait until the
# old generation grew by a quarter, CPython's own rule).
MIDDLE_THRESHOLD = 20
OLD_THRESHOLD = 100
# A full pass walks every tracked object, so its cost grows with what the process holds (10,000
# provider sessions: tens of milliseconds a pass). `hand_back_memory` spends at most this share of
# the time on full passes: after a pass of d seconds, the next waits at least d / FULL_PASS_SHARE.
# Profiled (bench/scale, 3,000 sessions joining): one full pass a second was 12% of the gateway's CPU.
FULL_PASS_SHARE = 0.01
# `malloc_trim` walks the whole heap too: a trim waits until at least this share of the heap (and
# `min_free`) more is free than after the last one. Profiled (bench/scale, 10,000 sessions idle, a
# 400 MiB heap): with 1 MiB, the heap's churn from pings alone set off a trim about once a second,
# 12% of the idle gateway's CPU.
TRIM_SHARE_OF_HEAP = 1 / 32


def freeze_startup_heap() -> None:
    """Collect once, move every surviving object to the permanent generation, and
    collect less often from now on (`YOUNG_THRESHOLD`).

    Call when start-up is over (modules imported, models loaded, server listening).
    Frozen objects are never collected: garbage made before this call and still
    unreachable afterwards is collected here first, so nothing leaks.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)


M_ARENA_MAX = -8  # glibc's mallopt() parameter number for the most arenas it may create


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _mallopt(param: int, value: int) -> None:
    """glibc's mallopt(); elsewhere nothing to do."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is not None:
        mallopt(param, value)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Let glibc keep at most `arenas` heaps (glibc only; elsewhere nothing to do).

    By default glibc gives each thread that allocates an arena of its own (up to 8 per
    core): the database threads each got one, and what a burst left in those arenas was
    not handed back. Measured with bench/hostile `stream_flood` alone: gateway RSS after
    1.11x of before, 1.09-1.10x with two arenas. Call before any thread starts."""
    _mallopt(M_ARENA_MAX, arenas)


M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter number for the block size served by mmap
# Blocks of at least this size get a mapping of their own, handed back to the OS when freed.
MMAP_THRESHOLD = 256 * 1024


def map_large_blocks(threshold: int = MMAP_THRESHOLD) -> None:
    """Serve every block of `threshold` bytes or more from a mapping of its own (glibc only).

    glibc starts at 128 KiB but raises the threshold to the largest mapped block freed, up
    to 32 MiB: after the first 8 MiB upload was freed, later ones were carved out of the
    heap, whose pages a few small survivors then pinned (malloc_trim gives back only whole
    free pages). Measured with bench/hostile `file_flood` alone (hostile18's probe, 15 s,
    8 MiB files): gateway RSS 110 -> 122 MiB after with the moving threshold, 110 -> 113
    with this; peak 151 -> 147. A block this large costs its page faults each time, which
    is small beside producing it (a body read, a file parsed)."""
    _mallopt(M_MMAP_THRESHOLD, threshold)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _glibc_trim() -> tuple[Callable[[], tuple[int, int]], Callable[[], object]] | None:
    """((free heap bytes, heap bytes), malloc_trim) from glibc; None on other C libraries (nothing
    to hand back)."""
    libc = _libc()
    trim, info = getattr(libc, "malloc_trim", None), getattr(libc, "mallinfo2", None)
    if trim is None or info is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    info.restype = _MallInfo2

    def free_of_heap() -> tuple[int, int]:
        m = info()
        return int(m.fordblks), int(m.arena)
    return free_of_heap, (lambda: trim(0))


async def hand_back_memory(quiet: Callable[[], bool] = lambda: True, every_s: float = 1.0,
                           min_free: int = 1024 * 1024) -> None:
    """While `quiet()` (checked every `every_s` seconds) says little is being served: collect
    the garbage the raised thresholds left (a full pass, once a young collection happened
    since the last one), and return freed heap pages to the OS (glibc only) once `min_free`
    more bytes of the heap (and `TRIM_SHARE_OF_HEAP` of it) are free than after the last trim.

    Request bodies, prompts and answers are malloc'd buffers: after a burst (a flood of
    big requests, hundreds of streams) glibc keeps the freed pages, so the process's RSS
    stays at its peak. `malloc_trim` hands them back; it takes a few milliseconds on a
    fragmented heap, and under load the pages would only be faulted back in."""
    # Elsewhere than glibc nothing is trimmed: no free bytes are ever reported.
    free_of_heap, trim = _glibc_trim() or ((lambda: (0, 0)), (lambda: None))
    # Trimmed pages still count as free heap (they are only given back, not unmapped), so
    # trim again only once that much more has been freed since the last trim.
    after_last = 0
    next_full = 0.0  # monotonic time before which no full pass is made (FULL_PASS_SHARE)
    while True:
        await asyncio.sleep(every_s)
        if not quiet():
            continue
        _, young_collections, middle_collections = gc.get_count()
        if (young_collections or middle_collections) and time.monotonic() >= next_full:
            t0 = time.perf_counter()
            gc.collect()
            took = time.perf_counter() - t0
            next_full = time.monotonic() + took / FULL_PASS_SHARE
        free, heap = free_of_heap()
        if free - after_last > max(min_free, int(heap * TRIM_SHARE_OF_HEAP)):
            trim()
            after_last = free
        elif free < after_last:
            after_last = free
