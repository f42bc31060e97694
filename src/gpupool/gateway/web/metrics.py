"""Prometheus metrics for the gateway, and the recent-traffic window behind `/v1/stats`.

    metrics = GatewayMetrics(hub, services, quotas, fallbacks)   # one per app: its own registry
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
scrape time by a custom collector: zero cost per request.

Label sets are bounded: routes come from a fixed table, model names only from
offers (the first `max_models` distinct ones, then "other"), decisions and limits
are our own words (unknown ones are counted as "other"). Nothing is labelled by
key, account or request id.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, disable_created_metrics,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpupool.gateway.probes import CURRENT, RequestProbe
from gpupool.gateway.web.recent_requests import RecentRequests

if TYPE_CHECKING:
    from gpupool.gateway.fallback.lanes import Fallbacks
    from gpupool.gateway.peers.hub import Hub
    from gpupool.gateway.money.quota import Quotas
    from gpupool.gateway.web.services import Services

# Fixed route labels: anything else is "other", so a client cannot mint label values with URLs.
ROUTES = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings",
          "/v1/models": "models", "/v1/account": "account", "/v1/market": "market", "/v1/stats": "stats",
          "/v1/providers": "providers", "/healthz": "healthz", "/metrics": "metrics", "/": "dashboard"}
PREFIXES = (("/v1/batches", "batches"), ("/v1/files", "files"), ("/v1/providers/", "providers"),
            ("/dashboard/", "dashboard"), ("/admin/", "admin"))
INFERENCE = frozenset({"chat", "completions", "embeddings"})
DECISIONS = ("failover", "hedge", "stream_continuation", "fallback")
LIMITS = ("rpm", "tpm", "concurrency", "fair_share")
# Seconds: from a few ms (echo, embeddings batches) to the longest generations.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
MAX_MODELS = 100
WINDOW_ENTRIES = 50_000  # requests remembered for /v1/stats (bounded whatever the traffic)


# ------------------------------------------------------------------ the metrics of one app


class GatewayMetrics:
    def __init__(self, hub: Hub, services: Services, quotas: Quotas | None = None,
                 fallbacks: Fallbacks | None = None, max_models: int = MAX_MODELS):
        self.hub, self.services, self.quotas, self.fallbacks = hub, services, quotas, fallbacks
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
        self._children: dict[tuple[str, ...], Any] = {}
        r.register(_LiveCollector(self))

    # ------------------------------------------------------------ labels

    def model_label(self, model: str) -> str:
        """`model` if an offer named it (the first `max_models` such), else "unknown"/"other"."""
        if not model or model in self.models:
            return model
        if model not in self.hub.known_models:
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


class _LiveCollector(Collector):
    """State read at scrape time from the hub and the gateway's services (no per-request cost)."""

    def __init__(self, metrics: GatewayMetrics):
        self.m = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.m
        hub, services = m.hub, m.services
        c = CounterMetricFamily("gpupool_requests", "HTTP requests by route, model, status and outcome",
                                labels=["route", "model", "status", "outcome"])
        for labels, n in list(m.requests.items()):
            c.add_metric(list(labels), n)
        yield c
        c = CounterMetricFamily("gpupool_tokens", "tokens served, from receipts", labels=["model", "direction"])
        for labels, n in list(m.tokens.items()):
            c.add_metric(list(labels), n)
        yield c
        c = CounterMetricFamily("gpupool_charged_microcredits", "µcr charged to clients", labels=["model"])
        for model, n in list(m.charged.items()):
            c.add_metric([model], n)
        yield c
        yield _gauge("gpupool_requests_in_flight", "HTTP requests being answered", m.in_flight)

        states = {"serving": 0, "draining": 0, "suspended": 0}
        slots = busy = 0
        for s in list(hub.sessions.values()):
            states[provider_state(s.draining or s.closed, services.auditor.is_suspended(s.node_id))] += 1
            slots += s.offer.max_concurrency
            busy += len(s.channels)
        g = GaugeMetricFamily("gpupool_providers", "providers connected, by state", labels=["state"])
        for state, n in states.items():
            g.add_metric([state], n)
        yield g
        yield _gauge("gpupool_checkers", "checkers connected", len(hub.checkers))
        yield _gauge("gpupool_provider_slots", "concurrent requests connected providers offer", slots)
        yield _gauge("gpupool_provider_slots_busy", "requests running on providers", busy)
        yield _gauge("gpupool_models", "models served by at least one provider", len(hub.live_models()))

        c = CounterMetricFamily("gpupool_limit_hits", "requests refused by a per-key limit", labels=["limit"])
        hits = dict(m.quotas.refused) if m.quotas is not None else {}
        for name, n in m.extra_limit_hits.items():
            hits[name] = hits.get(name, 0) + n
        for name in sorted(set(LIMITS) | set(hits)):
            c.add_metric([name], hits.get(name, 0))
        yield c

        if m.fallbacks is not None:
            c = CounterMetricFamily("gpupool_fallbacks", "requests the pool could not serve, by why and what "
                                    "the fallback lanes did (served, declined, failed)", labels=["reason", "result"])
            for result in ("served", "declined", "failed"):
                for reason, n in sorted(m.fallbacks.stats.get(result, {}).items()):
                    c.add_metric([reason, result], n)
            yield c

        a = services.auditor.stats
        yield _counter("gpupool_audits_requested", "served requests sent to a checker for audit", a["audited"])
        yield _counter("gpupool_audits_without_checker", "requests chosen for audit with no checker to take it",
                       a["no_checker"])
        c = CounterMetricFamily("gpupool_audit_verdicts", "checker verdicts received", labels=["verdict"])
        c.add_metric(["passed"], a["passed"])
        c.add_metric(["failed"], a["failed"])
        yield c
        yield _counter("gpupool_suspensions", "providers suspended after failed audits", a["suspended"])
        yield _counter("gpupool_slashes", "providers slashed on confirmed fraud", a["slashed"])
        yield _counter("gpupool_refunded_microcredits", "µcr refunded to clients from slashes", a["refunded"])
        c = CounterMetricFamily("gpupool_canaries", "canary requests by result", labels=["result"])
        for result, n in services.canaries.stats.items():
            c.add_metric([result], n)
        yield c
        c = CounterMetricFamily("gpupool_hardware_proofs", "hardware proofs by result", labels=["result"])
        for result, n in services.hardware_checks.stats.items():
            c.add_metric([result], n)
        yield c

        b = services.billing
        tabs = list(b.tabs.values())
        yield _gauge("gpupool_billing_reserved_microcredits", "µcr held on the ledger for clients' tabs",
                     sum(t.reserved for t in tabs))
        yield _gauge("gpupool_billing_held_microcredits", "µcr held by requests in flight",
                     sum(t.committed for t in tabs))
        yield _gauge("gpupool_billing_unsettled_microcredits", "µcr charged, waiting for the next settlement",
                     sum(t.pending for t in tabs))
        yield _gauge("gpupool_billing_open_tabs", "clients with an open tab", len(tabs))
        st = b.stats
        yield _counter("gpupool_settled_microcredits", "µcr settled on the ledger", st.get("settled_microcredits", 0))
        c = CounterMetricFamily("gpupool_settled_charges", "charges by settlement result", labels=["result"])
        for result, key in (("settled", "charged"), ("rejected", "rejected"), ("bad_receipt", "bad_receipts"),
                            ("refused_slashed", "refused_slashed"), ("fallback", "fallback_charged")):
            c.add_metric([result], st.get(key, 0))
        yield c
        yield _counter("gpupool_settlement_batches", "ledger writes that settled charges", st.get("batches", 0))


def provider_state(draining: bool, suspended: bool) -> str:
    return "suspended" if suspended else "draining" if draining else "serving"


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
