"""Tracing off: a site without an OTLP endpoint builds no provider and its dispatcher no spans."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitoring.tracing import start_tracing, traces_url
from tests.support.inprocess import in_process_site

CLIENT = "client-key-a-0123456789"
OPERATOR = "operator-key-0123456789"


def test_the_traces_url_is_the_endpoint_with_the_signal_path() -> None:
    assert traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("http://collector:4318/otlp/") == "http://collector:4318/otlp/v1/traces"


@pytest.mark.parametrize("endpoint", [None, ""])
def test_no_endpoint_means_no_tracing(endpoint: str | None) -> None:
    assert start_tracing(endpoint, "site-1") is None


async def test_a_site_without_an_endpoint_serves_without_a_request_tracer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("MEC_OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    async with in_process_site(tmp_path, [CLIENT], [OPERATOR]) as running:
        assert running.site.tracing is None
        assert running.site.dispatcher.tracer is None
        body = {"service": "svc", "payload": {"n": 1}, "client": {"kind": "mobile", "id": "c"}}
        answer = await running.http.post(
            "/v1/requests", json=body, headers={"Authorization": f"Bearer {CLIENT}"}
        )
        assert answer.status_code == 200
