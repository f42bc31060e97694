"""The one small interface every model backend implements.

A backend serves one model name for one task. The provider agent only ever calls:

    await backend.start()                     # load weights; may take seconds
    backend.offer()                           # ModelOffer to announce
    await backend.embed(payload)              # -> EmbedResult          (task "embeddings")
    async for ev in backend.generate(payload):  # -> TextDelta..., GenDone (task "generate")
    await backend.close()

Cancelling the task that iterates `generate` (or calling `aclose()` on it) must stop
the model promptly; `iterate_in_thread` gives blocking backends that for free.
The result types (EmbedResult, TextDelta, GenDone, BackendError) are plain types in
`gpupool.model_results`, below every room, so verify can judge them too.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from gpupool.model_results import BackendError, EmbedResult, GenDone, TextDelta
from gpupool.protocol import EmbedPayload, GeneratePayload, ModelOffer, Task

# What `generate` yields: text as it is produced, then one GenDone.
GenEvent = TextDelta | GenDone


class Backend(ABC):
    """A model served under `name`. Subclasses set `task` and `kind`."""

    task: Task
    kind: str

    def __init__(self, name: str, spec: str = ""):
        self.name = name
        self.spec = spec

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load weights or connect to the engine."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    @abstractmethod
    def offer(self) -> ModelOffer: ...

    async def embed(self, payload: EmbedPayload, urgent: bool = True) -> EmbedResult:
        """`urgent=False`: nobody waits on this answer (a checker's routine audit), so a
        backend that batches may hold it up to its batch window to share a forward pass."""
        raise BackendError("unsupported_task", f"model {self.name!r} does not serve embeddings")

    def set_batch_window(self, window_s: float) -> None:  # noqa: B027 - optional hook
        """How long calls that are not urgent may wait for others; backends that do not batch ignore it."""

    def generate(self, payload: GeneratePayload) -> AsyncIterator[GenEvent]:
        raise BackendError("unsupported_task", f"model {self.name!r} does not generate text")


T = TypeVar("T")
MODEL_THREAD_PREFIX = "model-"


def _name_os_thread(name: str) -> None:
    """Name the OS thread (Linux; 15 bytes) as Python names it: `top -H` and the benchmarks,
    which count model compute apart from the rest of the process, can then find it."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # 15 = PR_SET_NAME
    except (OSError, AttributeError):
        pass  # not Linux: the name is only a convenience


class ModelThread:
    """One worker thread per loaded model: blocking model calls run here, in order.

    Torch modules are not safe to call from several threads at once, and on a small
    machine one thread per model is also the fastest arrangement.
    """

    def __init__(self, name: str):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{MODEL_THREAD_PREFIX}{name}",
                                        initializer=_name_os_thread, initargs=(f"{MODEL_THREAD_PREFIX}{name}",))

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def iterate(
        self, make_iter: Callable[[threading.Event], Iterator[T]]
    ) -> AsyncIterator[T]:
        """Run a blocking generator on the model thread and yield its items here.

        `make_iter(stop)` must check `stop.is_set()` between items; it is set when the
        consumer goes away (cancel, client disconnect), so the model stops early.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        stop = threading.Event()

        def work() -> None:
            try:
                for item in make_iter(stop):
                    loop.call_soon_threadsafe(queue.put_nowait, ("item", item))
                    if stop.is_set():
                        break
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        fut = loop.run_in_executor(self._pool, work)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "item":
                    yield value  # type: ignore[misc]
                elif kind == "end":
                    return
                else:
                    raise value  # type: ignore[misc]
        finally:
            stop.set()
            # Don't wait for the thread here: a cancelled consumer must return at once.
            fut.add_done_callback(lambda f: f.exception())

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
