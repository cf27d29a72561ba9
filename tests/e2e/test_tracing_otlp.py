"""Traces of a real `mec serve` (child process) reaching a real OTLP/HTTP receiver: the fast path's
`mec.request` spans and the agent's strands spans, both under the site's resource."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import CLIENT_KEY, OPERATOR_KEY, SiteProcess, running_site
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.polling import until

SITE_ENV = {"MEC_SERVICES__INFERENCE__REPLICAS": "0"}
SENSOR_REQUEST = {
    "service": "sensor",
    "payload": {"sensor_id": "s-1", "value": 1.5},
    "client": {"kind": "iot", "id": "probe-1"},
    "latency_budget_ms": 2000,
}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver) -> Iterator[SiteProcess]:
    env = {**SITE_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
    with running_site(tmp_path_factory.mktemp("traced-site"), env) as proc:
        yield proc


def _spans(receiver: OtlpReceiver, wanted: Callable[[ReceivedSpan], bool]) -> list[ReceivedSpan]:
    return [span for span in receiver.received() if wanted(span)]


def _sensor_span(span: ReceivedSpan) -> bool:
    return span.name == "mec.request" and span.attributes.get("mec.service") == "sensor"


def test_a_request_is_traced_with_its_service_tier_status_and_client_kind(
    site: SiteProcess, receiver: OtlpReceiver
) -> None:
    with httpx.Client(
        base_url=site.url, timeout=10, headers={"Authorization": f"Bearer {CLIENT_KEY}"}
    ) as http:
        assert http.post("/v1/requests", json=SENSOR_REQUEST).status_code == 200
    [span] = until(lambda: _spans(receiver, _sensor_span), "the request's span at the receiver", 60)
    assert span.attributes == {
        "mec.service": "sensor",
        "mec.tier": "local",
        "mec.status": 200,
        "mec.site": "site-1",
        "mec.client_kind": "iot",
        "mec.forwarded": False,
        "mec.target": "sensor-1",
        "mec.budget_ms": 2000,
    }
    assert span.resource["service.name"] == "mec-orchestrator"
    assert span.resource["mec.site_id"] == "site-1"
    assert span.end_ns > span.start_ns


def test_a_chat_turn_sends_the_agents_spans_under_the_sites_resource(
    site: SiteProcess, receiver: OtlpReceiver
) -> None:
    with httpx.Client(
        base_url=site.url, timeout=30, headers={"Authorization": f"Bearer {OPERATOR_KEY}"}
    ) as http:
        reply = http.post("/v1/chat", json={"message": "what is the status of the site?"})
        assert reply.status_code == 200, reply.text
    agent = until(
        lambda: _spans(receiver, lambda s: s.name.startswith("invoke_agent")), "an invoke_agent span", 60
    )
    assert agent[0].resource["service.name"] == "mec-orchestrator"
    names = {span.name for span in receiver.received()}
    assert "execute_event_loop_cycle" in names
    assert "execute_tool container_ops" in names  # the rules model looked at the containers


def test_spans_still_queued_at_stop_are_exported_before_the_site_exits(
    site_factory: Callable[..., SiteProcess],
) -> None:
    with OtlpReceiver() as receiver:
        # A batch delay far beyond the test: only the shutdown's flush can send the span.
        env = {
            **SITE_ENV,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "600000",
        }
        site = site_factory(env)
        with httpx.Client(
            base_url=site.url, timeout=10, headers={"Authorization": f"Bearer {CLIENT_KEY}"}
        ) as http:
            assert http.post("/v1/requests", json=SENSOR_REQUEST).status_code == 200
        assert not _spans(receiver, _sensor_span)
        site.stop()
        assert len(_spans(receiver, _sensor_span)) == 1
