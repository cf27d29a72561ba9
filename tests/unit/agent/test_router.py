from __future__ import annotations

from collections import Counter
from dataclasses import replace

from agent.router import PlanRequest, plan
from agent.view import LoadFigures, PeerChoice, PeerChooser, ServiceView, View
from swarm.cloud import CloudCompute
from tools.runtimes.base import Instance


def _service(name: str, gpu: bool = False, affinity: str | None = None) -> ServiceView:
    return ServiceView(
        name=name,
        gpu=gpu,
        cacheable=True,
        cache_ttl_s=60,
        default_budget_ms=100,
        affinity_key=affinity,
        client_kinds=frozenset({"mobile", "iot", "gaming"}),
    )


def _instance(instance_id: str, gpu: bool = False) -> Instance:
    service = instance_id.rsplit("-", 1)[0]
    return Instance(instance_id, service, "127.0.0.1", 1000, "img", gpu, state="running")


def _busy(predicted_ms: float) -> LoadFigures:
    return LoadFigures(predicted_ms=predicted_ms, outstanding=int(predicted_ms))


FULL = LoadFigures(predicted_ms=1.0, has_room=False, outstanding=96)


def _view(
    instances: list[Instance],
    loads: dict[str, LoadFigures] | None = None,
    gpu_busy: bool = False,
    services: list[ServiceView] | None = None,
    choose_peer: PeerChooser | None = None,
    spill_share: float = 1.0,
) -> View:
    services = services or [_service("infer", gpu=True), _service("sensor", affinity="sensor_id")]
    by_service: dict[str, list[Instance]] = {}
    for inst in instances:
        by_service.setdefault(inst.service, []).append(inst)
    return View(
        site_id="site-t",
        services={s.name: s for s in services},
        instances=by_service,
        loads=loads or {},
        gpu_busy=gpu_busy,
        retry_after_s=2,
        choose_peer=choose_peer,
        spill_share=spill_share,
    )


class Balancer:
    """The swarm's balancer at the router's edge: one peer predicted at `peer_ms`, offered when it
    fits the bound the router asks with (`swarm.balancer` is tested on its own)."""

    def __init__(self, peer_ms: float) -> None:
        self.peer_ms = peer_ms
        self.asked: list[tuple[str, float]] = []

    def __call__(self, service: str, budget_ms: float) -> PeerChoice | None:
        self.asked.append((service, budget_ms))
        if self.peer_ms > budget_ms:
            return None
        return PeerChoice("site-p", "127.0.0.1", 1, predicted_ms=self.peer_ms, reason="p2c")


def test_cache_hit_is_served_from_cache_without_an_instance() -> None:
    decision = plan(PlanRequest("infer", cached=True), _view([]))
    assert decision.tier == "cache"
    assert decision.target == "cache"


def test_unknown_service_is_rejected_with_404() -> None:
    decision = plan(PlanRequest("nope"), _view([_instance("infer-1")]))
    assert (decision.tier, decision.status) == ("reject", 404)


def test_the_instance_predicted_to_answer_first_is_chosen() -> None:
    view = _view(
        [_instance("sensor-1"), _instance("sensor-2"), _instance("sensor-3")],
        {"sensor-1": _busy(3), "sensor-2": _busy(1), "sensor-3": _busy(2)},
    )
    assert plan(PlanRequest("sensor"), view).target == "sensor-2"


def test_an_instance_that_cannot_answer_within_the_budget_left_is_not_planned() -> None:
    view = _view(
        [_instance("sensor-1"), _instance("sensor-2")], {"sensor-1": _busy(5), "sensor-2": _busy(30)}
    )
    assert plan(PlanRequest("sensor", budget_ms=20), view).target == "sensor-1"
    late = _view([_instance("sensor-1")], {"sensor-1": _busy(30)})
    decision = plan(PlanRequest("sensor", budget_ms=20), late)
    assert (decision.tier, decision.status, decision.retry_after_s) == ("reject", 503, 2)
    assert "within the 20 ms left" in decision.reason and "30 ms" in decision.reason


def test_ties_break_on_instance_id_so_plans_are_deterministic() -> None:
    view = _view([_instance("sensor-2"), _instance("sensor-1")])
    assert {plan(PlanRequest("sensor"), view).target for _ in range(10)} == {"sensor-1"}


def test_gpu_service_prefers_gpu_instance_while_gpu_is_under_threshold() -> None:
    view = _view([_instance("infer-1"), _instance("infer-2", gpu=True)], {"infer-2": _busy(3)})
    assert plan(PlanRequest("infer"), view).target == "infer-2"


def test_busy_gpu_sends_gpu_service_to_cpu_instance() -> None:
    view = _view([_instance("infer-1"), _instance("infer-2", gpu=True)], gpu_busy=True)
    assert plan(PlanRequest("infer"), view).target == "infer-1"


def test_busy_gpu_still_serves_when_only_gpu_instances_exist() -> None:
    view = _view([_instance("infer-2", gpu=True)], gpu_busy=True)
    assert plan(PlanRequest("infer"), view).target == "infer-2"


def test_full_instances_are_skipped() -> None:
    view = _view([_instance("sensor-1"), _instance("sensor-2")], {"sensor-1": FULL, "sensor-2": FULL})
    decision = plan(PlanRequest("sensor"), view)
    assert (decision.tier, decision.status, decision.retry_after_s) == ("reject", 503, 2)
    assert "capacity" in decision.reason


def test_no_ready_instance_rejects_with_503_and_retry_after() -> None:
    decision = plan(PlanRequest("sensor"), _view([]))
    assert (decision.status, decision.retry_after_s) == (503, 2)
    assert "no ready local instance" in decision.reason


def test_excluded_instance_is_not_planned_again() -> None:
    view = _view([_instance("sensor-1"), _instance("sensor-2")])
    assert plan(PlanRequest("sensor", exclude=frozenset({"sensor-1"})), view).target == "sensor-2"


def test_affinity_key_pins_a_sensor_to_one_instance_and_spreads_sensors() -> None:
    view = _view([_instance("sensor-1"), _instance("sensor-2"), _instance("sensor-3")])
    first = plan(PlanRequest("sensor", affinity="turbine-7"), view).target
    busy = _view([_instance("sensor-1"), _instance("sensor-2"), _instance("sensor-3")], {first: _busy(3)})
    assert plan(PlanRequest("sensor", affinity="turbine-7"), busy).target == first
    spread = Counter(plan(PlanRequest("sensor", affinity=f"s{i}"), view).target for i in range(300))
    assert set(spread) == {"sensor-1", "sensor-2", "sensor-3"}
    assert min(spread.values()) > 50


def test_affinity_moves_only_when_pinned_instance_is_full_or_gone() -> None:
    instances = [_instance("sensor-1"), _instance("sensor-2"), _instance("sensor-3")]
    pinned = {
        f"s{i}": plan(PlanRequest("sensor", affinity=f"s{i}"), _view(instances)).target for i in range(60)
    }
    without_one = _view([inst for inst in instances if inst.id != "sensor-3"])
    for key, target in pinned.items():
        moved = plan(PlanRequest("sensor", affinity=key), without_one).target
        if target != "sensor-3":
            assert moved == target, f"{key} moved from {target} to {moved} though its instance stayed"
    full = _view(instances, {"sensor-1": FULL})
    assert all(plan(PlanRequest("sensor", affinity=k), full).target != "sensor-1" for k in pinned)


def test_a_local_instance_predicted_past_the_spill_share_hands_the_request_to_a_sooner_peer() -> None:
    balancer = Balancer(peer_ms=12)
    view = _view([_instance("infer-1")], {"infer-1": _busy(40)}, choose_peer=balancer, spill_share=0.25)
    decision = plan(PlanRequest("infer", budget_ms=100), view)
    assert (decision.tier, decision.target) == ("peer", "site-p")
    assert decision.instance is not None and decision.instance.id == "infer-1"  # the fallback
    assert balancer.asked == [("infer", 40)]  # only peers that answer before the local instance
    assert "predicted at 40 ms, over 25% of the 100 ms left" in decision.reason


def test_a_local_answer_within_the_spill_share_stays_local_and_asks_no_peer() -> None:
    balancer = Balancer(peer_ms=1)
    view = _view([_instance("infer-1")], {"infer-1": _busy(25)}, choose_peer=balancer, spill_share=0.25)
    assert plan(PlanRequest("infer", budget_ms=100), view).target == "infer-1"
    assert balancer.asked == []


def test_a_slow_local_instance_stays_planned_when_no_peer_answers_sooner() -> None:
    balancer = Balancer(peer_ms=45)
    view = _view([_instance("infer-1")], {"infer-1": _busy(40)}, choose_peer=balancer, spill_share=0.25)
    decision = plan(PlanRequest("infer", budget_ms=100), view)
    assert (decision.tier, decision.target) == ("local", "infer-1")
    assert balancer.asked == [("infer", 40)]


def test_pinned_and_forwarded_requests_never_spill() -> None:
    balancer = Balancer(peer_ms=1)
    view = _view(
        [_instance("sensor-1"), _instance("infer-1")],
        {"sensor-1": _busy(60), "infer-1": _busy(60)},
        choose_peer=balancer,
        spill_share=0.25,
    )
    pinned = plan(PlanRequest("sensor", affinity="turbine-7", budget_ms=100), view)
    forwarded = plan(PlanRequest("infer", budget_ms=100, forwarded=True), view)
    assert (pinned.tier, pinned.target) == ("local", "sensor-1")
    assert (forwarded.tier, forwarded.target) == ("local", "infer-1")
    assert balancer.asked == []


def test_by_default_peers_only_take_what_no_local_instance_can_serve_in_budget() -> None:
    balancer = Balancer(peer_ms=1)
    view = _view([_instance("infer-1")], {"infer-1": _busy(90)}, choose_peer=balancer)
    assert plan(PlanRequest("infer", budget_ms=100), view).tier == "local"
    assert plan(PlanRequest("infer", budget_ms=80), view).tier == "peer"


def _cloud(assumed_rtt_ms: float = 50) -> CloudCompute:
    return CloudCompute(
        {"infer": "http://127.0.0.1:9/invoke"}, assumed_rtt_ms=assumed_rtt_ms, breaker_failures=1
    )


def test_with_no_local_instance_and_no_peer_the_cloud_takes_what_it_can_answer_in_time() -> None:
    view = replace(_view([], choose_peer=Balancer(peer_ms=500)), cloud=_cloud())
    decision = plan(PlanRequest("infer", budget_ms=100), view)
    assert (decision.tier, decision.target) == ("cloud", "127.0.0.1:9")
    late = plan(PlanRequest("infer", budget_ms=40), view)
    assert (late.tier, late.status) == ("reject", 503)
    assert "neither a peer nor the cloud" in late.reason


def test_a_peer_in_time_comes_before_the_cloud_and_a_forwarded_request_never_goes_there() -> None:
    view = replace(_view([], choose_peer=Balancer(peer_ms=10)), cloud=_cloud())
    assert plan(PlanRequest("infer", budget_ms=100), view).tier == "peer"
    forwarded = plan(PlanRequest("infer", budget_ms=100, forwarded=True), replace(view, choose_peer=None))
    assert (forwarded.tier, forwarded.status) == ("reject", 503)


def test_a_failing_cloud_endpoint_gets_a_503_with_the_breakers_retry_after_at_once() -> None:
    cloud = _cloud()
    cloud.targets["infer"].breaker.record_failure()  # one failure opens it (breaker_failures=1)
    decision = plan(PlanRequest("infer", budget_ms=100), replace(_view([]), cloud=cloud))
    assert (decision.tier, decision.status, decision.code) == ("reject", 503, "cloud_unavailable")
    assert decision.retry_after_s is not None and decision.retry_after_s >= 1
    assert "circuit breaker is open" in decision.reason


def test_in_cloud_mode_a_spill_with_no_peer_sooner_goes_to_the_cloud_with_the_local_instance_as_fallback() -> (
    None
):
    view = replace(
        _view(
            [_instance("infer-1")], {"infer-1": _busy(90)}, choose_peer=Balancer(peer_ms=500), spill_share=0.1
        ),
        cloud=_cloud(),
    )
    assert plan(PlanRequest("infer", budget_ms=200), view).tier == "local"  # not in cloud mode
    decision = plan(PlanRequest("infer", budget_ms=200), replace(view, cloud_spill=True))
    assert (decision.tier, decision.target) == ("cloud", "127.0.0.1:9")
    assert decision.instance is not None and decision.instance.id == "infer-1"


def test_in_cloud_mode_the_cloud_comes_before_peers_for_spills_and_overflow() -> None:
    base = _view(
        [_instance("infer-1")], {"infer-1": _busy(90)}, choose_peer=Balancer(peer_ms=5), spill_share=0.1
    )
    view = replace(base, cloud=_cloud())
    assert plan(PlanRequest("infer", budget_ms=200), view).tier == "peer"  # normal: a sooner peer
    in_cloud_mode = replace(view, cloud_spill=True)
    assert plan(PlanRequest("infer", budget_ms=200), in_cloud_mode).tier == "cloud"
    full = replace(in_cloud_mode, loads={"infer-1": FULL})
    assert plan(PlanRequest("infer", budget_ms=200), full).tier == "cloud"


def test_in_cloud_mode_a_site_spills_to_no_peer_and_sends_a_forwarded_request_it_cannot_take_to_the_cloud() -> (
    None
):
    slow_cloud = _cloud(assumed_rtt_ms=400)  # the cloud is not sooner than the local instance
    base = _view(
        [_instance("infer-1")], {"infer-1": _busy(90)}, choose_peer=Balancer(peer_ms=5), spill_share=0.1
    )
    in_cloud_mode = replace(base, cloud=slow_cloud, cloud_spill=True)
    assert plan(PlanRequest("infer", budget_ms=200), in_cloud_mode).tier == "local"  # no spill to a peer
    full = replace(in_cloud_mode, cloud=_cloud(), loads={"infer-1": FULL})
    forwarded = plan(PlanRequest("infer", budget_ms=200, forwarded=True), full)
    assert forwarded.tier == "cloud"
    normal = replace(full, cloud_spill=False)
    assert plan(PlanRequest("infer", budget_ms=200, forwarded=True), normal).status == 503
