"""`DockerRuntime` refuses what the allowlist does not name before it talks to any engine.

The runtime here points at a socket where no engine listens: a refusal must come back as
`NotAllowedError`, never as an engine error, and an allowed start must fail with the runtime's
own `EngineUnavailableError` rather than a docker SDK or requests exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tools.runtimes.base import NotAllowedError, WorkloadRuntimeError, WorkloadSpec
from tools.runtimes.docker import DockerRuntime, EngineUnavailableError

IMAGE = "mec-workloads:0.1"
SPECS = {
    "sensor": WorkloadSpec(name="sensor", module="workloads.sensor", image=IMAGE),
    "rogue": WorkloadSpec(name="rogue", module="workloads.sensor", image="evil:1"),
}


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime(SPECS, {IMAGE}, site_id="unit", docker_url=f"unix://{tmp_path}/no-engine.sock")
    yield rt
    await rt.close()


async def test_image_override_outside_the_allowlist_is_refused(runtime: DockerRuntime) -> None:
    with pytest.raises(NotAllowedError, match=r"'busybox:latest'.*'sensor'"):
        await runtime.start("sensor", image="busybox:latest")


async def test_spec_image_outside_the_allowlist_is_refused(runtime: DockerRuntime) -> None:
    with pytest.raises(NotAllowedError, match="'evil:1'"):
        await runtime.start("rogue")
    with pytest.raises(NotAllowedError, match="'evil:1'"):
        await runtime.scale("rogue", 3)


async def test_service_not_in_specs_is_refused(runtime: DockerRuntime) -> None:
    with pytest.raises(NotAllowedError, match="'miner'"):
        await runtime.start("miner")
    with pytest.raises(NotAllowedError, match="'miner'"):
        await runtime.scale("miner", 1)


async def test_allowed_start_reports_the_missing_engine_clearly(
    runtime: DockerRuntime, tmp_path: Path
) -> None:
    with pytest.raises(EngineUnavailableError, match=r"no-engine\.sock") as caught:
        await runtime.start("sensor")
    assert isinstance(caught.value, WorkloadRuntimeError)
    with pytest.raises(EngineUnavailableError):
        await runtime.open()
    assert runtime.instances() == []


async def test_reads_need_no_engine(runtime: DockerRuntime) -> None:
    assert runtime.instances() == [] and runtime.ready_instances("sensor") == []
    runtime.report_failure("mec-unit-sensor-1")  # unknown and unopened: ignored, never raises
    assert await runtime.stats() == []
