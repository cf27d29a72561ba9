"""The API in process (`httpx.ASGITransport` on the real app) over a site whose workloads are real
in-test HTTP servers: auth and tenancy wiring, the status mapping, readiness, chat limits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.support.inprocess import InProcessSite, in_process_site

CLIENT_A = "client-key-a-0123456789"
CLIENT_B = "client-key-b-0123456789"
OPERATOR = "operator-key-0123456789"


class Api(InProcessSite):
    """The running site, with this file's ways of calling it."""

    async def request(self, key: str, payload: dict, **extra) -> httpx.Response:
        body = {"service": "svc", "payload": payload, "client": {"kind": "mobile", "id": "c"}, **extra}
        return await self.http.post("/v1/requests", json=body, headers={"Authorization": f"Bearer {key}"})

    async def chat(self, key: str, message: str, **extra) -> httpx.Response:
        return await self.http.post(
            "/v1/chat", json={"message": message, **extra}, headers={"Authorization": f"Bearer {key}"}
        )


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with in_process_site(
        tmp_path,
        [CLIENT_A, CLIENT_B],
        [OPERATOR],
        service={"cacheable": True, "max_cache_ttl_s": 60},
        chat_turns_per_minute=1,
        chat_burst=2,
    ) as running:
        yield Api(running.http, running.site, running.workload)


async def test_a_named_cache_key_belongs_to_the_key_that_stored_it(api: Api) -> None:
    stored = await api.request(CLIENT_A, {"q": "a's answer"}, cache_key="home")
    other = await api.request(CLIENT_B, {"q": "b's question"}, cache_key="home")
    again = await api.request(CLIENT_A, {"q": "ignored"}, cache_key="home")
    assert other.json()["cached"] is False and other.json()["result"]["echo"] == {"q": "b's question"}
    assert again.json()["cached"] is True and again.json()["result"] == stored.json()["result"]
    raw_keys = [key for (_, key) in api.site.cache.memory._entries]
    assert not any(CLIENT_A in key or CLIENT_B in key for key in raw_keys)


async def test_cache_ttl_over_the_services_maximum_is_a_422(api: Api) -> None:
    response = await api.request(CLIENT_A, {"q": 1}, cache_key="k", cache_ttl_s=3600)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "cache_ttl_s"


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [({"mode": "fail"}, 502, "upstream_failed"), ({"mode": "reject"}, 422, "invalid_payload")],
)
async def test_workload_failures_map_to_502_and_rejections_to_422(
    api: Api, payload: dict, status: int, code: str
) -> None:
    response = await api.request(CLIENT_A, payload)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


async def test_a_hung_workload_is_504_within_the_budget(api: Api) -> None:
    response = await api.request(CLIENT_A, {"mode": "hold"}, latency_budget_ms=100)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "budget_exceeded"


async def test_readiness_without_a_key_says_states_only(api: Api) -> None:
    api.site.start_errors["svc"] = "StartError: /secret/path failed at 10.1.2.3"
    public = (await api.http.get("/readyz")).json()
    assert public["checks"]["service:svc"] == {"status": "ok", "ready": 1, "instances": 1}
    assert "secret" not in str(public) and "runtime" not in public
    detailed = (await api.http.get("/readyz", headers={"Authorization": f"Bearer {OPERATOR}"})).json()
    assert "secret" in detailed["checks"]["service:svc"]["error"]


async def test_client_key_reads_no_site_data_through_chat_while_rest_refuses_it_too(api: Api) -> None:
    snapshot = await api.http.get("/v1/metrics/snapshot", headers={"Authorization": f"Bearer {CLIENT_A}"})
    assert snapshot.status_code == 403
    reply = (await api.chat(CLIENT_A, "what is the cpu load?")).json()
    assert reply["tool_calls"], reply
    assert {call["status"] for call in reply["tool_calls"]} == {"refused"}
    assert "%" not in reply["reply"]


async def test_chat_over_a_keys_rate_is_429_with_retry_after(api: Api) -> None:
    assert (await api.chat(OPERATOR, "help")).status_code == 200
    assert (await api.chat(OPERATOR, "help")).status_code == 200
    refused = await api.chat(OPERATOR, "help")
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limited"


async def test_another_keys_chat_session_is_404(api: Api) -> None:
    mine = (await api.chat(CLIENT_A, "help")).json()
    stolen = await api.chat(CLIENT_B, "help", session_id=mine["session_id"])
    assert stolen.status_code == 404
    assert stolen.json()["error"] == {
        "code": "unknown_session",
        "message": f"no chat session {mine['session_id']!r} (expired?)",
        "field": "session_id",
    }
