"""The simulated sites: where they are, what instances they run, and the RTT between them.

Generated from the scenario and a seeded RNG: sites placed uniformly on a square plane, RTT from
their distance (plus a fixed per-pair jitter), devices spread over sites by a lognormal weight (hot
spots), instances per service drawn per site from the scenario's ranges.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from sim.scenario import Scenario


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """One simulated instance: a single worker serving its requests one at a time, FIFO."""

    id: str
    service: str
    gpu: bool
    speed: float
    """Its wall time per request is the request's CPU time (at a whole core) divided by this."""


@dataclass(frozen=True, slots=True)
class SiteSpec:
    id: str
    x_km: float
    y_km: float
    gpu: bool
    weight: float
    """Its share of the devices (all sites' weights add up to 1)."""
    instances: tuple[InstanceSpec, ...]


@dataclass(frozen=True, slots=True)
class Topology:
    sites: tuple[SiteSpec, ...]
    rtt_ms: tuple[tuple[float, ...], ...]
    """`rtt_ms[i][j]`: the mean round trip between sites i and j."""
    peers: tuple[tuple[int, ...], ...]
    """Each site's peers, by index."""

    def capacity_rps(self, service: str, cpu_ms: float, gpu_speedup: float) -> float:
        """The swarm's throughput for `service` at 100 % busy instances (req/s)."""
        total = 0.0
        for site in self.sites:
            for inst in site.instances:
                if inst.service == service:
                    total += 1000.0 * inst.speed / cpu_ms
        return total


def site_name(index: int) -> str:
    return f"site-{index + 1}"


def build_topology(scenario: Scenario, rng: random.Random) -> Topology:
    """The sites, instances and RTT matrix of `scenario`, drawn from `rng`."""
    spec = scenario.topology
    n = scenario.sites
    sites = []
    raw_weights = [rng.lognormvariate(0.0, spec.site_weight_sigma) for _ in range(n)]
    total_weight = sum(raw_weights)
    for i in range(n):
        x, y = rng.uniform(0, spec.area_km), rng.uniform(0, spec.area_km)
        gpu = rng.random() < spec.gpu_site_share
        sid = site_name(i)
        instances: list[InstanceSpec] = []
        for name, service in scenario.services.items():
            count = round(rng.uniform(service.replicas.low, service.replicas.high))
            for k in range(count):
                share = rng.uniform(service.cpu_share.low, service.cpu_share.high)
                instances.append(InstanceSpec(f"{sid}/{name}-{k + 1}", name, False, share))
            if service.gpu and gpu:
                instances.append(InstanceSpec(f"{sid}/{name}-gpu", name, True, service.gpu_speedup))
        sites.append(SiteSpec(sid, x, y, gpu, raw_weights[i] / total_weight, tuple(instances)))
    rtt = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            distance = math.dist((sites[i].x_km, sites[i].y_km), (sites[j].x_km, sites[j].y_km))
            factor = rng.uniform(1 - spec.rtt_pair_jitter, 1 + spec.rtt_pair_jitter)
            rtt[i][j] = rtt[j][i] = (spec.rtt_base_ms + spec.rtt_per_km_ms * distance) * factor
    limit = scenario.swarm.max_peers
    peers = []
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: (rtt[i][j], j))
        peers.append(tuple(others if limit is None else others[:limit]))
    return Topology(tuple(sites), tuple(tuple(row) for row in rtt), tuple(peers))
