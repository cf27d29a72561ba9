from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator

import httpx
import psutil
import pytest

from tools.container_ops import container_ops_tool
from tools.runtimes.base import NotAllowedError, UnknownInstanceError, WorkloadSpec
from tools.runtimes.local import LocalRuntime

SPECS = {
    "sensor": WorkloadSpec(name="sensor", module="workloads.sensor", image="mec-workloads:0.1"),
    "game-state": WorkloadSpec(name="game-state", module="workloads.game_state", image="mec-workloads:0.1"),
}


@pytest.fixture
async def runtime() -> AsyncIterator[LocalRuntime]:
    rt = LocalRuntime(SPECS, {"mec-workloads:0.1"}, site_id="t", supervise_interval_s=0.2)
    try:
        yield rt
    finally:
        pids = [inst.pid for inst in rt.instances() if inst.pid]
        await rt.close()
        for pid in pids:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def _wait_for(predicate, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def _invoke(url: str, payload: dict) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as http:
        return await http.post(f"{url}/invoke", json=payload)


async def test_started_instance_serves_on_its_own_loopback_port(runtime: LocalRuntime) -> None:
    [inst] = await runtime.start("sensor")
    assert inst.host == "127.0.0.1" and inst.ready
    response = await _invoke(inst.url, {"sensor_id": "s", "value": 2.0})
    assert response.status_code == 200
    assert response.json()["count"] == 1


async def test_killed_workload_is_restarted_and_serves_again(runtime: LocalRuntime) -> None:
    [inst] = await runtime.start("sensor")
    old_pid = inst.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    await _wait_for(lambda: inst.restarts == 1 and inst.ready and inst.pid != old_pid)
    assert inst.last_exit_code == -signal.SIGKILL
    response = await _invoke(inst.url, {"sensor_id": "s", "value": 1.0})
    assert response.status_code == 200


async def test_hung_workload_fails_health_checks_and_is_replaced(runtime: LocalRuntime) -> None:
    [inst] = await runtime.start("sensor")
    old_pid = inst.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGSTOP)
    try:
        await _wait_for(lambda: inst.pid != old_pid and inst.ready, timeout_s=20)
    finally:
        if psutil.pid_exists(old_pid):
            os.kill(old_pid, signal.SIGKILL)
    assert inst.restarts == 1
    assert (await _invoke(inst.url, {"sensor_id": "s", "value": 1.0})).status_code == 200


async def test_service_not_in_allowlist_is_refused(runtime: LocalRuntime) -> None:
    with pytest.raises(NotAllowedError, match="crypto-miner"):
        await runtime.start("crypto-miner")
    assert runtime.instances() == []


async def test_image_not_in_allowlist_is_refused(runtime: LocalRuntime) -> None:
    with pytest.raises(NotAllowedError, match="evil/miner:latest"):
        await runtime.start("sensor", image="evil/miner:latest")
    assert runtime.instances() == []


async def test_scale_up_and_down_stops_newest_first(runtime: LocalRuntime) -> None:
    first = await runtime.scale("game-state", 1)
    three = await runtime.scale("game-state", 3)
    assert len(three) == 3 and len({inst.port for inst in three}) == 3
    one = await runtime.scale("game-state", 1)
    assert [inst.id for inst in one] == [first[0].id]
    assert await runtime.scale("game-state", 0) == []


async def test_logs_inspect_and_stats_report_a_running_instance(runtime: LocalRuntime) -> None:
    [inst] = await runtime.start("sensor")
    assert "listening on" in await runtime.logs(inst.id)
    details = await runtime.inspect(inst.id)
    assert details["alive"] is True and details["runtime"] == "local"
    stats = await runtime.stats()
    assert [s.instance_id for s in stats] == [inst.id]
    assert stats[0].memory_bytes > 1_000_000
    with pytest.raises(UnknownInstanceError):
        await runtime.logs("sensor-99")


async def test_container_ops_tool_scales_and_refuses_unknown_images(runtime: LocalRuntime) -> None:
    tool = container_ops_tool(runtime, {"sensor": 2})
    result = await tool(action="scale", service="sensor", replicas=2)
    assert result["replicas"] == 2
    listed = await tool(action="list", service="sensor")
    assert {i["state"] for i in listed["instances"]} == {"running"}
    with pytest.raises(ValueError, match="at most 2"):
        await tool(action="scale", service="sensor", replicas=3)
    with pytest.raises(NotAllowedError):
        await tool(action="start", service="sensor", image="evil/miner:latest")
    assert len(runtime.instances("sensor")) == 2


def _environ(pid: int) -> dict[str, str]:
    raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


async def test_workloads_do_not_inherit_the_sites_keys_or_secrets(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEC_OPERATOR_KEYS", "operator-secret-0123456789")
    monkeypatch.setenv("MEC_MODEL_API_KEY", "model-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    [inst] = await runtime.start("sensor")
    assert inst.pid is not None
    env = _environ(inst.pid)
    assert "secret" not in " ".join(env.values())
    assert not {"MEC_OPERATOR_KEYS", "MEC_MODEL_API_KEY", "AWS_SECRET_ACCESS_KEY"} & set(env)
    assert env["MEC_WORKLOAD_PORT"] == str(inst.port) and "PATH" in env


async def test_a_reported_failure_takes_the_instance_out_at_once_and_a_good_check_brings_it_back(
    runtime: LocalRuntime,
) -> None:
    [inst] = await runtime.start("sensor")
    runtime.report_failure(inst.id)
    assert runtime.ready_instances("sensor") == []  # the router stops sending to it now
    await _wait_for(lambda: runtime.ready_instances("sensor") == [inst])
    assert inst.restarts == 0


async def test_a_reported_hung_instance_is_killed_and_restarted(runtime: LocalRuntime) -> None:
    [inst] = await runtime.start("sensor")
    old_pid = inst.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGSTOP)
    try:
        runtime.report_failure(inst.id)
        assert runtime.ready_instances("sensor") == []
        await _wait_for(lambda: inst.pid != old_pid and inst.ready, timeout_s=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old_pid, signal.SIGCONT)
    assert inst.restarts == 1
