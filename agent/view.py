"""The in-memory picture of the site that the fast-path router plans against."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class View:
    """One consistent read of the site: services, ready instances, load, GPU pressure.

    `instances` holds only instances that passed their health check; `outstanding` counts the
    requests in flight per instance id (a live mapping owned by the dispatcher).
    """

    site_id: str
    services: Mapping[str, ServiceView]
    instances: Mapping[str, Sequence[Instance]]
    outstanding: Mapping[str, int]
    instance_capacity: int
    gpu_busy: bool
    retry_after_s: int
