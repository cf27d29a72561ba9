"""Alerts kept in a real Redis: a site restarted on the same Redis still knows its alerts and does
not announce a firing one again."""

from __future__ import annotations

from pathlib import Path

from config.settings import AlertRule
from tests.conftest import RedisServer
from tests.support.inprocess import in_process_site
from tests.support.polling import eventually

CLIENT, OPERATOR = "client-key-0123456789", "operator-key-0123456789"
OPS = {"Authorization": f"Bearer {OPERATOR}"}
ALWAYS = AlertRule(name="always_busy", metric="cpu_percent", high=-1, for_s=0, clear_s=0)


async def test_a_site_restarted_on_the_same_redis_keeps_its_alerts(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    settings = {
        "redis_url": redis_server.url,
        "alert_rules": [ALWAYS],
        "sample_interval_s": 0.05,
        "site_id": "site-alerts",
    }
    async with in_process_site(tmp_path / "one", [CLIENT], [OPERATOR], **settings) as first:
        await eventually(lambda: first.site.alerts.engine.active(), "the alert fired")
        [alert] = first.site.alerts.engine.active()
        await eventually(lambda: first.site.alerts.report()["published"] >= 1, "the event published")
        acked = await first.http.post(f"/v1/alerts/{alert.id}/ack", headers=OPS)
        assert acked.status_code == 200
        assert await first.site.alerts.drain(10), "the sinks did not catch up"

    async with in_process_site(tmp_path / "two", [CLIENT], [OPERATOR], **settings) as second:
        listed = (await second.http.get("/v1/alerts", headers=OPS)).json()
        assert [a["id"] for a in listed["active"]] == [alert.id]
        assert listed["active"][0]["acknowledged_at"] is not None
        await eventually(lambda: second.site.alerts.engine.evaluations >= 5, "a few evaluations")
        assert second.site.alerts.published == 0  # still firing: nothing new to announce
