"""The coordinator's placement decisions: pure functions, and the class that commits them.

The leader of the consensus is the swarm's coordinator. It decides where each service's
replicas run (`place`, `move`, `rebalance_after_leave`: deterministic functions of their
arguments, no I/O) and commits each decision as a `SetPlacement` through the log, which every
site's `Reconciler` then carries out for its own share. Other sites do not decide: `Coordinator`
refuses with `NotLeaderError` (naming the leader) and the API layer forwards to the leader.

How `place` decides, for a service of R replicas:

1. Eligible sites: members whose `capabilities["services"]` names the service (a site that
   declares no list runs any configured service).
2. Each site's room for the service: at most `max_replicas`, and for each of `cpus` and
   `memory_mb` the site declares in its capabilities, what is left after the other services'
   replicas placed there (`replicas × their cpus`), divided by the service's own need. A site
   that declares no `cpus` (or `memory_mb`) is not limited by it.
3. Not enough room in all → `PlacementError` naming each site's room and what limits it.
4. Minimal moves: every replica the service already has on an eligible site stays, up to the
   site's room. Surplus replicas come off GPU-less sites first for a GPU service, then off the
   sites with the most, then the later site id; missing ones go, one at a time, for a GPU
   service to sites with GPUs (`capabilities["gpus"] > 0`) first, then to the site with the
   fewest replicas of the service (spread), then for a service without GPU to GPU-less sites
   (leaving GPUs to those who need them), then to the site with the most room left, then to the
   earlier site id.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from config.settings import ServiceSettings
from swarm.commands import Command, LeaveSite, SetPlacement
from swarm.consensus.base import Consensus, ConsensusError, NotLeaderError
from swarm.state import SwarmState

log = logging.getLogger(__name__)

Placement = dict[str, int]
"""Replicas of one service by site id."""

_EPSILON = 1e-9
_DEFAULT_NEEDS = {
    "cpus": float(ServiceSettings.model_fields["cpus"].default),
    "memory_mb": float(ServiceSettings.model_fields["memory_mb"].default),
}
"""What a replica of a service the coordinator has no settings for is assumed to need."""


_C = TypeVar("_C", SetPlacement, LeaveSite)


class PlacementError(Exception):
    """A placement that cannot be made; the message says what is missing."""


# -- pure decisions ---------------------------------------------------------------------------


def place(
    service: str,
    replicas_total: int,
    members: Iterable[str],
    capabilities: Mapping[str, Mapping[str, Any]],
    current_placement: Mapping[str, Mapping[str, int]],
    service_settings: Mapping[str, ServiceSettings],
) -> Placement:
    """Where `replicas_total` replicas of `service` should run: site id → replicas (> 0 only,
    in site-id order; `{}` for none). See the module docstring for the rules.

    `members` are the site ids that may run it (a `SwarmState.members` dict will do);
    `capabilities` maps site ids to what they declared; `current_placement` is every service's
    placement (service → site → replicas, what each site runs now), for minimal moves and for
    the room other services take; `service_settings` every configured service (for the `gpu`,
    `cpus`, `memory_mb` and `max_replicas` of this one, and the needs of the others).
    Raises `PlacementError` when it cannot be done.
    """
    settings = service_settings.get(service)
    if settings is None:
        raise PlacementError(
            f"unknown service {service!r} (configured: {', '.join(sorted(service_settings)) or 'none'})"
        )
    if replicas_total < 0:
        raise PlacementError(f"replicas of {service!r} must be 0 or more, not {replicas_total}")
    if replicas_total == 0:
        return {}
    sites = sorted(set(members))
    rank = {site: position for position, site in enumerate(sites)}
    room, limits, elsewhere = _rooms(service, sites, capabilities, current_placement, service_settings)
    if sum(room.values()) < replicas_total:
        raise PlacementError(_shortfall(service, replicas_total, sites, room, limits, elsewhere))

    gpu_site = {site: _number(capabilities.get(site, {}).get("gpus")) > 0 for site in room}
    existing = current_placement.get(service, {})
    result = {site: min(max(int(existing.get(site, 0)), 0), room[site]) for site in room}
    placed = sum(result.values())

    def surplus_first(site: str) -> tuple[Any, ...]:
        if settings.gpu:
            return (gpu_site[site], -result[site], -rank[site])
        return (-result[site], not gpu_site[site], -rank[site])

    def wanted_first(site: str) -> tuple[Any, ...]:
        free = room[site] - result[site]
        if settings.gpu:
            return (not gpu_site[site], result[site], -free, rank[site])
        return (result[site], gpu_site[site], -free, rank[site])

    while placed > replicas_total:
        site = min((s for s in result if result[s] > 0), key=surplus_first)
        result[site] -= 1
        placed -= 1
    while placed < replicas_total:
        site = min((s for s in result if result[s] < room[s]), key=wanted_first)
        result[site] += 1
        placed += 1
    return {site: result[site] for site in sites if result.get(site, 0) > 0}


def room_for(
    service: str,
    members: Iterable[str],
    capabilities: Mapping[str, Mapping[str, Any]],
    current_placement: Mapping[str, Mapping[str, int]],
    service_settings: Mapping[str, ServiceSettings],
) -> int:
    """How many replicas of `service` `place` could put on `members` in all (arguments as for
    `place`); 0 for a service that is not configured."""
    if service not in service_settings:
        return 0
    room, _, _ = _rooms(service, sorted(set(members)), capabilities, current_placement, service_settings)
    return sum(room.values())


def move(service: str, to_site: str, placement: Mapping[str, int]) -> Placement:
    """All of `service`'s replicas (as many as `placement` has in all) on `to_site` alone.

    Whether they fit there is `place`'s business (`Coordinator.move` checks with it).
    `PlacementError` when the service has no replicas to move.
    """
    total = sum(max(int(n), 0) for n in placement.values())
    if total == 0:
        raise PlacementError(f"{service!r} has no replicas to move to {to_site}; scale it first")
    return {to_site: total}


def effective_placements(
    state: SwarmState, service_settings: Mapping[str, ServiceSettings]
) -> dict[str, Placement]:
    """What each service runs where: the committed placements, and for each configured service
    the swarm has not decided, its configured `replicas` on every member that runs it (what the
    sites do until the swarm decides; the coordinator assumes the sites share its settings)."""
    decided = state.placements
    members = state.members
    for service, settings in service_settings.items():
        if service in decided or settings.replicas == 0:
            continue
        decided[service] = {
            site: settings.replicas
            for site, member in sorted(members.items())
            if _offers(member.capabilities, service)
        }
    return decided


def rebalance_after_leave(
    site_id: str, state: SwarmState, service_settings: Mapping[str, ServiceSettings]
) -> list[SetPlacement]:
    """The placements that move `site_id`'s replicas to the other members, one per service the
    site had replicas of (services in name order). Works before its `LeaveSite` is applied and
    after (the site is never a candidate). The replicas elsewhere stay where they are; when
    the others lack room for all, as many as fit are placed (and the shortfall logged); when
    none fit, the service gets no command (its placement keeps naming the departed site, so the
    desired total is not forgotten and a later rebalance can place it)."""
    current = effective_placements(state, service_settings)
    members = [site for site in state.members if site != site_id]
    capabilities = {site: member.capabilities for site, member in state.members.items()}
    commands: list[SetPlacement] = []
    for service in sorted(state.placements):
        placement = current[service]
        if placement.get(site_id, 0) <= 0:
            continue
        if service not in service_settings:
            log.warning("cannot move %s off %s: the service is not configured here", service, site_id)
            continue
        total = sum(placement.values())
        without = {**current, service: {s: n for s, n in placement.items() if s != site_id}}
        wanted = min(total, room_for(service, members, capabilities, without, service_settings))
        if wanted < total:
            log.warning("after %s left, room for %d of %d replicas of %s", site_id, wanted, total, service)
        if wanted == 0:
            continue
        target = place(service, wanted, members, capabilities, without, service_settings)
        commands.append(SetPlacement(service, target))
        current[service] = target  # the next service sees the room this one takes
    return commands


# -- the coordinator --------------------------------------------------------------------------


class Coordinator:
    """The site's view of the coordinator role: decides and commits placements while this site
    leads the consensus. Decisions are made one at a time (each sees the ones before it)."""

    def __init__(
        self,
        site_id: str,
        consensus: Consensus,
        state: SwarmState,
        service_settings: Mapping[str, ServiceSettings],
    ) -> None:
        self.site_id = site_id
        self.consensus = consensus
        self.state = state
        self.service_settings = dict(service_settings)
        self._lock = asyncio.Lock()

    def is_coordinator(self) -> bool:
        """Whether this site decides (it leads the consensus)."""
        return self.consensus.is_leader()

    def _require_leader(self) -> None:
        if not self.consensus.is_leader():
            leader = self.consensus.leader()
            raise NotLeaderError(
                f"site {self.site_id} is not the coordinator (the coordinator is {leader or 'not known yet'})",
                leader,
            )

    async def scale(self, service: str, replicas: int, timeout_s: float) -> SetPlacement:
        """Decide where `replicas` replicas of `service` run, commit it, return the committed
        command. `PlacementError` when it cannot be placed (or the log refused it),
        `NotLeaderError` on a site that is not the coordinator, `ConsensusError` when it did not
        commit in time (it may still commit later)."""
        async with self._deciding(timeout_s) as deadline:
            current = effective_placements(self.state, self.service_settings)
            target = place(
                service,
                replicas,
                self.state.members,
                self._capabilities(),
                current,
                self.service_settings,
            )
            return await self._commit(SetPlacement(service, target), deadline)

    async def move(self, service: str, to_site: str, timeout_s: float) -> SetPlacement:
        """Move all of `service`'s replicas to `to_site` ("move inference to site-2"), if they
        fit there; the committed command. Errors as for `scale`."""
        async with self._deciding(timeout_s) as deadline:
            if to_site not in self.state.members:
                raise PlacementError(
                    f"{to_site} is not a member of the swarm (members: {', '.join(sorted(self.state.members)) or 'none'})"
                )
            current = effective_placements(self.state, self.service_settings)
            target = move(service, to_site, current.get(service, {}))
            checked = place(
                service, target[to_site], [to_site], self._capabilities(), current, self.service_settings
            )
            return await self._commit(SetPlacement(service, checked), deadline)

    async def leave(self, site_id: str, timeout_s: float) -> list[SetPlacement]:
        """Take `site_id` out of the swarm: commit the placements that move its replicas to the
        other members, then its `LeaveSite` (if it is still a member); the committed
        placements. Errors as for `scale`."""
        async with self._deciding(timeout_s) as deadline:
            commands = rebalance_after_leave(site_id, self.state, self.service_settings)
            for command in commands:
                await self._commit(command, deadline)
            if site_id in self.state.members:
                await self._commit(LeaveSite(site_id), deadline)
            return commands

    def _capabilities(self) -> dict[str, dict[str, Any]]:
        return {site: member.capabilities for site, member in self.state.members.items()}

    def _deciding(self, timeout_s: float) -> _Deciding:
        self._require_leader()
        return _Deciding(self._lock, timeout_s)

    async def _commit(self, command: _C, deadline: float) -> _C:
        """Propose and wait until applied here; the command, or `PlacementError` when the state
        machine refused it (e.g. a site left between the decision and its commit)."""
        self._require_leader()
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise ConsensusError(f"no time left to commit {command.type} {command.id}")
        index = await self.consensus.propose(command, remaining)
        outcome = self.state.outcome(command.id)
        if outcome is not None and not outcome[0]:
            raise PlacementError(f"the swarm refused {_describe(command)} at log index {index}: {outcome[1]}")
        log.info("committed %s at log index %d", _describe(command), index)
        return command


class _Deciding:
    """`async with`: the coordinator's decision lock, taken within the call's timeout; yields
    the loop-time deadline of the whole call."""

    def __init__(self, lock: asyncio.Lock, timeout_s: float) -> None:
        self.lock = lock
        self.timeout_s = timeout_s

    async def __aenter__(self) -> float:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        try:
            await asyncio.wait_for(self.lock.acquire(), self.timeout_s)
        except TimeoutError:
            raise ConsensusError(
                f"another placement decision was still committing after {self.timeout_s:g} s"
            ) from None
        return deadline

    async def __aexit__(self, *exc: object) -> None:
        self.lock.release()


# -- helpers ----------------------------------------------------------------------------------


def _number(value: object) -> float:
    """A declared capability as a number; 0 for anything that is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return float(value)


def _offers(capabilities: Mapping[str, Any], service: str) -> bool:
    offered = capabilities.get("services")
    return not isinstance(offered, list | tuple) or service in offered


def _needs(service: str, service_settings: Mapping[str, ServiceSettings]) -> dict[str, float]:
    settings = service_settings.get(service)
    if settings is None:
        return dict(_DEFAULT_NEEDS)
    return {"cpus": float(settings.cpus), "memory_mb": float(settings.memory_mb)}


def _rooms(
    service: str,
    sites: list[str],
    capabilities: Mapping[str, Mapping[str, Any]],
    current_placement: Mapping[str, Mapping[str, int]],
    service_settings: Mapping[str, ServiceSettings],
) -> tuple[dict[str, int], dict[str, str], list[str]]:
    """Each eligible site's room for `service` and what limits it, and the sites that do not
    run it at all."""
    settings = service_settings[service]
    room: dict[str, int] = {}
    limits: dict[str, str] = {}
    elsewhere: list[str] = []
    for site in sites:
        caps = capabilities.get(site, {})
        if not _offers(caps, service):
            elsewhere.append(site)
            continue
        room[site], limits[site] = _room(site, service, settings, caps, current_placement, service_settings)
    return room, limits, elsewhere


def _room(
    site: str,
    service: str,
    settings: ServiceSettings,
    caps: Mapping[str, Any],
    current_placement: Mapping[str, Mapping[str, int]],
    service_settings: Mapping[str, ServiceSettings],
) -> tuple[int, str]:
    """How many replicas of `service` fit on `site`, and what limits it."""
    room, limit = settings.max_replicas, f"max_replicas {settings.max_replicas} per site"
    needs = _needs(service, service_settings)
    for resource, need in needs.items():
        if resource not in caps:
            continue
        total = _number(caps[resource])
        used = sum(
            max(int(sites.get(site, 0)), 0) * _needs(other, service_settings)[resource]
            for other, sites in current_placement.items()
            if other != service
        )
        fits = max(math.floor((total - used) / need + _EPSILON), 0)
        if fits < room:
            room = fits
            limit = f"{resource} {total:g}, {used:g} used by other services, {need:g} per replica"
    return room, limit


def _shortfall(
    service: str,
    wanted: int,
    sites: list[str],
    room: Mapping[str, int],
    limits: Mapping[str, str],
    elsewhere: list[str],
) -> str:
    if not sites:
        return f"cannot place {wanted} replicas of {service!r}: the swarm has no members"
    have = sum(room.values())
    parts = [f"{site}: {room[site]} ({limits[site]})" for site in sorted(room)]
    text = f"cannot place {wanted} replicas of {service!r}: room for {have}"
    if parts:
        text += " — " + ", ".join(parts)
    if elsewhere:
        text += f"; {', '.join(elsewhere)} {'does' if len(elsewhere) == 1 else 'do'} not run {service!r}"
    return text + f"; {wanted - have} more need sites with room"


def _describe(command: Command) -> str:
    if isinstance(command, SetPlacement):
        return f"placement of {command.service} {command.replicas or '(none)'} ({command.id})"
    return f"{command.type} ({command.id})"
