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
from tools.metrics_monitor import EMPTY_SNAPSHOT, LATENCY_BUCKETS_MS, RequestLog
from tools.probes import GpuMetrics
from tools.runtimes.base import Instance

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
}
HISTOGRAMS = {"mec_request_duration_seconds"}


@dataclass
class Api:
    http: httpx.AsyncClient
    site: Site

    async def request(self, payload: dict[str, object]) -> httpx.Response:
        body = {"service": "svc", "payload": payload, "client": {"kind": "mobile", "id": "c"}}
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
        expected = "counter" if name in COUNTERS else "histogram" if name in HISTOGRAMS else "gauge"
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
