"""Prometheus exposition of the site's metrics, serialised by prometheus_client.

`render` wraps what the site already holds in memory (its request log, the cache's counters, the
runtime's instances, the last metrics sample, the chat turns and the admission report) in a
`SiteCollector`, registers it in a `CollectorRegistry` of its own and returns `generate_latest` of
that registry. The process-wide default registry is never used: several sites can live in one
process (tests, embedding), and a scrape of one must show only that site's figures.

Every sample carries the `site` label. Counter families are created from their exposed name
(`mec_requests_total`); `CounterMetricFamily` keeps the name without `_total` and appends it to
its samples itself, so the text shows the same names as the exposed one. No counter is given a
`created` time, so no `_created` samples appear (the process-wide `disable_created_metrics()`
switch only concerns prometheus_client's own `Counter`/`Histogram` objects and is left alone).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from tools.metrics_monitor import LATENCY_BUCKETS_MS, LatencyHistogram, MetricsSnapshot, RequestLog
from tools.probes import GpuMetrics
from tools.runtimes.base import Instance

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The classic text format (0.0.4), which every Prometheus version scrapes; the body uses nothing newer."""
"""The media type of what `render` returns (prometheus_client's, for its text format)."""

Reading = float | int | bool | None
"""A sample's value as the site holds it; None is a reading a probe could not take."""

Row = tuple[Sequence[str], Reading]
"""One sample of a family: its label values after `site` (in the family's label order), its value."""


def _value(reading: Reading) -> float:
    """A sample value: booleans are 1/0, a missing reading is NaN."""
    return math.nan if reading is None else float(reading)


def _le(bound_ms: float) -> str:
    """A bucket's `le` label: its upper bound in seconds, written as it always was ("0.0025", "5", "+Inf")."""
    return "+Inf" if math.isinf(bound_ms) else f"{bound_ms / 1000:g}"


def _buckets(histogram: LatencyHistogram) -> list[tuple[str, float]]:
    """A latency histogram's cumulative buckets, `le` in seconds, ending in +Inf."""
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*LATENCY_BUCKETS_MS, math.inf), histogram.counts, strict=True):
        running += count
        buckets.append((_le(bound), running))
    return buckets


@dataclass(frozen=True)
class ConsensusFigures:
    """This site's consensus node as a scrape shows it (the caller reads it from the swarm)."""

    term: int
    commit_index: int
    """The highest log index known committed."""
    applied_index: int
    """The last index this site's replicated state applied."""
    leader: str | None
    """The current leader's site id, None while there is none."""
    is_leader: bool
    members: tuple[str, ...] = ()


OVERLOAD_STATES: tuple[str, ...] = ("normal", "shedding", "cloud")
"""The site's overload states; `mec_overload_state` has one sample each (1 for the current one)."""

BREAKER_STATES: Mapping[str, int] = {"closed": 0, "half_open": 1, "open": 2}
"""`mec_cloud_breaker_state` values of each circuit-breaker state."""

CLOUD_OUTCOMES: tuple[str, ...] = ("answered", "refused", "failed", "timed_out", "rejected")
"""`outcome` values of `mec_cloud_requests_total`, each a counter of `CloudTarget.snapshot()`:
answered (200), refused (a 4xx), failed (counted against the breaker, time-outs among them),
timed_out (ran out of budget, whether or not it counted against the breaker), rejected (turned
away unsent by the open breaker)."""


class SiteCollector:
    """A prometheus_client custom collector over one site's figures at one moment.

    `collect()` yields a fresh family for each metric the site exposes, built from the data given
    to the constructor (nothing is sampled here). Families without samples (no GPU, no requests
    yet) are still yielded, so their HELP and TYPE are always there.
    """

    def __init__(
        self,
        site_id: str,
        snapshot: MetricsSnapshot,
        requests: RequestLog,
        cache_stats: Mapping[str, Any],
        instances: Iterable[Instance],
        chat_turns: Mapping[tuple[str, str], int] | None = None,
        admission: Mapping[str, Any] | None = None,
        *,
        consensus: ConsensusFigures | None = None,
        cloud: Mapping[str, Mapping[str, Any]] | None = None,
        alerts: Mapping[str, Any] | None = None,
        overload_state: str | None = None,
    ) -> None:
        self.site_id = site_id
        self.snapshot = snapshot
        self.requests = requests
        self.cache_stats = cache_stats
        self.instances = tuple(instances)
        self.chat_turns = chat_turns or {}
        self.admission = admission
        self.consensus = consensus
        self.cloud = cloud
        self.alerts = alerts
        self.overload_state = overload_state

    def _gauge(
        self, name: str, help_: str, rows: Iterable[Row] = (), labels: Sequence[str] = ()
    ) -> GaugeMetricFamily:
        """A gauge family labelled `site` and then `labels`."""
        family = GaugeMetricFamily(name, help_, labels=["site", *labels])
        for values, reading in rows:
            family.add_metric([self.site_id, *values], _value(reading))
        return family

    def _counter(
        self, name: str, help_: str, rows: Iterable[Row] = (), labels: Sequence[str] = ()
    ) -> CounterMetricFamily:
        """A counter family labelled `site` and then `labels`; `name` is the exposed name, `_total` included."""
        if not name.endswith("_total"):
            raise ValueError(f"a counter is exposed as NAME_total, not {name!r}")
        family = CounterMetricFamily(name, help_, labels=["site", *labels])
        for values, reading in rows:
            family.add_metric([self.site_id, *values], _value(reading))
        return family

    def _site_gauge(self, name: str, help_: str, reading: Reading) -> GaugeMetricFamily:
        """A gauge with one sample, labelled `site` only."""
        return self._gauge(name, help_, [((), reading)])

    def _site_counter(self, name: str, help_: str, reading: Reading) -> CounterMetricFamily:
        """A counter with one sample, labelled `site` only."""
        return self._counter(name, help_, [((), reading)])

    def collect(self) -> Iterator[Metric]:
        """Every family `/metrics` exposes, in the order it always listed them."""
        yield self._counter(
            "mec_requests_total",
            "Client requests by service, route tier and HTTP status.",
            (
                ((service, tier, str(status)), count)
                for (service, tier, status), count in sorted(self.requests.totals.items())
            ),
            labels=["service", "tier", "status"],
        )
        yield self._request_durations()
        yield from self._by_client()
        yield from self._cache()
        yield from self._instances()
        yield from self._host_and_gpus()
        yield self._counter(
            "mec_chat_turns_total",
            "Turns of the operator agent (chat and allow_llm requests) by serving model and outcome.",
            (((model, outcome), count) for (model, outcome), count in sorted(self.chat_turns.items())),
            labels=["model", "outcome"],
        )
        yield self._site_counter(
            "mec_llm_requests_total",
            "Turns handed to the LLM path (operator chat and allow_llm requests), whatever their outcome.",
            sum(self.chat_turns.values()),
        )
        if self.admission is not None:
            yield from self._admission(self.admission)
        if self.consensus is not None:
            yield from self._consensus(self.consensus)
        if self.cloud is not None:
            yield from self._cloud(self.cloud)
        if self.alerts is not None:
            yield from self._alerts(self.alerts)
        if self.overload_state is not None:
            states = (
                OVERLOAD_STATES
                if self.overload_state in OVERLOAD_STATES
                else (*OVERLOAD_STATES, self.overload_state)
            )
            yield self._gauge(
                "mec_overload_state",
                "The site's overload state: 1 for the current one, 0 for the others.",
                (((state,), state == self.overload_state) for state in states),
                labels=["state"],
            )
        yield self._site_gauge(
            "mec_metrics_sample_seconds", "Cost of the last metrics sample.", self.snapshot.sample_ms / 1000
        )

    def _request_durations(self) -> HistogramMetricFamily:
        """The request log's latency histograms (cumulative buckets in seconds), one per service."""
        family = HistogramMetricFamily(
            "mec_request_duration_seconds",
            "Time from request arrival to response.",
            labels=["site", "service"],
        )
        for service, histogram in sorted(self.requests.histograms.items()):
            family.add_metric([self.site_id, service], _buckets(histogram), histogram.sum_ms / 1000)
        return family

    def _by_client(self) -> Iterator[Metric]:
        """Requests and their latencies by service, tier and client kind."""
        rows = sorted(self.requests.by_client.items())
        yield self._counter(
            "mec_client_requests_total",
            "Client requests by service, route tier and client kind.",
            ((key, histogram.total) for key, histogram in rows),
            labels=["service", "tier", "client_kind"],
        )
        family = HistogramMetricFamily(
            "mec_client_request_duration_seconds",
            "Time from request arrival to response, by service, route tier and client kind.",
            labels=["site", "service", "tier", "client_kind"],
        )
        for key, histogram in rows:
            family.add_metric([self.site_id, *key], _buckets(histogram), histogram.sum_ms / 1000)
        yield family

    def _cache(self) -> Iterator[Metric]:
        stats = self.cache_stats
        yield self._counter(
            "mec_cache_lookups_total",
            "Cache lookups by result.",
            [(("hit",), stats["hits"]), (("miss",), stats["misses"])],
            labels=["result"],
        )
        lookups = stats["hits"] + stats["misses"]
        yield self._site_gauge(
            "mec_cache_hit_ratio",
            "Cache hits over lookups since start (NaN before the first lookup).",
            stats["hits"] / lookups if lookups else None,
        )
        yield self._site_gauge(
            "mec_cache_entries", "Entries in the in-process cache.", stats["entries_in_memory"]
        )
        yield self._gauge(
            "mec_cache_redis_up",
            "1 when Redis answers, 0 when the site serves from its in-process cache; absent without Redis.",
            [((), stats["redis_up"])] if stats["redis_up"] is not None else [],
        )
        yield self._site_counter(
            "mec_cache_redis_outages_total", "Times Redis became unreachable.", stats["redis_outages"]
        )

    def _instances(self) -> Iterator[Metric]:
        yield self._gauge(
            "mec_instance_up",
            "1 for an instance that passed its health check.",
            (((i.service, i.id), i.ready) for i in self.instances),
            labels=["service", "instance"],
        )
        yield self._counter(
            "mec_instance_restarts_total",
            "Restarts of an instance after it crashed or stopped answering.",
            (((i.service, i.id), i.restarts) for i in self.instances),
            labels=["service", "instance"],
        )
        yield self._gauge(
            "mec_instance_cpu_percent",
            "CPU use of an instance (100 = one core).",
            (((s.instance_id,), s.cpu_percent) for s in self.snapshot.instances),
            labels=["instance"],
        )
        yield self._gauge(
            "mec_instance_memory_bytes",
            "Resident memory of an instance.",
            (((s.instance_id,), s.memory_bytes) for s in self.snapshot.instances),
            labels=["instance"],
        )

    def _host_and_gpus(self) -> Iterator[Metric]:
        """The host's families (absent before the first sample) and each GPU's."""
        host = self.snapshot.host
        if host is not None:
            yield self._site_gauge("mec_host_cpu_percent", "Host CPU utilisation.", host.cpu_percent)
            yield self._site_gauge("mec_host_memory_percent", "Host memory in use.", host.memory_percent)
            yield self._site_gauge("mec_host_load1", "One-minute load average.", host.load_1m)
        yield self._site_gauge(
            "mec_gpu_available", "1 when NVML reports at least one GPU.", self.snapshot.gpu_available
        )
        readings: tuple[tuple[str, str, Callable[[GpuMetrics], Reading]], ...] = (
            ("mec_gpu_utilization_percent", "GPU utilisation.", lambda g: g.utilization_percent),
            ("mec_gpu_memory_used_bytes", "GPU memory in use.", lambda g: g.memory_used_bytes),
            ("mec_gpu_temperature_celsius", "GPU temperature.", lambda g: g.temperature_c),
            ("mec_gpu_power_watts", "GPU power draw.", lambda g: g.power_w),
        )
        for name, help_, reading in readings:
            yield self._gauge(
                name,
                help_,
                (((str(g.index), g.name), reading(g)) for g in self.snapshot.gpus),
                labels=["gpu", "name"],
            )

    def _admission(self, admission: Mapping[str, Any]) -> Iterator[Metric]:
        """The front door, each instance's gate, and answers that came after their budget."""
        door = admission["door"]
        yield self._site_counter(
            "mec_front_door_refused_total",
            "Fast-path requests refused (503) before their body was read: the site was saturated.",
            door["refused"],
        )
        yield self._site_gauge(
            "mec_front_door_limit",
            "Fast-path requests that may wait before the dispatcher (adaptive).",
            door["limit"],
        )
        yield self._site_gauge(
            "mec_front_door_waiting", "Fast-path requests waiting before the dispatcher now.", door["waiting"]
        )
        yield self._site_gauge(
            "mec_event_loop_lag_seconds",
            "How late the site's event loop runs its timers (smoothed).",
            door["loop_lag_ms"] / 1000,
        )
        yield self._site_counter(
            "mec_requests_late_total",
            "Answers that were ready after the request's budget (sent as 504, never as 200).",
            admission["late"],
        )
        gates: list[tuple[str, Mapping[str, Any]]] = sorted(admission["instances"].items())
        for name, help_, figure, scale in _GATE_SERIES:
            family = self._counter if name.endswith("_total") else self._gauge
            yield family(
                name,
                help_,
                (((iid,), figures[figure] * scale) for iid, figures in gates),
                labels=["instance"],
            )

    def _consensus(self, figures: ConsensusFigures) -> Iterator[Metric]:
        """This site's view of the swarm's consensus."""
        yield self._site_gauge("mec_consensus_term", "The consensus term this site is in.", figures.term)
        yield self._site_gauge(
            "mec_consensus_commit_index", "The highest log index known committed.", figures.commit_index
        )
        yield self._site_gauge(
            "mec_consensus_applied_index",
            "The last log index applied to this site's replicated state.",
            figures.applied_index,
        )
        yield self._site_gauge(
            "mec_consensus_is_leader", "1 when this site is the consensus leader.", figures.is_leader
        )
        members = sorted({*figures.members, *([figures.leader] if figures.leader else [])})
        yield self._gauge(
            "mec_consensus_leader",
            "1 for the site this site sees as the consensus leader, 0 for the other members.",
            (((member,), member == figures.leader) for member in members),
            labels=["site_id"],
        )

    def _cloud(self, cloud: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
        """Each service's cloud endpoint: its breaker and what became of the requests sent to it."""
        targets = sorted(cloud.items())
        yield self._gauge(
            "mec_cloud_breaker_state",
            "Circuit breaker of a service's cloud endpoint: 0 closed, 1 half-open, 2 open.",
            (((service,), BREAKER_STATES[target["state"]]) for service, target in targets),
            labels=["service"],
        )
        yield self._counter(
            "mec_cloud_sent_total",
            "Requests sent to a service's cloud endpoint.",
            (((service,), target["sent"]) for service, target in targets),
            labels=["service"],
        )
        yield self._counter(
            "mec_cloud_requests_total",
            "Cloud-tier requests of a service by outcome: answered, refused (4xx), failed (against the "
            "breaker, time-outs included), timed_out (overlaps failed), rejected (unsent: breaker open).",
            (
                ((service, outcome), target[outcome])
                for service, target in targets
                for outcome in CLOUD_OUTCOMES
            ),
            labels=["service", "outcome"],
        )

    def _alerts(self, report: Mapping[str, Any]) -> Iterator[Metric]:
        """The alert service's figures (`AlertService.report()`)."""
        yield self._gauge(
            "mec_alerts_active",
            "Alerts firing now, by severity.",
            (((severity,), count) for severity, count in sorted(report["active_by_severity"].items())),
            labels=["severity"],
        )
        yield self._counter(
            "mec_alerts_events_total",
            "Alert events published, by kind (fired, refired, resolved, acknowledged).",
            (((kind,), count) for kind, count in sorted(report["events"].items())),
            labels=["kind"],
        )
        yield self._site_counter(
            "mec_alert_evaluation_seconds_total",
            "Time spent evaluating the alert rules since start.",
            report["evaluate_s"],
        )


_GATE_SERIES: tuple[tuple[str, str, str, float], ...] = (
    ("mec_instance_concurrency_limit", "Adaptive concurrency limit of an instance.", "limit", 1),
    ("mec_instance_inflight", "Requests in flight at an instance.", "inflight", 1),
    ("mec_instance_queued", "Requests waiting at the site for an instance.", "queued", 1),
    (
        "mec_instance_refused_in_queue_total",
        "Queued requests refused before being sent: their budget no longer covered the instance's latency.",
        "refused_in_queue",
        1,
    ),
    (
        "mec_instance_service_seconds",
        "What one more request costs an instance (its recent latency over its concurrency).",
        "service_ms",
        1 / 1000,
    ),
)
"""Each instance gate's series: (exposed name, help, figure of `InstanceGate.figures()`, scale);
names ending in `_total` are counters."""


def render(
    site_id: str,
    snapshot: MetricsSnapshot,
    requests: RequestLog,
    cache_stats: Mapping[str, Any],
    instances: Iterable[Instance],
    chat_turns: Mapping[tuple[str, str], int] | None = None,
    admission: Mapping[str, Any] | None = None,
    *,
    consensus: ConsensusFigures | None = None,
    cloud: Mapping[str, Mapping[str, Any]] | None = None,
    alerts: Mapping[str, Any] | None = None,
    overload_state: str | None = None,
) -> str:
    """Everything `/metrics` exposes, from data already in memory (no sampling here), as
    Prometheus text (`CONTENT_TYPE`). Each call uses a registry of its own (see the module).

    The keyword-only parts are each optional; their families appear only when given: `consensus`
    (a site of a swarm), `cloud` (`CloudCompute.snapshot()`: services with a cloud endpoint),
    `alerts` (`AlertService.report()`), `overload_state` (one of `OVERLOAD_STATES`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        SiteCollector(
            site_id,
            snapshot,
            requests,
            cache_stats,
            instances,
            chat_turns,
            admission,
            consensus=consensus,
            cloud=cloud,
            alerts=alerts,
            overload_state=overload_state,
        )
    )
    return generate_latest(registry).decode("utf-8")
