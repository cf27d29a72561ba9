"""The `swarm_ops` tool: read the swarm (its sites, coordinator, placements and load) and change
where services run.

The sites of a swarm elect a coordinator (the consensus leader); every placement (how many
replicas of a service each site runs) is committed through it to the replicated log, and each
site gossips its load to the others. `tools/` does not depend on `swarm/` or `api/`: the tool's
backend is the `SwarmBackend` protocol below, which the site implements over its consensus and
its load table. Changes are proposed to the coordinator, and the tool returns what it committed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, Protocol, get_args

from strands import tool
from strands.types.tools import AgentTool

SwarmAction = Literal["sites", "leader", "placements", "load", "scale", "move"]
"""The one list of `swarm_ops` actions; each is in exactly one of the three sets below."""
SWARM_ACTIONS: frozenset[SwarmAction] = frozenset(get_args(SwarmAction))

SWARM_READS: frozenset[SwarmAction] = frozenset({"sites", "leader", "placements", "load"})
"""Actions that change nothing."""
SWARM_MUTATIONS: frozenset[SwarmAction] = frozenset({"scale", "move"})
"""Actions that change the swarm's placements; another action can undo what they did."""
SWARM_DESTRUCTIVE: frozenset[SwarmAction] = frozenset()
"""Actions that take something away for good (none: a placement can always be set again)."""
SWARM_DESTRUCTIVE_AT_ZERO_REPLICAS: frozenset[SwarmAction] = frozenset({"scale"})
"""Mutations that are destructive when `replicas` is 0: scaling a service to 0 across the swarm
stops it on every site."""

MAX_SITES = 64
"""At most this many sites are listed (the rest are counted)."""
MAX_SERVICES = 64
"""At most this many services' placements are listed (the rest are counted)."""
MAX_LOAD_FIGURES = 16
"""At most this many figures of one site's load are passed on."""
MAX_SWARM_REPLICAS = 256
"""No service runs more replicas than this across the swarm (a per-service limit may be lower)."""
_MAX_TEXT = 200

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
"""Service names and site ids: lower-case letters, digits and '-', as the site's settings require."""


class SwarmBackend(Protocol):
    """The swarm as the tool sees it; the site implements it over its consensus and load table."""

    async def sites(self) -> list[dict[str, Any]]:
        """Every site of the swarm: `{"site_id", "url", "healthy", "load": {figure: value}}`."""
        ...

    def leader(self) -> str | None:
        """The coordinator's site id, or None while there is none (an election, no quorum)."""
        ...

    def term(self) -> int:
        """The consensus term the coordinator was elected in."""
        ...

    def placements(self) -> dict[str, dict[str, int]]:
        """The committed placements: service → site id → replicas."""
        ...

    async def scale(self, service: str, replicas: int) -> dict[str, int]:
        """Run `replicas` replicas of `service` in all; the coordinator decides which sites run
        them. Returns the committed placement of the service (site id → replicas). `ValueError`
        for a service the swarm does not know."""
        ...

    async def move(self, service: str, site_id: str) -> dict[str, int]:
        """Run all of `service`'s replicas on `site_id`. Returns the committed placement of the
        service. `ValueError` for a service or a site the swarm does not know."""
        ...


def _name(field: str, value: str | None, action: str) -> str:
    if value is None or value == "":
        raise ValueError(f"action {action!r} needs a {field}")
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"{field} must be lower-case letters, digits and '-' (at most 63 characters), not {value!r}"
        )
    return value


def _scalar(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, bool | int | float)
        or (isinstance(value, str) and len(value) <= _MAX_TEXT)
    )


def _site_row(site: Mapping[str, Any], with_url: bool) -> dict[str, Any]:
    """One site as the tool reports it: its id, health and (a bounded copy of) its load."""
    load = site.get("load")
    figures = {
        str(key)[:64]: value
        for key, value in (load.items() if isinstance(load, Mapping) else ())
        if _scalar(value)
    }
    row: dict[str, Any] = {"site_id": str(site.get("site_id", "?"))[:_MAX_TEXT]}
    if with_url:
        row["url"] = str(site.get("url", ""))[:_MAX_TEXT]
    row["healthy"] = bool(site.get("healthy"))
    row["load"] = dict(list(figures.items())[:MAX_LOAD_FIGURES])
    return row


def _placement(replicas: Mapping[str, int]) -> dict[str, int]:
    """A placement without the sites that run none, by site id, at most `MAX_SITES` sites."""
    kept = sorted((str(site), int(count)) for site, count in replicas.items() if int(count) > 0)
    return dict(kept[:MAX_SITES])


def swarm_ops_tool(backend: SwarmBackend, max_replicas: dict[str, int] | None = None) -> AgentTool:
    """Build the `swarm_ops` tool over the site's view of the swarm."""
    limits = max_replicas or {}

    async def site_table(site: str | None, with_url: bool) -> dict[str, Any]:
        rows = sorted((_site_row(s, with_url) for s in await backend.sites()), key=lambda row: row["site_id"])
        leader = backend.leader()
        if site is not None:
            chosen = [row for row in rows if row["site_id"] == site]
            if not chosen:
                known = ", ".join(row["site_id"] for row in rows[:MAX_SITES]) or "none"
                raise ValueError(f"no site {site!r} in the swarm (sites: {known})")
            rows = chosen
        return {
            "sites": rows[:MAX_SITES],
            "count": len(rows),
            "healthy": sum(1 for row in rows if row["healthy"]),
            "truncated": len(rows) > MAX_SITES,
            "leader": leader,
        }

    def committed(service: str, placement: Mapping[str, int]) -> dict[str, Any]:
        kept = _placement(placement)
        return {
            "service": service,
            "replicas": sum(int(count) for count in placement.values() if int(count) > 0),
            "placement": kept,
            "leader": backend.leader(),
            "term": backend.term(),
        }

    @tool(name="swarm_ops")
    async def swarm_ops(
        action: SwarmAction,
        service: str | None = None,
        replicas: int | None = None,
        site: str | None = None,
    ) -> dict[str, Any]:
        """See and change the swarm of edge sites this site belongs to.

        The sites elect one coordinator (the leader); it alone commits placements (how many
        replicas of each service run on which site). Changes ("scale", "move") go through the
        coordinator, need an operator key, and are rate-limited like every change; scaling a
        service to 0 across the swarm stops it on every site, so the operator confirms it first.
        To change only this site's own instances use container_ops instead.

        Args:
            action: "sites" lists the swarm's sites (at most 64) with url, healthy or not, and
                their latest load figures (optionally only `site`); "leader" returns the
                coordinator's site id and the consensus term (leader null while none is
                elected); "placements" returns service → site → replicas (optionally only
                `service`, or only what runs on `site`); "load" returns each site's health
                and load figures (optionally only `site`); "scale" sets `service` to
                `replicas` replicas in all, and the coordinator chooses the sites; "move"
                puts all of `service`'s replicas on `site`.
            service: Service name, e.g. "inference" (needed for scale and move).
            replicas: Total replicas across the swarm for "scale" (0 or more).
            site: Site id, e.g. "site-2" (needed for move; a filter for sites, load and
                placements).

        Returns:
            A JSON object: {"sites": [...], "count", "healthy", "leader", "truncated"} for sites
            and load; {"leader", "term"} for leader; {"placements": {...}, "replicas": {...}}
            for placements; for scale and move the committed placement: {"service",
            "replicas", "placement": {site: replicas}, "leader", "term"}.
        """
        if action not in SWARM_ACTIONS:
            raise ValueError(f"unknown action {action!r}; actions: {', '.join(sorted(SWARM_ACTIONS))}")
        if replicas is not None and action != "scale":
            raise ValueError(f"replicas is only for action 'scale', not {action!r}")
        if site is not None and action == "scale":
            raise ValueError(
                "site is not for action 'scale': the coordinator chooses the sites (move pins one)"
            )
        if action == "leader":
            if service is not None or site is not None:
                raise ValueError("action 'leader' takes no service or site")
            return {"leader": backend.leader(), "term": backend.term()}
        if action in ("sites", "load"):
            if service is not None:
                raise ValueError(f"service is not for action {action!r}")
            return await site_table(
                None if site is None else _name("site", site, action), with_url=action == "sites"
            )
        if action == "placements":
            placements = backend.placements()
            if service is not None:
                wanted = _name("service", service, action)
                placements = {wanted: placements.get(wanted, {})}
            if site is not None:
                on = _name("site", site, action)
                placements = {name: {on: p[on]} if on in p else {} for name, p in placements.items()}
            names = sorted(placements)
            shown = {name: _placement(placements[name]) for name in names[:MAX_SERVICES]}
            return {
                "placements": shown,
                "replicas": {name: sum(placement.values()) for name, placement in shown.items()},
                "services": len(names),
                "truncated": len(names) > MAX_SERVICES,
            }
        name = _name("service", service, action)
        if action == "scale":
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise ValueError("action 'scale' needs replicas, a whole number >= 0")
            limit = min(limits.get(name, MAX_SWARM_REPLICAS), MAX_SWARM_REPLICAS)
            if replicas > limit:
                raise ValueError(f"service {name!r} allows at most {limit} replicas across the swarm")
            return committed(name, await backend.scale(name, replicas))
        target = _name("site", site, action)
        return {**committed(name, await backend.move(name, target)), "site": target}

    return swarm_ops
