"""The peer API: what sites of one swarm ask each other. Every call is signed with the swarm's
secret (`swarm.peers`); a bearer key (client or operator) or an unsigned call is refused.

* `POST /v1/peer/load`: a peer's load report; the answer is this site's (one exchange refreshes
  both load tables).
* `POST /v1/peer/requests`: a client request a peer forwarded, served here on the fast path for
  the caller it names (its scopes and cache space hold here), never forwarded again.
* `POST /v1/peer/scale`, `POST /v1/peer/move`: placement changes forwarded to the coordinator.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import SiteError
from api.deps import SiteDep
from api.door import CLOCK_KEY, RequestClock
from api.routes.client_requests import client_call, new_request_id, read_body, render
from swarm.peers import PeerCall, PeerSigner, peer_call

router = APIRouter(prefix="/v1/peer", tags=["peers"], include_in_schema=False)


def _signer(request: Request) -> PeerSigner | None:
    swarm = request.app.state.site.swarm
    return None if swarm is None else swarm.signer


Peer = Annotated[PeerCall, Depends(peer_call(_signer))]


@router.post("/load")
async def peer_load(call: Peer, request: Request, site: SiteDep) -> Response:
    assert site.swarm is not None  # peer_call answers 404 on a site without peers
    return Response(site.swarm.gossip.receive(call, await request.body()), media_type="application/json")


@router.post("/requests")
async def peer_request(call: Peer, request: Request, site: SiteDep) -> Response:
    """Serve a request a peer forwarded: for its caller, within what is left of its budget."""
    if call.caller is None:
        raise SiteError(400, "missing_caller", "a forwarded request names its caller", "x-mec-caller")
    try:
        principal = call.caller.principal()
    except ValueError as exc:
        raise SiteError(401, "invalid_caller", str(exc), "x-mec-caller") from None
    if not principal.may("requests.serve"):
        raise SiteError(403, "forbidden", "the forwarded caller lacks the 'client' scope", "x-mec-caller")
    body = await read_body(request)
    if body.service is None:
        raise SiteError(400, "unclassified_request", "a forwarded request names a service", "service")
    clock: RequestClock | None = request.scope["state"].get(CLOCK_KEY)
    outcome = await site.dispatcher.serve(replace(client_call(body, principal, clock), forwarded=True))
    return render(outcome, site.settings.site_id, new_request_id())


class ScaleBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    replicas: int = Field(ge=0, le=1024, description="Replicas of the service across the swarm.")


class MoveBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    site: str = Field(min_length=1, max_length=63, description="The site that runs every replica.")


@router.post("/{action}/{service}")
async def peer_change(action: str, service: str, call: Peer, request: Request, site: SiteDep) -> JSONResponse:
    """A placement change a peer forwarded to this site as the coordinator: decided here, or 409
    `not_leader` (never forwarded on)."""
    assert site.swarm is not None
    if action not in ("scale", "move"):
        raise SiteError(404, "not_found", f"no peer action {action!r}")
    try:
        body = (ScaleBody if action == "scale" else MoveBody).model_validate_json(await request.body())
    except ValidationError as exc:
        raise SiteError(422, "invalid_field", str(exc.errors()[0].get("msg")), "body") from None
    argument = body.replicas if isinstance(body, ScaleBody) else body.site
    placement = await site.swarm.decide(action, service, argument)
    return JSONResponse({"service": service, "placement": placement})
