"""The swarm as operators see it: `GET /v1/sites`, and placement changes that any site takes and
the coordinator (the consensus leader) decides: `POST /v1/services/{name}/scale`, `.../move`."""

from __future__ import annotations

from fastapi import APIRouter, Security
from fastapi.responses import JSONResponse

from agent.errors import SiteError
from api.auth import require
from api.deps import SiteDep
from api.routes.peers import MoveBody, ScaleBody
from api.schemas import error_responses
from api.site import Site

router = APIRouter(prefix="/v1", tags=["swarm"])

FORWARD_TIMEOUT_S = 15.0


@router.get(
    "/sites",
    dependencies=[Security(require("sites.list"))],
    responses=error_responses(401, 403),
    summary="The swarm: leader, term, every site with its health and load, placements",
)
async def list_sites(site: SiteDep) -> JSONResponse:
    """Answered by every site from its own replicated state and load table. A site on its own is
    a swarm of one, its own leader."""
    if site.swarm is None:
        return JSONResponse(
            {
                "site": site.settings.site_id,
                "leader": site.settings.site_id,
                "term": 0,
                "sites": [{"site_id": site.settings.site_id, "url": None, "healthy": True, "load": None}],
                "placements": {},
            }
        )
    return JSONResponse(site.swarm.report())


@router.post(
    "/services/{name}/scale",
    dependencies=[Security(require("services.scale"))],
    responses=error_responses(401, 403, 404, 409, 422, 503),
    summary="Run this many replicas of a service across the swarm (the coordinator places them)",
)
async def scale_service(name: str, body: ScaleBody, site: SiteDep) -> JSONResponse:
    if site.swarm is None:
        if name not in site.settings.services:
            raise SiteError(404, "unknown_service", f"unknown service {name!r}", "service")
        instances = await site.runtime.scale(name, body.replicas)
        return JSONResponse(
            {
                "service": name,
                "placement": {site.settings.site_id: len(instances)},
                "decided_by": site.settings.site_id,
            }
        )
    return await _changed(site, "scale", name, body.replicas)


@router.post(
    "/services/{name}/move",
    dependencies=[Security(require("services.scale"))],
    responses=error_responses(401, 403, 404, 409, 422, 503),
    summary="Move every replica of a service to one site",
)
async def move_service(name: str, body: MoveBody, site: SiteDep) -> JSONResponse:
    if site.swarm is None:
        raise SiteError(409, "no_swarm", "this site has no peers to move a service between")
    return await _changed(site, "move", name, body.site)


async def _changed(site: Site, action: str, service: str, argument: int | str) -> JSONResponse:
    """The committed placement after a change, and the coordinator that decided it."""
    assert site.swarm is not None
    placement = await site.swarm.change(action, service, argument)
    return JSONResponse(
        {"service": service, "placement": placement, "decided_by": site.swarm.consensus.leader()}
    )
