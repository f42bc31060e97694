"""What an uploaded batch file costs the gateway: no copy of it left in its heap once checked and
stored, and its check runs behind the gateway's serving for CPU.

Issue 18 (bench/hostile `file_flood`): after a flood of 8 MiB uploads the gateway kept
1.3-1.4x its RSS. Two holders were found: the parse pool's pipe (its feeder thread keeps the
last object it pickled) and SQLite (a prepared statement keeps the values last bound to it,
one file per pooled connection). Measured here with glibc's own count of bytes in use, on
the real parse pool (a child process) and a real SQLite database through the store.
"""

from __future__ import annotations

import asyncio
import gc
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gpupool.db import create_engine
from gpupool.gateway.batches.parse_pool import CHILD_NICENESS, ParsePool
from gpupool.gateway.batches.store import BatchStore
from gpupool.gateway.batches.tables import FileRow
from gpupool.gc_tuning import _libc, _MallInfo2
from gpupool.images import ImageLimits

MIB = 1 << 20
SIZE = 8 * MIB
SLACK = 3 * MIB  # what unrelated allocations may move in the meantime; a kept copy is SIZE


def _mallinfo() -> _MallInfo2:
    libc = _libc()
    info = getattr(libc, "mallinfo2", None)
    if info is None:
        pytest.skip("needs glibc's mallinfo2")
    info.restype = _MallInfo2
    return info()


def in_use() -> int:
    """Bytes malloc has handed out and not had back, heap and mappings together."""
    gc.collect()
    m = _mallinfo()
    return int(m.uordblks + m.hblkhd)


def batch_file(size: int) -> bytes:
    """A valid batch input file of at least `size` bytes (~1 KB lines with distinct custom ids)."""
    line = {"method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "echo", "messages": [{"role": "user", "content": "y" * 900}]}}
    return b"".join(json.dumps({"custom_id": f"r{i}", **line}).encode() + b"\n" for i in range(size // 900))


def test_a_checked_file_is_not_kept_by_the_parse_pool() -> None:
    async def run() -> tuple[int, int, int]:
        pool = ParsePool()
        try:
            known, limits = {"echo": "generate"}, ImageLimits()
            await pool.check(batch_file(64 * 1024), known, frozenset(), limits)  # the child is up
            before = in_use()
            data = batch_file(SIZE)
            count = await pool.check(data, known, frozenset(), limits)
            del data
            return count, before, in_use()
        finally:
            pool.close()

    spilled_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "gpupool-batch-*")))
    count, before, after = asyncio.run(run())
    assert count > 8000
    assert after - before < SLACK, f"{(after - before) / MIB:.1f} MiB still held after the check"
    # The file went to the child through a temporary file, removed once checked.
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "gpupool-batch-*"))) <= spilled_before


def test_a_stored_file_is_not_kept_by_sqlite(tmp_path: Path) -> None:
    async def run() -> tuple[int, int, bool]:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}")
        try:
            bs = await BatchStore.open(engine)

            def row(content: bytes) -> FileRow:
                return FileRow(id=f"file-{os.urandom(6).hex()}", account="acct", filename="in.jsonl", purpose="batch",
                               bytes=len(content), created_at=int(time.time()), content=content, batch_id=None,
                               kind="input")

            await bs.add_file(row(b"warm-up"))
            before = in_use()
            data = os.urandom(SIZE)
            stored = row(data)
            await bs.add_file(stored)
            file_id = stored.id
            del stored
            after = in_use()
            read = await bs.file(file_id, "acct", content=True)
            same = read is not None and read.content == data
            return before, after - len(data), same
        finally:
            await engine.dispose()

    before, after, same = asyncio.run(run())
    assert same, "the stored content did not read back"
    assert after - before < SLACK, f"{(after - before) / MIB:.1f} MiB held beside the caller's own copy"


def test_large_blocks_are_mapped_whatever_was_freed_before() -> None:
    """After a 16 MiB block is freed glibc would serve an 8 MiB one from the heap (its moving
    threshold); with `map_large_blocks` it still gets a mapping of its own. In a child, so this
    process's allocator keeps its settings."""
    _mallinfo()  # skips without glibc
    probe = """
from gpupool import gc_tuning
from gpupool.gc_tuning import _libc, _MallInfo2
if {mapped}:
    gc_tuning.map_large_blocks()
info = _libc().mallinfo2
info.restype = _MallInfo2
big = bytearray(16 << 20)
del big
block = bytearray(8 << 20)
print(info().hblkhd >= (8 << 20))
"""
    def mapped(on: bool) -> bool:
        out = subprocess.run([sys.executable, "-c", probe.format(mapped=on)], capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        return out.stdout.strip() == "True"

    assert mapped(True)
    assert not mapped(False), "glibc's moving threshold did not move here: the test shows nothing"


def test_files_are_checked_at_a_lower_cpu_priority() -> None:
    async def child_niceness() -> int:
        pool = ParsePool()
        try:
            return await asyncio.wrap_future(pool._pool().submit(os.nice, 0))
        finally:
            pool.close()

    assert asyncio.run(child_niceness()) == min(19, os.nice(0) + CHILD_NICENESS)
