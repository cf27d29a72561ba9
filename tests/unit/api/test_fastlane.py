"""The fast lane and the FastAPI route answer `POST /v1/requests` the same way.

A body sent with `Content-Length` is served by the lane; the same body sent chunked falls through
to the route. Both go through the real app (`httpx.ASGITransport`) to a real in-test workload.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.inprocess import InProcessSite, in_process_site

CLIENT = "client-key-0123456789"
OPERATOR = "operator-key-0123456789"


class Api(InProcessSite):
    """The running site, with this file's ways of calling it."""

    async def send(self, body: Any, key: str | None = CLIENT, chunked: bool = False) -> httpx.Response:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        headers = {"content-type": "application/json"}
        if key is not None:
            headers["authorization"] = f"Bearer {key}"

        async def pieces() -> AsyncIterator[bytes]:
            yield data  # a generator body: httpx sends it chunked, with no Content-Length

        return await self.http.post("/v1/requests", content=pieces() if chunked else data, headers=headers)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with in_process_site(tmp_path, [CLIENT], [OPERATOR]) as running:
        yield Api(running.http, running.site, running.workload)


def _request(**extra: Any) -> dict[str, Any]:
    return {"service": "svc", "payload": {"q": 1}, "client": {"kind": "mobile", "id": "c"}, **extra}


def _shape(response: httpx.Response) -> tuple[int, list[str], dict[str, Any]]:
    body = response.json()
    for volatile in ("request_id", "timings"):
        body.pop(volatile, None)
    if isinstance(body.get("result"), dict):
        body["result"].pop("call", None)
    names = sorted(
        n for n in response.headers if n in ("content-type", "server-timing", "x-request-id", "retry-after")
    )
    return response.status_code, names, body


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (_request(), CLIENT),
        (_request(service="nope"), CLIENT),
        (_request(payload={"mode": "reject"}), CLIENT),
        (_request(latency_budget_ms="100"), CLIENT),
        (_request(client={"kind": "iot", "id": "c"}), CLIENT),
        (_request(), "not-a-key-0123456789"),
        (_request(), None),
        (b"{not json", CLIENT),
        (_request(), OPERATOR),
    ],
    ids=[
        "served",
        "unknown",
        "rejected",
        "invalid",
        "kind",
        "bad-key",
        "no-key",
        "bad-json",
        "operator",
    ],
)
async def test_the_lane_and_the_route_give_the_same_answer(api: Api, body: Any, key: str | None) -> None:
    lane = await api.send(body, key)
    route = await api.send(body, key, chunked=True)
    assert _shape(lane) == _shape(route)


async def test_the_lane_serves_the_common_case_and_errors_come_from_the_route(api: Api) -> None:
    served = await api.send(_request())
    assert served.status_code == 200 and served.json()["route"]["tier"] == "local"
    unknown_key = await api.send(_request(), "not-a-key-0123456789")
    assert unknown_key.status_code == 401 and unknown_key.headers["www-authenticate"] == "Bearer"
    invalid = await api.send(_request(latency_budget_ms=0))
    assert invalid.status_code == 422 and invalid.json()["error"]["field"] == "latency_budget_ms"


async def test_without_room_at_the_front_door_the_answer_is_the_doors_503(api: Api) -> None:
    api.site.door.max_inflight = 0
    refused = await api.send(_request())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert api.workload.calls == 0
    api.site.door.max_inflight = 10
    assert (await api.send(_request())).status_code == 200
    assert api.site.door.active == 0 and api.site.door.waiting == 0
