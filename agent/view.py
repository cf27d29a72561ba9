"""The in-memory picture of the site that the fast-path router plans against."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from config.settings import ServiceSettings
from swarm.cloud import CloudBlocked, CloudChoice, CloudCompute
from tools.runtimes.base import Instance


@dataclass(frozen=True, slots=True)
class ServiceView:
    """What the router needs to know about one service."""

    name: str
    gpu: bool
    cacheable: bool
    cache_ttl_s: float
    default_budget_ms: int
    affinity_key: str | None
    client_kinds: frozenset[str]
    max_cache_ttl_s: float = 3600.0

    @classmethod
    def of(cls, name: str, service: ServiceSettings) -> ServiceView:
        """The router's view of one configured service."""
        return cls(
            name=name,
            gpu=service.gpu,
            cacheable=service.cacheable,
            cache_ttl_s=service.cache_ttl_s,
            default_budget_ms=service.default_budget_ms,
            affinity_key=service.affinity_key,
            client_kinds=frozenset(service.client_kinds),
            max_cache_ttl_s=service.max_cache_ttl_s,
        )


class InstanceLoad(Protocol):
    """What the router reads of one instance's load (`agent.admission.InstanceGate` is one)."""

    @property
    def predicted_ms(self) -> float:
        """When a request sent (or queued) now would be answered, in ms from now."""
        ...

    @property
    def has_room(self) -> bool:
        """Whether one more request may be sent or queued."""
        ...

    @property
    def outstanding(self) -> int:
        """Requests in flight or queued for it."""
        ...


@dataclass(frozen=True, slots=True)
class LoadFigures:
    """A fixed `InstanceLoad`, for views built by hand (tests, benchmarks)."""

    predicted_ms: float = 0.0
    has_room: bool = True
    outstanding: int = 0


IDLE = LoadFigures()
"""The load of an instance nothing has been sent to."""


@dataclass(frozen=True, slots=True)
class PeerChoice:
    """A peer site picked to serve a request this site cannot serve within its budget."""

    site_id: str
    host: str
    port: int
    predicted_ms: float
    """When the peer is expected to answer, RTT included, in ms from now."""
    reason: str = ""


class PeerChooser(Protocol):
    """The swarm's balancer over the load table as of one view (`swarm.balancer`)."""

    def __call__(self, service: str, budget_ms: float) -> PeerChoice | None:
        """A peer with a ready instance of `service` predicted to answer within `budget_ms`."""
        ...


class BedrockRoute(Protocol):
    """Bedrock as the cloud target of `llm` services (`agent.bedrock_fallback.BedrockFallback`):
    pure reads of memory, like `CloudCompute`'s."""

    def serves(self, service: str) -> bool:
        """Whether `service` falls back to Bedrock (it is of kind `llm`)."""
        ...

    def choice(self, service: str, budget_ms: float) -> CloudChoice | None:
        """Bedrock for `service` when its breaker lets a call through, a call slot is free and its
        expected answer fits in `budget_ms`; its `target` is `bedrock`."""
        ...

    def blocked(self, service: str) -> CloudBlocked | None:
        """Bedrock when its breaker refuses calls now (else None)."""
        ...


@dataclass(frozen=True, slots=True)
class View:
    """One consistent read of the site: services, ready instances, their load, GPU pressure.

    `instances` holds only instances that passed their health check; `loads` maps instance ids
    to their live load (an instance missing from it is idle).
    """

    site_id: str
    services: Mapping[str, ServiceView]
    instances: Mapping[str, Sequence[Instance]]
    loads: Mapping[str, InstanceLoad]
    gpu_busy: bool
    retry_after_s: int
    choose_peer: PeerChooser | None = None
    """Where a request goes that no local instance can serve in time; None: a site on its own."""
    spill_share: float = 1.0
    """A local answer predicted later than this share of the remaining budget is handed to a peer
    predicted to answer sooner (1: peers only take what no local instance can serve in budget)."""
    cloud_spill: bool = False
    """The site is in cloud mode: a spill with no peer sooner goes to the cloud if it is sooner."""
    cloud: CloudCompute | None = None
    """The services' cloud endpoints (`swarm.cloud`): the tier after the peers; None: none configured."""
    bedrock: BedrockRoute | None = None
    """Where `llm` services go when no local instance and no peer can answer in time (their cloud
    target); None: no Bedrock fallback configured."""
    hedge_share: float | None = None
    """A cacheable request its local instance has not answered after this share of its budget is
    also sent to a peer; the first 200 wins (None: never hedged)."""
