"""Liveness, readiness, Prometheus metrics and the metrics snapshot."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from api.auth import authenticate, require
from api.schemas import ERROR_RESPONSES
from monitoring import prometheus

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: instances up; cache backend state")
async def readyz(request: Request) -> JSONResponse:
    """200 while at least one service has a ready instance (status `ready` or `degraded`), else 503.

    Anyone may ask; the answer names each service and the cache with its state only. With an
    operator key it also carries the reasons (start errors, the cache's last error).
    """
    principal = authenticate(request)
    detail = principal is not None and principal.may("site.health_detail")
    serving, body = request.app.state.site.readiness(detail=detail)
    return JSONResponse(body, status_code=200 if serving else 503)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    dependencies=[Depends(require("metrics_monitor"))],
    responses=ERROR_RESPONSES,
    summary="Prometheus text exposition",
)
async def metrics(request: Request) -> PlainTextResponse:
    site = request.app.state.site
    text = prometheus.render(
        site.settings.site_id,
        site.monitor.snapshot,
        site.monitor.requests,
        site.cache.stats(),
        site.runtime.instances(),
        site.chat.turns,
        site.admission_report(),
    )
    return PlainTextResponse(text, media_type=prometheus.CONTENT_TYPE)


@router.get(
    "/v1/metrics/snapshot",
    dependencies=[Depends(require("metrics_monitor"))],
    responses=ERROR_RESPONSES,
    summary="The latest metrics snapshot: host, GPUs, instances, request rates, cache",
)
async def snapshot(request: Request) -> dict[str, Any]:
    site = request.app.state.site
    return {
        "site": site.settings.site_id,
        **site.monitor.snapshot.to_dict(),
        "cache": site.cache.stats(),
        "runtime": {
            "name": site.runtime.name,
            "instances": [i.to_dict() for i in site.runtime.instances()],
            "start_errors": site.start_errors,
        },
        "admission": site.admission_report(),
        "worker": {"index": site.worker_index, "pid": os.getpid(), "count": site.worker_count},
    }
