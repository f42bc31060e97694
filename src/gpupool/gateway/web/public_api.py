"""Public, key-less views of the network: the providers list and recent traffic.

    routes = public_routes(gw)   # added to the app's route list (gw: web/context.py)

- `GET /v1/providers` (paged like OpenAI lists: `limit`, `after`): per connected
  provider its node id, region, models with prices, load, state, measured RTT and
  speed, verified GFLOP/s, reputation and audit counts. Nothing private: no keys,
  no client data, no addresses (the announced location is rounded to whole degrees).
- `GET /v1/providers/{node_id}`: one entry of that list (404 if not connected).
- `GET /v1/stats`: requests per second and latency percentiles over the last
  minutes, overall, per time bucket and per model, from `GatewayMetrics.window`.

These feed the dashboard (gateway/web/dashboard/) and anyone's monitoring. The stats
are computed at most once a second whatever the polling rate, so a busy page (or a
hostile poller) cannot make the gateway sort its window on every request.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from gpupool import errors
from gpupool.gateway.edge.http import JSON, query_limit
from gpupool.gateway.peers.session import ProviderSession
from gpupool.gateway.web.context import Gateway
from gpupool.gateway.web.metrics import provider_state
from gpupool.gateway.web.recent_requests import Sample


MAX_WINDOW_S = 3600
DEFAULT_WINDOW_S = 300
MAX_ID = 200  # node ids are 64 hex characters; anything much longer is not one


def public_routes(gw: Gateway) -> list[Route]:
    return [Route("/v1/providers", partial(providers, gw)), Route("/v1/stats", partial(stats, gw)),
            Route("/v1/providers/{node_id}", partial(provider, gw))]


def describe(gw: Gateway, s: ProviderSession) -> dict[str, Any]:
    """One provider as `/v1/providers` lists it."""
    auditor = gw.auditor
    rec = gw.dispatcher.router.records.get(s.node_id)
    models = []
    for name, offer in sorted(s.models.items()):
        sp = rec.speed.get(name) if rec else None
        speed = None
        if sp is not None and sp.samples:
            speed = round(sp.items_per_s if offer.task == "embeddings" else sp.decode_tps, 2)
        models.append({"name": name, "task": offer.task, "price_in": offer.price_in,
                       "price_out": offer.price_out, "price_image": offer.price_image,
                       "accepts": list(offer.accepts or ["text"]), "measured_speed": speed,
                       "speed_unit": "items/s" if offer.task == "embeddings" else "tokens/s"})
    audits = auditor.providers.get(s.node_id)
    rep = audits.reputation if audits else None
    done, failed = (rep.audits, rep.audit_failures) if rep else (0, 0)
    located = s.offer.latitude or s.offer.longitude
    return {
        "id": s.node_id, "object": "gpupool.provider", "region": s.offer.region[:64],
        # Whole degrees: enough for a map, not a street address.
        "location": {"latitude": round(s.offer.latitude), "longitude": round(s.offer.longitude)}
        if located else None,
        "models": models,
        "load": {"in_flight": len(s.channels), "max_concurrency": s.offer.max_concurrency},
        "state": provider_state(s.draining or s.closed, auditor.is_suspended(s.node_id)),
        "rtt_ms": None if s.rtt_s is None else round(s.rtt_s * 1000, 2),
        "verified_gflops": gw.hardware_checks.verified_gflops(s.node_id),
        "gpus": [{"name": g.name[:80], "memory_mb": g.memory_mb} for g in s.offer.hardware.gpus[:16]],
        "reputation": round(auditor.reputation_of(s.node_id), 4),
        "audits": {"passed": done - failed, "failed": failed},
    }


async def providers(gw: Gateway, request: Request) -> JSON:
    hub = gw.hub
    limit = query_limit(request, 20, most=100)
    after = request.query_params.get("after") or ""
    if len(after) > MAX_ID:
        raise errors.InvalidRequest("after must be a provider id from this list", param="after")
    # Sorted by id, and `after` compares rather than looks up: a provider that left
    # between two pages does not break the paging.
    ids = sorted(i for i in list(hub.sessions) if i > after)
    page = [describe(gw, hub.sessions[i]) for i in ids[:limit] if i in hub.sessions]
    return JSON({"object": "list", "data": page,
                 "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None,
                 "has_more": len(ids) > limit})


async def provider(gw: Gateway, request: Request) -> JSON:
    node_id = request.path_params["node_id"]
    s = gw.hub.sessions.get(node_id)
    if s is None:
        raise errors.ModelNotFound(f"no provider {node_id[:80]!r} is connected to this gateway",
                                   param="node_id", code="provider_not_found")
    return JSON(describe(gw, s))


async def stats(gw: Gateway, request: Request) -> JSON:
    raw = request.query_params.get("window_s", str(DEFAULT_WINDOW_S))
    try:
        window_s = int(raw)
    except ValueError:
        raise errors.InvalidRequest("window_s must be a whole number of seconds", param="window_s") from None
    if not 10 <= window_s <= MAX_WINDOW_S:
        raise errors.InvalidRequest(f"window_s must be between 10 and {MAX_WINDOW_S}", param="window_s")
    now = time.time()
    metrics, cache = gw.metrics, gw.metrics.stats_cache
    hit = cache.get(window_s)
    if hit is None or now - hit[0] >= 1.0:
        if len(cache) > 16:
            cache.clear()
        body = summarize_window(metrics.window.samples(), now, window_s)
        states = {"serving": 0, "draining": 0, "suspended": 0}
        for s in list(gw.hub.sessions.values()):
            states[provider_state(s.draining or s.closed, gw.auditor.is_suspended(s.node_id))] += 1
        body["providers"] = states
        body["checkers"] = len(gw.hub.checkers)
        body["in_flight"] = metrics.in_flight
        hit = cache[window_s] = (now, body)
    return JSON(hit[1])


def summarize_window(samples: list[Sample], now: float, window_s: int) -> dict[str, Any]:
    """Requests per second and latency percentiles over `window_s` seconds before `now` (pure)."""
    bucket_s = max(5, window_s // 30)  # about 30 points per chart
    start = now - window_s
    recent = [x for x in samples if x.at >= start]
    first_bucket = int(start // bucket_s)
    buckets: dict[int, list[Sample]] = {}
    for x in recent:
        buckets.setdefault(int(x.at // bucket_s), []).append(x)
    series = []
    for b in range(first_bucket, int(now // bucket_s) + 1):
        items = buckets.get(b, [])
        series.append({"t": b * bucket_s, **_summary(items, bucket_s)})
    by_model: dict[str, list[Sample]] = {}
    for x in recent:
        by_model.setdefault(x.model, []).append(x)
    models = [{"model": name, **_summary(items, window_s)} for name, items in sorted(by_model.items())]
    return {"object": "gpupool.stats", "window_s": window_s, "bucket_s": bucket_s, "generated_at": round(now, 3),
            "totals": _summary(recent, window_s), "series": series, "models": models}


def _summary(items: list[Sample], seconds: float) -> dict[str, Any]:
    latencies = sorted(x.latency_s for x in items)
    ttfts = sorted(x.ttft_s for x in items if x.ttft_s is not None)
    return {"requests": len(items), "errors": sum(1 for x in items if not x.ok),
            "requests_per_s": round(len(items) / seconds, 4),
            "p50_latency_ms": _pct_ms(latencies, 0.50), "p95_latency_ms": _pct_ms(latencies, 0.95),
            "p50_ttft_ms": _pct_ms(ttfts, 0.50)}


def _pct_ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 2)
