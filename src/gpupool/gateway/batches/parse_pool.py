"""Batch input files are parsed in a child process, never on the gateway's own interpreter.

    pool = ParsePool()
    count = await pool.check(data, known, image_models, limits)   # upload: validate only
    items = await pool.parse(data, known, image_models, limits)   # the items (unpickled in one GIL hold:
                                                                  # routes.py keeps create/estimate in a thread)
    pool.close()

Why a process and not a thread: parsing holds the GIL (msgspec, pydantic, the per-line
checks), so a worker thread still took the event loop's turn every few milliseconds;
a flood of 8 MiB uploads from one key made every other client's p99 x14-x63
(bench/README.md, "hostile"). In a child the event loop only pays for sending the
bytes over a pipe. One child, files one at a time, at a lower CPU priority: the bound on
CPU and memory that files can take, whoever sends them. The child is started (spawn, not fork: the
gateway has threads) at the first file, and again if it dies.

Errors come back as (message, param, code) and are raised here as the same
`InvalidRequest` naming the line: exceptions with keyword fields do not pickle whole.

The file goes to the child as a temporary file, not pickled into the executor's pipe: the
queue's feeder thread keeps the last object it pickled until the next one comes, so each
file's bytes stayed in the gateway's heap after its upload (+9 MiB after a flood of 8 MiB
files, bench/hostile `file_flood`), beside a second copy while it was being sent.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from gpupool import errors
from gpupool.gateway.batches.validate import Item, parse_file
from gpupool.images import ImageLimits

Failure = tuple[str, str | None, str | None]
CHILD_NICENESS = 10  # added to the gateway's: the child's CPU goes to serving first


def _run(path: str, known: dict[str, str], image_models: frozenset[str], limits: ImageLimits,
         items: bool) -> tuple[list[Item] | int | None, Failure | None]:
    """In the child: the items (or their count) of the file at `path`, or the file's first problem."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        parsed = parse_file(data, known, image_models=image_models, limits=limits)
    except errors.GpupoolError as exc:
        return None, (exc.message, exc.param, exc.code)
    return (parsed if items else len(parsed)), None


class ParsePool:
    def __init__(self, workers: int = 1):
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._turns = asyncio.Semaphore(workers)  # files wait here, not in the executor's queue

    async def check(self, data: bytes, known: dict[str, str], image_models: frozenset[str],
                    limits: ImageLimits) -> int:
        """How many requests the file holds; InvalidRequest naming the first bad line."""
        got = await self._call(data, known, image_models, limits, False)
        assert isinstance(got, int)
        return got

    async def parse(self, data: bytes, known: dict[str, str], image_models: frozenset[str],
                    limits: ImageLimits) -> list[Item]:
        got = await self._call(data, known, image_models, limits, True)
        assert isinstance(got, list)
        return got

    async def _call(self, data: bytes, *args: Any) -> list[Item] | int:
        async with self._turns:
            path = await asyncio.to_thread(_spill, data)
            try:
                result, failure = await asyncio.wrap_future(self._pool().submit(_run, path, *args))
            except BrokenProcessPool:
                self.close()  # the child died (killed, out of memory): a fresh one for the next file
                raise errors.GpupoolError("the batch file parser stopped; retry the request") from None
            finally:
                os.unlink(path)
        if failure is not None:
            message, param, code = failure
            raise errors.InvalidRequest(message, param=param, code=code)
        assert result is not None
        return result

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_background)
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _background() -> None:
    """In the child, at its start: checking files is background work. On a machine short of CPU
    it waits for the gateway's serving, not the other way round."""
    try:
        os.nice(CHILD_NICENESS)
    except OSError:
        pass  # not allowed here: run at the gateway's priority


def _spill(data: bytes) -> str:
    """`data` in a new temporary file (one per file being checked: at most `workers` at a time)."""
    fd, path = tempfile.mkstemp(prefix="gpupool-batch-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        os.unlink(path)
        raise
    return path
