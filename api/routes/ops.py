"""Liveness, readiness, Prometheus metrics and the metrics snapshot."""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import APIRouter, Query, Security
from fastapi.responses import JSONResponse, PlainTextResponse

from api.auth import require
from api.deps import MaybeCaller, SiteDep
from api.schemas import Health, Readiness, RecentRequests, error_responses
from api.swarm_node import SwarmNode
from monitoring import prometheus
from tools.metrics_monitor import RECENT_REQUESTS

router = APIRouter(tags=["operations"])

_OPERATOR_READS = [Security(require("metrics_monitor"))]


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
@router.head("/healthz", response_model=Health, operation_id="healthz_head", summary="Liveness, no body")
async def healthz() -> dict[str, str]:
    """Always 200 while the process serves HTTP; `HEAD` answers the same without a body."""
    return {"status": "ok"}


_READINESS_RESPONSES: dict[int | str, dict[str, Any]] = {
    **error_responses(401),
    503: {"model": Readiness, "description": "No service has a ready instance"},
}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses=_READINESS_RESPONSES,
    summary="Readiness: instances up; cache backend state",
)
@router.head(
    "/readyz",
    response_model=Readiness,
    responses=_READINESS_RESPONSES,
    operation_id="readyz_head",
    summary="Readiness, no body (for load balancers)",
)
async def readyz(site: SiteDep, caller: MaybeCaller) -> JSONResponse:
    """200 while at least one service has a ready instance (status `ready` or `degraded`), else 503.

    Anyone may ask; the answer names each service and the cache with its state only. With an
    operator key it also carries the reasons (start errors, the cache's last error). `HEAD`
    answers the same status without a body (for load balancers).
    """
    detail = caller is not None and caller.may("site.health_detail")
    serving, body = site.readiness(detail=detail)
    return JSONResponse(body, status_code=200 if serving else 503)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    dependencies=_OPERATOR_READS,
    responses=error_responses(401, 403),
    summary="Prometheus text exposition",
)
async def metrics(site: SiteDep) -> PlainTextResponse:
    text = prometheus.render(
        site.settings.site_id,
        site.monitor.snapshot,
        site.monitor.requests,
        site.cache.stats(),
        site.runtime.instances(),
        site.chat.turns,
        site.admission_report(),
        consensus=None if site.swarm is None else _consensus_figures(site.swarm),
        cloud=None if site.cloud is None else site.cloud.snapshot(),
        alerts=site.alerts.report(),
        overload_state=site.overload.state,
    )
    return PlainTextResponse(text, media_type=prometheus.CONTENT_TYPE)


def _consensus_figures(swarm: SwarmNode) -> prometheus.ConsensusFigures:
    """What `/metrics` shows of this site's consensus node."""
    status = swarm.consensus.status()
    return prometheus.ConsensusFigures(
        term=status.term,
        commit_index=status.commit_index,
        applied_index=swarm.state.applied_index,
        leader=status.leader,
        is_leader=swarm.consensus.is_leader(),
        members=tuple(status.members),
    )


@router.get(
    "/v1/metrics/snapshot",
    dependencies=_OPERATOR_READS,
    responses=error_responses(401, 403),
    summary="The latest metrics snapshot: host, GPUs, instances, request rates, cache",
)
async def snapshot(site: SiteDep) -> dict[str, Any]:
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
        "alerts": site.alerts.report(),
        "overload": site.overload.report(),
        "cloud": {} if site.cloud is None else site.cloud.snapshot(),
        "bedrock": None if site.bedrock is None else site.bedrock.snapshot(),
        "worker": {"index": site.worker_index, "pid": os.getpid(), "count": site.worker_count},
    }


@router.get(
    "/v1/metrics/recent",
    response_model=RecentRequests,
    dependencies=_OPERATOR_READS,
    responses=error_responses(401, 403, 422),
    summary="The latest requests answered: service, tier, status, latency, serving site",
)
async def recent_requests(
    site: SiteDep,
    limit: Annotated[int, Query(ge=1, le=RECENT_REQUESTS, description="How many, newest first")] = 50,
) -> dict[str, Any]:
    """What the dashboard lists. With several worker processes each keeps its own; the answer is
    from the one that took this call (`worker`)."""
    here = site.settings.site_id
    return {
        "site": here,
        "worker": site.worker_index,
        "requests": [
            {**entry.to_dict(), "site": entry.site or here} for entry in site.monitor.requests.recent(limit)
        ],
    }
