"""The fast-path router: a pure, deterministic `plan(request, view)`.

No I/O, no clocks, no randomness: the same request against the same view gives the same plan,
in microseconds. Order of preference: a cache hit; a local instance that has room and is
predicted to answer within what is left of the request's budget (a GPU-capable one for GPU
services while the GPU is under its busy threshold; the instance a request's affinity key hashes
to; else the one predicted to answer first), unless that answer is predicted later than the
view's `spill_share` of the budget left and a peer is predicted sooner (a spill, before the local
instance saturates); then a peer site the swarm's balancer picks (its load table says it has
room and is predicted to answer in time, RTT included; a request that a peer forwarded here is
never forwarded again); then the cloud: Bedrock for services of kind `llm` when it is configured
(`View.bedrock`), else the service's cloud endpoint (`View.cloud`), each only when its measured
answer time fits (for a forwarded request only in cloud mode: the cloud is no peer, so no loop); otherwise a reject with 503 and `Retry-After`
(the breaker's, code `cloud_unavailable`, while the cloud target is failing), at once, before
anything is queued or sent. In cloud mode (`View.cloud_spill`) a spill with no sooner peer goes
to the cloud endpoint.

The balancer is part of the view (`View.choose_peer`): it reads the load table as of that view;
the cloud endpoints too (`View.cloud`: each one's breaker and measured answer time).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from agent.view import IDLE, PeerChoice, View
from swarm.cloud import CloudBlocked, CloudChoice
from tools.runtimes.base import Instance

Tier = Literal["cache", "local", "peer", "cloud", "llm", "reject"]
"""Where a request was served: `route.tier` in every answer. `llm` is the operator agent (requests
with `allow_llm`, never planned here); `reject` is an answer without serving."""


@dataclass(frozen=True, slots=True)
class PlanRequest:
    """The part of a client request the router decides on."""

    service: str
    cached: bool = False
    affinity: str | None = None
    exclude: frozenset[str] = field(default_factory=frozenset)
    budget_ms: float = math.inf
    """What is left of the request's latency budget when it is planned."""
    forwarded: bool = False
    """The request came from a peer: it is served here or refused, never forwarded again."""


@dataclass(frozen=True, slots=True)
class Plan:
    tier: Tier
    instance: Instance | None = None
    status: int = 200
    retry_after_s: int | None = None
    reason: str = ""
    peer: PeerChoice | None = None
    cloud: CloudChoice | None = None
    bedrock: CloudChoice | None = None
    """Tier `cloud` through Bedrock Converse (an `llm` service), not a cloud endpoint."""
    code: str | None = None
    """The error code of a reject (default: `no_capacity` for a 503)."""

    @property
    def target(self) -> str:
        if self.tier == "cache":
            return "cache"
        if self.peer is not None:
            return self.peer.site_id
        if self.cloud is not None:
            return self.cloud.target
        if self.bedrock is not None:
            return self.bedrock.target
        return self.instance.id if self.instance is not None else ""


CACHE_HIT = Plan(tier="cache", reason="cache hit")


def _affinity_choice(instances: Sequence[Instance], affinity: str) -> Instance:
    """Rendezvous hashing: the same key picks the same instance while that one has room.

    When the top-ranked instance is full or gone, the key moves to its next-ranked one only.
    """
    return max(instances, key=lambda inst: (zlib.crc32(f"{inst.id}\x00{affinity}".encode()), inst.id))


def plan(request: PlanRequest, view: View) -> Plan:
    """Decide where one request is served. Pure and deterministic."""
    service = view.services.get(request.service)
    if service is None:
        return Plan(tier="reject", status=404, reason=f"unknown service {request.service!r}")
    if request.cached:
        return CACHE_HIT

    ready = [inst for inst in view.instances.get(service.name, ()) if inst.id not in request.exclude]
    loads = view.loads
    predicted: dict[str, float] = {}
    for inst in ready:
        load = loads.get(inst.id, IDLE)
        if load.has_room:
            predicted[inst.id] = load.predicted_ms
    if not predicted:
        why = "every local instance is at capacity" if ready else "no ready local instance"
        return _elsewhere(request, view, f"{why} of {service.name}")
    open_ = [inst for inst in ready if inst.id in predicted and predicted[inst.id] <= request.budget_ms]
    if not open_:
        return _elsewhere(
            request,
            view,
            f"no local instance of {service.name} can answer within the {request.budget_ms:.0f} ms left "
            f"of its budget (soonest predicted: {min(predicted.values()):.0f} ms)",
        )

    if service.gpu:
        on_gpu = [inst for inst in open_ if inst.gpu]
        on_cpu = [inst for inst in open_ if not inst.gpu]
        if on_gpu and (not view.gpu_busy or not on_cpu):
            open_ = on_gpu
        elif on_cpu:
            open_ = on_cpu

    if request.affinity is not None and service.affinity_key is not None:
        pinned = _affinity_choice(open_, request.affinity)
        return Plan(tier="local", instance=pinned, reason=f"affinity {service.affinity_key}")

    chosen = min(open_, key=lambda inst: (predicted[inst.id], inst.id))
    spill = _spill(request, view, chosen, predicted[chosen.id])
    if spill is not None:
        return spill
    return Plan(tier="local", instance=chosen, reason="soonest predicted answer")


def _spill(request: PlanRequest, view: View, local: Instance, local_ms: float) -> Plan | None:
    """A peer predicted to answer sooner than the local instance, once that one is getting slow.

    A prediction is a mean; near saturation an instance's tail is a multiple of it. So a site
    hands a request on before its own instance is full: when the soonest local answer is
    predicted later than `view.spill_share` of the budget left, and a peer is predicted (RTT and
    forwarding included) to answer before it. The local instance stays the fallback
    (`Plan.instance`) should the forward fail before the peer answers. Requests pinned by an
    affinity key never spill: their state lives at their instance. In cloud mode
    (`view.cloud_spill`: the site and its peers are saturated) a spill goes to the service's cloud
    endpoint when that is predicted sooner, before any peer (they are as saturated).
    """
    if request.forwarded or local_ms <= view.spill_share * request.budget_ms:
        return None
    cloud = view.cloud.choice(request.service, local_ms) if view.cloud_spill and view.cloud else None
    if cloud is not None:
        return Plan(
            tier="cloud",
            instance=local,
            cloud=cloud,
            reason=f"in cloud mode, the soonest local instance of {request.service} is predicted at "
            f"{local_ms:.0f} ms; {cloud.reason}",
        )
    if view.cloud_spill:  # cloud mode: the peers are as saturated; the instance keeps the request
        return None
    choice = None if view.choose_peer is None else view.choose_peer(request.service, local_ms)
    if choice is None:
        return None
    return Plan(
        tier="peer",
        instance=local,
        peer=choice,
        reason=f"the soonest local instance of {request.service} is predicted at {local_ms:.0f} ms, over "
        f"{view.spill_share:.0%} of the {request.budget_ms:.0f} ms left; {choice.reason or 'a peer answers sooner'}",
    )


def _elsewhere(request: PlanRequest, view: View, why: str) -> Plan:
    """No local instance will do: a peer that can answer in time, else the cloud if it is expected
    to answer in time (Bedrock for an `llm` service when configured, else the service's cloud
    endpoint), else a 503 at once (with the breaker's Retry-After when the cloud is failing)."""
    if request.forwarded:
        if view.cloud_spill and view.cloud is not None:  # the cloud is no peer: it cannot loop back
            cloud = view.cloud.choice(request.service, request.budget_ms)
            if cloud is not None:
                return Plan(
                    tier="cloud", cloud=cloud, reason=f"{why}; forwarded here in cloud mode: {cloud.reason}"
                )
        return _no_capacity(view, f"{why}, and a request a peer forwarded is not forwarded again")
    bedrock = view.bedrock if view.bedrock is not None and view.bedrock.serves(request.service) else None
    if view.choose_peer is None and view.cloud is None and bedrock is None:
        return _no_capacity(view, f"{why} and no peer or cloud is configured")
    if view.cloud_spill and view.cloud is not None:  # cloud mode: the peers are as saturated
        cloud = view.cloud.choice(request.service, request.budget_ms)
        if cloud is not None:
            return Plan(tier="cloud", cloud=cloud, reason=f"{why}; in cloud mode: {cloud.reason}")
    if view.choose_peer is not None:
        choice = view.choose_peer(request.service, request.budget_ms)
        if choice is not None:
            return Plan(tier="peer", peer=choice, reason=f"{why}; {choice.reason or 'a peer has room'}")
    blocked: CloudBlocked | None = None
    if bedrock is not None:
        answer = bedrock.choice(request.service, request.budget_ms)
        if answer is not None:
            return Plan(tier="cloud", bedrock=answer, reason=f"{why}; {answer.reason}")
        blocked = bedrock.blocked(request.service)
    if view.cloud is not None:
        cloud = view.cloud.choice(request.service, request.budget_ms)
        if cloud is not None:
            return Plan(tier="cloud", cloud=cloud, reason=f"{why}; {cloud.reason}")
        blocked = view.cloud.blocked(request.service) or blocked
    if blocked is not None:
        return Plan(
            tier="reject",
            status=503,
            retry_after_s=blocked.retry_after_s,
            code="cloud_unavailable",
            reason=f"{why}, and the cloud endpoint of {request.service} ({blocked.target}) is failing: "
            f"its circuit breaker is {blocked.state.replace('_', '-')}",
        )
    if view.cloud is not None or bedrock is not None:
        return _no_capacity(view, f"{why} and neither a peer nor the cloud can answer within the budget")
    return _no_capacity(view, f"{why} and no peer can answer within the budget")


def _no_capacity(view: View, reason: str) -> Plan:
    return Plan(tier="reject", status=503, retry_after_s=view.retry_after_s, reason=reason)
