"""`map(model, items)`: run one request per item over the pool, results in input order.

    from gpupool.sdk import map as pool_map
    vectors = pool_map("minilm", ["red running shoes", "a blue kettle"], base_url="http://127.0.0.1:8000",
                       api_key="gp-...")                     # one 384-float list per item
    answers = pool_map("tiny-llama", prompts, endpoint="/v1/chat/completions")  # one message text per item
    vectors = pool_map("tiny-clip", Path("photos"))     # a folder: one vector per image, in images_in order
    texts = pool_map("ocr", Path("scans"), endpoint="/v1/chat/completions")   # the text read off each image

An item that is a `Path` to an image (PNG, JPEG, WebP) is sent as the image itself (a
data URL: an embeddings input, or a chat message's `image_url` part); `items` may be a
folder, which stands for its images (`images_in`: sorted by name, not recursive).

Small jobs (up to `direct_below` items) are sent as ordinary requests, several at a
time; larger ones go through the Batch API (uploaded, split into batches of at most
50,000 lines, polled), so they survive the caller's restarts and the gateway's:
`job_id` names the job, and calling `map` again with the same `job_id` (and items)
picks up its batches instead of submitting them again (state in `~/.gpupool/jobs/`).
A progress bar (rich) shows items done. An item that failed raises `MapError` listing
them, unless `errors="return"` (its result is then the error object).

`amap` is the same for asyncio code. Imports neither torch nor any provider code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

MAX_LINES = 50_000  # per batch, as OpenAI
EMBED_PER_LINE = 16  # items per embeddings line: fewer lines, and the gateway packs lines into requests
# Images packed on one embeddings line stop at this many bytes of data URLs: a line is also a
# direct request, whose body the gateway limits (4 MiB by default).
LINE_IMAGE_CHARS = 2 * 1024 * 1024
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
POLL_S = 0.5


class MapError(Exception):
    """Some items failed: `failures` maps item index to the error object the gateway gave."""

    def __init__(self, failures: dict[int, Any]):
        first = next(iter(failures.items()))
        super().__init__(f"{len(failures)} item(s) failed; item {first[0]}: {first[1]}")
        self.failures = failures


def images_in(folder: str | Path) -> list[Path]:
    """The images (PNG, JPEG, WebP, by suffix) directly in `folder`, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_TYPES)


def image_url(path: str | Path) -> str:
    """A data URL of the image file at `path` (its type from the suffix)."""
    path = Path(path)
    media_type = IMAGE_TYPES.get(path.suffix.lower())
    if media_type is None:
        raise ValueError(f"{path}: not an image gpupool sends (one of {', '.join(IMAGE_TYPES)})")
    return f"data:{media_type};base64,{base64.b64encode(path.read_bytes()).decode()}"


def map(model: str, items: Sequence[Any] | Path, *, endpoint: str = "/v1/embeddings", base_url: str | None = None,
        api_key: str | None = None, job_id: str | None = None, direct_below: int = 64, concurrency: int = 8,
        progress: bool = True, errors: str = "raise", metadata: dict[str, str] | None = None,
        state_dir: Path | None = None) -> list[Any]:
    """Results for `items` in order: embedding vectors, or generated texts (see module docstring)."""
    return asyncio.run(amap(model, items, endpoint=endpoint, base_url=base_url, api_key=api_key, job_id=job_id,
                            direct_below=direct_below, concurrency=concurrency, progress=progress, errors=errors,
                            metadata=metadata, state_dir=state_dir))


async def amap(model: str, items: Sequence[Any] | Path, *, endpoint: str = "/v1/embeddings",
               base_url: str | None = None,
               api_key: str | None = None, job_id: str | None = None, direct_below: int = 64, concurrency: int = 8,
               progress: bool = True, errors: str = "raise", metadata: dict[str, str] | None = None,
               state_dir: Path | None = None) -> list[Any]:
    """`map` for asyncio code."""
    if endpoint not in _BODY:
        raise ValueError(f"endpoint must be one of {', '.join(_BODY)}")
    if errors not in ("raise", "return"):
        raise ValueError('errors must be "raise" or "return"')
    if isinstance(items, (str, Path)) and Path(items).is_dir():
        items = images_in(items)
    assert not isinstance(items, (str, Path))
    base = (base_url or os.environ.get("GPUPOOL_BASE_URL") or "http://127.0.0.1:8000").rstrip("/")
    base = base.removesuffix("/v1")
    key = api_key or os.environ.get("GPUPOOL_API_KEY") or os.environ.get("OPENAI_API_KEY")
    if not key:
        raise ValueError("pass api_key= or set GPUPOOL_API_KEY")
    results: list[Any] = [None] * len(items)
    failures: dict[int, Any] = {}
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"},
                                 timeout=httpx.Timeout(300.0, connect=10.0)) as client:
        with _Progress(len(items), progress) as bar:
            if job_id is None and len(items) < direct_below:
                await _direct(client, model, endpoint, items, results, failures, concurrency, bar)
            else:
                job = _Job.load_or_new(job_id, model, endpoint, items, state_dir)
                await _batched(client, job, items, results, failures, bar, metadata or {})
    if failures and errors == "raise":
        raise MapError(failures)
    for i, err in failures.items():
        results[i] = err
    return results


# ---------------------------------------------------------------- request bodies and answers

def _embed_body(model: str, texts: list[str]) -> dict[str, Any]:
    return {"model": model, "input": texts, "encoding_format": "base64"}


def _embed_input(item: Any) -> str:
    return image_url(item) if isinstance(item, Path) else str(item)


def _chat_body(model: str, item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return {"model": model, **item}
    if isinstance(item, Path):
        return {"model": model, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_url(item)}}]}]}
    return {"model": model, "messages": [{"role": "user", "content": str(item)}]}


def _completion_body(model: str, item: Any) -> dict[str, Any]:
    return {"model": model, **item} if isinstance(item, dict) else {"model": model, "prompt": str(item)}


_BODY: dict[str, Callable[[str, Any], dict[str, Any]]] = {
    "/v1/embeddings": lambda model, item: _embed_body(model, [_embed_input(item)]),
    "/v1/chat/completions": _chat_body,
    "/v1/completions": _completion_body,
}


def _answers(endpoint: str, body: dict[str, Any]) -> list[Any]:
    """The per-item results in a response body (several for a packed embeddings line)."""
    if endpoint == "/v1/embeddings":
        out = []
        for d in sorted(body["data"], key=lambda d: d["index"]):
            emb = d["embedding"]
            if isinstance(emb, str):
                raw = base64.b64decode(emb)
                emb = list(struct.unpack(f"<{len(raw) // 4}f", raw))
            out.append(emb)
        return out
    choice = body["choices"][0]
    return [choice["message"]["content"] if endpoint == "/v1/chat/completions" else choice["text"]]


# ---------------------------------------------------------------- small jobs: direct requests

def _requests(model: str, endpoint: str, items: Sequence[Any]) -> list[tuple[list[int], dict[str, Any]]]:
    """(item indexes, body) per request or batch line: embeddings pack up to EMBED_PER_LINE items
    (images up to LINE_IMAGE_CHARS of data URLs), the other endpoints take one item each."""
    if endpoint != "/v1/embeddings":
        return [([i], _BODY[endpoint](model, item)) for i, item in enumerate(items)]
    out: list[tuple[list[int], dict[str, Any]]] = []
    idxs: list[int] = []
    inputs: list[str] = []
    chars = 0
    for i, item in enumerate(items):
        value = _embed_input(item)
        size = len(value) if isinstance(item, Path) else 0
        if idxs and (len(idxs) == EMBED_PER_LINE or chars + size > LINE_IMAGE_CHARS):
            out.append((idxs, _embed_body(model, inputs)))
            idxs, inputs, chars = [], [], 0
        idxs.append(i)
        inputs.append(value)
        chars += size
    if idxs:
        out.append((idxs, _embed_body(model, inputs)))
    return out


async def _direct(client: httpx.AsyncClient, model: str, endpoint: str, items: Sequence[Any], results: list[Any],
                  failures: dict[int, Any], concurrency: int, bar: _Progress) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(idxs: list[int], body: dict[str, Any]) -> None:
        async with gate:
            r = await client.post(endpoint, json=body)
        if r.status_code != 200:
            for i in idxs:
                failures[i] = _error_of(r)
        else:
            for i, value in zip(idxs, _answers(endpoint, r.json())):
                results[i] = value
        bar.advance(len(idxs))

    await asyncio.gather(*(one(idxs, body) for idxs, body in _requests(model, endpoint, items)))


def _error_of(r: httpx.Response) -> Any:
    try:
        return r.json().get("error") or r.text
    except ValueError:
        return {"message": r.text[:300], "status": r.status_code}


# ---------------------------------------------------------------- large or resumable jobs: batches

class _Job:
    """A map job's batches, saved so that the same job id resumes instead of resubmitting."""

    def __init__(self, path: Path | None, state: dict[str, Any]):
        self.path = path
        self.state = state

    @classmethod
    def load_or_new(cls, job_id: str | None, model: str, endpoint: str, items: Sequence[Any],
                    state_dir: Path | None) -> _Job:
        digest = hashlib.sha256(json.dumps([model, endpoint, list(items)], default=str).encode()).hexdigest()[:16]
        path = None
        if job_id is not None:
            folder = state_dir or Path(os.environ.get("GPUPOOL_HOME", "~/.gpupool")).expanduser() / "jobs"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{job_id}.json"
            if path.exists():
                state = json.loads(path.read_text())
                if state.get("digest") != digest:
                    raise ValueError(f"job {job_id!r} was started with other items, model or endpoint; "
                                     "use a new job_id")
                return cls(path, state)
        return cls(path, {"digest": digest, "model": model, "endpoint": endpoint, "batches": []})

    def save(self) -> None:
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.state))
            os.replace(tmp, self.path)


def _lines(model: str, endpoint: str, items: Sequence[Any]) -> list[tuple[str, list[int], dict[str, Any]]]:
    """(custom_id, item indexes, body) per input line."""
    return [(f"i{idxs[0]}-{idxs[-1]}", idxs, body) for idxs, body in _requests(model, endpoint, items)]


async def _batched(client: httpx.AsyncClient, job: _Job, items: Sequence[Any], results: list[Any],
                   failures: dict[int, Any], bar: _Progress, metadata: dict[str, str]) -> None:
    endpoint = job.state["endpoint"]
    lines = _lines(job.state["model"], endpoint, items)
    index = {cid: idxs for cid, idxs, _ in lines}
    chunks = [lines[i:i + MAX_LINES] for i in range(0, len(lines), MAX_LINES)]
    batches: list[str] = job.state["batches"]
    for n, chunk in enumerate(chunks):
        if n < len(batches):
            continue  # submitted by an earlier run of this job
        content = b"".join(json.dumps({"custom_id": cid, "method": "POST", "url": endpoint, "body": body}).encode()
                           + b"\n" for cid, _, body in chunk)
        r = await client.post("/v1/files", files={"file": (f"map-{n}.jsonl", io.BytesIO(content))},
                              data={"purpose": "batch"})
        _check(r)
        r = await client.post("/v1/batches", json={"input_file_id": r.json()["id"], "endpoint": endpoint,
                                                   "completion_window": "24h", "metadata": metadata})
        _check(r)
        batches.append(r.json()["id"])
        job.save()
    while True:
        states = []
        for batch_id in batches:
            r = await client.get(f"/v1/batches/{batch_id}")
            _check(r)
            states.append(r.json())
        finished = sum(s["request_counts"]["completed"] + s["request_counts"]["failed"] for s in states)
        bar.set(min(len(items), round(finished / max(1, len(lines)) * len(items))))
        if all(s["status"] in ("completed", "cancelled", "expired", "failed") for s in states):
            break
        await asyncio.sleep(POLL_S)
    for s in states:
        if s["status"] == "failed":
            raise RuntimeError(f"batch {s['id']} failed: {s.get('errors')}")
        for file_id, ok in ((s.get("output_file_id"), True), (s.get("error_file_id"), False)):
            if not file_id:
                continue
            r = await client.get(f"/v1/files/{file_id}/content")
            _check(r)
            for raw in r.content.splitlines():
                line = json.loads(raw)
                idxs = index[line["custom_id"]]
                if ok:
                    for i, value in zip(idxs, _answers(endpoint, line["response"]["body"])):
                        results[i] = value
                else:
                    for i in idxs:
                        failures[i] = line["error"]
    missing = [i for i in range(len(items)) if results[i] is None and i not in failures]
    for i in missing:
        failures[i] = {"code": "missing", "message": "no result line came back for this item"}
    bar.set(len(items))


def _check(r: httpx.Response) -> None:
    if r.status_code >= 400:
        raise RuntimeError(f"{r.request.method} {r.request.url.path}: {r.status_code} {_error_of(r)}")


# ---------------------------------------------------------------- progress

class _Progress:
    """A rich progress bar on stderr (no-op when disabled or rich is missing)."""

    def __init__(self, total: int, enabled: bool):
        self.total = total
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None
        self.done = 0
        self.started = time.monotonic()

    def __enter__(self) -> _Progress:
        if self.enabled:
            try:
                from rich.console import Console
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
            except ImportError:
                return self
            self._bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), transient=False, console=Console(stderr=True))
            self._bar.start()
            self._task = self._bar.add_task("gpupool map", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, n: int) -> None:
        self.set(self.done + n)

    def set(self, done: int) -> None:
        self.done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=done)
