"""The coordinator's decisions: GPU first, spread, minimal moves, capacity with reasons, moves,
rebalancing after a leave; and the `Coordinator` committing them through a consensus log."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from config.settings import ServiceSettings
from swarm.commands import Command, JoinSite, LeaveSite, SetPlacement
from swarm.consensus.base import Applier, ConsensusError, ConsensusStatus, NotLeaderError
from swarm.coordinator import (
    Coordinator,
    PlacementError,
    effective_placements,
    move,
    place,
    rebalance_after_leave,
    room_for,
)
from swarm.state import SwarmState


def _service(**fields: Any) -> ServiceSettings:
    return ServiceSettings(module="workloads.sensor", image="mec-workloads:0.1", **fields)


SERVICES = {
    "inference": _service(gpu=True, cpus=1.0, max_replicas=2),
    "sensor": _service(cpus=0.5, max_replicas=4),
    "game-state": _service(cpus=0.5, replicas=0),
}
CAPS: dict[str, dict[str, Any]] = {
    "site-1": {"gpus": 1, "cpus": 8},
    "site-2": {"gpus": 0, "cpus": 8},
    "site-3": {"gpus": 0, "cpus": 8},
}


def _place(
    service: str, total: int, current: dict[str, dict[str, int]] | None = None, **kw: Any
) -> dict[str, int]:
    members = kw.pop("members", list(CAPS))
    caps = kw.pop("capabilities", CAPS)
    return place(service, total, members, caps, current or {}, kw.pop("services", SERVICES))


def _moves(before: dict[str, int], after: dict[str, int]) -> int:
    """Replicas started on a site that did not run them before."""
    return sum(max(n - before.get(site, 0), 0) for site, n in after.items())


# -- place ------------------------------------------------------------------------------------


def test_a_gpu_service_goes_to_gpu_sites_first_then_elsewhere() -> None:
    assert _place("inference", 1) == {"site-1": 1}
    assert _place("inference", 2) == {"site-1": 2}
    # max_replicas 2 per site: the third replica has to run without a GPU.
    assert _place("inference", 3) == {"site-1": 2, "site-2": 1}


def test_a_service_without_gpu_spreads_and_leaves_gpu_sites_for_last() -> None:
    assert _place("sensor", 2) == {"site-2": 1, "site-3": 1}
    assert _place("sensor", 3) == {"site-1": 1, "site-2": 1, "site-3": 1}
    assert _place("sensor", 6) == {"site-1": 2, "site-2": 2, "site-3": 2}


def test_existing_replicas_stay_where_they_are() -> None:
    current = {"sensor": {"site-1": 3}}
    up = _place("sensor", 4, current)
    assert up == {"site-1": 3, "site-2": 1}
    assert _moves(current["sensor"], up) == 1
    # Scaling down takes replicas off the fullest site first and starts none anywhere.
    down = _place("sensor", 2, {"sensor": {"site-1": 3, "site-2": 1}})
    assert down == {"site-1": 1, "site-2": 1}
    same = _place("sensor", 4, {"sensor": {"site-1": 1, "site-2": 2, "site-3": 1}})
    assert same == {"site-1": 1, "site-2": 2, "site-3": 1}


def test_a_gpu_service_scaled_down_leaves_the_sites_without_gpu_first() -> None:
    assert _place("inference", 2, {"inference": {"site-1": 2, "site-2": 1}}) == {"site-1": 2}


def test_replicas_on_a_site_that_left_are_placed_again() -> None:
    current = {"sensor": {"site-1": 1, "site-9": 2}}
    assert _place("sensor", 3, current) == {"site-1": 1, "site-2": 1, "site-3": 1}


def test_cpu_slots_count_the_other_services_placed_on_a_site() -> None:
    caps: dict[str, dict[str, Any]] = {"site-1": {"cpus": 2}, "site-2": {"cpus": 1.5}}
    current = {"inference": {"site-1": 1}}  # 1 of site-1's 2 cpus
    assert room_for("sensor", caps, caps, current, SERVICES) == 2 + 3
    assert _place("sensor", 5, current, members=list(caps), capabilities=caps) == {"site-1": 2, "site-2": 3}
    with pytest.raises(PlacementError) as error:
        _place("sensor", 6, current, members=list(caps), capabilities=caps)
    message = str(error.value)
    assert "cannot place 6 replicas of 'sensor': room for 5" in message
    assert "site-1: 2 (cpus 2, 1 used by other services, 0.5 per replica)" in message
    assert "site-2: 3 (cpus 1.5, 0 used by other services, 0.5 per replica)" in message
    assert "1 more need sites with room" in message


def test_memory_and_max_replicas_limit_too_and_the_error_names_them() -> None:
    caps: dict[str, dict[str, Any]] = {
        "site-1": {"cpus": 64, "memory_mb": 1024},
        "site-2": {},
        "site-3": {"services": ["inference"]},
    }
    services = {"sensor": _service(memory_mb=256, max_replicas=3)}
    with pytest.raises(PlacementError) as error:
        _place("sensor", 8, members=list(caps), capabilities=caps, services=services)
    message = str(error.value)
    assert "room for 6" in message
    assert "site-1: 3 (max_replicas 3 per site)" in message
    assert "site-2: 3 (max_replicas 3 per site)" in message
    assert "site-3 does not run 'sensor'" in message
    caps["site-1"]["memory_mb"] = 600
    with pytest.raises(PlacementError) as error:
        _place("sensor", 8, members=list(caps), capabilities=caps, services=services)
    assert "site-1: 2 (memory_mb 600, 0 used by other services, 256 per replica)" in str(error.value)


def test_placement_refuses_what_it_cannot_decide() -> None:
    with pytest.raises(
        PlacementError, match=r"unknown service 'video'.*configured: game-state, inference, sensor"
    ):
        _place("video", 1)
    with pytest.raises(PlacementError, match="0 or more"):
        _place("sensor", -1)
    with pytest.raises(PlacementError, match="the swarm has no members"):
        _place("sensor", 1, members=[])
    assert _place("sensor", 0, {"sensor": {"site-1": 2}}) == {}


def test_placement_is_deterministic_whatever_the_order_of_its_inputs() -> None:
    reordered = dict(reversed(list(CAPS.items())))
    for total in range(7):
        assert _place("sensor", total) == _place(
            "sensor", total, members=list(reversed(CAPS)), capabilities=reordered
        )
        assert list(_place("sensor", total)) == sorted(_place("sensor", total))


def test_move_puts_every_replica_on_one_site() -> None:
    assert move("inference", "site-2", {"site-1": 2, "site-3": 1}) == {"site-2": 3}
    with pytest.raises(PlacementError, match="no replicas to move"):
        move("inference", "site-2", {})


# -- from the swarm state ---------------------------------------------------------------------


def _state(*caps: tuple[str, dict[str, Any]], log: tuple[Command, ...] = ()) -> SwarmState:
    state = SwarmState()
    entries = [JoinSite(site, f"http://{site}", c) for site, c in caps] + list(log)
    for index, command in enumerate(entries, start=1):
        state.apply(index, command)
    return state


def test_undecided_services_count_as_their_configured_replicas_on_each_member() -> None:
    state = _state(
        ("site-1", {"cpus": 4}),
        ("site-2", {"cpus": 4, "services": ["sensor"]}),
        log=(SetPlacement("inference", {"site-1": 1}),),
    )
    assert effective_placements(state, SERVICES) == {
        "inference": {"site-1": 1},
        "sensor": {"site-1": 1, "site-2": 1},
    }


def test_rebalance_after_leave_moves_only_the_leaving_sites_replicas() -> None:
    placed = (SetPlacement("sensor", {"site-1": 1, "site-2": 2}), SetPlacement("inference", {"site-1": 1}))
    state = _state(*CAPS.items(), log=placed)
    before = rebalance_after_leave("site-2", state, SERVICES)
    # site-1's replica stays; of the two from site-2 one spreads to site-3, and the other goes
    # there too rather than to site-1's GPU.
    assert [(c.service, c.replicas) for c in before] == [("sensor", {"site-1": 1, "site-3": 2})]
    state.apply(state.applied_index + 1, LeaveSite("site-2"))
    after = rebalance_after_leave("site-2", state, SERVICES)
    assert [(c.service, c.replicas) for c in after] == [("sensor", {"site-1": 1, "site-3": 2})]
    assert rebalance_after_leave("site-3", state, SERVICES) == []


def test_rebalance_places_what_fits_and_keeps_the_intent_when_nothing_does() -> None:
    caps = (("site-1", {"cpus": 1}), ("site-2", {"cpus": 8}))
    state = _state(
        *caps, log=(SetPlacement("sensor", {"site-2": 4}), SetPlacement("inference", {"site-2": 1}))
    )
    # site-1 has 1 cpu: room for 1 inference (taken first, by name) and then no sensor at all.
    commands = rebalance_after_leave("site-2", state, SERVICES)
    assert [(c.service, c.replicas) for c in commands] == [("inference", {"site-1": 1})]


# -- the Coordinator --------------------------------------------------------------------------


class MemoryLog:
    """A single-node consensus in memory: a proposal commits at once and is applied in order.

    `interleave` commands are committed just before the next proposal (another proposer that
    got there first)."""

    def __init__(self, node_id: str, applier: Applier, leading: bool = True) -> None:
        self.node_id = node_id
        self.applier = applier
        self.leading = leading
        self.entries: list[Command] = []
        self.interleave: list[Command] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def _append(self, command: Command) -> int:
        self.entries.append(command)
        result = self.applier(len(self.entries), command)
        if inspect.isawaitable(result):
            await result
        return len(self.entries)

    async def propose(self, command: Command, timeout_s: float) -> int:
        if not self.leading:
            raise NotLeaderError("not the leader", self.leader())
        while self.interleave:
            await self._append(self.interleave.pop(0))
        return await self._append(command)

    def leader(self) -> str | None:
        return self.node_id if self.leading else "site-2"

    def is_leader(self) -> bool:
        return self.leading

    async def wait_leader(self, timeout_s: float) -> str:
        leader = self.leader()
        if leader is None:
            raise ConsensusError("no leader")
        return leader

    def status(self) -> ConsensusStatus:
        index = len(self.entries)
        return ConsensusStatus(self.node_id, self.leader(), 1, index, index, (self.node_id,), True)


@pytest.fixture
async def swarm() -> tuple[Coordinator, MemoryLog, SwarmState]:
    state = SwarmState()
    consensus = MemoryLog("site-1", state.apply)
    for site, caps in CAPS.items():
        await consensus.propose(JoinSite(site, f"http://{site}", caps), 1.0)
    return Coordinator("site-1", consensus, state, SERVICES), consensus, state


async def test_scale_commits_the_placement_and_returns_the_committed_command(
    swarm: tuple[Coordinator, MemoryLog, SwarmState],
) -> None:
    coordinator, consensus, state = swarm
    assert coordinator.is_coordinator()
    # Undecided, inference runs its configured replica on every site: scaling down keeps the
    # GPU site's, scaling up again adds on the GPU site first.
    down = await coordinator.scale("inference", 2, timeout_s=1.0)
    assert down.replicas == {"site-1": 1, "site-2": 1}
    assert consensus.entries[-1] is down
    committed = await coordinator.scale("inference", 3, timeout_s=1.0)
    assert committed.replicas == {"site-1": 2, "site-2": 1}
    assert state.placement("inference") == {"site-1": 2, "site-2": 1}
    # Undecided sensor runs its configured 1 replica on each site; 5 keeps those 3 in place.
    sensor = await coordinator.scale("sensor", 5, timeout_s=1.0)
    assert sensor.replicas == {"site-1": 1, "site-2": 2, "site-3": 2}


async def test_move_commits_all_replicas_on_one_site_if_they_fit(
    swarm: tuple[Coordinator, MemoryLog, SwarmState],
) -> None:
    coordinator, _, state = swarm
    await coordinator.scale("inference", 2, timeout_s=1.0)
    moved = await coordinator.move("inference", "site-3", timeout_s=1.0)
    assert moved.replicas == {"site-3": 2} == state.placement("inference")
    await coordinator.scale("sensor", 6, timeout_s=1.0)
    with pytest.raises(
        PlacementError, match=r"cannot place 6 replicas of 'sensor'.*site-2: 4 \(max_replicas 4"
    ):
        await coordinator.move("sensor", "site-2", timeout_s=1.0)
    with pytest.raises(PlacementError, match="site-7 is not a member"):
        await coordinator.move("sensor", "site-7", timeout_s=1.0)
    assert state.placement("sensor") == {"site-1": 2, "site-2": 2, "site-3": 2}


async def test_a_placement_the_log_refuses_is_reported_not_returned(
    swarm: tuple[Coordinator, MemoryLog, SwarmState],
) -> None:
    coordinator, consensus, state = swarm
    consensus.interleave.append(LeaveSite("site-3"))  # commits between the decision and its own
    with pytest.raises(PlacementError, match=r"the swarm refused placement of sensor .*: unknown_site"):
        await coordinator.scale("sensor", 3, timeout_s=1.0)
    assert state.placement("sensor") is None


async def test_leave_moves_the_replicas_then_removes_the_site(
    swarm: tuple[Coordinator, MemoryLog, SwarmState],
) -> None:
    coordinator, consensus, state = swarm
    await coordinator.scale("sensor", 4, timeout_s=1.0)
    assert state.placement("sensor") == {"site-1": 1, "site-2": 2, "site-3": 1}
    commands = await coordinator.leave("site-2", timeout_s=1.0)
    assert [(c.service, c.replicas) for c in commands] == [("sensor", {"site-1": 2, "site-3": 2})]
    assert isinstance(consensus.entries[-1], LeaveSite)
    assert sorted(state.members) == ["site-1", "site-3"]
    assert state.placement("sensor") == {"site-1": 2, "site-3": 2}


async def test_a_site_that_does_not_lead_does_not_decide(
    swarm: tuple[Coordinator, MemoryLog, SwarmState],
) -> None:
    coordinator, consensus, state = swarm
    consensus.leading = False
    before = len(consensus.entries)
    assert not coordinator.is_coordinator()
    with pytest.raises(NotLeaderError, match="site-1 is not the coordinator") as error:
        await coordinator.scale("sensor", 2, timeout_s=1.0)
    assert error.value.leader == "site-2"
    with pytest.raises(NotLeaderError):
        await coordinator.move("sensor", "site-1", timeout_s=1.0)
    with pytest.raises(NotLeaderError):
        await coordinator.leave("site-3", timeout_s=1.0)
    assert len(consensus.entries) == before and state.placement("sensor") is None
