"""The provider's Prometheus collector: admission, drain state and answers by outcome.

    serve_metrics(provider_registry(agent), settings.metrics_host, settings.metrics_port)

Read at scrape time from what `ProviderAgent` keeps anyway; the shared pieces (the
GPU collector, the HTTP server, answer counting) are in `gpupool.metrics`.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpupool.metrics import node_registry
from gpupool.provider.agent import ProviderAgent


def provider_registry(agent: ProviderAgent) -> CollectorRegistry:
    """A registry with the provider's series and the GPU's."""
    return node_registry(_ProviderCollector(agent))


class _ProviderCollector(Collector):
    def __init__(self, agent: ProviderAgent):
        self.agent = agent

    def collect(self) -> Iterable[Metric]:
        a = self.agent
        adm = a.admission
        yield GaugeMetricFamily("gpupool_provider_slots", "requests this provider runs at once",
                                value=adm.max_concurrency)
        yield GaugeMetricFamily("gpupool_provider_slots_busy", "requests running now", value=adm.in_flight)
        yield GaugeMetricFamily("gpupool_provider_queue_length", "requests waiting for a slot", value=adm.queued)
        yield GaugeMetricFamily("gpupool_provider_queue_limit", "most requests allowed to wait", value=adm.max_queue)
        yield GaugeMetricFamily("gpupool_provider_draining", "1 while draining (leaving)", value=int(a.draining))
        yield GaugeMetricFamily("gpupool_provider_models", "models this provider serves", value=len(a.backends))
        c = CounterMetricFamily("gpupool_provider_requests", "answers sent to gateways, by model and outcome",
                                labels=["model", "outcome"])
        for (model, outcome), n in sorted(dict(a.answers).items()):
            c.add_metric([model, outcome], n)
        yield c
