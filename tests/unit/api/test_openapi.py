"""The OpenAPI a client can use: security scheme, per-route errors, strict types, offline docs, HEAD,
and the chat stream's keep-alive — on the real app in process (`httpx.ASGITransport`)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import api.routes.chat as chat_route
from agent.models import ScriptedModel, Turn
from api.site import Site
from tests.support.inprocess import in_process_site

CLIENT = "client-key-a-0123456789"
OPERATOR = "operator-key-0123456789"


@pytest.fixture
async def site_and_http(tmp_path: Path) -> AsyncIterator[tuple[Site, httpx.AsyncClient]]:
    async with in_process_site(tmp_path, [CLIENT], [OPERATOR], chat_max_message_chars=300) as api:
        yield api.site, api.http


@pytest.fixture
def http(site_and_http: tuple[Site, httpx.AsyncClient]) -> httpx.AsyncClient:
    return site_and_http[1]


async def _openapi(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


async def test_every_authenticated_route_declares_the_bearer_scheme(http: httpx.AsyncClient) -> None:
    schema = await _openapi(http)
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["bearer"]["description"],
    }
    secured = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if {"bearer": []} in operation.get("security", [])
    }
    assert {
        ("POST", "/v1/requests"),
        ("POST", "/v1/chat"),
        ("GET", "/v1/services"),
        ("GET", "/metrics"),
        ("GET", "/v1/metrics/snapshot"),
        ("GET", "/readyz"),
    } <= secured
    assert ("GET", "/healthz") not in secured


async def test_each_route_documents_only_the_errors_it_can_answer(http: httpx.AsyncClient) -> None:
    paths = (await _openapi(http))["paths"]

    def statuses(path: str, method: str) -> set[str]:
        return set(paths[path][method]["responses"])

    assert statuses("/v1/services", "get") == {"200", "401", "403"}
    assert statuses("/readyz", "get") == {"200", "401", "503"}
    assert statuses("/healthz", "get") == {"200"}
    assert {"409", "413", "504"}.isdisjoint(statuses("/v1/services", "get"))
    assert "409" not in statuses("/v1/requests", "post")
    assert {"404", "409", "429"} <= statuses("/v1/chat", "post")


async def test_request_schemas_carry_the_limits_the_server_enforces(http: httpx.AsyncClient) -> None:
    components = (await _openapi(http))["components"]["schemas"]
    message = components["ChatRequest"]["properties"]["message"]
    assert (message["minLength"], message["maxLength"], message["pattern"]) == (1, 300, r"\S")
    long = await http.post(
        "/v1/chat", json={"message": "x" * 301}, headers={"Authorization": f"Bearer {OPERATOR}"}
    )
    assert (long.status_code, long.json()["error"]["field"]) == (422, "message")
    request = components["ServiceRequest"]
    assert {"required": ["allow_llm"], "properties": {"allow_llm": {"const": True}}} in request["anyOf"]


@pytest.mark.parametrize("budget", ["100", True, 1.5])
async def test_a_budget_that_is_not_an_integer_is_a_422_never_coerced(
    http: httpx.AsyncClient, budget: object
) -> None:
    body = {
        "service": "svc",
        "payload": {},
        "client": {"kind": "mobile", "id": "c"},
        "latency_budget_ms": budget,
    }
    response = await http.post("/v1/requests", json=body, headers={"Authorization": f"Bearer {CLIENT}"})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "latency_budget_ms"


async def test_head_answers_health_and_readiness_without_a_body(http: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz"):
        get, head = await http.get(path), await http.head(path)
        assert head.status_code == get.status_code == 200
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]


async def test_docs_load_every_asset_from_the_site_and_offer_authorize(http: httpx.AsyncClient) -> None:
    for page in ("/docs", "/redoc"):
        html = (await http.get(page)).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
        assert assets, page
        for url in assets:
            assert url.startswith("/"), f"{page} loads {url} from outside the site"
            assert (await http.get(url)).status_code == 200, url
    docs = (await http.get("/docs")).text
    [bundle] = [url for url in re.findall(r'src="([^"]+)"', docs) if url.endswith("swagger-ui-bundle.js")]
    script = (await http.get(bundle)).text
    assert "btn authorize" in script  # Swagger UI's Authorize control, shown for a security scheme


class _PausingModel(ScriptedModel):
    """A model that thinks for a moment before it answers: the stream is idle meanwhile."""

    async def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:  # type: ignore[override]
        await asyncio.sleep(0.2)
        async for event in super().stream(*args, **kwargs):
            yield event


async def test_an_idle_chat_stream_sends_keepalive_comments_and_its_events(
    site_and_http: tuple[Site, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    site, http = site_and_http
    monkeypatch.setattr(chat_route, "KEEPALIVE_S", 0.01)
    site.chat.model_factory = lambda: _PausingModel([Turn(text="all well")])
    response = await http.post(
        "/v1/chat",
        json={"message": "how is the site?"},
        headers={"Authorization": f"Bearer {OPERATOR}", "Accept": "text/event-stream"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = re.findall(r"^event: (\w+)$", response.text, flags=re.MULTILINE)
    assert events[0] == "session" and events[-1] == "done"
    assert ": ping" in response.text
    assert '"reply":"all well"' in response.text
