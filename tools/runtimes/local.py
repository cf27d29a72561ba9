"""Workloads as supervised local subprocesses: the embedded default runtime.

Each instance is `python -m <module> --host 127.0.0.1 --port <own port>`. A supervisor task per
instance waits on the process and starts it again on the same port when it exits without being
asked to (with back-off); a health loop kills and restarts instances that stop answering
`/healthz`. Children get SIGTERM if the site process dies (Linux `PR_SET_PDEATHSIG`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from tools.runtimes.base import (
    Instance,
    InstanceStats,
    Runtime,
    StartError,
    UnknownInstanceError,
    WorkloadSpec,
    die_with_parent,
    free_port,
    workload_environment,
)

log = logging.getLogger(__name__)

LOG_LINES = 1000
UNHEALTHY_AFTER = 3


@dataclass
class _Managed:
    instance: Instance
    spec: WorkloadSpec
    process: asyncio.subprocess.Process | None = None
    wanted: bool = True
    output: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    supervisor: asyncio.Task[None] | None = None
    failed_checks: int = 0
    probe: psutil.Process | None = None


class LocalRuntime(Runtime):
    """Runs allowlisted workloads as child processes of the site."""

    name = "local"

    def __init__(
        self,
        specs: dict[str, WorkloadSpec],
        image_allowlist: set[str],
        site_id: str,
        host: str = "127.0.0.1",
        gpu_available: bool = False,
        python: str = sys.executable,
        workdir: Path | None = None,
        supervise_interval_s: float = 1.0,
    ) -> None:
        super().__init__(specs, image_allowlist, site_id)
        self.host = host
        self.gpu_available = gpu_available
        self.python = python
        self.workdir = workdir or Path(__file__).resolve().parents[2]
        self.supervise_interval_s = supervise_interval_s
        self._managed: dict[str, _Managed] = {}
        self._serial: dict[str, int] = {}
        self._http = httpx.AsyncClient(timeout=1.0)
        self._health_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, service: str, count: int = 1, image: str | None = None) -> list[Instance]:
        spec, chosen = self.admit(service, image)
        if count < 1:
            raise ValueError("count must be at least 1")
        self._ensure_health_loop()
        return list(await asyncio.gather(*(self._start_one(spec, chosen) for _ in range(count))))

    async def _start_one(self, spec: WorkloadSpec, image: str) -> Instance:
        self._serial[spec.name] = self._serial.get(spec.name, 0) + 1
        instance = Instance(
            id=f"{spec.name}-{self._serial[spec.name]}",
            service=spec.name,
            host=self.host,
            port=free_port(self.host),
            image=image,
            gpu=spec.gpu and self.gpu_available,
        )
        managed = _Managed(instance=instance, spec=spec)
        self._managed[instance.id] = managed
        try:
            await self._spawn(managed)
            await self._wait_healthy(managed)
        except BaseException:
            managed.wanted = False
            await self._terminate(managed)
            self._managed.pop(instance.id, None)
            raise
        managed.supervisor = asyncio.get_running_loop().create_task(self._supervise(managed))
        return instance

    async def _spawn(self, managed: _Managed) -> None:
        instance, spec = managed.instance, managed.spec
        env = workload_environment(
            {
                **spec.env,
                "MEC_WORKLOAD_HOST": instance.host,
                "MEC_WORKLOAD_PORT": str(instance.port),
                "MEC_WORKLOAD_DEVICE": "auto" if instance.gpu else "cpu",
                "PYTHONUNBUFFERED": "1",
            }
        )
        instance.state = "starting"
        process = await asyncio.create_subprocess_exec(
            self.python,
            "-m",
            spec.module,
            "--host",
            instance.host,
            "--port",
            str(instance.port),
            cwd=self.workdir,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        managed.process = process
        managed.probe = None
        instance.pid = process.pid
        instance.started_at = time.time()
        asyncio.get_running_loop().create_task(self._collect_output(managed, process))

    async def _collect_output(self, managed: _Managed, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            managed.output.append(line.decode(errors="replace").rstrip("\n"))

    async def _wait_healthy(self, managed: _Managed) -> None:
        instance, process = managed.instance, managed.process
        assert process is not None
        deadline = time.monotonic() + managed.spec.start_timeout_s
        while time.monotonic() < deadline:
            if process.returncode is not None:
                break
            if await self._healthy(instance):
                instance.state = "running"
                managed.failed_checks = 0
                return
            await asyncio.sleep(0.05)
        tail = "\n".join(list(managed.output)[-20:])
        raise StartError(
            f"{instance.id} did not become healthy on {instance.url} "
            f"(exit code {process.returncode}); last output:\n{tail}"
        )

    async def _healthy(self, instance: Instance) -> bool:
        try:
            response = await self._http.get(f"{instance.url}/healthz")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def _supervise(self, managed: _Managed) -> None:
        """Start the instance again each time it exits while it is still wanted."""
        backoff = 0.1
        while managed.wanted:
            process = managed.process
            assert process is not None
            code = await process.wait()
            if not managed.wanted:
                break
            instance = managed.instance
            instance.state = "restarting"
            instance.last_exit_code = code
            instance.restarts += 1
            log.warning("%s exited with %s; restarting (restart #%d)", instance.id, code, instance.restarts)
            await asyncio.sleep(backoff)
            try:
                await self._spawn(managed)
                await self._wait_healthy(managed)
            except (StartError, OSError) as exc:
                log.error("%s failed to restart: %s", instance.id, exc)
                backoff = min(backoff * 2, 5.0)
                await self._terminate(managed)
                continue
            if time.time() - instance.started_at > 30:
                backoff = 0.1
            backoff = min(backoff * 2, 5.0)

    def _ensure_health_loop(self) -> None:
        if self._health_task is None or self._health_task.done():
            self._health_task = asyncio.get_running_loop().create_task(self._health_loop())

    async def _health_loop(self) -> None:
        """Kill instances that stop answering; their supervisor starts them again."""
        while True:
            await asyncio.sleep(self.supervise_interval_s)
            await asyncio.gather(
                *(
                    self._check(m)
                    for m in list(self._managed.values())
                    if m.instance.state in ("running", "unhealthy")
                )
            )

    async def _check(self, managed: _Managed) -> None:
        if await self._healthy(managed.instance):
            managed.failed_checks = 0
            if managed.instance.state == "unhealthy" and managed.process is not None:
                if managed.process.returncode is None:
                    managed.instance.state = "running"
            return
        managed.failed_checks += 1
        if managed.failed_checks >= UNHEALTHY_AFTER and managed.process is not None:
            managed.instance.state = "unhealthy"
            log.warning("%s failed %d health checks; killing it", managed.instance.id, UNHEALTHY_AFTER)
            with contextlib.suppress(ProcessLookupError):
                managed.process.kill()

    def report_failure(self, instance_id: str) -> None:
        """Take the instance out of the router's view at once and check it now.

        A passing health check puts it back; one more failed check kills it (the supervisor
        then starts it again).
        """
        managed = self._managed.get(instance_id)
        if managed is None or managed.instance.state != "running":
            return
        managed.instance.state = "unhealthy"
        managed.failed_checks = UNHEALTHY_AFTER - 1
        asyncio.get_running_loop().create_task(self._check(managed))

    async def _terminate(self, managed: _Managed, grace_s: float = 5.0) -> None:
        process = managed.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    def _get(self, instance_id: str) -> _Managed:
        managed = self._managed.get(instance_id)
        if managed is None:
            raise UnknownInstanceError(
                f"no instance {instance_id!r} on this site (instances: {sorted(self._managed)})"
            )
        return managed

    async def stop(self, instance_id: str) -> Instance:
        managed = self._get(instance_id)
        managed.wanted = False
        await self._terminate(managed)
        if managed.supervisor is not None:
            managed.supervisor.cancel()
        managed.instance.state = "stopped"
        self._managed.pop(instance_id, None)
        return managed.instance

    async def restart(self, instance_id: str) -> Instance:
        managed = self._get(instance_id)
        if managed.supervisor is not None:
            managed.supervisor.cancel()
        managed.instance.state = "restarting"
        await self._terminate(managed)
        managed.instance.restarts += 1
        await self._spawn(managed)
        await self._wait_healthy(managed)
        managed.supervisor = asyncio.get_running_loop().create_task(self._supervise(managed))
        return managed.instance

    async def scale(self, service: str, replicas: int) -> list[Instance]:
        spec, _ = self.admit(service)
        if replicas < 0:
            raise ValueError("replicas must be 0 or more")
        current = self.instances(service)
        if len(current) < replicas:
            await self.start(spec.name, replicas - len(current))
        else:
            newest_first = sorted(current, key=lambda inst: inst.started_at, reverse=True)
            for instance in newest_first[: len(current) - replicas]:
                await self.stop(instance.id)
        return self.instances(service)

    def instances(self, service: str | None = None) -> list[Instance]:
        return [
            managed.instance
            for managed in self._managed.values()
            if service is None or managed.instance.service == service
        ]

    async def logs(self, instance_id: str, tail: int = 100) -> str:
        lines = list(self._get(instance_id).output)
        return "\n".join(lines[-tail:] if tail > 0 else lines)

    async def inspect(self, instance_id: str) -> dict[str, Any]:
        managed = self._get(instance_id)
        return {
            **managed.instance.to_dict(),
            "runtime": self.name,
            "command": [self.python, "-m", managed.spec.module, "--port", str(managed.instance.port)],
            "alive": managed.process is not None and managed.process.returncode is None,
            "failed_health_checks": managed.failed_checks,
            "log_lines": len(managed.output),
        }

    def _stats_blocking(self) -> list[InstanceStats]:
        out = []
        for managed in list(self._managed.values()):
            pid = managed.instance.pid
            if pid is None or managed.instance.state != "running":
                continue
            try:
                if managed.probe is None or managed.probe.pid != pid:
                    managed.probe = psutil.Process(pid)
                out.append(
                    InstanceStats(
                        instance_id=managed.instance.id,
                        cpu_percent=managed.probe.cpu_percent(interval=None),
                        memory_bytes=managed.probe.memory_info().rss,
                    )
                )
            except psutil.Error:
                continue
        return out

    async def stats(self) -> list[InstanceStats]:
        return await asyncio.to_thread(self._stats_blocking)

    async def close(self, stop_instances: bool = True) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
        if stop_instances:
            await asyncio.gather(*(self.stop(instance_id) for instance_id in list(self._managed)))
        await self._http.aclose()
