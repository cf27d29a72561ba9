"""Alerts over a real site's HTTP (`mec serve` in a child process): a rule fires once, its events
stream live over SSE, operators list and acknowledge it, and a webhook receiver that was down when
it fired still gets it, signed, once it comes back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from monitoring.webhook import verify_signature
from tests.conftest import CLIENT_KEY, OPERATOR_KEY, SiteProcess
from tests.support.polling import eventually
from tests.support.webhook_receiver import WebhookReceiver
from tools.runtimes.base import free_port

OPERATOR = {"Authorization": f"Bearer {OPERATOR_KEY}"}
CLIENT = {"Authorization": f"Bearer {CLIENT_KEY}"}
SECRET = "alert-webhook-secret-for-tests"
ALWAYS = {"name": "always_busy", "metric": "cpu_percent", "high": -1, "for_s": 1, "clear_s": 0}
"""A rule every sample breaches (CPU is never below -1 %): it fires once, one second in."""


def _site(site_factory: Any, webhook_url: str) -> SiteProcess:
    site: SiteProcess = site_factory(
        {
            "MEC_SERVICES__INFERENCE__REPLICAS": "0",
            "MEC_SERVICES__SENSOR__REPLICAS": "0",
            "MEC_ALERT_RULES": json.dumps([{**ALWAYS, "severity": "critical"}]),
            "MEC_SAMPLE_INTERVAL_S": "0.1",
            "MEC_ALERT_WEBHOOK_URL": webhook_url,
            "MEC_ALERT_WEBHOOK_SECRET": SECRET,
        }
    )
    return site


async def _events(http: httpx.AsyncClient, url: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE event of the alert stream."""
    async with http.stream("GET", f"{url}/v1/alerts/stream", headers=OPERATOR) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                name = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                yield name, json.loads(line.partition(":")[2])


async def test_an_alert_fires_once_streams_live_and_reaches_a_webhook_that_was_down(site_factory) -> None:
    receiver = WebhookReceiver(free_port())  # not started: the receiver is down when the alert fires
    site = _site(site_factory, receiver.url)
    async with httpx.AsyncClient(timeout=30) as http:
        seen: list[tuple[str, dict[str, Any]]] = []
        async with asyncio.timeout(60):
            async for name, data in _events(http, site.url):
                seen.append((name, data))
                if name == "alert.fired":
                    break
        assert seen[0][0] == "snapshot"
        fired = seen[-1][1]["alert"]
        assert (fired["rule"], fired["subject"], fired["severity"]) == ("always_busy", "host", "critical")

        listed = (await http.get(f"{site.url}/v1/alerts", headers=OPERATOR)).json()
        assert [a["id"] for a in listed["active"]] == [fired["id"]]  # one alert for one breach

        acked = await http.post(f"{site.url}/v1/alerts/{fired['id']}/ack", headers=OPERATOR)
        assert acked.status_code == 200 and acked.json()["acknowledged_by"]
        missing = await http.post(f"{site.url}/v1/alerts/no-such/ack", headers=OPERATOR)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_alert"

        await receiver.start()  # the receiver comes back: the spooled events arrive, signed
        try:
            await eventually(lambda: len(receiver.accepted) >= 2, "the fired and acknowledged events", 60)
        finally:
            await receiver.stop()
        kinds = []
        for got in receiver.accepted:
            assert verify_signature(SECRET, got.timestamp, got.body, got.signature)
            kinds.append(json.loads(got.body)["kind"])
        assert kinds[:2] == ["alert.fired", "alert.acknowledged"]


async def test_alerts_need_an_operator_key_on_every_route(site_factory) -> None:
    site = _site(site_factory, f"http://127.0.0.1:{free_port()}/hooks")
    async with httpx.AsyncClient(timeout=30) as http:
        for method, path in (
            ("GET", "/v1/alerts"),
            ("GET", "/v1/alerts/stream"),
            ("POST", "/v1/alerts/x/ack"),
        ):
            as_client = await http.request(method, f"{site.url}{path}", headers=CLIENT)
            anonymous = await http.request(method, f"{site.url}{path}")
            assert (as_client.status_code, anonymous.status_code) == (403, 401), path
