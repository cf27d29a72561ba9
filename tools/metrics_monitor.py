"""Site metrics (`MetricsMonitor`) and the `metrics_monitor` tool that exposes them to the LLM.

`MetricsMonitor.refresh()` samples the host (psutil), the GPUs (NVML), the runtime's instances
and the site's own request log into one immutable `MetricsSnapshot`. A background sampler calls
it every half second; the request path and the tool only read `monitor.snapshot`.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

from strands import tool
from strands.types.tools import AgentTool

from tools.probes import GpuMetrics, GpuProbe, HostMetrics, HostProbe
from tools.runtimes.base import InstanceStats, Runtime


@dataclass(frozen=True)
class ServiceRequestStats:
    """One service's requests over the recent window.

    `errors` are real failures: a 5xx answer from anywhere but the "reject" tier (an instance
    failed, timed out or was unreachable). `rejected` are requests turned away before any instance
    was tried because none had capacity: the router's planned 503 `no_capacity` rejects, recorded
    on tier "reject". The two never overlap. Client mistakes rejected with a 4xx (unknown service,
    client kind not allowed) are in neither; they show in `by_tier["reject"]` with the rest.
    """

    service: str
    requests: int
    rate_per_s: float
    errors: int
    rejected: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    by_tier: dict[str, int]


@dataclass(frozen=True)
class MetricsSnapshot:
    taken_at: float
    sample_ms: float
    host: HostMetrics | None
    gpu_available: bool
    gpu_reason: str | None
    gpus: tuple[GpuMetrics, ...]
    instances: tuple[InstanceStats, ...]
    requests: tuple[ServiceRequestStats, ...]
    window_s: float

    @property
    def gpu_max_utilization(self) -> float | None:
        if not self.gpus:
            return None
        return max(gpu.utilization_percent for gpu in self.gpus)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gpu_max_utilization"] = self.gpu_max_utilization
        return data


EMPTY_SNAPSHOT = MetricsSnapshot(
    taken_at=0.0,
    sample_ms=0.0,
    host=None,
    gpu_available=False,
    gpu_reason="not sampled yet",
    gpus=(),
    instances=(),
    requests=(),
    window_s=0.0,
)


def nearest_rank(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted, non-empty values: the one at rank ⌈fraction·n⌉
    (the first for fraction 0). The one definition the site, `mec eval` and `mec sim` use."""
    return ordered[min(len(ordered), max(1, math.ceil(fraction * len(ordered)))) - 1]


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    return round(nearest_rank(ordered, fraction), 3) if ordered else 0.0


LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


@dataclass
class LatencyHistogram:
    """Cumulative latency distribution of one service (Prometheus histogram semantics)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    total: int = 0
    sum_ms: float = 0.0

    def observe(self, latency_ms: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
        self.total += 1
        self.sum_ms += latency_ms


@dataclass
class _ServiceWindow:
    """One service's recent requests: per-second counters plus the latest latencies."""

    seconds: deque[tuple[int, dict[tuple[str, int], int]]]
    latencies: deque[float]


REJECT_TIER = "reject"
"""The tier the dispatcher records for requests it turned away without serving them."""

UNKNOWN_CLIENT_KIND = "unknown"
"""The client kind of a request recorded without one."""

RECENT_REQUESTS = 200
"""How many of the latest requests `RequestLog.recent` can return (the dashboard's request list)."""


@dataclass(frozen=True, slots=True)
class RecentRequest:
    """One answered request as the operator's list shows it. `site` is the peer that served it,
    None when this site did."""

    at: float
    service: str
    tier: str
    status: int
    latency_ms: float
    site: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "service": self.service,
            "tier": self.tier,
            "status": self.status,
            "latency_ms": round(self.latency_ms, 3),
            "site": self.site,
        }


class RequestLog:
    """The site's requests: recent ones for rates and percentiles, totals since start.

    `record` is O(1) on the request path. `summary` (in the sampler's thread) costs the same at
    any request rate: counts are kept per second, and percentiles come from the most recent
    `latency_samples` requests of each service. The last `recent_size` requests are kept as they
    were (one small tuple each, oldest dropped first) for `recent`.
    """

    def __init__(
        self, window_s: float = 10.0, latency_samples: int = 2048, recent_size: int = RECENT_REQUESTS
    ) -> None:
        self.window_s = window_s
        self.latency_samples = latency_samples
        self._windows: dict[str, _ServiceWindow] = {}
        self.totals: dict[tuple[str, str, int], int] = {}
        self.histograms: dict[str, LatencyHistogram] = {}
        self.by_client: dict[tuple[str, str, str], LatencyHistogram] = {}
        """Latencies (and so counts) by (service, tier, client kind), since start."""
        self._recent: deque[tuple[float, str, str, int, float, str | None]] = deque(maxlen=recent_size)

    def record(
        self,
        service: str,
        tier: str,
        status: int,
        latency_ms: float,
        client_kind: str = UNKNOWN_CLIENT_KIND,
        site: str | None = None,
    ) -> None:
        """Count one answered request: `tier` is where it was served ("cache", "local", "llm", ...,
        or "reject" when it was turned away), `status` the HTTP status it got, `client_kind` the
        kind of client that sent it (a closed set: the schema's `ClientKind`), `site` the peer
        that served it (None: this site)."""
        self._recent.append((time.time(), service, tier, status, latency_ms, site))
        slot = (service, tier, status)
        self.totals[slot] = self.totals.get(slot, 0) + 1
        by_client = self.by_client.get((service, tier, client_kind))
        if by_client is None:
            by_client = self.by_client[(service, tier, client_kind)] = LatencyHistogram()
        by_client.observe(latency_ms)
        histogram = self.histograms.get(service)
        window = self._windows.get(service)
        if histogram is None or window is None:
            histogram = self.histograms[service] = LatencyHistogram()
            window = self._windows[service] = _ServiceWindow(
                deque(maxlen=int(self.window_s) + 2), deque(maxlen=self.latency_samples)
            )
        histogram.observe(latency_ms)
        second = int(time.monotonic())
        if not window.seconds or window.seconds[-1][0] != second:
            window.seconds.append((second, {}))
        counts = window.seconds[-1][1]
        key = (tier, status)
        counts[key] = counts.get(key, 0) + 1
        window.latencies.append(latency_ms)

    def recent(self, limit: int) -> list[RecentRequest]:
        """The last `limit` requests (at most `recent_size`), newest first."""
        latest = list(self._recent)[-limit:] if limit > 0 else []
        return [RecentRequest(*entry) for entry in reversed(latest)]

    def summary(self) -> tuple[ServiceRequestStats, ...]:
        horizon = int(time.monotonic()) - int(self.window_s)
        out = []
        for service, window in sorted(list(self._windows.items())):
            by_tier: dict[str, int] = {}
            requests = errors = rejected = 0
            for second, counts in list(window.seconds):
                if second <= horizon:
                    continue
                for (tier, status), count in list(counts.items()):
                    by_tier[tier] = by_tier.get(tier, 0) + count
                    requests += count
                    if status >= 500:
                        if tier == REJECT_TIER:
                            rejected += count
                        else:
                            errors += count
            if not requests:
                continue
            latencies = sorted(list(window.latencies)[-requests:])
            out.append(
                ServiceRequestStats(
                    service=service,
                    requests=requests,
                    rate_per_s=round(requests / self.window_s, 3),
                    errors=errors,
                    rejected=rejected,
                    p50_ms=_percentile(latencies, 0.50),
                    p95_ms=_percentile(latencies, 0.95),
                    p99_ms=_percentile(latencies, 0.99),
                    by_tier=by_tier,
                )
            )
        return tuple(out)


@dataclass
class MetricsMonitor:
    """Samples everything into `snapshot`; `refresh()` is what the background sampler awaits."""

    host: HostProbe
    gpu: GpuProbe
    requests: RequestLog
    runtime: Runtime | None = None
    instance_stats_interval_s: float = 2.0
    snapshot: MetricsSnapshot = field(default=EMPTY_SNAPSHOT)
    _instances: tuple[InstanceStats, ...] = ()
    _instances_at: float = 0.0

    def _sample_blocking(
        self,
    ) -> tuple[HostMetrics, tuple[GpuMetrics, ...], tuple[ServiceRequestStats, ...]]:
        return self.host.sample(), self.gpu.sample(), self.requests.summary()

    async def refresh(self) -> MetricsSnapshot:
        started = time.perf_counter()
        host, gpus, requests = await asyncio.to_thread(self._sample_blocking)
        now = time.monotonic()
        if self.runtime is not None and now - self._instances_at >= self.instance_stats_interval_s:
            self._instances = tuple(await self.runtime.stats())
            self._instances_at = now
        self.snapshot = MetricsSnapshot(
            taken_at=time.time(),
            sample_ms=round((time.perf_counter() - started) * 1000, 3),
            host=host,
            gpu_available=self.gpu.available,
            gpu_reason=self.gpu.reason,
            gpus=gpus,
            instances=self._instances,
            requests=requests,
            window_s=self.requests.window_s,
        )
        return self.snapshot


MetricsSection = Literal["all", "host", "gpu", "instances", "requests"]

METRICS_MONITOR_READS_ONLY: Final = True
"""`metrics_monitor` has no actions (only a `section` to report) and changes nothing: every call
is a read. Given actions, it would define and classify them the way `container_ops` does."""


def metrics_monitor_tool(monitor: MetricsMonitor) -> AgentTool:
    """Build the `metrics_monitor` tool over one site's metrics."""

    @tool(name="metrics_monitor")
    def metrics_monitor(section: MetricsSection = "all") -> dict[str, Any]:
        """Report this edge site's current resource use and request performance.

        The figures come from a snapshot the site refreshes every half second.

        Args:
            section: Which part to report: "host" (CPU %, load, memory, disk, network rates),
                "gpu" (per NVIDIA GPU: utilization %, memory, temperature, power; an empty list
                with a reason when the site has no GPU), "instances" (CPU % and memory of each
                running service instance), "requests" (per service over the last window: request
                rate, errors, rejected, p50/p95/p99 latency in ms, how many were served from
                cache, local instances, peers or the cloud), or "all". `errors` counts real server
                failures (5xx from an instance); `rejected` counts requests turned away for lack
                of capacity (503 no_capacity, tier "reject"); the two never overlap.

        Returns:
            A JSON object with the requested section(s) and the snapshot's age in seconds.
        """
        snap = monitor.snapshot
        data = snap.to_dict()
        out: dict[str, Any] = {"age_s": round(time.time() - snap.taken_at, 3) if snap.taken_at else None}
        if section in ("all", "host"):
            out["host"] = data["host"]
        if section in ("all", "gpu"):
            out["gpu"] = {
                "available": snap.gpu_available,
                "reason": snap.gpu_reason,
                "devices": data["gpus"],
            }
        if section in ("all", "instances"):
            out["instances"] = data["instances"]
        if section in ("all", "requests"):
            out["requests"] = {"window_s": snap.window_s, "services": data["requests"]}
        return out

    return metrics_monitor
