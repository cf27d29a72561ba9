"""The swarm as operators see it: `GET /v1/sites`, and placement changes that any site takes and
the coordinator (the consensus leader) decides: `POST /v1/services/{name}/scale`, `.../move`."""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Security
from fastapi.responses import JSONResponse

from agent.errors import SiteError
from agent.upstream import UpstreamError
from api.auth import require
from api.deps import SiteDep
from api.routes.peers import MoveBody, ScaleBody, placement_error
from api.schemas import error_responses
from api.site import Site
from swarm.consensus.base import ConsensusError
from swarm.coordinator import PlacementError

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


async def _at_coordinator(site: Site, action: str, service: str, body: bytes) -> JSONResponse:
    """Decide here when this site leads, else forward to the leader (signed) and pass its answer on."""
    swarm = site.swarm
    assert swarm is not None
    if service not in site.settings.services:
        raise SiteError(404, "unknown_service", f"unknown service {service!r}", "service")
    if swarm.coordinator.is_coordinator():
        try:
            if action == "scale":
                command = await swarm.coordinator.scale(service, json.loads(body)["replicas"], 10.0)
            else:
                command = await swarm.coordinator.move(service, json.loads(body)["site"], 10.0)
        except (ConsensusError, PlacementError, ValueError) as exc:
            raise placement_error(exc) from None
        return JSONResponse(
            {"service": command.service, "placement": command.replicas, "decided_by": swarm.site_id}
        )
    leader = swarm.consensus.leader()
    address = None if leader is None else swarm.peers.get(leader)
    if leader is None or address is None:
        raise SiteError(503, "no_leader", "the swarm has no leader now; retry shortly", retry_after_s=1)
    path = f"/v1/peer/{action}/{service}"
    headers = swarm.signer.sign("POST", path, body, time.time(), to=leader)
    try:
        response = await site.upstream.request(
            address.host, address.port, path, body, FORWARD_TIMEOUT_S, headers=headers
        )
    except UpstreamError as exc:
        raise SiteError(
            503,
            "leader_unreachable",
            f"the leader {leader} did not answer: {type(exc).__name__}",
            retry_after_s=1,
        ) from None
    answer = json.loads(response.body)
    if response.status == 200:
        answer["decided_by"] = leader
    return JSONResponse(answer, status_code=response.status)


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
    return await _at_coordinator(site, "scale", name, body.model_dump_json().encode())


@router.post(
    "/services/{name}/move",
    dependencies=[Security(require("services.scale"))],
    responses=error_responses(401, 403, 404, 409, 422, 503),
    summary="Move every replica of a service to one site",
)
async def move_service(name: str, body: MoveBody, site: SiteDep) -> JSONResponse:
    if site.swarm is None:
        raise SiteError(409, "no_swarm", "this site has no peers to move a service between")
    return await _at_coordinator(site, "move", name, body.model_dump_json().encode())
