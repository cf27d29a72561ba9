"""`DockerRuntime` against a real Docker engine and the real `workloads.sensor` image.

Needs a running dockerd (CI starts it with
`dockerd --bridge=none --iptables=false --host=unix:///var/run/docker.sock`); without one every
test skips with the reason. The images are built offline through `tools.runtimes.images` when
missing; the debootstrapped root filesystem is cached under `$MEC_TEST_CACHE`
(default `/var/cache/mec-tests`), so only the first run pays the ~40 s bootstrap.

Each test runs its runtime under its own site id; teardown removes every container carrying that
site's label, whatever the test did.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from tools.runtimes.base import NotAllowedError, StartError, UnknownInstanceError, WorkloadSpec
from tools.runtimes.docker import (
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_PORT,
    LABEL_SERVICE,
    LABEL_SITE,
    DockerRuntime,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = "mec-workloads:0.1"
MiB = 1024 * 1024

SPECS = {
    "sensor": WorkloadSpec(
        name="sensor", module="workloads.sensor", image=IMAGE, memory_mb=128, cpus=0.5, start_timeout_s=30
    ),
    "broken": WorkloadSpec(name="broken", module="workloads.does_not_exist", image=IMAGE, start_timeout_s=20),
    "evil": WorkloadSpec(name="evil", module="workloads.sensor", image="evil:1"),
}
ALLOWLIST = {IMAGE}


# --- fixtures ------------------------------------------------------------------------------------


def _site_containers(engine: docker.DockerClient, site: str) -> list[Any]:
    return engine.containers.list(
        all=True, sparse=True, filters={"label": [f"{LABEL_SITE}={site}", f"{LABEL_MANAGED}=true"]}
    )


def _remove_site_containers(engine: docker.DockerClient, site: str) -> None:
    for container in _site_containers(engine, site):
        try:
            engine.api.remove_container(container.id, force=True)
        except docker.errors.NotFound:
            pass


RuntimeFactory = Callable[..., DockerRuntime]


@pytest.fixture
async def make_runtime(engine: docker.DockerClient, workload_image: str) -> AsyncIterator[RuntimeFactory]:
    """Builds runtimes on fresh site ids; closes them and removes their containers afterwards."""
    made: list[DockerRuntime] = []

    def make(
        site_id: str | None = None, supervise_interval_s: float = 0.2, cpu_period_ms: float | None = None
    ) -> DockerRuntime:
        rt = DockerRuntime(
            SPECS,
            ALLOWLIST,
            site_id=site_id or f"t{uuid.uuid4().hex[:8]}",
            supervise_interval_s=supervise_interval_s,
            cpu_period_ms=cpu_period_ms,
        )
        made.append(rt)
        return rt

    try:
        yield make
    finally:
        for rt in made:
            try:
                await rt.close()
            finally:
                await asyncio.to_thread(_remove_site_containers, engine, rt.site_id)


@pytest.fixture
async def runtime(make_runtime: RuntimeFactory) -> DockerRuntime:
    return make_runtime()


async def _wait_for(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout_s} s")


async def _invoke(url: str, payload: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
        return await http.post(f"{url}/invoke", json=payload)


# --- tests ---------------------------------------------------------------------------------------


async def test_sensor_serves_on_its_own_loopback_port(
    runtime: DockerRuntime, engine: docker.DockerClient
) -> None:
    [inst] = await runtime.start("sensor")
    assert inst.ready and inst.host == "127.0.0.1" and inst.gpu is False
    assert inst.id == f"mec-{runtime.site_id}-sensor-1"
    assert runtime.ready_instances("sensor") == [inst]

    response = await _invoke(inst.url, {"sensor_id": "pump-7", "value": 2.0})
    assert response.status_code == 200
    assert response.json()["count"] == 1

    attrs = engine.api.inspect_container(inst.container_id)
    assert attrs["HostConfig"]["NetworkMode"] == "host"
    assert (
        attrs["Config"]["Labels"].items()
        >= {
            LABEL_SITE: runtime.site_id,
            LABEL_SERVICE: "sensor",
            LABEL_INSTANCE: inst.id,
            LABEL_PORT: str(inst.port),
            LABEL_MANAGED: "true",
        }.items()
    )
    assert attrs["HostConfig"]["Memory"] == 128 * MiB
    assert attrs["HostConfig"]["NanoCpus"] == 500_000_000
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "on-failure"
    assert attrs["Config"]["Healthcheck"]["Test"][:2] == ["CMD", "python3"]
    assert attrs["Config"]["Cmd"] == [
        "python3",
        "-m",
        "workloads.sensor",
        "--host",
        "127.0.0.1",
        "--port",
        str(inst.port),
    ]
    assert not any(net.get("IPAddress") for net in attrs["NetworkSettings"]["Networks"].values())


async def test_killed_container_is_brought_back(runtime: DockerRuntime, engine: docker.DockerClient) -> None:
    [inst] = await runtime.start("sensor")
    port = inst.port
    engine.api.kill(inst.container_id)

    await _wait_for(lambda: inst.restarts == 1 and inst.ready, timeout_s=30)
    assert inst.port == port
    assert inst.last_exit_code == 137
    response = await _invoke(inst.url, {"sensor_id": "pump-7", "value": 1.0})
    assert response.status_code == 200


async def test_removed_container_is_recreated_on_the_same_port(
    runtime: DockerRuntime, engine: docker.DockerClient
) -> None:
    [inst] = await runtime.start("sensor")
    old_container, port = inst.container_id, inst.port
    engine.api.remove_container(old_container, force=True)

    await _wait_for(lambda: inst.restarts == 1 and inst.ready, timeout_s=30)
    assert inst.container_id != old_container and inst.port == port
    assert len(_site_containers(engine, runtime.site_id)) == 1
    assert (await _invoke(inst.url, {"sensor_id": "s", "value": 1.0})).status_code == 200


async def test_reported_failure_is_rechecked_at_once(
    make_runtime: RuntimeFactory, engine: docker.DockerClient
) -> None:
    runtime = make_runtime(supervise_interval_s=60.0)
    [inst] = await runtime.start("sensor")
    engine.api.kill(inst.container_id)

    runtime.report_failure(inst.id)
    # Far sooner than the 60 s supervision interval: the report wakes the supervisor.
    await _wait_for(lambda: inst.restarts == 1 and inst.ready, timeout_s=15)
    assert (await _invoke(inst.url, {"sensor_id": "s", "value": 1.0})).status_code == 200


async def test_image_outside_the_allowlist_is_refused_before_any_container(
    runtime: DockerRuntime, engine: docker.DockerClient
) -> None:
    with pytest.raises(NotAllowedError, match="busybox:latest"):
        await runtime.start("sensor", image="busybox:latest")
    with pytest.raises(NotAllowedError, match="evil:1"):
        await runtime.start("evil")
    with pytest.raises(NotAllowedError, match="evil:1"):
        await runtime.scale("evil", 1)
    assert runtime.instances() == []
    assert _site_containers(engine, runtime.site_id) == []


async def test_service_not_in_specs_is_refused(runtime: DockerRuntime, engine: docker.DockerClient) -> None:
    with pytest.raises(NotAllowedError, match="'miner'"):
        await runtime.start("miner")
    with pytest.raises(NotAllowedError, match="'miner'"):
        await runtime.scale("miner", 2)
    assert _site_containers(engine, runtime.site_id) == []


async def test_scale_up_and_down_stops_the_newest(
    runtime: DockerRuntime, engine: docker.DockerClient
) -> None:
    [first] = await runtime.scale("sensor", 1)
    both = await runtime.scale("sensor", 2)
    assert len(both) == 2 and all(inst.ready for inst in both)
    assert len({inst.port for inst in both}) == 2
    for inst in both:
        assert (await _invoke(inst.url, {"sensor_id": "s", "value": 1.0})).status_code == 200
    assert len(_site_containers(engine, runtime.site_id)) == 2

    assert await runtime.scale("sensor", 1) == [first]
    assert [c.id for c in _site_containers(engine, runtime.site_id)] == [first.container_id]


async def test_stopped_instance_is_not_resurrected(
    runtime: DockerRuntime, engine: docker.DockerClient
) -> None:
    [inst] = await runtime.start("sensor")
    stopped = await runtime.stop(inst.id)
    assert stopped.state == "stopped"
    assert stopped.last_exit_code == 0  # the workload exits 0 on SIGTERM
    rounds = runtime.reconciles
    await _wait_for(lambda: runtime.reconciles >= rounds + 5)  # five supervision rounds
    assert runtime.instances() == []
    assert _site_containers(engine, runtime.site_id) == []
    with pytest.raises(UnknownInstanceError):
        await runtime.stop(inst.id)


async def test_restart_keeps_the_port(runtime: DockerRuntime) -> None:
    [inst] = await runtime.start("sensor")
    port = inst.port
    again = await runtime.restart(inst.id)
    assert again is inst and inst.ready and inst.port == port and inst.restarts == 1
    assert (await _invoke(inst.url, {"sensor_id": "s", "value": 1.0})).status_code == 200


async def test_logs_show_the_listening_line(runtime: DockerRuntime) -> None:
    [inst] = await runtime.start("sensor")
    # The workload may answer /healthz a moment before the engine has copied its stderr line.
    deadline = time.monotonic() + 5.0
    logs = await runtime.logs(inst.id)
    while "listening" not in logs and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        logs = await runtime.logs(inst.id)
    assert "listening" in logs and str(inst.port) in logs


async def test_inspect_is_plain_data(runtime: DockerRuntime) -> None:
    [inst] = await runtime.start("sensor")
    data = await runtime.inspect(inst.id)
    json.dumps(data)
    assert data["container"]["id"] == inst.container_id
    assert data["container"]["image"] == IMAGE
    assert data["container"]["status"] == "running"
    assert data["container"]["health"] in {"starting", "healthy"}
    assert data["port"] == inst.port and data["restarts"] == 0
    assert data["limits"]["memory_bytes"] == 128 * MiB and data["limits"]["cpus"] == 0.5


async def test_a_shorter_cpu_period_keeps_the_cpu_share_as_a_quota_per_period(
    make_runtime: RuntimeFactory,
) -> None:
    runtime = make_runtime(cpu_period_ms=10)
    [inst] = await runtime.start("sensor")
    limits = (await runtime.inspect(inst.id))["limits"]  # as the engine reports the container
    assert (limits["cpu_period_us"], limits["cpu_quota_us"]) == (10_000, 5_000)
    assert limits["cpus"] == 0.5 and not limits["nano_cpus"]


async def test_stats_report_memory(runtime: DockerRuntime) -> None:
    [inst] = await runtime.start("sensor")
    [stats] = await runtime.stats()
    assert stats.instance_id == inst.id
    assert stats.memory_bytes > 0
    assert stats.memory_limit_bytes == 128 * MiB
    assert stats.cpu_percent >= 0
    [again] = await runtime.stats()  # the second sample is a delta against the first
    assert again.cpu_percent >= 0


async def test_failed_start_reports_the_logs_and_leaves_nothing(
    runtime: DockerRuntime, engine: docker.DockerClient
) -> None:
    with pytest.raises(StartError, match="does_not_exist"):
        await runtime.start("broken")
    assert runtime.instances() == []
    assert _site_containers(engine, runtime.site_id) == []


async def test_close_removes_every_labelled_container(
    runtime: DockerRuntime, engine: docker.DockerClient
) -> None:
    await runtime.scale("sensor", 2)
    assert len(_site_containers(engine, runtime.site_id)) == 2
    await runtime.close()
    assert _site_containers(engine, runtime.site_id) == []
    assert runtime.instances() == []


async def test_leftovers_of_a_previous_run_are_removed_on_open(
    make_runtime: RuntimeFactory, engine: docker.DockerClient
) -> None:
    previous = make_runtime()
    [inst] = await previous.start("sensor")
    await previous.close(stop_instances=False)
    assert [c.id for c in _site_containers(engine, previous.site_id)] == [inst.container_id]

    successor = make_runtime(site_id=previous.site_id)
    await successor.open()
    assert _site_containers(engine, previous.site_id) == []
    assert successor.instances() == []
