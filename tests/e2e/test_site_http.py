"""The site as a user meets it: `mec serve` in a child process, spoken to over real HTTP."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import CLIENT_KEY, OPERATOR_KEY, SiteProcess, running_site
from tests.support.prometheus import sample_value


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteProcess]:
    with running_site(tmp_path_factory.mktemp("site"), {"MEC_MAX_BODY_BYTES": "65536"}) as proc:
        yield proc


@pytest.fixture(scope="module")
def http(site: SiteProcess) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=site.url, timeout=10, headers={"Authorization": f"Bearer {CLIENT_KEY}"}
    ) as client:
        yield client


def _request(service: str, payload: dict, kind: str = "mobile", **extra) -> dict:
    return {"service": service, "payload": payload, "client": {"kind": kind, "id": "t-1"}, **extra}


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body["error"]) == {"code", "message", "field"}, body
    return body["error"]


def test_inference_is_served_locally_then_from_cache(http: httpx.Client) -> None:
    body = _request("inference", {"text": f"what is the weather tomorrow {uuid.uuid4().hex[:6]}"})
    first = http.post("/v1/requests", json=body)
    assert first.status_code == 200, first.text
    data = first.json()
    assert data["route"] == {"tier": "local", "site": "site-1", "target": "inference-1"}
    assert data["result"]["label"] == "weather"
    assert data["cached"] is False
    assert "upstream;dur=" in first.headers["server-timing"]
    second = http.post("/v1/requests", json=body)
    assert second.json()["route"]["tier"] == "cache"
    assert second.json()["cached"] is True
    assert second.json()["result"] == data["result"]
    assert "upstream" not in second.headers["server-timing"]


def test_every_listed_service_example_payload_works(http: httpx.Client) -> None:
    listing = http.get("/v1/services").json()
    assert {s["name"] for s in listing["services"]} == {"inference", "sensor", "game-state", "assistant"}
    for service in listing["services"]:
        response = http.post(
            "/v1/requests",
            json=_request(service["name"], service["example_payload"], service["client_kinds"][0]),
        )
        if service["name"] == "assistant":  # no replicas by default (it needs a model server), no Bedrock
            assert response.status_code == 503, response.text
            continue
        assert response.status_code == 200, (service["name"], response.text)
        assert response.json()["route"]["tier"] in ("local", "cache")


def test_sensor_readings_of_one_sensor_accumulate_on_one_instance(http: httpx.Client) -> None:
    sensor = f"pump-{uuid.uuid4().hex[:6]}"
    counts = [
        http.post("/v1/requests", json=_request("sensor", {"sensor_id": sensor, "value": v}, "iot")).json()[
            "result"
        ]["count"]
        for v in (1.0, 2.0, 3.0)
    ]
    assert counts == [1, 2, 3]


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "missing_key"),
        ({"Authorization": "Bearer not-a-key"}, 401, "invalid_key"),
        ({"Authorization": "Basic abc"}, 401, "invalid_key"),
    ],
)
def test_requests_without_a_valid_key_are_refused(
    site: SiteProcess, headers: dict, status: int, code: str
) -> None:
    response = httpx.post(f"{site.url}/v1/requests", json=_request("sensor", {}, "iot"), headers=headers)
    assert response.status_code == status
    error = _error(response)
    assert (error["code"], error["field"]) == (code, "authorization")


def test_client_key_cannot_read_operator_endpoints(http: httpx.Client) -> None:
    for path in ("/metrics", "/v1/metrics/snapshot"):
        response = http.get(path)
        assert response.status_code == 403
        assert _error(response)["code"] == "forbidden"


@pytest.mark.parametrize(
    ("content", "status", "code", "field"),
    [
        (b"{not json", 400, "invalid_json", "body"),
        (b"[1, 2]", 400, "invalid_body", "body"),
        (b"", 400, "missing_body", "body"),
        (b'{"payload": {}, "client": {"kind": "iot", "id": "x"}}', 400, "unclassified_request", "service"),
        (
            b'{"service": "sensor", "payload": [], "client": {"kind": "iot", "id": "x"}}',
            422,
            "invalid_field",
            "payload",
        ),
        (
            b'{"service": "sensor", "payload": {}, "client": {"kind": "fridge", "id": "x"}}',
            422,
            "invalid_field",
            "client.kind",
        ),
        (
            b'{"service": "sensor", "payload": {}, "client": {"kind": "iot", "id": "x"}, "latency_budget_ms": "soon"}',
            422,
            "invalid_field",
            "latency_budget_ms",
        ),
        (
            b'{"service": "sensor", "payload": {}, "client": {"kind": "iot", "id": "x"}, "latency_budget_ms": 0}',
            422,
            "invalid_field",
            "latency_budget_ms",
        ),
        (
            b'{"service": "sensor", "payload": {}, "client": {"kind": "iot", "id": "x"}, "priority": 1}',
            422,
            "invalid_field",
            "priority",
        ),
    ],
)
def test_malformed_bodies_get_4xx_naming_the_field(
    http: httpx.Client, content: bytes, status: int, code: str, field: str
) -> None:
    response = http.post("/v1/requests", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = _error(response)
    assert (error["code"], error["field"]) == (code, field)


def test_unknown_service_is_404_naming_service(http: httpx.Client) -> None:
    response = http.post("/v1/requests", json=_request("teleport", {}))
    assert response.status_code == 404
    assert (_error(response)["code"], _error(response)["field"]) == ("unknown_service", "service")


def test_client_kind_the_service_does_not_serve_is_403(http: httpx.Client) -> None:
    response = http.post("/v1/requests", json=_request("game-state", {"session_id": "s"}, "iot"))
    assert response.status_code == 403
    assert _error(response)["field"] == "client.kind"


def test_invalid_payload_is_422_naming_the_payload_field(http: httpx.Client) -> None:
    response = http.post("/v1/requests", json=_request("sensor", {"sensor_id": "s", "value": "hot"}, "iot"))
    assert response.status_code == 422
    assert _error(response)["field"] == "payload.value"


def test_oversize_body_is_413(http: httpx.Client) -> None:
    big = _request("inference", {"text": "x" * 70_000})
    response = http.post("/v1/requests", json=big)
    assert response.status_code == 413
    assert (_error(response)["code"], _error(response)["field"]) == ("too_large", "body")


def test_oversize_chunked_body_is_413(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"service": "inference", "payload": {"text": "'
        for _ in range(40):
            yield b"y" * 2048
        yield b'"}, "client": {"kind": "mobile", "id": "x"}}'

    response = http.post("/v1/requests", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_unknown_path_and_method_are_json_errors(http: httpx.Client) -> None:
    assert _error(http.get("/v1/nothing"))["code"] == "not_found"
    response = http.get("/v1/requests")
    assert response.status_code == 405
    assert _error(response)["code"] == "method_not_allowed"


def test_health_readiness_docs_and_metrics(http: httpx.Client, site: SiteProcess) -> None:
    assert httpx.get(f"{site.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{site.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["cache"] == {"backend": "memory", "status": "ok"}
    for path in ("/healthz", "/readyz"):  # over the site's own HTTP server, as a load balancer asks
        head = httpx.head(f"{site.url}{path}")
        assert (head.status_code, head.content) == (200, b"")
        assert int(head.headers["content-length"]) == len(httpx.get(f"{site.url}{path}").content)
    assert httpx.get(f"{site.url}/docs").status_code == 200
    assert "/v1/requests" in httpx.get(f"{site.url}/openapi.json").json()["paths"]
    operator = {"Authorization": f"Bearer {OPERATOR_KEY}"}
    http.post("/v1/requests", json=_request("sensor", {"sensor_id": "m", "value": 1}, "iot"))
    metrics = http.get("/metrics", headers=operator)
    assert metrics.headers["content-type"].startswith("text/plain")
    assert sample_value(
        metrics.text, "mec_requests_total", site="site-1", service="sensor", tier="local", status="200"
    )
    deadline = time.monotonic() + 20
    while True:  # the sampler picks the request up within a sampling period or two
        snap = http.get("/v1/metrics/snapshot", headers=operator).json()
        if any(r["service"] == "sensor" for r in snap["requests"]) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert snap["host"]["cpu_count"] >= 1
    assert isinstance(snap["gpu_available"], bool)
    assert any(r["service"] == "sensor" for r in snap["requests"])
