"""Run the routing suite: each case's state as a real `agent.view.View`, through the real `plan()`.

The view is built the way a site builds it, from real parts: the embedded default services
(`ServiceView.of`), ready `Instance`s with fixed `LoadFigures`, the swarm's balancer
(`swarm.balancer.choose_peer`) over a real `LoadTable` fed each peer's `SiteLoad` report and RTT,
and a real `CloudCompute` whose breaker is opened by real failures. The table's and the breaker's
clocks are a fixed instant, so a case is the same every run.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.router import Plan, PlanRequest, plan
from agent.view import LoadFigures, PeerChoice, PeerChooser, ServiceView, View
from evals.metrics import percentile
from evals.suites import RoutingCase, SiteState, TargetClass
from swarm.balancer import RoundRobinState, choose_peer
from swarm.cloud import CloudCompute
from swarm.load_table import LoadTable, ServiceLoad, SiteLoad
from tools.runtimes.base import Instance

NOW = 1_000.0
"""The fixed instant of every case's clocks (monotonic seconds)."""
SELF_ID = "site-1"
CLOUD_URL = "https://cloud.mec.example:8443"


def default_services() -> dict[str, ServiceView]:
    """The embedded default services as the router sees them."""
    from config.settings import load_settings

    settings = load_settings(None)
    return {name: ServiceView.of(name, svc) for name, svc in settings.services.items()}


def _chooser(state: SiteState) -> PeerChooser | None:
    if state.peers is None:
        return None
    addresses = {peer.site_id: ("127.0.0.1", 9001 + index) for index, peer in enumerate(state.peers)}
    table = LoadTable(
        SELF_ID,
        {site_id: f"http://{host}:{port}" for site_id, (host, port) in addresses.items()},
        stale_s=1.0,
        clock=lambda: NOW,
    )
    return _PeerChooser(table, state, addresses)


@dataclass
class _PeerChooser:
    table: LoadTable
    state: SiteState
    addresses: Mapping[str, tuple[str, int]]
    loaded_for: str | None = None

    def __call__(self, service: str, budget_ms: float) -> PeerChoice | None:
        if self.loaded_for != service:
            for peer in self.state.peers or []:
                report = SiteLoad(
                    site_id=peer.site_id,
                    url=f"http://{peer.site_id}.mec.example",
                    sent_at=NOW - peer.age_s,
                    services={
                        service: ServiceLoad(
                            ready=peer.ready,
                            inflight=peer.inflight,
                            predicted_ms=peer.predicted_ms,
                            has_room=peer.has_room,
                        )
                    },
                    cpu_percent=50.0,
                    overload=peer.overload,
                )
                self.table.update(report, received_at=NOW - peer.age_s, rtt_ms=peer.rtt_ms)
            self.loaded_for = service
        pick = choose_peer(
            service, budget_ms, self.table.fresh(), self.state.balancer, random.Random(0), RoundRobinState()
        )
        if pick is None:
            return None
        host, port = self.addresses[pick.site_id]
        return PeerChoice(pick.site_id, host, port, pick.score_ms, pick.reason)


def _cloud(state: SiteState, service: str) -> CloudCompute | None:
    if state.cloud is None:
        return None
    cloud = CloudCompute({service: CLOUD_URL}, assumed_rtt_ms=state.cloud.expected_ms, clock=lambda: NOW)
    if state.cloud.breaker == "open":
        breaker = cloud.targets[service].breaker
        while breaker.state != "open":
            breaker.record_failure()
    return cloud


def build_view(case: RoutingCase, services: Mapping[str, ServiceView]) -> View:
    """The view of one case: its instances and loads, its peers, its cloud endpoint."""
    state = case.site
    service = case.request.service
    instances = [
        Instance(
            id=inst.id,
            service=service,
            host="127.0.0.1",
            port=20_000 + i,
            image="mec-workloads:0.1",
            gpu=inst.gpu,
            state="running",
        )
        for i, inst in enumerate(state.instances)
    ]
    return View(
        site_id=SELF_ID,
        services=services,
        instances={service: instances},
        loads={
            inst.id: LoadFigures(inst.predicted_ms, inst.has_room, inst.outstanding)
            for inst in state.instances
        },
        gpu_busy=state.gpu_busy,
        retry_after_s=1,
        choose_peer=_chooser(state),
        spill_share=state.spill_share,
        cloud_spill=state.cloud_spill,
        cloud=_cloud(state, service),
    )


def target_class(result: Plan) -> TargetClass:
    """What kind of target the plan serves from."""
    if result.tier == "cache":
        return "cache"
    if result.tier == "peer":
        return "peer"
    if result.tier == "cloud":
        return "cloud-endpoint"
    if result.tier == "local" and result.instance is not None:
        return "local-gpu" if result.instance.gpu else "local-cpu"
    return "none"


@dataclass(frozen=True)
class RoutingScore:
    case_id: str
    category: str
    tier_ok: bool
    class_ok: bool
    target_ok: bool
    status_ok: bool
    success: bool
    got: str
    plan_us: float


def run_routing_case(case: RoutingCase, services: Mapping[str, ServiceView]) -> RoutingScore:
    view = build_view(case, services)
    request = PlanRequest(
        service=case.request.service,
        cached=case.request.cached,
        affinity=case.request.affinity,
        exclude=frozenset(case.request.exclude),
        budget_ms=case.request.budget_ms if math.isfinite(case.request.budget_ms) else math.inf,
        forwarded=case.request.forwarded,
    )
    started = time.perf_counter()
    result = plan(request, view)
    plan_us = (time.perf_counter() - started) * 1e6
    want = case.expect
    tier_ok = result.tier == want.tier
    class_ok = target_class(result) == want.target_class
    target_ok = want.target is None or result.target == want.target
    status_ok = (want.status is None or result.status == want.status) and (
        want.code is None or result.code == want.code
    )
    return RoutingScore(
        case_id=case.id,
        category=case.category,
        tier_ok=tier_ok,
        class_ok=class_ok,
        target_ok=target_ok,
        status_ok=status_ok,
        success=tier_ok and class_ok and target_ok and status_ok,
        got=f"{result.tier}/{target_class(result)}/{result.target or '-'}/{result.status}"
        + (f"/{result.code}" if result.code else ""),
        plan_us=plan_us,
    )


def summarize_routing(scores: Sequence[RoutingScore]) -> dict[str, Any]:
    n = len(scores)

    def rate(values: Sequence[bool]) -> float | None:
        return sum(values) / len(values) if values else None

    return {
        "cases": n,
        "trials": n,
        "success_rate": rate([s.success for s in scores]),
        "tier_accuracy": rate([s.tier_ok for s in scores]),
        "target_class_accuracy": rate([s.class_ok for s in scores]),
        "target_accuracy": rate([s.target_ok for s in scores]),
        "status_accuracy": rate([s.status_ok for s in scores]),
        "plan_us": {
            "p50": percentile([s.plan_us for s in scores], 0.5),
            "p95": percentile([s.plan_us for s in scores], 0.95),
        },
    }


def run_routing_suite(cases: Sequence[RoutingCase]) -> list[RoutingScore]:
    services = default_services()
    return [run_routing_case(case, services) for case in cases]
