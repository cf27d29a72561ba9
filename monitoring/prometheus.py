"""Prometheus text exposition (format 0.0.4) of the site's metrics."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from tools.metrics_monitor import LATENCY_BUCKETS_MS, MetricsSnapshot, RequestLog
from tools.runtimes.base import Instance

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, Any]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape(str(value))}"' for key, value in labels.items())
    return "{" + inner + "}"


def _number(value: float | int | bool | None) -> str:
    if value is None:
        return "NaN"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


class Exposition:
    """Collects metric families and renders them as text."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(
        self,
        name: str,
        kind: str,
        help_: str,
        samples: Iterable[tuple[Mapping[str, Any], float | int | bool | None]],
    ) -> None:
        self._lines.append(f"# HELP {name} {help_}")
        self._lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self._lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def histogram(
        self, name: str, help_: str, samples: Iterable[tuple[str, Mapping[str, Any], float | int]]
    ) -> None:
        """A histogram family; each sample is (suffix `_bucket`/`_sum`/`_count`, labels, value)."""
        self._lines.append(f"# HELP {name} {help_}")
        self._lines.append(f"# TYPE {name} histogram")
        for suffix, labels, value in samples:
            self._lines.append(f"{name}{suffix}{_labels(labels)} {_number(value)}")

    def render(self) -> str:
        return "\n".join(self._lines) + "\n"


def _admission(out: Exposition, site: Mapping[str, Any], admission: Mapping[str, Any]) -> None:
    """The front door, each instance's gate, and answers that came after their budget."""
    door = admission["door"]
    out.family(
        "mec_front_door_refused_total",
        "counter",
        "Fast-path requests refused (503) before their body was read: the site was saturated.",
        [(site, door["refused"])],
    )
    out.family(
        "mec_front_door_limit",
        "gauge",
        "Fast-path requests that may wait before the dispatcher (adaptive).",
        [(site, door["limit"])],
    )
    out.family(
        "mec_front_door_waiting",
        "gauge",
        "Fast-path requests waiting before the dispatcher now.",
        [(site, door["waiting"])],
    )
    out.family(
        "mec_event_loop_lag_seconds",
        "gauge",
        "How late the site's event loop runs its timers (smoothed).",
        [(site, door["loop_lag_ms"] / 1000)],
    )
    out.family(
        "mec_requests_late_total",
        "counter",
        "Answers that were ready after the request's budget (sent as 504, never as 200).",
        [(site, admission["late"])],
    )
    gates = sorted(admission["instances"].items())
    for name, key, kind, help_ in (
        ("mec_instance_concurrency_limit", "limit", "gauge", "Adaptive concurrency limit of an instance."),
        ("mec_instance_inflight", "inflight", "gauge", "Requests in flight at an instance."),
        ("mec_instance_queued", "queued", "gauge", "Requests waiting at the site for an instance."),
        (
            "mec_instance_refused_in_queue_total",
            "refused_in_queue",
            "counter",
            "Queued requests refused before being sent: their budget no longer covered the instance's latency.",
        ),
    ):
        out.family(name, kind, help_, (({**site, "instance": iid}, figures[key]) for iid, figures in gates))
    out.family(
        "mec_instance_service_seconds",
        "gauge",
        "What one more request costs an instance (its recent latency over its concurrency).",
        (({**site, "instance": iid}, figures["service_ms"] / 1000) for iid, figures in gates),
    )


def render(
    site_id: str,
    snapshot: MetricsSnapshot,
    requests: RequestLog,
    cache_stats: Mapping[str, Any],
    instances: Iterable[Instance],
    chat_turns: Mapping[tuple[str, str], int] | None = None,
    admission: Mapping[str, Any] | None = None,
) -> str:
    """Everything `/metrics` exposes, from data already in memory (no sampling here)."""
    out = Exposition()
    site = {"site": site_id}
    out.family(
        "mec_requests_total",
        "counter",
        "Client requests by service, route tier and HTTP status.",
        (
            ({**site, "service": service, "tier": tier, "status": status}, count)
            for (service, tier, status), count in sorted(requests.totals.items())
        ),
    )
    rows: list[tuple[str, Mapping[str, Any], float | int]] = []
    for service, histogram in sorted(requests.histograms.items()):
        running = 0
        for bound, count in zip((*LATENCY_BUCKETS_MS, math.inf), histogram.counts, strict=True):
            running += count
            le = "+Inf" if math.isinf(bound) else f"{bound / 1000:g}"
            rows.append(("_bucket", {**site, "service": service, "le": le}, running))
        rows.append(("_sum", {**site, "service": service}, histogram.sum_ms / 1000))
        rows.append(("_count", {**site, "service": service}, histogram.total))
    out.histogram("mec_request_duration_seconds", "Time from request arrival to response.", rows)

    out.family(
        "mec_cache_lookups_total",
        "counter",
        "Cache lookups by result.",
        [
            ({**site, "result": "hit"}, cache_stats["hits"]),
            ({**site, "result": "miss"}, cache_stats["misses"]),
        ],
    )
    out.family(
        "mec_cache_entries",
        "gauge",
        "Entries in the in-process cache.",
        [(site, cache_stats["entries_in_memory"])],
    )
    out.family(
        "mec_cache_redis_up",
        "gauge",
        "1 when Redis answers, 0 when the site serves from its in-process cache; absent without Redis.",
        [(site, cache_stats["redis_up"])] if cache_stats["redis_up"] is not None else [],
    )
    out.family(
        "mec_cache_redis_outages_total",
        "counter",
        "Times Redis became unreachable.",
        [(site, cache_stats["redis_outages"])],
    )

    instance_list = list(instances)
    out.family(
        "mec_instance_up",
        "gauge",
        "1 for an instance that passed its health check.",
        (({**site, "service": i.service, "instance": i.id}, i.ready) for i in instance_list),
    )
    out.family(
        "mec_instance_restarts_total",
        "counter",
        "Restarts of an instance after it crashed or stopped answering.",
        (({**site, "service": i.service, "instance": i.id}, i.restarts) for i in instance_list),
    )
    out.family(
        "mec_instance_cpu_percent",
        "gauge",
        "CPU use of an instance (100 = one core).",
        (({**site, "instance": s.instance_id}, s.cpu_percent) for s in snapshot.instances),
    )
    out.family(
        "mec_instance_memory_bytes",
        "gauge",
        "Resident memory of an instance.",
        (({**site, "instance": s.instance_id}, s.memory_bytes) for s in snapshot.instances),
    )

    host = snapshot.host
    if host is not None:
        out.family("mec_host_cpu_percent", "gauge", "Host CPU utilisation.", [(site, host.cpu_percent)])
        out.family("mec_host_memory_percent", "gauge", "Host memory in use.", [(site, host.memory_percent)])
        out.family("mec_host_load1", "gauge", "One-minute load average.", [(site, host.load_1m)])
    out.family(
        "mec_gpu_available",
        "gauge",
        "1 when NVML reports at least one GPU.",
        [(site, snapshot.gpu_available)],
    )
    gpu_rows = [({**site, "gpu": str(g.index), "name": g.name}, g) for g in snapshot.gpus]
    out.family(
        "mec_gpu_utilization_percent",
        "gauge",
        "GPU utilisation.",
        ((lbl, g.utilization_percent) for lbl, g in gpu_rows),
    )
    out.family(
        "mec_gpu_memory_used_bytes",
        "gauge",
        "GPU memory in use.",
        ((lbl, g.memory_used_bytes) for lbl, g in gpu_rows),
    )
    out.family(
        "mec_gpu_temperature_celsius",
        "gauge",
        "GPU temperature.",
        ((lbl, g.temperature_c) for lbl, g in gpu_rows),
    )
    out.family("mec_gpu_power_watts", "gauge", "GPU power draw.", ((lbl, g.power_w) for lbl, g in gpu_rows))
    out.family(
        "mec_chat_turns_total",
        "counter",
        "Turns of the operator agent (chat and allow_llm requests) by serving model and outcome.",
        (
            ({**site, "model": model, "outcome": outcome}, count)
            for (model, outcome), count in sorted((chat_turns or {}).items())
        ),
    )
    if admission is not None:
        _admission(out, site, admission)
    out.family(
        "mec_metrics_sample_seconds",
        "gauge",
        "Cost of the last metrics sample.",
        [(site, snapshot.sample_ms / 1000)],
    )
    return out.render()
