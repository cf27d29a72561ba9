"""`MemorySwarm`: an in-memory `tools.swarm_ops.SwarmBackend` for the tool's and the rules model's tests.

The tool's backend is an edge of its unit: the real one is the site's view of the consensus and
of the gossiped load table. This one keeps the same contract: `scale` and `move` know the swarm's
services and sites and refuse others with a `ValueError`, a change without a coordinator raises
the consensus's `ConsensusError`, and a change returns the placement it committed (the sites that
run the service, site id → replicas). The coordinator spreads a scale over the healthy sites, the
least loaded first; a move puts all of a service's replicas (at least one) on one healthy site.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from swarm.consensus.base import ConsensusError


def site(site_id: str, healthy: bool = True, **load: Any) -> dict[str, Any]:
    """One site as `SwarmBackend.sites` returns it (load figures as keyword arguments)."""
    return {"site_id": site_id, "url": f"http://{site_id}.mec.test:8080", "healthy": healthy, "load": load}


class MemorySwarm:
    """A swarm held in memory; `calls` records the changes asked of it, in order."""

    def __init__(
        self,
        sites: Iterable[Mapping[str, Any]],
        services: Iterable[str],
        leader: str | None = "site-1",
        term: int = 1,
        placements: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        self.site_list = [dict(s) for s in sites]
        self.services = frozenset(services)
        self.coordinator = leader
        self.current_term = term
        self.placement = {svc: dict(p) for svc, p in (placements or {}).items()}
        self.calls: list[tuple[str, str, Any]] = []

    async def sites(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self.site_list)

    def leader(self) -> str | None:
        return self.coordinator

    def term(self) -> int:
        return self.current_term

    def placements(self) -> dict[str, dict[str, int]]:
        return {svc: dict(p) for svc, p in self.placement.items()}

    async def scale(self, service: str, replicas: int) -> dict[str, int]:
        self._check(service)
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, not {replicas}")
        healthy = self._healthy()
        if replicas and not healthy:
            raise ValueError("no healthy site can run replicas")
        self.calls.append(("scale", service, replicas))
        spread: dict[str, int] = {}
        for index in range(replicas):
            target = healthy[index % len(healthy)]
            spread[target] = spread.get(target, 0) + 1
        self.placement[service] = spread
        return dict(spread)

    async def move(self, service: str, site_id: str) -> dict[str, int]:
        self._check(service)
        known = {s["site_id"]: s for s in self.site_list}
        if site_id not in known:
            raise ValueError(f"no site {site_id!r} in the swarm (sites: {', '.join(sorted(known))})")
        if not known[site_id]["healthy"]:
            raise ValueError(f"site {site_id!r} is unhealthy; it cannot take {service}")
        self.calls.append(("move", service, site_id))
        total = max(1, sum(self.placement.get(service, {}).values()))
        self.placement[service] = {site_id: total}
        return {site_id: total}

    def _check(self, service: str) -> None:
        if self.coordinator is None:
            raise ConsensusError("no coordinator is elected; the change was not committed")
        if service not in self.services:
            raise ValueError(
                f"unknown service {service!r} (the swarm runs: {', '.join(sorted(self.services))})"
            )

    def _healthy(self) -> list[str]:
        """The healthy sites, the least loaded (by CPU) first."""
        healthy = [s for s in self.site_list if s["healthy"]]
        healthy.sort(key=lambda s: (float(s.get("load", {}).get("cpu_percent") or 0), s["site_id"]))
        return [s["site_id"] for s in healthy]
