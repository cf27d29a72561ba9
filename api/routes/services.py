"""`GET /v1/services`: what this site serves and how to call it."""

from __future__ import annotations

from fastapi import APIRouter, Security

from api.auth import require
from api.deps import SiteDep
from api.schemas import ServiceInfo, ServicesResponse, error_responses

router = APIRouter(prefix="/v1", tags=["services"], dependencies=[Security(require("services.list"))])


@router.get("/services", response_model=ServicesResponse, responses=error_responses(401, 403))
async def list_services(site: SiteDep) -> ServicesResponse:
    """Every service with its client kinds, GPU use, default budget, cacheability and a working example payload."""
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
