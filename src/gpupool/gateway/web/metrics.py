"""Prometheus metrics for the gateway, and the recent-traffic window behind `/v1/stats`.

    metrics = GatewayMetrics(hub.known_models)   # one per app: its own registry
    metrics.registry.register(LiveCollector(metrics, ...))   # state read at scrape (metrics_collector.py)
    app = metrics.middleware(app)                                 # times every HTTP request
    Route("/metrics", metrics.endpoint)

Instrumentation stays out of the request logic. The ASGI middleware sees each HTTP
request once (route, status, duration, in flight); the routes add what only they
know through the small `note_*` functions of `gateway/probes.py`, which write into the
current request's `RequestProbe` (a context variable this middleware sets), so they need
no handle on the app:

    note_model(model)                  # the request is for this model (label)
    note_request(model, outcome, tokens_in, tokens_out, cost_ucr)
    note_first_token()                 # a stream's first token reached the client
    note_routing("failover")           # retry / hedge / stream_continuation / fallback
    note_limit_hit("rpm")              # a per-key limit refused a request

Everything that is a state rather than an event (providers by state, checkers, open
tabs and holds, audit and billing counts the services already keep) is read at
scrape time by `LiveCollector` (web/metrics_collector.py): zero cost per request.

Label sets are bounded: routes come from a fixed table, model names only from
offers (the first `max_models` distinct ones, then "other"), decisions and limits
are our own words (unknown ones are counted as "other"). Nothing is labelled by
key, account or request id.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, disable_created_metrics,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpupool.gateway.probes import CURRENT, RequestProbe
from gpupool.gateway.web.recent_requests import RecentRequests


# Fixed route labels: anything else is "other", so a client cannot mint label values with URLs.
ROUTES = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings",
          "/v1/models": "models", "/v1/account": "account", "/v1/market": "market", "/v1/stats": "stats",
          "/v1/providers": "providers", "/healthz": "healthz", "/metrics": "metrics", "/": "dashboard"}
PREFIXES = (("/v1/batches", "batches"), ("/v1/files", "files"), ("/v1/providers/", "providers"),
            ("/dashboard/", "dashboard"), ("/admin/", "admin"))
INFERENCE = frozenset({"chat", "completions", "embeddings"})
DECISIONS = ("failover", "hedge", "trial", "stream_continuation", "fallback")
LIMITS = ("rpm", "tpm", "concurrency", "fair_share")
# Seconds: from a few ms (echo, embeddings batches) to the longest generations.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
MAX_MODELS = 100
WINDOW_ENTRIES = 50_000  # requests remembered for /v1/stats (bounded whatever the traffic)


# ------------------------------------------------------------------ the metrics of one app


class GatewayMetrics:
    def __init__(self, known_models: Mapping[str, object], max_models: int = MAX_MODELS):
        self.known_models = known_models  # the hub's models ever offered: only these become labels
        self.max_models = max_models
        # `*_created` series double the output and no dashboard reads them (process-wide switch).
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.latency = Histogram("gpupool_request_duration_seconds", "time from request to the end of the answer",
                                 ["route", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("gpupool_time_to_first_token_seconds", "streams: time to the first token",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        # Per-request counters are plain dict entries (a prometheus Counter.inc takes a lock:
        # ~0.8 µs each, 3x a dict update), exported by the collector at scrape time.
        self.requests: dict[tuple[str, str, str, str], int] = {}  # (route, model, status, outcome)
        self.tokens: dict[tuple[str, str], int] = {}  # (model, direction)
        self.charged: dict[str, int] = {}  # model -> µcr
        routing = Counter("gpupool_routing_decisions", "retries elsewhere (failover), hedges, stream "
                          "continuations and fallback lanes taken", ["decision"], registry=r)
        self.routing = {d: routing.labels(d) for d in (*DECISIONS, "other")}
        self.extra_limit_hits: dict[str, int] = {}
        self.in_flight = 0
        self.started = 0  # HTTP requests ever started
        self._started_at_check = 0
        self.models: set[str] = set()
        self.window = RecentRequests(WINDOW_ENTRIES)
        # /v1/stats bodies by window, computed at most once a second (web/public_api.py).
        self.stats_cache: dict[int, tuple[float, dict[str, Any]]] = {}
        self._children: dict[tuple[str, ...], Any] = {}

    # ------------------------------------------------------------ labels

    def model_label(self, model: str) -> str:
        """`model` if an offer named it (the first `max_models` such), else "unknown"/"other"."""
        if not model or model in self.models:
            return model
        if model not in self.known_models:
            return "unknown"  # a client's free text never becomes a label
        if len(self.models) >= self.max_models:
            return "other"
        self.models.add(model)
        return model

    def _child(self, key: tuple[str, ...]) -> Any:
        # labels() costs a few µs (locks, tuple building); the children are cached per label set.
        child = self._children.get(key)
        if child is None:
            kind, *labels = key
            metric = {"lat": self.latency, "ttft": self.ttft}[kind]
            child = self._children[key] = metric.labels(*labels)
        return child

    # ------------------------------------------------------------ the middleware

    def quiet(self) -> bool:
        """Whether the gateway is quiet since the last call (called once a second by the heap
        trimmer, gc_tuning.hand_back_memory): under 50 requests since then and at most one in
        flight. Trimming under load only faults the same pages back in (bench/overhead: ~7%
        fewer requests/s) and its few milliseconds stall the next requests."""
        started, self._started_at_check = self.started - self._started_at_check, self.started
        return started < 50 and self.in_flight <= 1

    def middleware(self, app: ASGIApp) -> ASGIApp:
        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            path: str = scope["path"]
            route = ROUTES.get(path) or _prefixed(path)
            rec = RequestProbe(self.routing, self.extra_limit_hits, time.perf_counter())
            token = CURRENT.set(rec)

            async def send_seen(message: Message) -> None:
                if message["type"] == "http.response.start":
                    rec.status = message["status"]
                    if route in INFERENCE:
                        for name, value in message.get("headers", ()):
                            if name == b"x-gpupool-provider" and value.startswith(b"fallback:"):
                                rec.outcome = "fallback"
                                self.routing["fallback"].inc()
                elif not message.get("more_body", False):
                    rec.complete = True
                await send(message)

            self.in_flight += 1
            self.started += 1
            try:
                await app(scope, receive, send_seen)
            finally:
                self.in_flight -= 1
                CURRENT.reset(token)
                self._finished(route, rec, time.perf_counter() - rec.started)

        return timed

    def _finished(self, route: str, rec: RequestProbe, elapsed: float) -> None:
        status = rec.status
        outcome = rec.outcome or ("ok" if status < 400 else "cancelled" if status == 499 else "error")
        if outcome == "ok" and not rec.complete:
            outcome = "cancelled"  # e.g. a stream the client closed: its route may not have said so yet
        model = self.model_label(rec.model)
        key = (route, model, str(status), outcome)
        self.requests[key] = self.requests.get(key, 0) + 1
        if route not in INFERENCE:
            return
        self._child(("lat", route, model)).observe(elapsed)
        if rec.ttft is not None:
            self._child(("ttft", model)).observe(rec.ttft)
        if rec.tokens_in:
            self.tokens[(model, "in")] = self.tokens.get((model, "in"), 0) + rec.tokens_in
        if rec.tokens_out:
            self.tokens[(model, "out")] = self.tokens.get((model, "out"), 0) + rec.tokens_out
        if rec.cost:
            self.charged[model] = self.charged.get(model, 0) + rec.cost
        self.window.add(time.time(), model, elapsed, outcome in ("ok", "fallback"), rec.ttft)

    # ------------------------------------------------------------ the scrape

    async def endpoint(self, _request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def _prefixed(path: str) -> str:
    for prefix, label in PREFIXES:
        if path.startswith(prefix):
            return label
    return "other"


def provider_state(draining: bool, suspended: bool) -> str:
    return "suspended" if suspended else "draining" if draining else "serving"


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
