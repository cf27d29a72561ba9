"""The `swarm_ops` tool over an in-memory swarm: each action, its bounds, and its input checks."""

from __future__ import annotations

from typing import Any

import pytest

from swarm.consensus.base import ConsensusError
from tests.support.swarm_backend import MemorySwarm, site
from tools.swarm_ops import MAX_LOAD_FIGURES, MAX_SITES, MAX_SWARM_REPLICAS, swarm_ops_tool

SERVICES = ("inference", "sensor", "game-state")


@pytest.fixture
def swarm() -> MemorySwarm:
    return MemorySwarm(
        [
            site("site-2", cpu_percent=10.0, inflight=1),
            site("site-1", cpu_percent=55.5, inflight=4),
            site("site-3", healthy=False),
        ],
        SERVICES,
        leader="site-1",
        term=7,
        placements={"inference": {"site-1": 2, "site-2": 1, "site-3": 0}, "sensor": {"site-2": 1}},
    )


async def _call(swarm: MemorySwarm, **kwargs: Any) -> dict[str, Any]:
    result: dict[str, Any] = await swarm_ops_tool(swarm)(**kwargs)
    return result


async def test_leader_is_the_coordinator_and_its_term(swarm: MemorySwarm) -> None:
    assert await _call(swarm, action="leader") == {"leader": "site-1", "term": 7}
    swarm.coordinator = None
    assert await _call(swarm, action="leader") == {"leader": None, "term": 7}


async def test_sites_lists_every_site_by_id_with_health_url_and_load(swarm: MemorySwarm) -> None:
    result = await _call(swarm, action="sites")
    assert [row["site_id"] for row in result["sites"]] == ["site-1", "site-2", "site-3"]
    assert result["sites"][0] == {
        "site_id": "site-1",
        "url": "http://site-1.mec.test:8080",
        "healthy": True,
        "load": {"cpu_percent": 55.5, "inflight": 4},
    }
    assert result["sites"][2]["healthy"] is False
    assert (result["count"], result["healthy"], result["truncated"]) == (3, 2, False)
    assert result["leader"] == "site-1"


async def test_sites_and_load_filter_to_one_site_and_name_the_known_ones_otherwise(
    swarm: MemorySwarm,
) -> None:
    result = await _call(swarm, action="sites", site="site-2")
    assert [row["site_id"] for row in result["sites"]] == ["site-2"]
    with pytest.raises(ValueError, match=r"no site 'site-9' in the swarm \(sites: site-1, site-2, site-3\)"):
        await _call(swarm, action="load", site="site-9")


async def test_load_gives_health_and_figures_without_urls(swarm: MemorySwarm) -> None:
    result = await _call(swarm, action="load")
    assert result["sites"][1] == {
        "site_id": "site-2",
        "healthy": True,
        "load": {"cpu_percent": 10.0, "inflight": 1},
    }
    assert all("url" not in row for row in result["sites"])


async def test_site_listing_is_bounded() -> None:
    many = MemorySwarm(
        [site(f"site-{i:03d}", **{f"figure_{j}": j for j in range(40)}, nested={"x": 1}) for i in range(100)],
        SERVICES,
    )
    result = await _call(many, action="sites")
    assert len(result["sites"]) == MAX_SITES and result["count"] == 100 and result["truncated"] is True
    load = result["sites"][0]["load"]
    assert len(load) == MAX_LOAD_FIGURES and "nested" not in load


async def test_placements_drop_sites_that_run_none_and_total_each_service(swarm: MemorySwarm) -> None:
    result = await _call(swarm, action="placements")
    assert result["placements"] == {"inference": {"site-1": 2, "site-2": 1}, "sensor": {"site-2": 1}}
    assert result["replicas"] == {"inference": 3, "sensor": 1}
    one = await _call(swarm, action="placements", service="game-state")
    assert one["placements"] == {"game-state": {}} and one["replicas"] == {"game-state": 0}
    on_site = await _call(swarm, action="placements", site="site-2")
    assert on_site["placements"] == {"inference": {"site-2": 1}, "sensor": {"site-2": 1}}


async def test_scale_goes_through_the_coordinator_and_returns_the_committed_placement(
    swarm: MemorySwarm,
) -> None:
    result = await _call(swarm, action="scale", service="inference", replicas=4)
    assert result == {
        "service": "inference",
        "replicas": 4,
        "placement": {"site-1": 2, "site-2": 2},
        "leader": "site-1",
        "term": 7,
    }
    assert swarm.calls == [("scale", "inference", 4)]
    assert swarm.placements()["inference"] == {"site-2": 2, "site-1": 2}


async def test_scale_to_zero_empties_the_placement(swarm: MemorySwarm) -> None:
    result = await _call(swarm, action="scale", service="inference", replicas=0)
    assert (result["replicas"], result["placement"]) == (0, {})


async def test_move_puts_every_replica_on_the_site(swarm: MemorySwarm) -> None:
    result = await _call(swarm, action="move", service="inference", site="site-2")
    assert result["placement"] == {"site-2": 3} and result["site"] == "site-2" and result["replicas"] == 3
    assert swarm.calls == [("move", "inference", "site-2")]


async def test_the_backend_refuses_unknown_services_and_sites_and_unhealthy_targets(
    swarm: MemorySwarm,
) -> None:
    with pytest.raises(ValueError, match="unknown service 'miner'"):
        await _call(swarm, action="scale", service="miner", replicas=1)
    with pytest.raises(ValueError, match="no site 'site-9'"):
        await _call(swarm, action="move", service="inference", site="site-9")
    with pytest.raises(ValueError, match="unhealthy"):
        await _call(swarm, action="move", service="inference", site="site-3")
    assert swarm.calls == []


async def test_a_change_without_a_coordinator_is_not_committed(swarm: MemorySwarm) -> None:
    swarm.coordinator = None
    with pytest.raises(ConsensusError, match="no coordinator"):
        await _call(swarm, action="scale", service="inference", replicas=2)
    assert swarm.placements()["inference"] == {"site-1": 2, "site-2": 1, "site-3": 0}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"action": "scale", "replicas": 2}, "action 'scale' needs a service"),
        ({"action": "scale", "service": "inference"}, "needs replicas, a whole number >= 0"),
        ({"action": "scale", "service": "inference", "replicas": -1}, "needs replicas, a whole number >= 0"),
        (
            {"action": "scale", "service": "inference", "replicas": MAX_SWARM_REPLICAS + 1},
            f"at most {MAX_SWARM_REPLICAS} replicas",
        ),
        (
            {"action": "scale", "service": "inference", "replicas": 2, "site": "site-2"},
            "site is not for action 'scale'",
        ),
        ({"action": "move", "service": "inference"}, "action 'move' needs a site"),
        ({"action": "move", "site": "site-2"}, "action 'move' needs a service"),
        ({"action": "move", "service": "inference", "site": "site-2", "replicas": 2}, "replicas is only for"),
        ({"action": "move", "service": "Inference!", "site": "site-2"}, "service must be lower-case"),
        ({"action": "move", "service": "inference", "site": "../site-2"}, "site must be lower-case"),
        ({"action": "leader", "service": "inference"}, "takes no service or site"),
        ({"action": "sites", "service": "inference"}, "service is not for action 'sites'"),
        ({"action": "sites", "site": "x" * 64}, "site must be lower-case"),
        ({"action": "shutdown"}, "unknown action 'shutdown'"),
    ],
)
async def test_invalid_input_is_refused_naming_the_field(
    swarm: MemorySwarm, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await _call(swarm, **kwargs)
    assert swarm.calls == []


async def test_a_per_service_limit_caps_the_total() -> None:
    swarm = MemorySwarm([site("site-1")], SERVICES)
    tool = swarm_ops_tool(swarm, max_replicas={"inference": 3})
    with pytest.raises(ValueError, match="'inference' allows at most 3 replicas across the swarm"):
        await tool(action="scale", service="inference", replicas=4)
    assert (await tool(action="scale", service="inference", replicas=3))["replicas"] == 3


def test_the_spec_offers_the_actions_and_tells_the_model_how_changes_work(swarm: MemorySwarm) -> None:
    spec = swarm_ops_tool(swarm).tool_spec
    assert spec["name"] == "swarm_ops"
    properties = spec["inputSchema"]["json"]["properties"]
    assert set(properties["action"]["enum"]) == {"sites", "leader", "placements", "load", "scale", "move"}
    assert set(properties) == {"action", "service", "replicas", "site"}
    description = spec["description"]
    for words in ("coordinator", "operator key", "confirms", "container_ops"):
        assert words in description
