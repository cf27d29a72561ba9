"""A simulation scenario: the topology, the services, the device profiles and the swarm's knobs.

Scenarios are YAML files (`sim/scenarios/*.yaml`, or any path), validated here strictly (unknown
keys refused). What the scenario leaves out of the swarm's knobs comes from the site's own
defaults (`config.settings.Settings`), so the `default` policy is the project as it ships.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from config.settings import Settings

_STRICT = ConfigDict(extra="forbid", frozen=True)

Positive = Annotated[float, Field(gt=0)]
Share = Annotated[float, Field(ge=0, le=1)]


class Range(BaseModel):
    """A value drawn uniformly per site from [low, high]."""

    model_config = _STRICT
    low: float = Field(ge=0)
    high: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.high < self.low:
            raise ValueError("high must be at least low")
        return self


class TopologySpec(BaseModel):
    """Sites on a square plane; RTT from distance plus a per-pair and a per-sample jitter."""

    model_config = _STRICT
    area_km: Positive = 300.0
    rtt_base_ms: float = Field(default=1.3, ge=0)
    """RTT between two sites at distance 0 (calibration: the loopback gossip RTT of `GET /v1/sites`)."""
    rtt_per_km_ms: float = Field(default=0.01, ge=0)
    """Fibre: ~5 µs/km each way, ×1 for path stretch."""
    rtt_pair_jitter: Share = 0.2
    """Each pair's RTT is scaled by a factor drawn once from [1 - j, 1 + j]."""
    rtt_sample_jitter: Share = 0.1
    """Each measured or travelled RTT is scaled by a factor from [1 - j, 1 + j]."""
    site_weight_sigma: float = Field(default=0.6, ge=0)
    """Spread (lognormal sigma) of how many devices each site has: hot spots."""
    gpu_site_share: Share = 0.3
    """Share of sites with a GPU (their GPU services get a GPU instance)."""


class ServiceSpec(BaseModel):
    """One service: its budget, its cost, and how many instances of what size each site runs."""

    model_config = _STRICT
    budget_ms: Positive
    cpu_ms: Positive
    """CPU time of one request at a whole core (calibration in the scenario's comments)."""
    cv: float = Field(default=0.3, ge=0)
    """Coefficient of variation of the CPU time (lognormal)."""
    gpu: bool = False
    gpu_speedup: Positive = 4.0
    """A GPU instance serves a request this many times faster than a whole core."""
    replicas: Range = Range(low=1, high=1)
    """CPU instances per site (rounded)."""
    cpu_share: Range = Range(low=0.25, high=0.25)
    """Share of a core each CPU instance gets (a CFS quota)."""
    affinity: bool = False
    """Requests carry an affinity key (sensor_id, session_id): pinned, never spilled."""
    cloud: bool = False
    """The service has a cloud endpoint (used only when `cloud.enabled`)."""


class BurstSpec(BaseModel):
    """An on-off modulated Poisson process (a two-state MMPP): exponential on and off periods."""

    model_config = _STRICT
    on_s: Positive = 2.0
    off_s: Positive = 6.0
    on_factor: Positive = 3.0
    """Rate while on, as a multiple of the mean rate (off gets what keeps the mean)."""


class DiurnalSpec(BaseModel):
    """A sinusoidal swing of the rate, compressed into `period_s` of simulated time."""

    model_config = _STRICT
    amplitude: Share = 0.0
    period_s: Positive = 60.0


class ProfileSpec(BaseModel):
    """One kind of device: which service it calls, how often, how bursty."""

    model_config = _STRICT
    service: str
    share: Share
    """Share of the scenario's devices that are of this kind."""
    rate_per_device: Positive
    """Mean requests per second per device."""
    arrivals: Literal["poisson", "bursty", "periodic"] = "poisson"
    """`periodic`: exactly `rate` per second, evenly spaced (an open-loop load generator's schedule)."""
    burst: BurstSpec = BurstSpec()
    diurnal: DiurnalSpec = DiurnalSpec()
    budget_ms: Positive | None = None
    """This kind's budget (default: the service's)."""
    stop_s: Positive | None = None
    """These devices stop sending at this simulated time (a load that ends; None: never)."""


class CloudSpec(BaseModel):
    """The services' cloud endpoint: unbounded capacity, a lognormal answer time."""

    model_config = _STRICT
    enabled: bool = False
    answer_ms: Positive = 21.0
    cv: float = Field(default=0.15, ge=0)


def _default(name: str) -> float:
    value = Settings.model_fields[name].default
    assert isinstance(value, int | float)
    return float(value)


class SwarmSpec(BaseModel):
    """The swarm's knobs; by default the site's own (`config.settings.Settings`)."""

    model_config = _STRICT
    gossip_interval_s: Positive = Field(default_factory=lambda: _default("gossip_interval_s"))
    load_stale_s: Positive = Field(default_factory=lambda: _default("load_stale_s"))
    peer_spill_share: Annotated[float, Field(gt=0, le=1)] = Field(
        default_factory=lambda: _default("peer_spill_share")
    )
    instance_capacity: int = Field(default_factory=lambda: int(_default("instance_capacity")), ge=1)
    instance_queue: int = Field(default_factory=lambda: int(_default("instance_queue")), ge=0)
    forward_extra_ms: float = Field(default=1.0, ge=0)
    """What a forward adds besides the RTT (calibration: +1.00 ms p50 on loopback, README swarm figures)."""
    front_door_ms: float = Field(default=0.3, ge=0)
    """The front door's own time per request on each site it passes."""
    max_peers: int | None = Field(default=None, ge=1)
    """Each site's peers are its nearest `max_peers` sites (None: every other site)."""
    sample_interval_s: Positive = Field(default_factory=lambda: _default("sample_interval_s"))
    """How often a site steps its overload state (the site's metrics sample)."""
    request_window_s: float = Field(default=10.0, ge=1)
    """The request log's window that the hand-off share is taken over (the site's: 10 s)."""
    overload_spill_share: Annotated[float, Field(gt=0, le=1)] = Field(
        default_factory=lambda: _default("overload_spill_share")
    )
    overload_handoff_share: Annotated[float, Field(gt=0, le=1)] = Field(
        default_factory=lambda: _default("overload_handoff_share")
    )
    overload_release_share: Share = Field(default_factory=lambda: _default("overload_release_share"))
    overload_cloud_after_s: float = Field(default_factory=lambda: _default("overload_cloud_after_s"), ge=0)
    overload_calm_s: float = Field(default_factory=lambda: _default("overload_calm_s"), ge=0)
    overload_min_dwell_s: float = Field(default_factory=lambda: _default("overload_min_dwell_s"), ge=0)


class Scenario(BaseModel):
    """Everything one simulation run needs; `sites`, `devices`, `duration_s` and `seed` may be
    overridden on the command line."""

    model_config = _STRICT
    name: str
    description: str = ""
    seed: int = 1
    duration_s: Positive = 60.0
    warmup_s: float = Field(default=5.0, ge=0)
    """Requests that arrive before this are served but not counted."""
    sites: int = Field(default=10, ge=1, le=1000)
    devices: int = Field(default=10_000, ge=1, le=10_000_000)
    topology: TopologySpec = TopologySpec()
    swarm: SwarmSpec = Field(default_factory=SwarmSpec)
    cloud: CloudSpec = CloudSpec()
    services: Annotated[dict[str, ServiceSpec], Field(min_length=1)]
    profiles: Annotated[dict[str, ProfileSpec], Field(min_length=1)]

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        for kind, profile in self.profiles.items():
            if profile.service not in self.services:
                raise ValueError(f"profile {kind!r} calls unknown service {profile.service!r}")
        total = sum(p.share for p in self.profiles.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"profile shares must add up to 1 (they add up to {total:g})")
        return self

    def with_overrides(
        self,
        sites: int | None = None,
        devices: int | None = None,
        duration_s: float | None = None,
        seed: int | None = None,
        max_peers: int | None = None,
    ) -> Scenario:
        """This scenario with the command line's overrides, validated again.

        New `sites` without `devices` keeps the devices per site (so the load per site stays what
        the scenario describes); a new `duration_s` shorter than 5 × the warm-up shortens the
        warm-up to a fifth of it. `max_peers`: each site's peers are its nearest that many.
        """
        data = self.model_dump()
        if max_peers is not None:
            data["swarm"]["max_peers"] = max_peers
        if sites is not None and devices is None:
            devices = max(1, round(self.devices * sites / self.sites))
        if duration_s is not None:
            data["warmup_s"] = min(self.warmup_s, duration_s / 5)
        for key, value in (
            ("sites", sites),
            ("devices", devices),
            ("duration_s", duration_s),
            ("seed", seed),
        ):
            if value is not None:
                data[key] = value
        return Scenario.model_validate(data)


def bundled_scenarios() -> list[str]:
    """The names of the scenarios shipped in `sim/scenarios`."""
    folder = resources.files("sim") / "scenarios"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_scenario(name_or_path: str) -> Scenario:
    """A bundled scenario by name (`heavy`), or a YAML file by path. ValueError if invalid."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        text = path.read_text()
    else:
        entry = resources.files("sim") / "scenarios" / f"{name_or_path}.yaml"
        if not entry.is_file():
            raise ValueError(f"no scenario {name_or_path!r} (bundled: {', '.join(bundled_scenarios())})")
        text = entry.read_text()
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError("a scenario is a YAML mapping")
    return Scenario.model_validate(data)
