"""A whole site on the Docker runtime (`MEC_RUNTIME=docker`), spoken to over real HTTP."""

from __future__ import annotations

import time

import docker
import httpx
import pytest

from tests.conftest import OPERATOR_KEY

pytestmark = pytest.mark.integration


def test_site_on_docker_serves_clients_and_revives_a_killed_container(
    engine: docker.DockerClient, workload_image: str, site_factory
) -> None:
    site = site_factory(
        {"MEC_RUNTIME": "docker", "MEC_SITE_ID": "dockersite", "MEC_SERVICES__INFERENCE__REPLICAS": "0"}
    )
    body = {
        "service": "sensor",
        "payload": {"sensor_id": "d1", "value": 4.0},
        "client": {"kind": "iot", "id": "x"},
    }
    with httpx.Client(base_url=site.url, headers=site.headers(), timeout=10) as http:
        first = http.post("/v1/requests", json=body)
        assert first.status_code == 200, first.text
        assert first.json()["route"] == {
            "tier": "local",
            "site": "dockersite",
            "target": "mec-dockersite-sensor-1",
        }
        ready = http.get("/readyz", headers=site.headers(OPERATOR_KEY)).json()
        assert ready["runtime"] == "docker"  # the detail operators see

        [container] = engine.containers.list(filters={"label": ["mec.site=dockersite", "mec.service=sensor"]})
        assert container.attrs["HostConfig"]["NetworkMode"] == "host"
        container.kill()
        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline:
            status = http.post("/v1/requests", json=body).status_code
            if status == 200:
                break
            time.sleep(0.1)
        assert status == 200
        snap = http.get("/v1/metrics/snapshot", headers=site.headers(OPERATOR_KEY)).json()
        [sensor] = [i for i in snap["runtime"]["instances"] if i["service"] == "sensor"]
        assert sensor["restarts"] >= 1
    site.stop()
    assert engine.containers.list(all=True, filters={"label": "mec.site=dockersite"}) == []
