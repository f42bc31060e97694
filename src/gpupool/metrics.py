"""Prometheus metrics shared by the provider and checker processes (`--metrics-port`).

    registry = node_registry(role_collector)      # provider/metrics.py, checker/metrics.py
    serve_metrics(registry, settings.metrics_host, settings.metrics_port)   # 0: off

Each role's collector lives in its role's package and reads, at scrape time, state
the agent keeps anyway (admission slots and queue, counts of answers by outcome,
verdicts by result), so the serving path does no metric work beyond bumping a dict
entry. This module holds only what the roles share (answer counting, the GPU
collector, the HTTP server) and imports no role, so every role may import it.

GPU utilisation and memory come from NVML when the machine has it (`nvidia-ml-py`);
without NVML (CPU machines, no driver) those series are simply absent. The HTTP
server is prometheus_client's own, in a thread.

Label values are bounded: models are the ones this node serves (its own `--serve`
list), outcomes are the protocol's failure codes (unknown codes count as "other").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpupool.errors import StartupError
from gpupool.protocol import Done, Fail

log = logging.getLogger("gpupool.metrics")

# Fail codes a provider sends (protocol / provider agent); anything else is "other".
OUTCOMES = frozenset({"ok", "over_capacity", "draining", "model_not_served", "deadline_exceeded", "internal_error",
                      "invalid_input", "context_length_exceeded", "unsupported_task", "engine_down",
                      "upstream_unreachable", "upstream_error", "model_not_found"})


def count_answer(table: dict[tuple[str, str], int], msg: Done | Fail) -> None:
    """Count one answer a provider sent: a `Done` as ("its model", "ok"), a `Fail` as ("", its code).

    Failures carry no model label: a Run may name any model, and a label must not be
    something a peer chooses."""
    key = (msg.receipt.model, "ok") if isinstance(msg, Done) else ("", msg.code if msg.code in OUTCOMES else "other")
    table[key] = table.get(key, 0) + 1


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> Any | None:
    """Serve `registry` on http://host:port/metrics in a daemon thread; None when port is 0 (off)."""
    if port <= 0:
        return None
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise StartupError(f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); "
                           "choose another --metrics-port, or 0 to turn metrics off") from None
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server


def node_registry(role: Collector) -> CollectorRegistry:
    """A registry of the process's own: its role's collector plus the GPU's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(role)
    registry.register(GpuCollector())
    return registry


class GpuCollector(Collector):
    """GPU utilisation and memory per device from NVML; nothing at all where NVML is absent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nvml: Any = None
        self._tried = False

    def _init(self) -> Any:
        if not self._tried:
            self._tried = True
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception:  # noqa: BLE001 - no library, no driver, no GPU: no GPU metrics
                self._nvml = None
        return self._nvml

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            nvml = self._init()
            if nvml is None:
                return
            util = GaugeMetricFamily("gpupool_gpu_utilization_ratio", "GPU busy fraction over the last sample "
                                     "period (0-1)", labels=["gpu", "name"])
            used = GaugeMetricFamily("gpupool_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu", "name"])
            total = GaugeMetricFamily("gpupool_gpu_memory_total_bytes", "GPU memory", labels=["gpu", "name"])
            try:
                for i in range(nvml.nvmlDeviceGetCount()):
                    h = nvml.nvmlDeviceGetHandleByIndex(i)
                    name = nvml.nvmlDeviceGetName(h)
                    name = name.decode() if isinstance(name, bytes) else str(name)
                    mem = nvml.nvmlDeviceGetMemoryInfo(h)
                    rates = nvml.nvmlDeviceGetUtilizationRates(h)
                    util.add_metric([str(i), name], rates.gpu / 100.0)
                    used.add_metric([str(i), name], float(mem.used))
                    total.add_metric([str(i), name], float(mem.total))
            except Exception as exc:  # noqa: BLE001 - a GPU fell off the bus: report what was read
                log.debug("NVML read failed: %s", exc)
            yield util
            yield used
            yield total
