"""`Reconciler` over a real `LocalRuntime` running the stdlib sensor workload: it follows the
committed placement when entries are applied, repairs drift on its tick, and survives a runtime
that fails (counting the failure and trying again)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psutil
import pytest

from config.settings import ServiceSettings
from swarm.commands import Command, JoinSite, SetPlacement
from swarm.reconcile import Reconciler
from swarm.state import SwarmState
from tests.support.polling import eventually
from tools.runtimes.base import Instance, WorkloadSpec
from tools.runtimes.local import LocalRuntime

IMAGE = "mec-workloads:0.1"
SENSOR = WorkloadSpec(name="sensor", module="workloads.sensor", image=IMAGE)
BROKEN = WorkloadSpec(name="sensor", module="workloads.no_such_workload", image=IMAGE, start_timeout_s=3.0)


def _service(**fields: Any) -> ServiceSettings:
    return ServiceSettings(module="workloads.sensor", image=IMAGE, **fields)


class Swarm:
    """A swarm state of two members that a test appends entries to, as the log would."""

    def __init__(self) -> None:
        self.state = SwarmState()
        self.append(JoinSite("site-1", "http://a", {}))
        self.append(JoinSite("site-2", "http://b", {}))

    def append(self, command: Command) -> None:
        self.state.apply(self.state.applied_index + 1, command)


class ConcurrencyRuntime(LocalRuntime):
    """A real local runtime that also records how many `scale` calls overlap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.active = 0
        self.most_active = 0

    async def scale(self, service: str, replicas: int) -> list[Instance]:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            return await super().scale(service, replicas)
        finally:
            self.active -= 1


@pytest.fixture
async def runtime() -> AsyncIterator[ConcurrencyRuntime]:
    rt = ConcurrencyRuntime({"sensor": SENSOR}, {IMAGE}, site_id="site-1", supervise_interval_s=0.2)
    try:
        yield rt
    finally:
        pids = [inst.pid for inst in rt.instances() if inst.pid]
        await rt.close()
        for pid in pids:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.fixture
def swarm() -> Swarm:
    return Swarm()


def _sensors(runtime: LocalRuntime) -> int:
    return len(runtime.ready_instances("sensor"))


def test_targets_follow_the_placement_and_leave_undecided_services_alone(swarm: Swarm) -> None:
    services = {"sensor": _service(replicas=1, max_replicas=3), "game-state": _service(replicas=2)}
    rt = LocalRuntime({}, set(), site_id="site-1")
    reconciler = Reconciler("site-1", rt, swarm.state, services)
    assert reconciler.targets() == {}  # nothing decided: the site keeps what it started
    swarm.append(SetPlacement("sensor", {"site-2": 2}))
    swarm.append(SetPlacement("inference", {"site-1": 1}))  # not configured here: the runtime says no
    assert reconciler.targets() == {"sensor": 0, "inference": 1}
    swarm.append(SetPlacement("sensor", {"site-1": 40}))
    assert reconciler.targets()["sensor"] == 3
    assert reconciler.clamped == {"sensor": 40}
    with pytest.raises(ValueError, match="interval_s"):
        Reconciler("site-1", rt, swarm.state, services, interval_s=0)


async def test_applied_placements_are_carried_out_on_this_site(
    runtime: ConcurrencyRuntime, swarm: Swarm
) -> None:
    # A long interval: after the first pass only applied entries can make it reconcile.
    reconciler = Reconciler("site-1", runtime, swarm.state, {"sensor": _service(replicas=1)}, interval_s=600)
    await reconciler.start()
    try:
        await eventually(lambda: reconciler.passes >= 1, "the first pass")
        assert _sensors(runtime) == 0 and reconciler.scale_calls == 0  # undecided: left alone
        swarm.append(SetPlacement("sensor", {"site-1": 2, "site-2": 1}))
        await eventually(lambda: _sensors(runtime) == 2, "this site's 2 replicas of the placement")
        swarm.append(SetPlacement("sensor", {"site-2": 3}))
        await eventually(lambda: not runtime.instances("sensor"), "none here once placed elsewhere")
        await eventually(lambda: reconciler.scale_calls == 2, "two scale calls")
        assert reconciler.errors == 0 and reconciler.last_error is None
        assert reconciler.running
    finally:
        await reconciler.stop()
    assert not reconciler.running
    swarm.append(SetPlacement("sensor", {"site-1": 1}))  # stopped: no longer listening
    assert swarm.state.listener_errors == 0


async def test_the_tick_repairs_drift_without_any_new_entry(
    runtime: ConcurrencyRuntime, swarm: Swarm
) -> None:
    swarm.append(SetPlacement("sensor", {"site-1": 1}))
    reconciler = Reconciler("site-1", runtime, swarm.state, {"sensor": _service()}, interval_s=0.2)
    await reconciler.start()
    try:
        [first] = await eventually(lambda: runtime.ready_instances("sensor"), "the placed replica")
        applied = swarm.state.applied_index
        await runtime.stop(first.id)  # stopped by hand: the runtime will not bring it back
        [again] = await eventually(lambda: runtime.ready_instances("sensor"), "a replica started again")
        assert again.id != first.id
        assert swarm.state.applied_index == applied
    finally:
        await reconciler.stop()


async def test_a_failing_runtime_is_counted_and_retried_and_the_loop_survives(
    runtime: ConcurrencyRuntime, swarm: Swarm
) -> None:
    runtime.specs["sensor"] = BROKEN
    swarm.append(SetPlacement("sensor", {"site-1": 1}))
    reconciler = Reconciler("site-1", runtime, swarm.state, {"sensor": _service()}, interval_s=0.1)
    await reconciler.start()
    try:
        await eventually(lambda: reconciler.errors >= 2, "the failed start counted and tried again")
        assert reconciler.last_error is not None
        assert "scaling sensor to 1 failed: StartError" in reconciler.last_error
        assert reconciler.running
        runtime.specs["sensor"] = SENSOR  # the operator fixes the workload
        await eventually(lambda: _sensors(runtime) == 1, "the replica once the runtime can start it")
        await eventually(lambda: reconciler.last_error is None, "the error cleared by a good pass")
        assert reconciler.running
    finally:
        await reconciler.stop()


async def test_reconciles_run_one_at_a_time(runtime: ConcurrencyRuntime, swarm: Swarm) -> None:
    reconciler = Reconciler("site-1", runtime, swarm.state, {"sensor": _service(replicas=0)})
    swarm.append(SetPlacement("sensor", {"site-1": 1}))
    first = asyncio.ensure_future(reconciler.reconcile())
    await eventually(lambda: runtime.active == 1, "the first pass scaling")
    swarm.append(SetPlacement("sensor", {"site-1": 2}))
    results = await asyncio.gather(first, reconciler.reconcile(), reconciler.reconcile())
    assert results == [True, True, True]
    assert runtime.most_active == 1
    assert _sensors(runtime) == 2
    assert reconciler.passes == 3 and reconciler.scale_calls == 2


async def test_a_restored_snapshot_is_carried_out_like_an_applied_entry(
    runtime: ConcurrencyRuntime, swarm: Swarm
) -> None:
    # A long interval: after the first pass only the restore can make it reconcile.
    reconciler = Reconciler("site-1", runtime, swarm.state, {"sensor": _service(replicas=1)}, interval_s=600)
    await reconciler.start()
    try:
        await eventually(lambda: reconciler.passes >= 1, "the first pass")
        elsewhere = Swarm()  # another site's state, further along the same log
        elsewhere.append(SetPlacement("sensor", {"site-1": 1, "site-2": 1}))
        swarm.state.restore(elsewhere.state.export())
        await eventually(lambda: _sensors(runtime) == 1, "this site's replica of the restored placement")
    finally:
        await reconciler.stop()
    swarm.state.restore(Swarm().state.export())  # stopped: no longer listening
    assert swarm.state.listener_errors == 0
