"""`GET /v1/services`: what this site serves and how to call it."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from api.auth import require
from api.schemas import ERROR_RESPONSES, ServiceInfo, ServicesResponse

router = APIRouter(prefix="/v1", tags=["services"], dependencies=[Depends(require("services.list"))])


@router.get("/services", response_model=ServicesResponse, responses=ERROR_RESPONSES)
async def list_services(request: Request) -> ServicesResponse:
    """Every service with its client kinds, GPU use, default budget, cacheability and a working example payload."""
    site = request.app.state.site
    runtime = site.runtime
    return ServicesResponse(
        site=site.settings.site_id,
        runtime=runtime.name,
        services=[
            ServiceInfo(
                name=name,
                description=svc.description,
                kind=svc.module.rsplit(".", 1)[-1],
                client_kinds=svc.client_kinds,
                gpu=svc.gpu,
                default_budget_ms=svc.default_budget_ms,
                cacheable=svc.cacheable,
                cache_ttl_s=svc.cache_ttl_s if svc.cacheable else None,
                affinity_key=svc.affinity_key,
                example_payload=svc.example_payload,
                instances_ready=len(runtime.ready_instances(name)),
                instances_total=len(runtime.instances(name)),
            )
            for name, svc in site.settings.services.items()
        ],
    )
