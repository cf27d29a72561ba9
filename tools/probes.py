"""Readers of the machine's own state: the host through psutil, NVIDIA GPUs through NVML.

Both block (psutil reads /proc; NVML calls the driver): callers run them off the event loop.
This module imports nothing but psutil and, when present, the NVML binding, so a GPU machine can
run `bench/gpu_check.py` with it alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil


@dataclass(frozen=True)
class HostMetrics:
    cpu_percent: float
    cpu_count: int
    load_1m: float
    memory_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    disk_percent: float
    disk_free_bytes: int
    net_rx_bytes_per_s: float
    net_tx_bytes_per_s: float


@dataclass(frozen=True)
class GpuMetrics:
    index: int
    name: str
    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_c: float | None
    power_w: float | None


class HostProbe:
    """Host CPU, memory, disk and network through psutil (blocking: call it off the loop)."""

    def __init__(self, disk_path: Path) -> None:
        self.disk_path = disk_path
        psutil.cpu_percent(interval=None)  # primes the counter; the first real call is meaningful
        self._last_net: tuple[float, int, int] | None = None

    def sample(self) -> HostMetrics:
        now = time.monotonic()
        memory = psutil.virtual_memory()
        try:
            disk = psutil.disk_usage(str(self.disk_path))
            disk_percent, disk_free = disk.percent, disk.free
        except OSError:
            disk_percent, disk_free = math.nan, 0
        net = psutil.net_io_counters()
        rx_rate = tx_rate = 0.0
        if self._last_net is not None:
            then, rx, tx = self._last_net
            elapsed = max(now - then, 1e-6)
            rx_rate = (net.bytes_recv - rx) / elapsed
            tx_rate = (net.bytes_sent - tx) / elapsed
        self._last_net = (now, net.bytes_recv, net.bytes_sent)
        return HostMetrics(
            cpu_percent=psutil.cpu_percent(interval=None),
            cpu_count=psutil.cpu_count() or 1,
            load_1m=psutil.getloadavg()[0],
            memory_percent=memory.percent,
            memory_used_bytes=memory.total - memory.available,
            memory_total_bytes=memory.total,
            disk_percent=disk_percent,
            disk_free_bytes=disk_free,
            net_rx_bytes_per_s=rx_rate,
            net_tx_bytes_per_s=tx_rate,
        )


class GpuProbe:
    """NVIDIA GPUs through NVML. A machine without a driver is a normal case: no GPUs."""

    def __init__(self) -> None:
        self.available = False
        self.reason: str | None = None
        self._handles: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._nvml = pynvml
            self.available = count > 0
            self.reason = None if count else "NVML found no GPU"
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self.reason = f"no NVIDIA GPU: {type(exc).__name__}"

    def sample(self) -> tuple[GpuMetrics, ...]:
        if not self.available:
            return ()
        nvml = self._nvml
        gpus = []
        for index, handle in enumerate(self._handles):
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                temperature: float | None = float(nvml.nvmlDeviceGetTemperature(handle, 0))
            except nvml.NVMLError:
                temperature = None
            try:
                power: float | None = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            except nvml.NVMLError:
                power = None
            name = nvml.nvmlDeviceGetName(handle)
            gpus.append(
                GpuMetrics(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    utilization_percent=float(util.gpu),
                    memory_used_bytes=int(memory.used),
                    memory_total_bytes=int(memory.total),
                    temperature_c=temperature,
                    power_w=power,
                )
            )
        return tuple(gpus)
