"""`GET /v1/metrics/recent` on a real in-process site: operator scope only, the latest requests
newest first with their tier, status, latency and serving site, and a bounded `limit`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.inprocess import InProcessSite, in_process_site

CLIENT = "client-key-recent-0123456789"
OPERATOR = "operator-key-recent-0123456789"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[InProcessSite]:
    async with in_process_site(tmp_path, [CLIENT], [OPERATOR], site_id="edge-a") as running:
        yield running


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_recent_requests_need_the_operator_scope(api: InProcessSite) -> None:
    anonymous = await api.http.get("/v1/metrics/recent")
    as_client = await api.http.get("/v1/metrics/recent", headers=_auth(CLIENT))
    as_operator = await api.http.get("/v1/metrics/recent", headers=_auth(OPERATOR))
    assert (anonymous.status_code, as_client.status_code, as_operator.status_code) == (401, 403, 200)


async def test_recent_requests_list_the_latest_with_tier_latency_and_site(api: InProcessSite) -> None:
    for n in range(3):
        body = {"service": "svc", "payload": {"n": n}, "client": {"kind": "mobile", "id": "c"}}
        served = await api.http.post("/v1/requests", json=body, headers=_auth(CLIENT))
        assert served.status_code == 200, served.text
    unknown = {"service": "nope", "payload": {}, "client": {"kind": "mobile", "id": "c"}}
    await api.http.post("/v1/requests", json=unknown, headers=_auth(CLIENT))
    answer = (await api.http.get("/v1/metrics/recent", params={"limit": 3}, headers=_auth(OPERATOR))).json()
    assert answer["site"] == "edge-a"
    rows = answer["requests"]
    assert len(rows) == 3
    assert (rows[0]["service"], rows[0]["tier"], rows[0]["status"]) == (
        "(unknown)",
        "reject",
        404,
    )  # unknown names are not kept
    assert [(r["service"], r["tier"], r["status"], r["site"]) for r in rows[1:]] == [
        ("svc", "local", 200, "edge-a")
    ] * 2
    assert all(r["latency_ms"] > 0 for r in rows)
    assert rows[0]["at"] >= rows[1]["at"] >= rows[2]["at"]


@pytest.mark.parametrize("limit", [0, 201])
async def test_a_limit_outside_1_to_200_is_a_422(api: InProcessSite, limit: int) -> None:
    answer = await api.http.get("/v1/metrics/recent", params={"limit": limit}, headers=_auth(OPERATOR))
    assert answer.status_code == 422
