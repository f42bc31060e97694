"""Fallback lanes at the gateway: serve a request on an OpenAI-compatible upstream when the pool cannot.

The routes try the pool first, as always. For a request some lane could take
(`Fallbacks.plan`: a lane maps the model, the client allows it, its estimated cost
is within the client's cap), the pool gets a little less time: a non-streaming
request keeps `fallback_reserve_s` of its deadline back, and a stream must show its
first token within `fallback_first_token_budget_s`. When the pool fails (no
provider, all excluded by price or region, at capacity, failed, out of its share of
time, stalled), `Fallbacks.take_over` asks the pure policy (`routing.fallback`)
which lanes may serve, and calls them in order until one answers:

    plan = fallbacks.plan(request, body, "chat", size, route, pool_live=bool(serving))
    try:
        out = await dispatcher.complete(rid, model, payload, fallbacks.pool_deadline(plan, deadline), route)
    except errors.GpupoolError as exc:
        return await fallbacks.take_over(exc, plan, request, key, rid, deadline, started)  # or re-raises exc

A lane's answer is billed through the same tabs as the pool's (`Hold.charge_fallback`):
its price for the usage the upstream reports, plus the gateway fee; the response
says `x-gpupool-provider: fallback:NAME`. Lanes are configured as TOML tables or a
one-line flag form (`gateway/fallback/lane_config.py`, docs/fallback.md); their keys come
from the environment and are never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pydantic
from starlette.requests import Request
from starlette.responses import Response

from gpupool import errors
from gpupool.config import GatewaySettings
from gpupool.gateway.dispatch.stalls import PoolStalled
from gpupool.gateway.edge import openai_responses
from gpupool.gateway.money.billing import Billing, Hold
from gpupool.gateway.payload_size import PayloadSize
from gpupool.gateway.fallback.lane_config import parse_lanes
from gpupool.gateway.edge.http import JSON, EventStream, sse, until_disconnect
from gpupool.gateway.probes import note_first_token, note_request, note_routing
from gpupool.routing.options import RouteOptions
from gpupool.gateway.store import ApiKey, Store
from gpupool.market.pricing import cost
from gpupool.routing.fallback import (
    REASONS,
    Lane,
    Need,
    choose_lanes,
    lane_cost,
    pool_deadline,
    serves,
)

log = logging.getLogger("gpupool.gateway.fallback")
T = TypeVar("T")

PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}


# ---------------------------------------------------------------- the pool's failure, the request's needs


def pool_failure_reason(exc: BaseException, pool_live: bool) -> str | None:
    """Why the pool could not serve, from the error it raised (one of routing.fallback.REASONS), or
    None when the error is the request's own (bad input, no funds) and no lane would do better."""
    if isinstance(exc, PoolStalled):
        return "stalled"
    if isinstance(exc, errors.ModelNotFound):
        return "no_provider"
    if isinstance(exc, errors.NoProvider):
        if exc.code == "model_not_verified":
            return None  # the client asked for audited answers: no lane's answers are audited
        if exc.code == "no_provider_within_limits":
            return "price" if exc.param == "max_price" else "region"
        return "failed" if pool_live else "no_provider"
    if isinstance(exc, errors.NoCapacity):
        return "capacity"
    if isinstance(exc, errors.ProviderFailed):
        return "failed"
    if isinstance(exc, errors.Timeout):
        return "deadline"
    return None


def allow_fallback(request: Request, body: pydantic.BaseModel) -> bool:
    """`"gpupool": {"allow_fallback": false}` in the body, or header `X-Gpupool-Allow-Fallback: false`."""
    header = request.headers.get("x-gpupool-allow-fallback")
    if header is not None:
        if header.lower() not in ("true", "false", "1", "0"):
            raise errors.InvalidRequest("X-Gpupool-Allow-Fallback must be true or false",
                                        param="X-Gpupool-Allow-Fallback")
        return header.lower() in ("true", "1")
    extra = getattr(body, "gpupool", None) or (body.model_extra or {}).get("gpupool") or {}
    value = extra.get("allow_fallback", True) if isinstance(extra, dict) else True
    if not isinstance(value, bool):
        raise errors.InvalidRequest("allow_fallback must be true or false", param="gpupool.allow_fallback")
    return value


@dataclass
class Plan:
    """A request some lane could take if the pool fails it."""

    kind: str  # chat, completions, embeddings
    model: str
    need: Need
    input_bound: int  # tokens: more than any tokenizer counts (sizes the hold)
    stream: bool
    include_usage: bool
    pool_live: bool  # providers served the model when the request came in


# ---------------------------------------------------------------- the lanes at work


class LaneFailed(Exception):
    """This lane could not serve (unreachable, 5xx, misconfigured): try the next one."""


class Fallbacks:
    def __init__(self, settings: GatewaySettings, billing: Billing, store: Store,
                 environ: Mapping[str, str] | None = None,
                 on_fallback: Callable[[str], None] = lambda reason: None):
        self.lanes, self._keys = parse_lanes(settings.fallback, environ)
        if self.lanes and not hasattr(billing.ledger, "apply"):
            raise ValueError("fallback lanes need the SQL ledger (--ledger sqlite/postgresql): the EVM contract pays "
                             "only receipts signed by a provider's registered settlement key, and an upstream API "
                             "signs none, so a lane's answers could never be charged")
        self.settings = settings
        self.started = int(time.time())  # the lanes' models are listed as created then
        self.billing = billing
        self.store = store
        self.on_fallback = on_fallback  # e.g. the metrics counter, by reason
        self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        # By pool-failure reason: served by a lane, declined (no lane may), failed (every lane failed);
        # by lane: answers completed and failures. Keys are REASONS and configured names: bounded.
        self.stats: dict[str, dict[str, int]] = {"served": {}, "declined": {}, "failed": {}, "lane_ok": {},
                                                 "lane_failed": {}}

    async def close(self) -> None:
        await self.client.aclose()

    def plan(self, request: Request, body: pydantic.BaseModel, kind: str, size: PayloadSize,
             route: RouteOptions, pool_live: bool) -> Plan | None:
        """A Plan if some lane could take this request; None leaves the pool to behave as without lanes.
        `pool_live`: whether providers serve the model now (the request's serving set is not empty)."""
        model = getattr(body, "model", "")
        allow = allow_fallback(request, body)  # checked even without lanes: a bad value is refused, not ignored
        if not self.lanes or not serves(self.lanes, model):
            return None
        # ~4 characters per token: the estimate routing compares with max_price too.
        need = Need(model, size.tokens_estimate, size.max_output, route.max_price, route.region,
                    route.region_policy, allow)
        if not choose_lanes(self.lanes, "failed", need, self.settings.fee_bps).lanes:
            return None  # forbidden, too dear or out of region whatever happens in the pool
        opts = getattr(body, "stream_options", None)
        return Plan(kind, model, need, size.input_token_bound, bool(getattr(body, "stream", False)),
                    bool(opts and opts.include_usage), pool_live)

    def pool_deadline(self, plan: Plan | None, deadline: float) -> float:
        if plan is None:
            return deadline
        return pool_deadline(time.monotonic(), deadline, self.settings.fallback_reserve_s)

    def lane_after_s(self, plan: Plan | None) -> float | None:
        """With a plan, how long a non-streaming request waits on a stalled provider that nobody else
        can hedge before the lane becomes the hedge (`Dispatcher.complete`): the streams' budget."""
        return None if plan is None else self.settings.fallback_first_token_budget_s

    async def first_event(self, plan: Plan | None, deadline: float, opening: Awaitable[T]) -> T:
        """Await a stream's opening (its first token); with a plan, only for the first-token budget."""
        if plan is None:
            return await opening
        budget = min(self.settings.fallback_first_token_budget_s, max(0.0, deadline - time.monotonic()) / 2)
        try:
            return await asyncio.wait_for(opening, budget)
        except TimeoutError:
            raise PoolStalled(f"no first token from the pool within {budget:.1f}s") from None

    async def take_over(self, exc: errors.GpupoolError, plan: Plan | None, request: Request, key: ApiKey,
                        rid: str, deadline: float, started: float) -> Response:
        """Serve on a lane after the pool failed with `exc`, or re-raise `exc` when none may."""
        if plan is None:
            raise exc
        reason = pool_failure_reason(exc, plan.pool_live)
        decision = choose_lanes(self.lanes, reason, plan.need, self.settings.fee_bps)
        if not decision.lanes or deadline - time.monotonic() < 0.05:
            if reason is not None:
                _count(self.stats["declined"], reason)
            raise exc
        bound = max(decision.cost_of(lane, Need(plan.model, plan.input_bound, plan.need.max_output_tokens),
                                     self.settings.fee_bps) for lane in decision.lanes)
        if plan.need.max_price is not None:
            bound = min(bound, plan.need.max_price)
        hold = await self.billing.reserve(key.account, bound)
        body = json.loads(await request.body())
        body.pop("gpupool", None)
        failures: list[str] = []
        for lane in decision.lanes:
            try:
                if plan.stream:
                    response = await self._stream(lane, plan, body, hold, request, key, rid, deadline, started)
                else:
                    response = await until_disconnect(request.receive, self._once(lane, plan, body, hold, key,
                                                                                  rid, deadline, started))
                _count(self.stats["served"], decision.reason)  # by why the pool could not (gpupool_fallbacks)
                note_routing("fallback")
                self.on_fallback(decision.reason)
                return response
            except LaneFailed as failure:
                _count(self.stats["lane_failed"], lane.name)
                failures.append(f"{lane.name}: {failure}")
                log.warning("fallback lane %s failed for %s: %s", lane.name, rid, failure)
            except BaseException:
                hold.release()
                raise
        hold.release()
        _count(self.stats["failed"], decision.reason)
        raise errors.ProviderFailed(f"the pool could not serve {plan.model!r} ({exc.message}) and the fallback "
                                    f"failed too ({'; '.join(failures)})")

    # ------------------------------------------------------------ one lane

    def _upstream_body(self, lane: Lane, plan: Plan, body: dict[str, Any], stream: bool) -> dict[str, Any]:
        out = {**body, "model": lane.models[plan.model].upstream}
        if plan.kind != "embeddings":
            if "max_tokens" not in out and "max_completion_tokens" not in out:
                out["max_tokens"] = plan.need.max_output_tokens  # the hold was sized for it
            if stream:
                out["stream"] = True
                out["stream_options"] = {"include_usage": True}  # usage is what we bill
        return out

    def _headers(self, lane: Lane) -> dict[str, str]:
        key = self._keys.get(lane.name)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _bill(self, lane: Lane, plan: Plan, hold: Hold, rid: str, usage: dict[str, Any] | None,
              out_chars: int) -> tuple[int, int, int]:
        """Charge from the upstream's usage (estimated from characters if it reported none)."""
        usage = usage or {}
        pt = _int(usage.get("prompt_tokens"), plan.need.input_tokens)
        ct = _int(usage.get("completion_tokens"), 0 if plan.kind == "embeddings" else out_chars // 4 + 1)
        price = lane.models[plan.model].price
        base = cost(price, pt, ct)
        total = lane_cost(price, pt, ct, self.settings.fee_bps)
        charged = hold.charge_fallback(rid, lane.name, total, total - base)
        return pt, ct, charged

    def _record(self, rid: str, key: ApiKey, plan: Plan, lane: Lane, status: str, pt: int, ct: int,
                started: float, cost_: int) -> None:
        # Metrics label a lane's answer "fallback" (the middleware also sees the header).
        note_request(plan.model, "fallback" if status == "ok" else status, pt, ct, cost_)
        self.store.record_request(request_id=rid, at=time.time(), key_id=key.id, account=key.account,
                                  model=plan.model, provider=f"fallback:{lane.name}", status=status, attempts=1,
                                  prompt_tokens=pt, completion_tokens=ct,
                                  latency_ms=(time.monotonic() - started) * 1000, cost=cost_)

    async def _post(self, lane: Lane, plan: Plan, body: dict[str, Any], deadline: float,
                    stream: bool) -> httpx.Response:
        timeout = max(0.05, min(lane.timeout_s, deadline - time.monotonic()))
        req = self.client.build_request("POST", lane.base_url + PATHS[plan.kind], json=body,
                                        headers=self._headers(lane), timeout=timeout)
        try:
            resp = await self.client.send(req, stream=stream)
        except httpx.HTTPError as exc:
            raise LaneFailed(f"unreachable ({type(exc).__name__})") from None
        if resp.status_code >= 400:
            text = (await resp.aread()).decode(errors="replace")
            await resp.aclose()
            _raise_for(resp.status_code, text)
        return resp

    async def _once(self, lane: Lane, plan: Plan, body: dict[str, Any], hold: Hold, key: ApiKey, rid: str,
                    deadline: float, started: float) -> Response:
        resp = await self._post(lane, plan, self._upstream_body(lane, plan, body, False), deadline, False)
        try:
            data = resp.json()
            if not isinstance(data, dict) or not isinstance(data.get("data" if plan.kind == "embeddings"
                                                                     else "choices"), list):
                raise ValueError("not an OpenAI response")
        except ValueError:
            raise LaneFailed("answered something that is not an OpenAI response") from None
        text = "" if plan.kind == "embeddings" else "".join(
            str((c.get("message") or {}).get("content") or c.get("text") or "") for c in data["choices"])
        pt, ct, charged = self._bill(lane, plan, hold, rid, data.get("usage"), len(text))
        _count(self.stats["lane_ok"], lane.name)
        data["model"] = plan.model
        if plan.kind == "embeddings":
            data["usage"] = {"prompt_tokens": pt, "total_tokens": pt, "cost_ucr": charged}
        else:
            data["id"] = rid
            data["usage"] = openai_responses.usage(pt, ct, charged)
        self._record(rid, key, plan, lane, "ok", pt, ct, started, charged)
        return JSON(data, headers={"x-gpupool-provider": f"fallback:{lane.name}", "x-request-id": rid,
                                   "x-gpupool-cost": str(charged)})

    async def _stream(self, lane: Lane, plan: Plan, body: dict[str, Any], hold: Hold, request: Request,
                      key: ApiKey, rid: str, deadline: float, started: float) -> Response:
        resp = await until_disconnect(request.receive,
                                      self._post(lane, plan, self._upstream_body(lane, plan, body, True), deadline,
                                                 True))
        lines = _sse_data(resp)
        try:
            # The first event before the headers: a lane that fails before it lets the next one try.
            first = await until_disconnect(request.receive, anext(lines))
        except StopAsyncIteration:
            await resp.aclose()
            raise LaneFailed("stream ended before any event") from None
        except (httpx.HTTPError, ValueError) as exc:
            await resp.aclose()
            raise LaneFailed(f"stream broke before its first event ({type(exc).__name__})") from None
        except BaseException:
            await resp.aclose()
            raise
        note_first_token()
        provider = f"fallback:{lane.name}"
        obj = "chat.completion.chunk" if plan.kind == "chat" else "text_completion"

        async def events() -> AsyncIterator[bytes]:
            status, usage, chars, pt, ct = "cancelled", None, 0, 0, 0
            created = int(time.time())
            try:
                event: dict[str, Any] | None = first
                while event is not None:
                    if event.get("usage"):
                        usage = event["usage"]
                    if event.get("choices"):
                        for c in event["choices"]:
                            chars += len(str((c.get("delta") or {}).get("content") or c.get("text") or ""))
                        event["id"], event["model"] = rid, plan.model
                        event.pop("usage", None)
                        created = event.get("created", created)
                        yield sse(event)
                    event = await anext(lines, None)
                pt, ct, charged = self._bill(lane, plan, hold, rid, usage, chars)
                if plan.include_usage:
                    yield sse({"id": rid, "object": obj, "created": created, "model": plan.model, "choices": [],
                               "usage": openai_responses.usage(pt, ct, charged)})
                yield b"data: [DONE]\n\n"
                status = "ok"
                _count(self.stats["lane_ok"], lane.name)
            except (httpx.HTTPError, ValueError) as exc:
                # Headers are gone: the error travels as an SSE event; a cut stream is not charged.
                status = "error"
                _count(self.stats["lane_failed"], lane.name)
                yield sse(errors.ProviderFailed(f"fallback lane {lane.name} failed mid-stream "
                                                f"({type(exc).__name__}); the output is incomplete").body())
            finally:
                await resp.aclose()
                hold.release()  # no-op once charged
                self._record(rid, key, plan, lane, status, pt, ct, started, hold.charged or 0)

        async def closed() -> None:
            await resp.aclose()
            hold.release()

        return EventStream(events(), closed, media_type="text/event-stream",
                           headers={"x-gpupool-provider": provider, "x-request-id": rid,
                                    "cache-control": "no-cache"})

    def models(self) -> dict[str, list[str]]:
        """Each model some lane serves, and those lanes' names (for `/v1/models`)."""
        out: dict[str, list[str]] = {}
        for lane in self.lanes:
            for name in lane.models:
                out.setdefault(name, []).append(lane.name)
        return out

    # ------------------------------------------------------------ admin

    def describe(self) -> dict[str, Any]:
        """The lanes, their settings and counts, for the operator (`GET /admin/fallback`); never a key."""
        return {"object": "gpupool.fallback", "reasons": list(REASONS),
                "first_token_budget_s": self.settings.fallback_first_token_budget_s,
                "reserve_s": self.settings.fallback_reserve_s, "stats": self.stats,
                "lanes": [{"name": lane.name, "base_url": lane.base_url, "region": lane.region,
                           "key": bool(self._keys.get(lane.name)),
                           "models": {m: {"upstream": lm.upstream, "price_in": lm.price.per_m_in,
                                          "price_out": lm.price.per_m_out}
                                      for m, lm in lane.models.items()}}
                          for lane in self.lanes]}


async def _sse_data(resp: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an upstream's SSE stream, up to `[DONE]` (ValueError on garbage)."""
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue  # comments, event names, blank separators
        data = line[5:].strip()
        if data == "[DONE]":
            return
        obj = json.loads(data)
        if not isinstance(obj, dict):
            raise ValueError("stream event is not an object")
        if "error" in obj and not obj.get("choices"):
            raise ValueError(f"upstream error: {str(obj['error'])[:200]}")
        yield obj


def _raise_for(status: int, text: str) -> None:
    """An upstream's error: the request's own fault passes to the client; anything else fails the lane."""
    try:
        message = str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = text[:200]
    if status in (400, 413, 422):
        raise errors.InvalidRequest(f"fallback upstream refused the request: {message}")
    raise LaneFailed(f"HTTP {status}: {message[:200]}")


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and value >= 0 else default


def _count(table: dict[str, int], name: str) -> None:
    table[name] = table.get(name, 0) + 1

