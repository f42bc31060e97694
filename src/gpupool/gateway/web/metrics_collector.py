"""The gateway's state, read at scrape time for `/metrics`: zero cost per request.

Providers by state, checkers, slots, open tabs and holds, and the counts the services
already keep (audits, canaries, hardware proofs, settlement, fallbacks, limits) are read
from the parts when Prometheus scrapes; the per-request counters are `GatewayMetrics`'s
(web/metrics.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpupool.gateway.fallback.lanes import Fallbacks
from gpupool.gateway.money.billing import Billing
from gpupool.gateway.money.quota import Quotas
from gpupool.gateway.peers.hub import Hub
from gpupool.gateway.trust.audits import Auditor
from gpupool.gateway.trust.canaries import Canaries
from gpupool.gateway.trust.hardware_checks import HardwareChecker
from gpupool.gateway.web.metrics import LIMITS, GatewayMetrics, counter, gauge, provider_state


class GatewayParts(Protocol):
    """The parts the collector reads (the gateway's context, web/context.py, has them all)."""

    hub: Hub
    auditor: Auditor
    canaries: Canaries
    hardware_checks: HardwareChecker
    billing: Billing
    quotas: Quotas
    fallbacks: Fallbacks


class LiveCollector(Collector):
    """State read at scrape time from the hub and the gateway's services (no per-request cost)."""

    def __init__(self, metrics: GatewayMetrics, gw: GatewayParts):
        self.m = metrics
        self.gw = gw

    def collect(self) -> Iterable[Metric]:
        m = self.m
        gw = self.gw
        hub = gw.hub
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
        yield gauge("gpupool_requests_in_flight", "HTTP requests being answered", m.in_flight)

        states = {"serving": 0, "draining": 0, "suspended": 0}
        slots = busy = 0
        for s in list(hub.sessions.values()):
            states[provider_state(s.draining or s.closed, gw.auditor.is_suspended(s.node_id))] += 1
            slots += s.offer.max_concurrency
            busy += len(s.channels)
        g = GaugeMetricFamily("gpupool_providers", "providers connected, by state", labels=["state"])
        for state, n in states.items():
            g.add_metric([state], n)
        yield g
        yield gauge("gpupool_checkers", "checkers connected", len(hub.checkers))
        yield gauge("gpupool_provider_slots", "concurrent requests connected providers offer", slots)
        yield gauge("gpupool_provider_slots_busy", "requests running on providers", busy)
        yield gauge("gpupool_models", "models served by at least one provider", len(hub.live_models()))

        c = CounterMetricFamily("gpupool_limit_hits", "requests refused by a per-key limit", labels=["limit"])
        hits = dict(gw.quotas.refused)
        for name, n in m.extra_limit_hits.items():
            hits[name] = hits.get(name, 0) + n
        for name in sorted(set(LIMITS) | set(hits)):
            c.add_metric([name], hits.get(name, 0))
        yield c

        c = CounterMetricFamily("gpupool_fallbacks", "requests the pool could not serve, by why and what "
                                "the fallback lanes did (served, declined, failed)", labels=["reason", "result"])
        for result in ("served", "declined", "failed"):
            for reason, n in sorted(gw.fallbacks.stats.get(result, {}).items()):
                c.add_metric([reason, result], n)
        yield c

        a = gw.auditor.stats
        yield counter("gpupool_audits_requested", "served requests sent to a checker for audit", a["audited"])
        yield counter("gpupool_audits_without_checker", "requests chosen for audit with no checker to take it",
                       a["no_checker"])
        c = CounterMetricFamily("gpupool_audit_verdicts", "checker verdicts received", labels=["verdict"])
        c.add_metric(["passed"], a["passed"])
        c.add_metric(["failed"], a["failed"])
        yield c
        yield counter("gpupool_suspensions", "providers suspended after failed audits", a["suspended"])
        yield counter("gpupool_slashes", "providers slashed on confirmed fraud", a["slashed"])
        yield counter("gpupool_refunded_microcredits", "µcr refunded to clients from slashes", a["refunded"])
        c = CounterMetricFamily("gpupool_canaries", "canary requests by result", labels=["result"])
        for result, n in gw.canaries.stats.items():
            c.add_metric([result], n)
        yield c
        c = CounterMetricFamily("gpupool_hardware_proofs", "hardware proofs by result", labels=["result"])
        for result, n in gw.hardware_checks.stats.items():
            c.add_metric([result], n)
        yield c

        b = gw.billing
        tabs = list(b.tabs.values())
        yield gauge("gpupool_billing_reserved_microcredits", "µcr held on the ledger for clients' tabs",
                     sum(t.reserved for t in tabs))
        yield gauge("gpupool_billing_held_microcredits", "µcr held by requests in flight",
                     sum(t.committed for t in tabs))
        yield gauge("gpupool_billing_unsettled_microcredits", "µcr charged, waiting for the next settlement",
                     sum(t.pending for t in tabs))
        yield gauge("gpupool_billing_open_tabs", "clients with an open tab", len(tabs))
        yield gauge("gpupool_billing_signed_digests", "receipt digests stated by providers, not yet charged "
                    "(bounded per provider, expire)", len(b.signed))
        st = b.stats
        yield counter("gpupool_settled_microcredits", "µcr settled on the ledger", st.get("settled_microcredits", 0))
        c = CounterMetricFamily("gpupool_settled_charges", "charges by settlement result", labels=["result"])
        for result, key in (("settled", "charged"), ("rejected", "rejected"), ("bad_receipt", "bad_receipts"),
                            ("refused_slashed", "refused_slashed"), ("fallback", "fallback_charged")):
            c.add_metric([result], st.get(key, 0))
        yield c
        yield counter("gpupool_settlement_batches", "ledger writes that settled charges", st.get("batches", 0))
        if gw.settlement_keys is not None:
            c = CounterMetricFamily("gpupool_settlement_key_announcements",
                                    "providers' settlement key announcements (EVM ledger) by what was done",
                                    labels=["result"])
            for result, n in gw.settlement_keys.stats.items():
                c.add_metric([result], n)
            yield c
