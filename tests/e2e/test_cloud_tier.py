"""The cloud tier through a real site (`mec serve` in a child process) and a real stand-in cloud
endpoint (`tests.support.cloud_endpoint`, a process of its own): a request no local instance can
take goes to the cloud; a dead endpoint opens the breaker, so requests get a fast 503 with
`Retry-After` instead of waiting; when it comes back the breaker closes."""

from __future__ import annotations

import httpx

from tests.conftest import CLIENT_KEY, OPERATOR_KEY
from tests.support.cloud_endpoint import CloudEndpoint
from tests.support.polling import until

CLIENT = {"Authorization": f"Bearer {CLIENT_KEY}"}
OPERATOR = {"Authorization": f"Bearer {OPERATOR_KEY}"}


def _sensor(site_url: str, n: int) -> httpx.Response:
    body = {
        "service": "sensor",
        "payload": {"sensor_id": f"cloud-{n}", "value": 20.5},
        "client": {"kind": "iot", "id": "t-1"},
        "latency_budget_ms": 1000,
    }
    return httpx.post(f"{site_url}/v1/requests", json=body, headers=CLIENT, timeout=10)


def test_without_a_local_instance_requests_go_to_the_cloud_and_a_dead_cloud_fails_fast(
    site_factory, cloud_endpoint: CloudEndpoint
) -> None:
    site = site_factory(
        {
            "MEC_SERVICES__INFERENCE__REPLICAS": "0",
            "MEC_SERVICES__SENSOR__REPLICAS": "0",  # no local sensor: the cloud is the only tier
            "MEC_SERVICES__SENSOR__CLOUD_URL": cloud_endpoint.url(),
            "MEC_CLOUD_BREAKER_FAILURES": "2",
            "MEC_CLOUD_BREAKER_OPEN_S": "1",
            "MEC_ALLOW_DEGRADED": "true",
        }
    )
    served = _sensor(site.url, 0)
    assert served.status_code == 200, served.text
    route = served.json()["route"]
    assert route["tier"] == "cloud" and route["target"].startswith("127.0.0.1:")
    assert cloud_endpoint.stats()["requests"] == 1

    cloud_endpoint.stop()
    failures = [_sensor(site.url, n) for n in (1, 2)]
    assert [r.status_code for r in failures] == [502, 502]
    refused = _sensor(site.url, 3)  # the breaker is open: refused before anything is sent
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "cloud_unavailable"
    assert int(refused.headers["Retry-After"]) >= 1
    snapshot = httpx.get(f"{site.url}/v1/metrics/snapshot", headers=OPERATOR).json()
    assert snapshot["cloud"]["sensor"]["state"] == "open"

    cloud_endpoint.start()  # back: after the open time a probe goes through and closes the breaker
    until(lambda: _sensor(site.url, 4).status_code == 200, "a cloud answer once the endpoint is back")
    snapshot = httpx.get(f"{site.url}/v1/metrics/snapshot", headers=OPERATOR).json()
    assert snapshot["cloud"]["sensor"]["state"] == "closed"
