from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from config.settings import AlertRule
from monitoring.alert_service import AlertService, JsonLogSink, TooManySubscribersError
from monitoring.alerts import AlertEngine, Reading
from monitoring.readings import site_readings
from tests.support.polling import eventually
from tools.metrics_monitor import EMPTY_SNAPSHOT, ServiceRequestStats

RULE = AlertRule(name="inflight", metric="inflight", high=1, for_s=0, clear_s=0, fold_s=0)


class Recorder:
    """A sink that keeps what it is given (the sinks themselves have their own tests)."""

    def __init__(self, fails: bool = False) -> None:
        self.fails = fails
        self.events: list[Mapping[str, Any]] = []

    async def submit(self, event: Mapping[str, Any]) -> None:
        if self.fails:
            raise OSError("disk full")
        self.events.append(event)


def _breach(service: AlertService, subject: str, now: list[float]) -> None:
    """Fire then resolve one alert on `subject` (for_s and clear_s 0: one look each way)."""
    for value in (5, 5, 0, 0):
        now[0] += 1
        service.evaluate([Reading("inflight", subject, value)])


async def test_every_sink_gets_every_event_in_order_even_when_another_sink_fails() -> None:
    now = [0.0]
    broken, kept = Recorder(fails=True), Recorder()
    service = AlertService(AlertEngine([RULE]), [broken, kept], clock=lambda: now[0])
    await service.start()
    try:
        _breach(service, "svc-a", now)
        _breach(service, "svc-b", now)
        await eventually(lambda: len(kept.events) == 4, "four events at the working sink")
    finally:
        await service.stop()
    assert [(e["kind"], e["alert"]["subject"]) for e in kept.events] == [
        ("alert.fired", "svc-a"),
        ("alert.resolved", "svc-a"),
        ("alert.fired", "svc-b"),
        ("alert.resolved", "svc-b"),
    ]
    assert service.sink_failures == 4


async def test_a_slow_subscriber_loses_its_oldest_events_and_slows_nobody() -> None:
    now = [0.0]
    service = AlertService(AlertEngine([RULE]), clock=lambda: now[0])
    slow = service.subscribe()
    for n in range(150):  # 300 events, the queue holds 256
        _breach(service, f"svc-{n}", now)
    assert slow.dropped == 300 - 256
    first = await slow.get(1.0)
    assert first is not None and first["alert"]["subject"] == "svc-22"
    assert await asyncio.wait_for(slow.get(0.0), 1) is not None
    slow.close()
    assert service.report()["subscribers"] == 0


def test_streams_are_bounded() -> None:
    service = AlertService(AlertEngine([RULE]), max_subscribers=2)
    service.subscribe(), service.subscribe()
    with pytest.raises(TooManySubscribersError):
        service.subscribe()


async def test_the_log_sink_writes_one_json_line_per_event(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mec.alerts"):
        await JsonLogSink().submit({"kind": "alert.fired", "alert": {"id": "a-1"}})
    [record] = [r for r in caplog.records if r.name == "mec.alerts"]
    assert record.levelno == logging.WARNING
    assert json.loads(record.getMessage()) == {"alert": {"id": "a-1"}, "kind": "alert.fired"}


def test_readings_cover_services_peers_and_dependencies_and_idle_services_read_zero() -> None:
    busy = ServiceRequestStats("sensor", 10, 5.0, 2, 0, 10.0, 40.0, 150.0, {"local": 10})
    snapshot = replace(EMPTY_SNAPSHOT, requests=(busy,))
    found = {
        (r.metric, r.subject): r.value
        for r in site_readings(
            snapshot,
            {"sensor": 7},
            {"sensor": 100.0, "inference": 200.0},
            {"site-2": True, "site-3": False},
            {"redis": False},
        )
    }
    assert found[("p99_budget_ratio", "sensor")] == 1.5 and found[("error_rate", "sensor")] == 0.2
    assert found[("inflight", "sensor")] == 7 and found[("inflight", "inference")] == 0
    assert found[("p99_budget_ratio", "inference")] == 0 and found[("error_rate", "inference")] == 0
    assert (found[("peer_unreachable", "site-2")], found[("peer_unreachable", "site-3")]) == (1, 0)
    assert found[("dependency_down", "redis")] == 0
