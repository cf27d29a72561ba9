"""Budgets on a real `mec serve`: an answer past the budget is a 504, never a 200 (a cacheable one
is still stored), and a request predicted to miss its budget is refused before it is sent.

The services are `tests.support.slow_workload` instances, which answer after `payload.ms`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import OPERATOR_KEY, SiteProcess, running_site
from tests.support.polling import until

SLOW_SERVICES = {
    "MEC_SERVICES__INFERENCE__REPLICAS": "0",
    "MEC_SERVICES__GAME-STATE__REPLICAS": "0",
    "MEC_SERVICES__SENSOR__REPLICAS": "0",
    "MEC_SERVICES__SLOW__MODULE": "tests.support.slow_workload",
    "MEC_SERVICES__SLOW__IMAGE": "mec-workloads:0.1",
    "MEC_SERVICES__SLOW__DEFAULT_BUDGET_MS": "20000",
    "MEC_SERVICES__SLOWCACHE__MODULE": "tests.support.slow_workload",
    "MEC_SERVICES__SLOWCACHE__IMAGE": "mec-workloads:0.1",
    "MEC_SERVICES__SLOWCACHE__CACHEABLE": "true",
    "MEC_SERVICES__SLOWCACHE__DEFAULT_BUDGET_MS": "20000",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteProcess]:
    with running_site(tmp_path_factory.mktemp("deadlines"), SLOW_SERVICES) as started:
        yield started


def _ask(site: SiteProcess, service: str, ms: float, budget_ms: int | None = None) -> httpx.Response:
    body: dict[str, Any] = {"service": service, "payload": {"ms": ms}, "client": {"kind": "iot", "id": "t"}}
    if budget_ms is not None:
        body["latency_budget_ms"] = budget_ms
    return httpx.post(f"{site.url}/v1/requests", json=body, headers=site.headers(), timeout=30)


def _gate(site: SiteProcess, service: str) -> dict[str, Any]:
    snapshot = httpx.get(f"{site.url}/v1/metrics/snapshot", headers=site.headers(OPERATOR_KEY), timeout=10)
    gates = snapshot.json()["admission"]["instances"]
    [figures] = [figures for instance_id, figures in gates.items() if instance_id.startswith(f"{service}-")]
    return figures


def test_an_answer_that_comes_after_the_budget_is_a_504_never_a_200(site: SiteProcess) -> None:
    late = _ask(site, "slow", ms=600, budget_ms=150)
    assert late.status_code == 504, late.text
    assert late.json()["error"]["code"] == "budget_exceeded"
    assert "total;dur=" in late.headers["server-timing"]


def test_a_cacheable_answer_that_comes_too_late_is_stored_for_the_next_caller(site: SiteProcess) -> None:
    assert _ask(site, "slowcache", ms=500, budget_ms=150).status_code == 504

    def cached() -> bool:
        again = _ask(site, "slowcache", ms=500, budget_ms=150)
        return again.status_code == 200 and again.json()["route"]["tier"] == "cache"

    until(cached, "the late answer was cached and served to the next caller", 20)


def test_a_request_predicted_to_miss_its_budget_is_refused_before_it_is_sent(site: SiteProcess) -> None:
    until(lambda: _ask(site, "slow", ms=0).status_code == 200, "the slow instance is ready", 20)
    for _ in range(5):  # the instance shows what it costs: about 300 ms a request
        assert _ask(site, "slow", ms=300).status_code == 200
    sent = _gate(site, "slow")["sent"]
    refused = _ask(site, "slow", ms=0, budget_ms=50)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert error["code"] == "no_capacity" and "within the" in error["message"]
    assert _gate(site, "slow")["sent"] == sent  # it never reached the workload
