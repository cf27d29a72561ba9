"""The cloud envelope and the errors the cloud tier answers with (the exchange itself is in
tests/integration/test_cloud_compute.py, against a real endpoint)."""

from __future__ import annotations

import json

from agent.cloud_forwarding import cloud_request_body, cloud_unavailable_error
from agent.dispatch import ClientCall, canonical_json
from swarm.cloud import CloudBlocked


def test_the_envelope_carries_service_client_payload_and_budget_and_nothing_else() -> None:
    payload = {"text": "naïve café", "n": [1, 2]}
    call = ClientCall(
        service="inference",
        payload=payload,
        payload_json=canonical_json(payload),
        client_kind="mobile",
        client_id="phone-9",
        cache_key="mine",
        cache_ttl_s=30,
        tenant="t1",
    )
    body = cloud_request_body(call, 87)
    assert json.loads(body) == {
        "service": "inference",
        "client": {"kind": "mobile", "id": "phone-9"},
        "payload": payload,
        "latency_budget_ms": 87,
    }
    assert canonical_json(payload) in body  # the payload travels as the bytes it arrived as


def test_a_blocked_endpoint_is_a_503_cloud_unavailable_with_its_retry_after() -> None:
    error = cloud_unavailable_error(CloudBlocked("sensor", "cloud.example.com", "open", 7))
    assert (error.status, error.code, error.retry_after_s) == (503, "cloud_unavailable", 7)
    assert error.response_headers() == {"Retry-After": "7"}
    assert "cloud.example.com" in error.message and "open" in error.message
