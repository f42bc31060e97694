"""The checker's Prometheus collector: audit jobs by verdict, jobs in flight, models held.

    serve_metrics(checker_registry(agent), settings.metrics_host, settings.metrics_port)

Read at scrape time from what `CheckerAgent` keeps anyway; the shared pieces (the
GPU collector, the HTTP server) are in `gpupool.metrics`.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpupool.checker.agent import CheckerAgent
from gpupool.metrics import node_registry


def checker_registry(agent: CheckerAgent) -> CollectorRegistry:
    """A registry with the checker's series and the GPU's."""
    return node_registry(_CheckerCollector(agent))


class _CheckerCollector(Collector):
    def __init__(self, agent: CheckerAgent):
        self.agent = agent

    def collect(self) -> Iterable[Metric]:
        a = self.agent
        c = CounterMetricFamily("gpupool_checker_audits", "audit jobs judged, by verdict (passed, failed, "
                                "hard_failed) or why not judged (no_reference, reference_failed)",
                                labels=["verdict"])
        for verdict in ("passed", "failed", "hard_failed", "no_reference", "reference_failed"):
            c.add_metric([verdict], a.judged.get(verdict, 0))
        yield c
        yield GaugeMetricFamily("gpupool_checker_audits_in_flight", "audit jobs being judged", value=a.in_flight)
        yield GaugeMetricFamily("gpupool_checker_models", "reference models held", value=len(a.backends))
