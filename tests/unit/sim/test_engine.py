"""The simulator drives the real router, balancer and gates: seeded, and as plan() decides."""

from __future__ import annotations

import random
from typing import Any

from sim.engine import Simulation
from sim.scenario import Scenario
from sim.topology import InstanceSpec, SiteSpec, Topology, build_topology
from swarm.load_table import ServiceLoad, SiteLoad


def _scenario(**overrides: Any) -> Scenario:
    data: dict[str, Any] = {
        "name": "t",
        "seed": 3,
        "duration_s": 3.0,
        "warmup_s": 0.5,
        "sites": 3,
        "devices": 600,
        "services": {"inference": {"budget_ms": 50, "cpu_ms": 3, "cpu_share": {"low": 0.25, "high": 0.5}}},
        "profiles": {
            "mobile": {"service": "inference", "share": 1, "rate_per_device": 0.5, "arrivals": "bursty"}
        },
    }
    data.update(overrides)
    return Scenario.model_validate(data)


def _two_sites(slow_speed: float, fast_speed: float, peers: bool = True) -> Topology:
    """site-1 gets every device and one instance at `slow_speed`; site-2 none, one at `fast_speed`."""
    sites = (
        SiteSpec(
            "site-1", 0, 0, False, 1.0, (InstanceSpec("site-1/inference-1", "inference", False, slow_speed),)
        ),
        SiteSpec(
            "site-2", 0, 0, False, 0.0, (InstanceSpec("site-2/inference-1", "inference", False, fast_speed),)
        ),
    )
    return Topology(sites, ((0.0, 1.0), (1.0, 0.0)), ((1,), (0,)) if peers else ((), ()))


def test_the_same_seed_gives_the_same_metrics() -> None:
    first = Simulation(_scenario(), "default").run().summary()
    again = Simulation(_scenario(), "default").run().summary()
    assert first == again
    assert first["requests"] > 0


def test_another_seed_gives_other_metrics() -> None:
    first = Simulation(_scenario(), "default").run().summary()
    other = Simulation(_scenario(seed=4), "default").run().summary()
    assert first != other


def test_a_request_no_local_instance_can_answer_in_budget_goes_to_a_peer() -> None:
    # site-1's instance takes 3 ms / 0.02 = 150 ms a request, over the 50 ms budget: once its
    # gate has measured that, plan() sends what arrives there to site-2.
    sim = Simulation(_scenario(sites=2, devices=100), "default", topology=_two_sites(0.02, 1.0))
    metrics = sim.run()
    assert metrics.peer_fraction > 0.9
    assert sim.by_site[0].requests == metrics.requests


def test_without_peers_such_requests_go_to_the_cloud_when_it_is_configured() -> None:
    services = {"inference": {"budget_ms": 50, "cpu_ms": 3, "cloud": True}}
    lonely = _two_sites(0.02, 1.0, peers=False)
    with_cloud = Simulation(
        _scenario(sites=2, services=services, cloud={"enabled": True}), "default", topology=lonely
    ).run()
    without = Simulation(_scenario(sites=2, services=services), "default", topology=lonely).run()
    assert with_cloud.cloud_fraction > 0.5
    assert without.cloud_fraction == 0
    assert without.rejected > with_cloud.rejected


def _three_peers(policy: str) -> Simulation:
    scenario = _scenario(sites=4)
    topology = build_topology(scenario, random.Random(1))
    full = tuple(tuple(j for j in range(4) if j != i) for i in range(4))
    topology = Topology(
        topology.sites, tuple(tuple(0.0 if i == j else 1.0 for j in range(4)) for i in range(4)), full
    )
    sim = Simulation(scenario, policy, topology=topology)  # type: ignore[arg-type]
    me = sim.sites[0]
    for other, predicted in zip(sim.sites[1:], (10.0, 4.0, 20.0), strict=True):
        load = ServiceLoad(ready=1, inflight=1, predicted_ms=predicted, has_room=True)
        report = SiteLoad(
            site_id=other.id, url="http://x", sent_at=0.0, services={"inference": load}, cpu_percent=0.0
        )
        me.table.update(report, received_at=0.0, rtt_ms=1.0)
    return sim


def test_least_loaded_picks_the_lowest_reported_answer_every_time() -> None:
    me = _three_peers("least-loaded").sites[0]
    picks = {me.choose("inference", 100.0).site_id for _ in range(20)}  # type: ignore[union-attr]
    assert picks == {"site-3"}


def test_round_robin_cycles_through_the_peers_in_id_order() -> None:
    me = _three_peers("round-robin").sites[0]
    picks = [me.choose("inference", 100.0).site_id for _ in range(4)]  # type: ignore[union-attr]
    assert picks == ["site-2", "site-3", "site-4", "site-2"]


def test_p2c_never_picks_the_worst_of_three_peers() -> None:
    me = _three_peers("p2c").sites[0]
    picks = {me.choose("inference", 100.0).site_id for _ in range(50)}  # type: ignore[union-attr]
    assert "site-4" not in picks
    assert picks == {"site-2", "site-3"}


def test_default_turns_away_from_a_peer_it_has_already_sent_many_forwards() -> None:
    sim = _three_peers("default")
    me = sim.sites[0]
    for _ in range(10):
        me.table.forward_started("site-3", "inference")  # 4 ms × 12/2 = 24 ms now
    picks = {me.choose("inference", 100.0).site_id for _ in range(50)}  # type: ignore[union-attr]
    assert "site-3" not in picks


def _overloaded(cloud: bool) -> Simulation:
    """3 sites of equal weight, one whole-core inference instance each (~330 req/s), offered ~3×
    that for 6 s, then a trickle until 22 s; quick overload knobs so the whole breach fits. (On a
    0.25-core instance, 12 ms a request, cloud mode's 10 % spill share of a 200 ms budget sends
    every request that finds one ahead of it to the cloud: that alone keeps a lightly loaded
    site over the 5 % release share, in cloud mode.)"""
    scenario = _scenario(
        duration_s=22.0,
        warmup_s=0.5,
        devices=1000,
        topology={"site_weight_sigma": 0.0},
        services={
            "inference": {
                "budget_ms": 200,
                "cpu_ms": 3,
                "cpu_share": {"low": 1.0, "high": 1.0},
                "cloud": True,
            }
        },
        profiles={
            "rush": {"service": "inference", "share": 0.9, "rate_per_device": 3.3, "stop_s": 6.0},
            "trickle": {"service": "inference", "share": 0.1, "rate_per_device": 0.6},
        },
        cloud={"enabled": cloud},
        swarm={
            "request_window_s": 2.0,
            "overload_cloud_after_s": 1.0,
            "overload_calm_s": 3.0,
            "overload_min_dwell_s": 2.0,
        },
    )
    return Simulation(scenario, "default")


def test_an_overloaded_swarm_sheds_then_offloads_to_the_cloud_and_calms_down_without_flapping() -> None:
    sim = _overloaded(cloud=True)
    metrics = sim.run()
    assert metrics.cloud_fraction > 0
    for site in sim.sites:
        path = [change.after for change in site.overload.history]
        assert path[:2] == ["shedding", "cloud"], (site.id, path)
        assert site.overload.state == "normal", (site.id, path)
        # one breach: at most two changes up (normal → shedding → cloud), two down
        assert site.overload.transitions <= 4, (site.id, path)
    assert metrics.transitions == sum(site.overload.transitions for site in sim.sites)
    assert metrics.state_share("cloud") > 0
    assert metrics.state_share("normal") > 0


def test_without_a_cloud_endpoint_nothing_goes_to_the_cloud_even_in_cloud_mode() -> None:
    sim = _overloaded(cloud=False)
    metrics = sim.run()
    assert any("cloud" in [c.after for c in site.overload.history] for site in sim.sites)
    assert metrics.cloud_fraction == 0
    assert metrics.cloud == 0
