"""Request and response bodies of the REST API (pydantic models at the edge).

Request models are strict: a JSON string or boolean where a number is due is a 422, never
coerced, so the server accepts exactly what the OpenAPI schema describes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from agent.router import Tier
from config.settings import ClientKind, ServiceSettings


def _integral(value: Any) -> Any:
    """JSON Schema's `integer` includes `100.0`: take it as 100 (strings and booleans stay refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


BudgetMs = Annotated[int, Field(ge=1, le=60_000), BeforeValidator(_integral)]
"""A latency budget in ms, an integer as JSON Schema defines one: `100` or `100.0`, never `"100"`
or `true` (the bounds come before the validator, or pydantic cannot write them into the schema)."""


class ClientInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    kind: ClientKind = Field(description="What sort of client sends the request.")
    id: str = Field(min_length=1, max_length=128, description="The client's own identifier.")


class ServiceRequest(BaseModel):
    """A client's request for one service."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            # What the server enforces beyond the fields: a request without a service is one for
            # the agent, so it must say `allow_llm: true`.
            "anyOf": [
                {"required": ["service"], "properties": {"service": {"type": "string"}}},
                {"required": ["allow_llm"], "properties": {"allow_llm": {"const": True}}},
            ],
            "examples": [
                {
                    "service": "inference",
                    "payload": {"text": "navigate to the nearest charging station"},
                    "client": {"kind": "mobile", "id": "phone-17"},
                    "latency_budget_ms": 200,
                }
            ],
        },
    )

    service: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Service name, see GET /v1/services; null or absent only with `allow_llm: true`.",
    )
    payload: dict[str, Any] = Field(
        description="The service's input, a JSON object. The service itself validates it: a payload it "
        "refuses is a 422 whose `field` starts with `payload` (see each service's `example_payload`)."
    )
    client: ClientInfo
    latency_budget_ms: BudgetMs | None = Field(
        default=None, description="Answer within this many ms or fail fast (504)."
    )
    cache_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Key for cacheable services; by default a digest of the payload.",
    )
    cache_ttl_s: float | None = Field(
        default=None, gt=0, le=604_800, description="Lifetime of the cached answer."
    )
    allow_llm: bool = Field(
        default=False,
        description="Without a known service, hand a free-text payload (`text`) to the site's agent.",
    )


class Route(BaseModel):
    tier: Tier
    site: str
    target: str


class ServiceResponse(BaseModel):
    """How the site answered; `route` says where it was served."""

    request_id: str
    service: str | None
    result: dict[str, Any]
    route: Route
    cached: bool
    timings: dict[str, float] = Field(description="Milliseconds per stage: cache, plan, upstream, total.")


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ServiceInfo(BaseModel):
    name: str
    description: str
    kind: str = Field(description="The workload behind the service.")
    client_kinds: list[ClientKind]
    gpu: bool
    default_budget_ms: int
    cacheable: bool
    cache_ttl_s: float | None
    affinity_key: str | None
    example_payload: dict[str, Any]
    instances_ready: int
    instances_total: int


class ServicesResponse(BaseModel):
    site: str
    runtime: str
    services: list[ServiceInfo]


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed request: not JSON, no body, or no service to serve it",
    401: "Missing or unknown API key",
    403: "The key lacks the scope, or the client kind is not served",
    404: "Unknown service or chat session",
    409: "The chat session is busy with another turn",
    413: "Body over the size limit",
    422: "A field is invalid",
    429: "Over this key's rate (see Retry-After)",
    502: "The service instance or the model failed",
    503: "No capacity now (see Retry-After)",
    504: "The latency budget ran out",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of the errors one route can answer, each with the error body."""
    return {
        status: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]} for status in statuses
    }


class ChatRequest(BaseModel):
    """One operator message to the site's agent."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"message": "scale inference to 3 replicas"}]},
    )

    message: str = Field(
        min_length=1,
        json_schema_extra={"pattern": r"\S"},  # checked by the route (api.routes.chat), same regex
        description="What the operator asks, in natural language (not only blanks; at most "
        "`MEC_CHAT_MAX_MESSAGE_CHARS` characters, the `maxLength` of this site's schema).",
    )
    session_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Continue this session; omit to start a new one.",
    )
    confirm: bool = Field(
        default=False, description="Allow destructive actions (stop, scale to 0, flush) in this turn."
    )


class ToolCallInfo(BaseModel):
    name: str
    input: dict[str, Any]
    status: Literal["running", "success", "error", "refused"]
    duration_ms: float
    reason: str | None = None


class ChatResponse(BaseModel):
    reply: str
    session_id: str
    tool_calls: list[ToolCallInfo]
    model: str = Field(description="The model that served this turn.")
    usage: dict[str, int]
    latency_ms: float


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """Whether the site can serve, per part; with an operator key also why (errors, runtime)."""

    status: Literal["ready", "degraded", "not_ready"]
    site: str
    checks: dict[str, dict[str, Any]] = Field(
        description="`service:NAME` (ready and total instances) and `cache` (its backend), each with a status."
    )
    runtime: str | None = Field(default=None, description="The runtime's name (operator keys only).")


def site_request_rules(services: Mapping[str, ServiceSettings]) -> list[dict[str, Any]]:
    """JSON Schema clauses (`allOf`) of what the server enforces on a `ServiceRequest` that depends
    on this site's services, so that a schema-driven client and the server agree:

    * a known service takes `cache_ttl_s` up to its own `max_cache_ttl_s` (else 422);
    * a request the agent answers (`allow_llm: true` without one of these services) needs its
      question as a non-blank `payload.text` (else 400).
    """
    rules: list[dict[str, Any]] = [
        {
            "if": {"required": ["service"], "properties": {"service": {"const": name}}},
            "then": {"properties": {"cache_ttl_s": {"maximum": svc.max_cache_ttl_s}}},
        }
        for name, svc in services.items()
    ]
    rules.append(
        {
            "if": {
                "required": ["allow_llm"],
                "properties": {"allow_llm": {"const": True}, "service": {"not": {"enum": list(services)}}},
            },
            "then": {
                "properties": {
                    "payload": {
                        "required": ["text"],
                        "properties": {"text": {"type": "string", "pattern": r"\S"}},
                    }
                }
            },
        }
    )
    return rules


class RecentRequestInfo(BaseModel):
    """One answered request in `GET /v1/metrics/recent`."""

    at: float = Field(description="Unix seconds when it was answered.")
    service: str
    tier: str = Field(description="Where it was served: cache, local, peer, cloud, llm, or reject.")
    status: int
    latency_ms: float
    site: str = Field(description="The site that served it (this one, or the peer it went to).")


class RecentRequests(BaseModel):
    """The latest requests this site (this worker process) answered, newest first."""

    site: str
    worker: int
    requests: list[RecentRequestInfo]
