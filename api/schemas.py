"""Request and response bodies of the REST API (pydantic models at the edge)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ClientKind = Literal["mobile", "iot", "gaming"]


class ClientInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: ClientKind = Field(description="What sort of client sends the request.")
    id: str = Field(min_length=1, max_length=128, description="The client's own identifier.")


class ServiceRequest(BaseModel):
    """A client's request for one service."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "service": "inference",
                    "payload": {"text": "navigate to the nearest charging station"},
                    "client": {"kind": "mobile", "id": "phone-17"},
                    "latency_budget_ms": 200,
                }
            ]
        },
    )

    service: str = Field(min_length=1, max_length=64, description="Service name, see GET /v1/services.")
    payload: dict[str, Any] = Field(description="The service's input, a JSON object.")
    client: ClientInfo
    latency_budget_ms: int | None = Field(
        default=None, ge=1, le=60_000, description="Answer within this many ms or fail fast (504)."
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


class Route(BaseModel):
    tier: Literal["cache", "local", "peer", "cloud", "reject"]
    site: str
    target: str


class ServiceResponse(BaseModel):
    """How the site answered; `route` says where it was served."""

    request_id: str
    service: str
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


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Malformed request",
        401: "Missing or unknown API key",
        403: "The key lacks the scope, or the client kind is not served",
        404: "Unknown service",
        413: "Body over the size limit",
        422: "A field is invalid",
        502: "The service instance failed",
        503: "No capacity now (see Retry-After)",
        504: "The latency budget ran out",
    }.items()
}
