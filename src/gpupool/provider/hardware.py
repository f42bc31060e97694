"""Hardware probe: what this provider has, for its offer.

NVIDIA GPUs are read through NVML (`nvidia-ml-py`) when a driver is present;
otherwise the offer says CPU only. The probe never fails a provider start: a
machine without NVML is simply a CPU machine.
"""

from __future__ import annotations

import os
import platform

import psutil

from gpupool.protocol import GpuInfo, Hardware


def probe_gpus() -> list[GpuInfo]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - any NVML failure means "no usable NVIDIA GPU"
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuInfo(
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_mb=int(mem.total // (1024 * 1024)),
                    uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                )
            )
        return gpus
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe() -> Hardware:
    return Hardware(
        cpu=cpu_name(),
        cpu_cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        memory_mb=int(psutil.virtual_memory().total // (1024 * 1024)),
        gpus=probe_gpus(),
    )
