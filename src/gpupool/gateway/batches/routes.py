"""The OpenAI Files and Batch API on the gateway: thin routes over `BatchStore` and the `Runner`.

    POST /v1/files (multipart, purpose=batch)   GET /v1/files   GET|DELETE /v1/files/{id}
    GET /v1/files/{id}/content                  POST /v1/batches   GET /v1/batches (after, limit)
    GET /v1/batches/{id}   POST /v1/batches/{id}/cancel   POST /v1/batches/estimate (gpupool)

Files and batches belong to the API key's account: another account gets 404. Each
account may keep `batch_max_files` input files of `batch_max_stored_bytes` in all and run
`batch_max_active` batches at once; creating a batch needs a balance that covers the most
it can cost (the estimate's `high`, or `gpupool_max_cost_ucr` if lower). Every route
counts against the key's requests per minute; an account uploads one file at a time, at most
`batch_upload_bytes_per_s` after a burst of one largest file (`upload_limits.py`: a 429 decided
from the Content-Length, whose body is then read and dropped, never parsed); uploads are checked in a
child process, one at a time (`parse_pool.py`), and create and estimate parse in a worker
thread, two at a time, so a 100 MiB file does not stall the event loop. An
input file is validated line by line when uploaded (`validate.parse_file`) and again
when a batch is created from it; batches take gpupool options from `metadata`
(values are strings, as OpenAI's metadata): `gpupool_max_provider_share` ("0.3") and
`gpupool_max_cost_ucr` ("5000000"). Bodies match OpenAI's `OpenAIFile`, `Batch` and
`ListBatchesResponse` schemas, plus a `gpupool` object on batches (cost, privacy share).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, overload

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gpupool import errors
from gpupool.gateway.batches import estimate as est
from gpupool.batch import policy
from gpupool.gateway.batches.runner import BatchDeps, Runner
from gpupool.gateway.batches.store import BatchStore
from gpupool.gateway.batches.tables import BatchRow, FileRow, ItemRow
from gpupool.gateway.batches.parse_pool import ParsePool
from gpupool.gateway.batches.upload_limits import UploadLimits
from gpupool.gateway.batches.validate import ENDPOINTS, Item, parse_file
from gpupool.config import GatewaySettings
from gpupool.gateway.edge import image_inputs
from gpupool.gateway.edge.http import JSON, BodyLimit, query_limit
from gpupool.gateway.money.anonymous_limits import HoldBack
from gpupool.gateway.money.metering import price_of
from gpupool.gateway.store import ApiKey
from gpupool.ledger import postings
from gpupool.market import pricing

WINDOWS = ("24h",)  # as OpenAI; its length is settings.batch_window_s
MAX_METADATA_KEYS = 16
GPUPOOL_METADATA = ("gpupool_max_provider_share", "gpupool_max_cost_ucr", "gpupool_require_verified")
STAMPS = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
          "cancelled_at")


class BatchService:
    """Owns the batch tables and the runner for one gateway; `routes` are added to the app."""

    def __init__(self, settings: GatewaySettings, deps: BatchDeps,
                 client_key: Callable[[Request], Awaitable[ApiKey]]):
        self.settings = settings
        self.deps = deps
        self.client_key = client_key  # the caller's API key, or a 401
        self.hub, self.store = deps.hub, deps.store
        self._batch_store: BatchStore | None = None
        self.runner: Runner | None = None
        # Parsing a 100 MiB file takes seconds of CPU and a few times its size in memory: one at a
        # time, in a child process (a thread still held the GIL against the event loop).
        self.parser = ParsePool()
        self._parsing = asyncio.Semaphore(2)  # create and estimate parse in a worker thread, two at a time
        self._held = HoldBack(max_held=64)  # refusals held back from clients that ignore Retry-After
        self.upload_limits = UploadLimits(settings.batch_upload_bytes_per_s,
                                          max(settings.batch_max_file_bytes, 1 << 20))

    @property
    def bs(self) -> BatchStore:
        assert self._batch_store is not None, "BatchService.start() runs in the app's lifespan"
        return self._batch_store

    async def start(self) -> None:
        self._batch_store = await BatchStore.open(self.store.engine)
        self.runner = Runner(self.bs, self.deps, self.hub.identity.node_id, reserve_slots=self.settings.batch_reserve_slots,
                             confirm_wait_s=self.settings.statement_wait_s + 5.0)
        self.runner.start()

    async def close(self) -> None:
        if self.runner:
            await self.runner.close()
        self.parser.close()

    def upload_limit(self, limited: ASGIApp, app: ASGIApp) -> ASGIApp:
        """File uploads get their own, larger body limit; every other request keeps `limited`'s."""
        uploads = BodyLimit(app, self.settings.batch_max_file_bytes)

        async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope["path"] == "/v1/files" and scope["method"] == "POST":
                return await uploads(scope, receive, send)
            return await limited(scope, receive, send)

        return asgi

    def routes(self) -> list[Route]:
        return [
            Route("/v1/files", self.upload, methods=["POST"]),
            Route("/v1/files", self.list_files, methods=["GET"]),
            Route("/v1/files/{file_id}", self.get_file, methods=["GET"]),
            Route("/v1/files/{file_id}", self.delete_file, methods=["DELETE"]),
            Route("/v1/files/{file_id}/content", self.file_content, methods=["GET"]),
            Route("/v1/batches/estimate", self.estimate, methods=["POST"]),
            Route("/v1/batches", self.create_batch, methods=["POST"]),
            Route("/v1/batches", self.list_batches, methods=["GET"]),
            Route("/v1/batches/{batch_id}", self.get_batch, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", self.cancel_batch, methods=["POST"]),
        ]

    # ------------------------------------------------------------ handlers

    async def upload(self, request: Request) -> JSON:
        key = await self.client_key(request)
        try:
            size = int(request.headers.get("content-length", "0"))
        except ValueError:
            size = 0
        now = time.monotonic()
        wait = self.upload_limits.admit(key.account, max(0, size), now)
        if wait is not None:
            await self._held.hold(self.upload_limits.refused(key.account, max(1.0, wait), now))
            # The body is read and dropped (never parsed or kept) so that the client, which sends it
            # all before it reads an answer, gets this 429 rather than a reset connection; the hold
            # above keeps a client that ignores Retry-After to about one such read a second.
            async for _ in request.stream():
                pass
            raise errors.RateLimited(
                f"this account is uploading batch files faster than its limit "
                f"({self.settings.batch_upload_bytes_per_s / 1048576:g} MiB/s, one at a time); retry in {wait:.1f}s",
                retry_after_s=max(1.0, wait))
        try:
            return await self._upload(request, key)
        finally:
            self.upload_limits.done(key.account)

    async def _upload(self, request: Request, key: ApiKey) -> JSON:
        try:
            form = await request.form(max_files=1, max_fields=4)
        except Exception as exc:  # noqa: BLE001 - python-multipart raises several types on bad input
            raise errors.InvalidRequest(f"expected a multipart/form-data upload with fields file and purpose "
                                        f"({exc})", param="file") from None
        purpose = form.get("purpose")
        if purpose != "batch":
            raise errors.InvalidRequest("purpose must be \"batch\" (the only purpose this gateway stores)",
                                        param="purpose")
        upload_file = form.get("file")
        if upload_file is None or isinstance(upload_file, str):
            raise errors.InvalidRequest("missing the file field (the JSONL input)", param="file")
        n, stored = await self.bs.usage(key.account)
        if n >= self.settings.batch_max_files:
            raise errors.InvalidRequest(f"this account stores {n} batch files, its limit; delete some "
                                        "(DELETE /v1/files/{id}) before uploading more", param="file",
                                        code="file_limit_reached")
        data = await upload_file.read()
        await form.close()
        if stored + len(data) > self.settings.batch_max_stored_bytes:
            raise errors.InvalidRequest(f"this account stores {stored:,} bytes of batch files; with this one "
                                        f"({len(data):,}) it would pass its limit of "
                                        f"{self.settings.batch_max_stored_bytes:,}: delete some first", param="file",
                                        code="file_limit_reached")
        await self._parse(data, items=False)  # refuses the whole file, naming the line
        row = FileRow(id="file-" + uuid.uuid4().hex[:24], account=key.account,
                      filename=(upload_file.filename or "input.jsonl")[:256], purpose="batch", bytes=len(data),
                      created_at=int(time.time()), content=data, batch_id=None, kind="input")
        await self.bs.add_file(row)
        return JSON(file_body(row))

    async def list_files(self, request: Request) -> JSON:
        key = await self.client_key(request)
        limit = query_limit(request, 100, most=10_000)
        rows = await self.bs.files(key.account, request.query_params.get("purpose"),
                                request.query_params.get("after"), limit + 1)
        return JSON(page([file_body(r) for r in rows[:limit]], len(rows) > limit))

    async def get_file(self, request: Request) -> JSON:
        return JSON(file_body(await self._file(request, await self.client_key(request))))

    async def delete_file(self, request: Request) -> JSON:
        key = await self.client_key(request)
        row = await self._file(request, key)
        await self.bs.delete_file(row.id, key.account)
        return JSON({"id": row.id, "object": "file", "deleted": True})

    async def file_content(self, request: Request) -> Response:
        row = await self._file(request, await self.client_key(request), content=True)
        if row.kind == "input":
            return Response(row.content or b"", media_type="application/octet-stream")
        assert row.batch_id is not None
        return StreamingResponse(self.bs.lines(row.batch_id, ok=row.kind == "output"),
                                 media_type="application/octet-stream")

    async def create_batch(self, request: Request) -> JSON:
        key = await self.client_key(request)
        body = await json_body(request)
        endpoint, file_id, metadata = self._batch_request(body)
        max_share, max_cost = gpupool_options(metadata)
        running = await self.bs.active_count(key.account)
        if running >= self.settings.batch_max_active:
            raise errors.RateLimited(f"this account has {running} batches running, its limit; wait for one to end "
                                     "or cancel one", retry_after_s=60.0)
        source = await self._input_file(key, file_id)
        items, _ = await self._items(key, source, endpoint)
        await self._afford(key, endpoint, items, max_cost)
        now = time.time()
        if policy.require_verified(metadata) and not self.hub.model_verified(items[0].model):
            raise errors.NoProvider(f"{items[0].model!r} is not verified: no admitted checker audits it now, "
                                    "and the batch requires verified models (metadata.gpupool_require_verified)",
                                    param="metadata.gpupool_require_verified", code="model_not_verified")
        order = list(range(len(items)))
        random.shuffle(order)  # privacy: no provider sees a contiguous run of the file
        batch = BatchRow(id="batch_" + uuid.uuid4().hex[:24], account=key.account, key_id=key.id,
                         endpoint=endpoint, model=items[0].model, input_file_id=source.id,
                         completion_window=body["completion_window"], status="validating", created_at=int(now),
                         expires_at=int(now + self.settings.batch_window_s), stamps="{}",
                         meta=json.dumps(metadata), total=len(items), completed=0, failed=0, cost_ucr=0,
                         input_tokens=0, output_tokens=0, max_share=max_share, max_cost=max_cost,
                         max_weight=max(i.units for i in items), errors="")
        rows = [ItemRow(batch_id=batch.id, idx=i, seq=order[i], custom_id=it.custom_id,
                        body=it.body.decode(), weight=it.weight, state="pending", run_id=None, owner="",
                        lease_until=0.0, attempts=0, reserved=0, ok=0, cost=0, prompt_tokens=0,
                        completion_tokens=0, provider="", line=None) for i, it in enumerate(items)]
        await self.bs.create_batch(batch, rows)
        if self.runner:
            self.runner.wake()
        return JSON(await self._batch_body(batch))

    async def estimate(self, request: Request) -> JSON:
        key = await self.client_key(request)
        body = await json_body(request)
        source = await self._input_file(key, body.get("input_file_id"))
        endpoint = body.get("endpoint") or _first_url(source)
        items, _ = await self._items(key, source, endpoint)
        model = items[0].model
        prices = [price_of(sess, model) for sess in self.deps.dispatcher.router.serving_all(model)]
        return JSON(est.estimate(model, endpoint, items, prices, self.settings.fee_bps))

    async def _afford(self, key: ApiKey, endpoint: str, items: list[Any], max_cost: int | None) -> None:
        """402 unless the account could pay the most this batch can cost (capped by its max cost),
        before its items are copied: an empty account must not fill the tables with 50k-item batches."""
        model = items[0].model
        prices = [price_of(sess, model) for sess in self.deps.dispatcher.router.serving(model)]
        if not prices and model in self.hub.known_models:  # nobody serves it now: its last known price
            offer = self.hub.known_models[model]
            prices = [pricing.Price(offer.price_in, offer.price_out)]
        need = est.high_bound(endpoint, items, prices)
        if max_cost is not None:
            need = min(need, max_cost)
        tab = self.deps.metering.billing.tabs.get(key.account)
        spendable = await self.deps.ledger.balance(postings.client(key.account)) + (tab.available if tab else 0)
        if need > spendable:
            raise errors.PaymentRequired(f"this batch may cost up to {need:,} µcr and the account can spend "
                                         f"{spendable:,}: deposit more, or cap its cost with metadata "
                                         "gpupool_max_cost_ucr", param="input_file_id")

    async def get_batch(self, request: Request) -> JSON:
        return JSON(await self._batch_body(await self._batch(request, await self.client_key(request))))

    async def cancel_batch(self, request: Request) -> JSON:
        key = await self.client_key(request)
        batch = await self._batch(request, key)
        if batch.status in ("completed", "failed", "expired"):
            raise errors.InvalidRequest(f"batch {batch.id} is {batch.status}; it cannot be cancelled",
                                        param="batch_id")
        await self.bs.set_status(batch.id, ("validating", "in_progress", "finalizing"), "cancelling", time.time())
        if self.runner:
            self.runner.wake()
        return JSON(await self._batch_body(await self._batch(request, key)))

    async def list_batches(self, request: Request) -> JSON:
        key = await self.client_key(request)
        limit = query_limit(request, 20, most=100)
        rows = await self.bs.batches(key.account, request.query_params.get("after"), limit + 1)
        return JSON(page([await self._batch_body(r) for r in rows[:limit]], len(rows) > limit))

    # ------------------------------------------------------------ helpers

    def known_models(self) -> dict[str, str]:
        return {name: offer.task for name, offer in self.hub.known_models.items()}

    @overload
    async def _parse(self, data: bytes) -> list[Item]: ...
    @overload
    async def _parse(self, data: bytes, items: Literal[False]) -> int: ...

    async def _parse(self, data: bytes, items: bool = True) -> list[Item] | int:
        """The file's items, checked in a worker thread; or, `items=False` (uploads), their count,
        checked in the parser's child process (images are decoded from base64 and checked)."""
        image_models = frozenset(name for name, offer in self.hub.known_models.items() if "image" in offer.accepts)
        limits = image_inputs.limits_of(self.settings.image_max_bytes, self.settings.image_max_pixels)
        if items:
            # Create and estimate need the items back: unpickling 50,000 of them from a child held
            # the GIL in one piece (a 765 ms stall, against ~130 ms for a thread that yields it).
            async with self._parsing:
                return await asyncio.to_thread(parse_file, data, self.known_models(), image_models=image_models,
                                               limits=limits)
        return await self.parser.check(data, self.known_models(), image_models, limits)

    async def _file(self, request: Request, key: ApiKey, content: bool = False) -> FileRow:
        file_id = request.path_params["file_id"]
        row = await self.bs.file(file_id, key.account, content)
        if row is None:
            raise errors.NotFound(f"No such File object: {file_id[:80]}", param="file_id")
        return row

    async def _batch(self, request: Request, key: ApiKey) -> BatchRow:
        batch_id = request.path_params["batch_id"]
        row = await self.bs.batch(batch_id, key.account)
        if row is None:
            raise errors.NotFound(f"No such Batch object: {batch_id[:80]}", param="batch_id")
        return row

    async def _input_file(self, key: ApiKey, file_id: Any) -> FileRow:
        if not isinstance(file_id, str) or not file_id:
            raise errors.InvalidRequest("input_file_id is required", param="input_file_id")
        row = await self.bs.file(file_id, key.account, content=True)
        if row is None:
            raise errors.NotFound(f"No such File object: {file_id[:80]}", param="input_file_id")
        if row.kind != "input" or row.purpose != "batch":
            raise errors.InvalidRequest(f"file {file_id} was not uploaded with purpose \"batch\"",
                                        param="input_file_id")
        return row

    def _batch_request(self, body: dict[str, Any]) -> tuple[str, Any, dict[str, str]]:
        extra = set(body) - {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
        if extra:
            name = sorted(extra)[0]
            raise errors.InvalidRequest(f"Unrecognized request argument supplied: {name}", param=name)
        endpoint = body.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise errors.InvalidRequest(f"endpoint must be one of {', '.join(ENDPOINTS)}", param="endpoint")
        if body.get("completion_window") not in WINDOWS:
            raise errors.InvalidRequest("completion_window must be \"24h\"", param="completion_window")
        if body.get("output_expires_after") is not None:
            raise errors.InvalidRequest("output_expires_after is not supported: outputs are kept until deleted",
                                        param="output_expires_after")
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_KEYS or not all(
                isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                for k, v in metadata.items()):
            raise errors.InvalidRequest("metadata must map at most 16 keys (≤64 characters) to strings "
                                        "(≤512 characters)", param="metadata")
        return endpoint, body.get("input_file_id"), metadata

    async def _items(self, key: ApiKey, source: Any, endpoint: str) -> tuple[list[Any], bytes]:
        row = source if isinstance(source, FileRow) else await self._input_file(key, source)
        data = row.content or b""
        items = await self._parse(data)
        for it in items:
            if it.url != endpoint:
                raise errors.InvalidRequest(f"line {it.line}: url {it.url} differs from the batch's endpoint "
                                            f"{endpoint}", param="endpoint", code="invalid_batch_line")
            if it.model != items[0].model:
                raise errors.InvalidRequest(f"line {it.line}: model {it.model!r} differs from line 1's "
                                            f"{items[0].model!r}; a batch runs one model", param="body.model",
                                            code="invalid_batch_line")
        return items, data

    async def _batch_body(self, b: BatchRow) -> dict[str, Any]:
        exposure = await self.bs.exposure(b.id)
        stamps = json.loads(b.stamps or "{}")
        out: dict[str, Any] = {
            "id": b.id, "object": "batch", "endpoint": b.endpoint, "model": b.model,
            "input_file_id": b.input_file_id, "completion_window": b.completion_window, "status": b.status,
            "created_at": b.created_at, "expires_at": b.expires_at,
            "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
            "usage": {"input_tokens": b.input_tokens, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": b.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": b.input_tokens + b.output_tokens},
            "metadata": json.loads(b.meta or "{}") or None,
            "gpupool": {
                "cost_ucr": b.cost_ucr,
                "max_cost_ucr": b.max_cost,
                "max_provider_share": b.max_share,
                # Items sent to the provider that saw most of them, over all items (retries and
                # straggler copies count: the provider saw them).
                "provider_share_reached": round(max(exposure.values(), default=0) / b.total, 4) if b.total else 0.0,
                "providers": len(exposure),
            },
        }
        for k in STAMPS:
            if k in stamps:
                out[k] = stamps[k]
        if b.output_file_id:
            out["output_file_id"] = b.output_file_id
        if b.error_file_id:
            out["error_file_id"] = b.error_file_id
        if b.errors:
            out["errors"] = {"object": "list", "data": json.loads(b.errors)}
        return out


def gpupool_options(metadata: dict[str, str]) -> tuple[float | None, int | None]:
    """The batch's privacy share and cost cap from its metadata (400 naming a bad value)."""
    for k in metadata:
        if k.startswith("gpupool_") and k not in GPUPOOL_METADATA:
            raise errors.InvalidRequest(f"unknown gpupool option {k!r} (known: {', '.join(GPUPOOL_METADATA)})",
                                        param=f"metadata.{k}")
    share = cost = None
    if "gpupool_max_provider_share" in metadata:
        try:
            share = float(metadata["gpupool_max_provider_share"])
        except ValueError:
            share = -1.0
        if not 0 < share <= 1:
            raise errors.InvalidRequest("gpupool_max_provider_share must be a number in (0, 1], e.g. \"0.3\"",
                                        param="metadata.gpupool_max_provider_share")
    if "gpupool_max_cost_ucr" in metadata:
        raw = metadata["gpupool_max_cost_ucr"]
        if not raw.isdigit():
            raise errors.InvalidRequest("gpupool_max_cost_ucr must be a whole number of µcr, e.g. \"5000000\"",
                                        param="metadata.gpupool_max_cost_ucr")
        cost = int(raw)
    if metadata.get("gpupool_require_verified", "false") not in ("true", "false"):
        raise errors.InvalidRequest("gpupool_require_verified must be \"true\" or \"false\"",
                                    param="metadata.gpupool_require_verified")
    return share, cost


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        raise errors.InvalidRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise errors.InvalidRequest("request body must be a JSON object")
    return body


def file_body(row: FileRow) -> dict[str, Any]:
    return {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": row.created_at,
            "filename": row.filename, "purpose": row.purpose, "status": "processed"}


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else "",
            "last_id": data[-1]["id"] if data else "", "has_more": has_more}


def _first_url(source: FileRow) -> str:
    first = (source.content or b"").split(b"\n", 1)[0]
    try:
        return str(json.loads(first).get("url", ""))
    except (ValueError, AttributeError):
        return ""


__all__ = ["BatchService", "AsyncIterator"]
