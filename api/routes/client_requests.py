"""`POST /v1/requests`: the clients' fast path (the route, and the rendering the fast lane shares)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Container

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from agent.dispatch import ClientCall, Outcome, canonical_json
from agent.errors import SiteError, error_body
from agent.scopes import Principal
from api.deps import ClientCaller, SiteDep
from api.door import CLOCK_KEY, RequestClock
from api.schemas import ServiceRequest, ServiceResponse, error_responses
from api.site import Site

router = APIRouter(prefix="/v1", tags=["requests"])

_JSON = b"application/json"
_ROUTES: dict[tuple[str, str, str], bytes] = {}
"""`route` objects already rendered, by (tier, site, target): a handful per site (bounded below)."""
_ROUTES_MAX = 4096


def new_request_id() -> str:
    """A random request id, 32 hex digits (uuid4's cost without building a UUID)."""
    return secrets.token_hex(16)


def _route_json(tier: str, site_id: str, target: str) -> bytes:
    key = (tier, site_id, target)
    found = _ROUTES.get(key)
    if found is None:
        found = json.dumps({"tier": tier, "site": site_id, "target": target}, separators=(",", ":")).encode()
        if len(_ROUTES) < _ROUTES_MAX:
            _ROUTES[key] = found
    return found


def _timings_json(timings: dict[str, float]) -> bytes:
    return ("{" + ",".join(f'"{stage}":{ms!r}' for stage, ms in timings.items()) + "}").encode()


def render_outcome(
    outcome: Outcome, site_id: str, request_id: str
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body of the answer to one request (the route's and the fast lane's).

    A result is spliced in as the raw JSON the service produced.
    """
    timings = outcome.timings_ms
    headers = [
        (b"content-type", _JSON),
        (b"server-timing", ", ".join(f"{stage};dur={ms}" for stage, ms in timings.items()).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    route = _route_json(outcome.tier, outcome.site or site_id, outcome.target)
    if outcome.error is not None or outcome.result_json is None:
        error = outcome.error
        body = error.body() if error else error_body("failed", "no result")
        error_json = json.dumps(body, ensure_ascii=False, separators=(",", ":"))[:-1].encode()
        content = b"".join((error_json, b',"route":', route, b',"request_id":"', request_id.encode(), b'"}'))
        if outcome.retry_after_s is not None:
            headers.append((b"retry-after", str(outcome.retry_after_s).encode()))
    else:
        content = b"".join(
            (
                b'{"request_id":"',
                request_id.encode(),
                b'","service":',
                json.dumps(outcome.service).encode(),
                b',"result":',
                outcome.result_json,
                b',"route":',
                route,
                b',"cached":',
                b"true" if outcome.cached else b"false",
                b',"timings":',
                _timings_json(timings),
                b"}",
            )
        )
    headers.append((b"content-length", str(len(content)).encode()))
    return outcome.status, headers, content


def render(outcome: Outcome, site_id: str, request_id: str) -> Response:
    """`render_outcome` as a Starlette response."""
    status, headers, content = render_outcome(outcome, site_id, request_id)
    response = Response(content, status_code=status)
    response.raw_headers = headers
    return response


def client_call(body: ServiceRequest, principal: Principal, clock: RequestClock | None) -> ClientCall:
    """The dispatcher's view of a validated request that names a service."""
    assert body.service is not None
    return ClientCall(
        service=body.service,
        payload=body.payload,
        payload_json=canonical_json(body.payload),
        client_kind=body.client.kind,
        client_id=body.client.id,
        latency_budget_ms=body.latency_budget_ms,
        cache_key=body.cache_key,
        cache_ttl_s=body.cache_ttl_s,
        tenant=principal.tenant,
        arrived=None if clock is None else clock.arrived,
        caller=principal,
    )


def needs_the_agent(body: ServiceRequest, services: Container[str]) -> bool:
    """Whether a request goes to the LLM (no service, or an unknown one with `allow_llm`)."""
    return body.service is None or (body.allow_llm and body.service not in services)


_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ServiceRequest"}}},
    }
}


async def read_body(request: Request) -> ServiceRequest:
    """Parse and validate the body in one pass of pydantic-core (FastAPI's own path costs more)."""
    raw = await request.body()
    if not raw.strip():
        raise SiteError(400, "missing_body", "a JSON body is required", "body")
    try:
        return ServiceRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


@router.post(
    "/requests",
    response_model=ServiceResponse,
    responses=error_responses(400, 401, 403, 404, 413, 422, 429, 502, 503, 504),
    summary="Serve one client request",
    openapi_extra=_REQUEST_BODY,
)
async def serve_request(request: Request, site: SiteDep, principal: ClientCaller) -> Response:
    """Serve a request from the cache or a local instance, within its latency budget.

    The answer's `route` says where it was served (`cache`, `local`, later `peer`/`cloud`);
    `timings` and the `Server-Timing` header give the milliseconds spent per stage. Without a
    service (or with one the site does not know) and `allow_llm: true`, the site's agent answers
    the free-text `payload.text` (read-only; 429 above the key's chat rate).
    """
    body = await read_body(request)
    clock: RequestClock | None = request.scope["state"].get(CLOCK_KEY)
    if clock is not None:
        clock.enter()
    if needs_the_agent(body, site.services):
        return await _serve_with_llm(body, site, principal, clock)
    outcome = await site.dispatcher.serve(client_call(body, principal, clock))
    if clock is not None:
        clock.note(outcome.status)
    return render(outcome, site.settings.site_id, new_request_id())


LLM_SERVICE = "(llm)"
"""The name requests served by the agent are counted under in /metrics."""


async def _serve_with_llm(
    body: ServiceRequest, site: Site, principal: Principal, clock: RequestClock | None
) -> Response:
    """A request the fast path cannot classify, handed to the agent with its own budget (read-only).

    The budget runs from the request's arrival, as on the fast path."""
    if not body.allow_llm:
        raise SiteError(
            400,
            "unclassified_request",
            "name a service (see GET /v1/services), or set allow_llm: true with a free-text payload.text",
            "service",
        )
    text = body.payload.get("text")
    if not isinstance(text, str) or not text.strip():
        raise SiteError(400, "missing_text", "allow_llm needs the question in payload.text", "payload.text")
    budget_ms = min(body.latency_budget_ms or site.settings.llm_budget_ms, site.settings.llm_budget_ms)
    request_id = new_request_id()
    started = time.perf_counter() if clock is None else clock.arrived
    left_s = max(0.001, budget_ms / 1000 - (time.perf_counter() - started))
    try:
        reply = await site.chat.chat(text, principal, timeout_s=left_s, persist=False, read_only=True)
    except SiteError as exc:
        total = round((time.perf_counter() - started) * 1000, 3)
        site.monitor.requests.record(LLM_SERVICE, "llm", exc.status, total, body.client.kind)
        content = exc.body()
        content["request_id"] = request_id
        headers = {**(exc.response_headers() or {}), "Server-Timing": f"total;dur={total}"}
        return JSONResponse(content, status_code=exc.status, headers=headers)
    total = round((time.perf_counter() - started) * 1000, 3)
    site.monitor.requests.record(LLM_SERVICE, "llm", 200, total, body.client.kind)
    content = {
        "request_id": request_id,
        "service": None,
        "result": {
            "reply": reply.reply,
            "tool_calls": reply.tool_calls,
            "model": reply.model,
            "usage": reply.usage,
        },
        "route": {"tier": "llm", "site": site.settings.site_id, "target": reply.model},
        "cached": False,
        "timings": {"llm": reply.latency_ms, "total": total},
    }
    return JSONResponse(content, headers={"Server-Timing": f"llm;dur={reply.latency_ms}, total;dur={total}"})
