"""The alert channel between front-door workers: a real Unix socket, the real engine behind it."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from config.settings import AlertRule
from monitoring.alert_desk import AlertChannelServer, LocalAlertDesk, RemoteAlertDesk, StreamRefusedError
from monitoring.alert_service import AlertService
from monitoring.alerts import AlertEngine, Reading
from tools.alert_ops import AlertDeskUnavailableError

TOKEN = "t" * 32
RULE = AlertRule(name="cpu_high", metric="cpu_percent", high=90, low=80, for_s=0, clear_s=0)


def _fire(service: AlertService, value: float = 97.0) -> None:
    for _ in range(2):  # pending at the first look, firing (or resolved) at the next
        service.evaluate([Reading("cpu_percent", "host", value)])


@pytest.fixture
async def owner(tmp_path: Path) -> AsyncIterator[tuple[AlertService, AlertChannelServer]]:
    service = AlertService(AlertEngine([RULE]), max_subscribers=1)
    server = AlertChannelServer(LocalAlertDesk(service, "site-1"), tmp_path / "alerts.sock", TOKEN)
    await server.start()
    try:
        yield service, server
    finally:
        await server.close()


async def test_a_worker_lists_and_acks_the_owners_alerts(
    owner: tuple[AlertService, AlertChannelServer],
) -> None:
    service, server = owner
    _fire(service)
    remote = RemoteAlertDesk(server.path, TOKEN)
    found = await remote.alerts("all")
    [alert] = found["active"]
    assert found["site"] == "site-1" and found["resolved"] == [] and alert["rule"] == "cpu_high"
    acked = await remote.ack(alert["id"], "key-9")
    assert acked is not None and acked["acknowledged_by"] == "key-9"
    assert service.engine.active()[0].acknowledged_by == "key-9"
    assert await remote.ack("nope-1", "key-9") is None
    assert stat.S_IMODE(server.path.stat().st_mode) == 0o600


async def test_a_stream_gets_the_snapshot_then_each_event(
    owner: tuple[AlertService, AlertChannelServer],
) -> None:
    service, server = owner
    _fire(service)
    feed = await RemoteAlertDesk(server.path, TOKEN).subscribe()
    try:
        assert [a["rule"] for a in feed.snapshot] == ["cpu_high"]
        _fire(service, 10.0)  # below `low`: resolves
        event = None
        async with asyncio.timeout(10):
            while event is None:
                event = await feed.get(0.5)
        assert event["kind"] == "alert.resolved" and event["alert"]["rule"] == "cpu_high"
        with pytest.raises(StreamRefusedError):  # the owner allows one stream
            await RemoteAlertDesk(server.path, TOKEN).subscribe()
    finally:
        feed.close()


async def test_a_wrong_token_or_a_gone_owner_is_unavailable_not_empty(
    owner: tuple[AlertService, AlertChannelServer],
) -> None:
    _, server = owner
    with pytest.raises(AlertDeskUnavailableError, match="refused"):
        await RemoteAlertDesk(server.path, "x" * 32).alerts("active")
    await server.close()
    with pytest.raises(AlertDeskUnavailableError, match="did not answer"):
        await RemoteAlertDesk(server.path, TOKEN).alerts("active")
