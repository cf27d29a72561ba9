"""`/metrics` as Prometheus reads it: a real site in process (`httpx.ASGITransport` on the real app,
its workload a real in-test HTTP server), the body parsed by `prometheus_client.parser`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import prometheus_client
import pytest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from api.site import Site
from monitoring import prometheus
from tests.support.inprocess import in_process_site
from tests.support.polling import eventually
from tools.metrics_monitor import EMPTY_SNAPSHOT, LATENCY_BUCKETS_MS, RequestLog
from tools.probes import GpuMetrics
from tools.runtimes.base import Instance, free_port

CLIENT = "client-key-a-0123456789"
OPERATOR = "operator-key-0123456789"
SITE = "edge-7"

AWKWARD = 'svc "1" \\ at c:\\x\nline two'
"""A label value with a quote, backslashes and a newline."""

COUNTERS = {
    "mec_requests",
    "mec_cache_lookups",
    "mec_cache_redis_outages",
    "mec_instance_restarts",
    "mec_chat_turns",
    "mec_front_door_refused",
    "mec_requests_late",
    "mec_instance_refused_in_queue",
    "mec_client_requests",
    "mec_llm_requests",
    "mec_alerts_events",
    "mec_alert_evaluation_seconds",
}
CLOUD_COUNTERS = {"mec_cloud_sent", "mec_cloud_requests"}
"""Counters of a site with a cloud endpoint only."""
HISTOGRAMS = {"mec_request_duration_seconds", "mec_client_request_duration_seconds"}


@dataclass
class Api:
    http: httpx.AsyncClient
    site: Site

    async def request(self, payload: dict[str, object], kind: str = "mobile") -> httpx.Response:
        body = {"service": "svc", "payload": payload, "client": {"kind": kind, "id": "c"}}
        return await self.http.post("/v1/requests", json=body, headers={"Authorization": f"Bearer {CLIENT}"})

    async def ask_the_agent(self, text: str) -> httpx.Response:
        body = {"payload": {"text": text}, "client": {"kind": "iot", "id": "v"}, "allow_llm": True}
        return await self.http.post("/v1/requests", json=body, headers={"Authorization": f"Bearer {CLIENT}"})

    async def metrics(self) -> dict[str, prometheus_client.Metric]:
        """The parsed families of an operator's scrape, by family name."""
        response = await self.http.get("/metrics", headers={"Authorization": f"Bearer {OPERATOR}"})
        assert response.status_code == 200, response.text
        return {family.name: family for family in text_string_to_metric_families(response.text)}


SiteFactory = Callable[[str], AbstractAsyncContextManager[Api]]


@pytest.fixture
def site_with_instance(tmp_path: Path) -> SiteFactory:
    """A real site whose one service `svc` has one instance, named as the test says."""

    @asynccontextmanager
    async def build(instance_id: str) -> AsyncIterator[Api]:
        async with in_process_site(
            tmp_path, [CLIENT], [OPERATOR], instance_id=instance_id, site_id=SITE
        ) as running:
            yield Api(running.http, running.site)

    return build


@pytest.fixture
async def api(site_with_instance: SiteFactory) -> AsyncIterator[Api]:
    async with site_with_instance("svc-1") as api:
        yield api


def only(family: prometheus_client.Metric, name: str, **labels: str) -> Sample:
    """The one sample of `family` named `name` whose labels include `labels`."""
    found = [s for s in family.samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) == 1, (name, labels, family.samples)
    return found[0]


async def test_metrics_is_for_operator_keys_only(api: Api) -> None:
    anonymous = await api.http.get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "missing_key"
    client = await api.http.get("/metrics", headers={"Authorization": f"Bearer {CLIENT}"})
    assert client.status_code == 403
    assert client.json()["error"]["code"] == "forbidden"
    assert client.json()["error"]["field"] == "authorization"
    operator = await api.http.get("/metrics", headers={"Authorization": f"Bearer {OPERATOR}"})
    assert operator.status_code == 200
    assert operator.headers["content-type"] == CONTENT_TYPE_PLAIN_0_0_4
    assert "mec_requests" in {family.name for family in text_string_to_metric_families(operator.text)}


async def test_served_requests_are_counted_by_service_tier_and_status(api: Api) -> None:
    served = 3
    for n in range(served):
        assert (await api.request({"n": n})).status_code == 200
    assert (await api.request({"mode": "fail"})).status_code == 502
    requests = (await api.metrics())["mec_requests"]
    assert requests.type == "counter"
    ok = only(requests, "mec_requests_total", site=SITE, service="svc", tier="local", status="200")
    assert ok.value == served
    failed = only(requests, "mec_requests_total", site=SITE, service="svc", tier="local", status="502")
    assert failed.value == 1
    assert sum(s.value for s in requests.samples) == served + 1


async def test_request_durations_are_a_cumulative_histogram_ending_in_inf_equal_to_the_count(
    api: Api,
) -> None:
    for n in range(4):
        await api.request({"mode": "wait", "ms": 3 * n})
    durations = (await api.metrics())["mec_request_duration_seconds"]
    assert durations.type == "histogram"
    buckets = [s for s in durations.samples if s.name == "mec_request_duration_seconds_bucket"]
    assert all(s.labels.keys() == {"site", "service", "le"} for s in buckets)
    bounds = [float(s.labels["le"]) for s in buckets]
    assert bounds == [b / 1000 for b in LATENCY_BUCKETS_MS] + [math.inf]
    assert buckets[-1].labels["le"] == "+Inf"
    counts = [s.value for s in buckets]
    assert counts == sorted(counts), "buckets are cumulative"
    count = only(durations, "mec_request_duration_seconds_count", service="svc")
    assert counts[-1] == count.value == 4
    assert only(durations, "mec_request_duration_seconds_sum", service="svc").value >= 0.009


async def test_families_have_their_types_and_every_sample_its_site(api: Api) -> None:
    await api.request({"n": 1})
    families = await api.metrics()
    assert {"mec_requests", "mec_instance_up", "mec_front_door_limit", "mec_metrics_sample_seconds"} <= set(
        families
    )
    for name, family in families.items():
        expected = (
            "counter" if name in COUNTERS | CLOUD_COUNTERS else "histogram" if name in HISTOGRAMS else "gauge"
        )
        assert family.type == expected, name
        assert family.documentation, name
        for sample in family.samples:
            assert sample.labels["site"] == SITE, sample
            assert not sample.name.endswith("_created"), sample
            if family.type == "counter":
                assert sample.name == f"{name}_total", sample
    assert COUNTERS <= set(families) and HISTOGRAMS <= set(families)


async def test_an_instance_id_with_quotes_backslashes_and_newlines_round_trips(
    site_with_instance: SiteFactory,
) -> None:
    async with site_with_instance(AWKWARD) as api:
        assert (await api.request({"n": 1})).status_code == 200
        families = await api.metrics()
    assert only(families["mec_instance_up"], "mec_instance_up", instance=AWKWARD).labels == {
        "site": SITE,
        "service": "svc",
        "instance": AWKWARD,
    }
    assert only(families["mec_instance_inflight"], "mec_instance_inflight", instance=AWKWARD).value == 0


def test_gpu_and_chat_labels_round_trip_and_a_missing_reading_is_nan() -> None:
    gpu = GpuMetrics(0, 'NVIDIA "H200"\\\n', 55.0, 1024, 2048, temperature_c=None, power_w=300.5)
    snapshot = dataclasses.replace(EMPTY_SNAPSHOT, gpu_available=True, gpus=(gpu,))
    cache = {"hits": 0, "misses": 0, "entries_in_memory": 0, "redis_up": None, "redis_outages": 0}
    text = prometheus.render(SITE, snapshot, RequestLog(), cache, [], {(AWKWARD, "ok"): 2})
    families = {f.name: f for f in text_string_to_metric_families(text)}
    gpu_labels = {"site": SITE, "gpu": "0", "name": gpu.name}
    assert only(families["mec_gpu_power_watts"], "mec_gpu_power_watts").labels == gpu_labels
    assert only(families["mec_gpu_power_watts"], "mec_gpu_power_watts").value == 300.5
    assert math.isnan(only(families["mec_gpu_temperature_celsius"], "mec_gpu_temperature_celsius").value)
    assert only(families["mec_chat_turns"], "mec_chat_turns_total", model=AWKWARD).value == 2
    assert families["mec_cache_redis_up"].samples == []


def test_each_render_has_its_own_registry() -> None:
    """Two sites in one process: each scrape shows its own site only, the default registry none."""
    cache = {"hits": 1, "misses": 0, "entries_in_memory": 0, "redis_up": True, "redis_outages": 0}
    log = RequestLog()
    log.record("svc", "local", 200, 1.0)
    for site_id in ("site-a", "site-b"):
        text = prometheus.render(
            site_id, EMPTY_SNAPSHOT, log, cache, [Instance("i", "svc", "h", 1, "img", False)]
        )
        sites = {s.labels["site"] for f in text_string_to_metric_families(text) for s in f.samples}
        assert sites == {site_id}
    assert b"mec_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


async def test_requests_are_counted_and_timed_by_service_tier_and_client_kind(api: Api) -> None:
    assert (await api.request({"n": 1})).status_code == 200
    assert (await api.request({"n": 2})).status_code == 200
    assert (await api.request({"n": 3}, kind="iot")).status_code == 403  # svc serves mobile clients
    assert (await api.ask_the_agent("what is the status of the site?")).status_code == 200
    families = await api.metrics()
    counts = families["mec_client_requests"]
    assert counts.type == "counter"
    mobile = only(counts, "mec_client_requests_total", service="svc", tier="local", client_kind="mobile")
    assert mobile.labels.keys() == {"site", "service", "tier", "client_kind"}
    assert mobile.value == 2
    refused = only(counts, "mec_client_requests_total", service="svc", tier="reject", client_kind="iot")
    assert refused.value == 1
    agent = only(counts, "mec_client_requests_total", service="(llm)", tier="llm", client_kind="iot")
    assert agent.value == 1
    durations = families["mec_client_request_duration_seconds"]
    assert durations.type == "histogram"
    count = only(durations, "mec_client_request_duration_seconds_count", tier="local", client_kind="mobile")
    assert count.value == 2
    inf = only(
        durations, "mec_client_request_duration_seconds_bucket", tier="local", client_kind="mobile", le="+Inf"
    )
    assert inf.value == 2
    llm = families["mec_llm_requests"]
    assert llm.type == "counter"
    assert only(llm, "mec_llm_requests_total").value == 1


async def test_cache_hit_ratio_is_hits_over_lookups(tmp_path: Path) -> None:
    async with in_process_site(
        tmp_path, [CLIENT], [OPERATOR], site_id=SITE, service={"cacheable": True}
    ) as running:
        api = Api(running.http, running.site)
        before = (await api.metrics())["mec_cache_hit_ratio"]
        assert math.isnan(only(before, "mec_cache_hit_ratio").value), "no lookup yet"
        first, second = await api.request({"n": 1}), await api.request({"n": 1})
        assert (first.json()["cached"], second.json()["cached"]) == (False, True)
        ratio = (await api.metrics())["mec_cache_hit_ratio"]
    assert ratio.type == "gauge"
    assert only(ratio, "mec_cache_hit_ratio").labels == {"site": SITE}
    assert only(ratio, "mec_cache_hit_ratio").value == 0.5


ALWAYS_FIRING = {"name": "always_busy", "metric": "cpu_percent", "high": -1, "for_s": 0, "clear_s": 0}
"""A rule every sample breaches (CPU is never below -1 %)."""


async def test_active_alerts_events_and_evaluation_time_are_exposed(tmp_path: Path) -> None:
    rule = {**ALWAYS_FIRING, "severity": "critical"}
    async with in_process_site(
        tmp_path, [CLIENT], [OPERATOR], site_id=SITE, alert_rules=[rule], sample_interval_s=0.05
    ) as running:
        api = Api(running.http, running.site)
        await eventually(lambda: running.site.alerts.engine.active(), "the rule fires")
        families = await api.metrics()
    active = families["mec_alerts_active"]
    assert active.type == "gauge"
    assert only(active, "mec_alerts_active", severity="critical").value == 1
    assert only(active, "mec_alerts_active", severity="warning").value == 0
    assert {s.labels["severity"] for s in active.samples} == {"info", "warning", "critical"}
    events = families["mec_alerts_events"]
    assert only(events, "mec_alerts_events_total", kind="fired").value == 1  # once, however many samples
    assert {s.labels["kind"] for s in events.samples} == {"fired"}
    evaluation = families["mec_alert_evaluation_seconds"]
    assert evaluation.type == "counter"
    assert only(evaluation, "mec_alert_evaluation_seconds_total").value > 0


async def test_a_cloud_endpoint_shows_its_breaker_state_and_outcomes(tmp_path: Path) -> None:
    async with in_process_site(
        tmp_path,
        [CLIENT],
        [OPERATOR],
        site_id=SITE,
        service={"cloud_url": f"http://127.0.0.1:{free_port()}/invoke"},
        cloud_breaker_failures=1,
    ) as running:
        api = Api(running.http, running.site)
        closed = (await api.metrics())["mec_cloud_breaker_state"]
        assert closed.type == "gauge"
        assert only(closed, "mec_cloud_breaker_state", service="svc").value == 0
        assert running.site.cloud is not None
        running.site.cloud.targets["svc"].breaker.record_failure()  # one failure opens it (failures=1)
        families = await api.metrics()
    assert only(families["mec_cloud_breaker_state"], "mec_cloud_breaker_state", service="svc").value == 2
    outcomes = families["mec_cloud_requests"]
    assert outcomes.type == "counter"
    assert {s.labels["outcome"] for s in outcomes.samples} == set(prometheus.CLOUD_OUTCOMES)
    assert all(s.value == 0 for s in outcomes.samples)
    assert only(families["mec_cloud_sent"], "mec_cloud_sent_total", service="svc").value == 0


async def test_a_site_without_swarm_or_cloud_has_no_consensus_or_cloud_families(api: Api) -> None:
    families = await api.metrics()
    assert not {n for n in families if n.startswith(("mec_consensus_", "mec_cloud_"))}
    assert "mec_alerts_active" in families
    states = {s.labels["state"]: s.value for s in families["mec_overload_state"].samples}
    assert states == {"normal": 1, "shedding": 0, "cloud": 0}  # every site has an overload state


def _families(**parts: object) -> dict[str, prometheus_client.Metric]:
    cache = {"hits": 0, "misses": 0, "entries_in_memory": 0, "redis_up": None, "redis_outages": 0}
    text = prometheus.render(SITE, EMPTY_SNAPSHOT, RequestLog(), cache, [], **parts)  # type: ignore[arg-type]
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_consensus_figures_name_the_leader_among_the_members() -> None:
    figures = prometheus.ConsensusFigures(
        term=7,
        commit_index=42,
        applied_index=41,
        leader="site-b",
        is_leader=False,
        members=("site-a", "site-b"),
    )
    families = _families(consensus=figures)
    assert only(families["mec_consensus_term"], "mec_consensus_term").value == 7
    assert only(families["mec_consensus_commit_index"], "mec_consensus_commit_index").value == 42
    assert only(families["mec_consensus_applied_index"], "mec_consensus_applied_index").value == 41
    assert only(families["mec_consensus_is_leader"], "mec_consensus_is_leader").value == 0
    leader = families["mec_consensus_leader"]
    assert leader.type == "gauge"
    assert {s.labels["site_id"]: s.value for s in leader.samples} == {"site-a": 0, "site-b": 1}
    assert all(s.labels["site"] == SITE for s in leader.samples)


def test_without_a_leader_no_site_is_marked_leader() -> None:
    figures = prometheus.ConsensusFigures(0, 0, 0, leader=None, is_leader=False, members=("site-a",))
    leader = _families(consensus=figures)["mec_consensus_leader"]
    assert [(s.labels["site_id"], s.value) for s in leader.samples] == [("site-a", 0)]


def test_overload_state_is_one_for_the_current_state_only() -> None:
    state = _families(overload_state="shedding")["mec_overload_state"]
    assert state.type == "gauge"
    assert {s.labels["state"]: s.value for s in state.samples} == {"normal": 0, "shedding": 1, "cloud": 0}
    assert "mec_overload_state" not in _families()
