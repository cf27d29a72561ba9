"""`DockerRuntime`: the site's services as containers on host networking.

Each instance is one container named `mec-<site>-<service>-<n>`, started with
`network_mode="host"` and told (by `--port` and `MEC_WORKLOAD_PORT`) to bind its own
127.0.0.1 port, so clients and health checks address `127.0.0.1:<port>` and never a bridge IP.
The runtime owns its containers through labels (`mec.site`, `mec.service`, `mec.instance`,
`mec.port`, `mec.managed=true`).

Lifecycle:

* `open()` connects to the engine, **removes** every container labelled with this site from a
  previous run (a new runtime starts from an empty desired state; the site's reconciler scales
  services back up), and starts the supervision task. `start()` and `scale()` call it lazily, so
  an explicit `open()` is optional; it is the place where an unreachable engine is reported
  (`EngineUnavailableError`) before any service is started.
* The supervision task lists the site's containers every `supervise_interval_s` (or at once after
  `report_failure()`) and brings back any instance whose container stopped, died, turned
  unhealthy or was removed: it restarts the container in place, or recreates it on the same port
  when it is gone, and counts the restart. Containers carrying the site's label that no instance
  owns (leftovers) are removed.
* `stop()` forgets the instance before stopping its container, so supervision never resurrects it.
* `close()` cancels supervision and, unless told otherwise, removes the site's containers. Those
  left running by `close(stop_instances=False)` are removed by the next `open()`.

Every engine call is blocking (docker SDK over a Unix socket) and runs in a worker thread;
`instances()` and `ready_instances()` read memory only. Engine failures reach callers as
`WorkloadRuntimeError` subclasses, never as docker SDK or requests exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import docker
import docker.errors
import httpx
import requests
from docker.types import DeviceRequest, Healthcheck, LogConfig

from tools.runtimes.base import (
    Instance,
    InstanceStats,
    Runtime,
    StartError,
    UnknownInstanceError,
    WorkloadRuntimeError,
    WorkloadSpec,
    free_port,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

LABEL_SITE = "mec.site"
LABEL_SERVICE = "mec.service"
LABEL_INSTANCE = "mec.instance"
LABEL_PORT = "mec.port"
LABEL_MANAGED = "mec.managed"

ENGINE_TIMEOUT_S = 60
MIN_CPU_PERIOD_MS = 1.0
MAX_CPU_PERIOD_MS = 1000.0
"""The kernel's bounds on a CFS period."""
MIN_CPU_QUOTA_US = 1000
"""The kernel's smallest CFS quota."""
"""Read timeout of one engine API call (container stop waits are added on top by the SDK)."""

STOP_TIMEOUT_S = 10
"""Seconds a container gets to exit after SIGTERM before the engine kills it."""

HEALTH_INTERVAL_S = 5.0
HEALTH_TIMEOUT_S = 3.0
HEALTH_RETRIES = 3
"""Docker's own health check: a container is `unhealthy` after this many failed checks in a row."""

PROBE_TIMEOUT_S = 1.0
"""Timeout of one HTTP /healthz probe made by the runtime."""

POLL_INTERVAL_S = 0.05
"""How often a starting instance is probed."""

SUSPECT_PROBES = 4
"""Probes (spaced by `SUSPECT_PROBE_GAP_S`) a reported instance gets before it is restarted."""
SUSPECT_PROBE_GAP_S = 0.25

MAX_BACKOFF_S = 30.0
"""Longest wait between two failed attempts to bring the same instance back."""

ON_FAILURE_RETRIES = 3
"""Engine-side restarts (`restart_policy` on-failure) before supervision takes over."""

LOG_LINES_IN_ERRORS = 20

_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")


class EngineUnavailableError(WorkloadRuntimeError):
    """The Docker engine cannot be reached (not running, wrong socket, no permission)."""


class EngineError(WorkloadRuntimeError):
    """The Docker engine refused or failed a request."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ContainerGoneError(WorkloadRuntimeError):
    """The container behind an instance no longer exists on the engine."""


def connect_engine(docker_url: str | None = None, timeout_s: int = ENGINE_TIMEOUT_S) -> docker.DockerClient:
    """A docker client that has answered a ping. Blocking.

    `docker_url` is e.g. `unix:///var/run/docker.sock`; None means the environment's
    (`DOCKER_HOST`, else the default socket). Raises `EngineUnavailableError` when no engine answers.
    """
    where = docker_url or "the default socket (DOCKER_HOST)"
    try:
        if docker_url:
            client = docker.DockerClient(base_url=docker_url, version="auto", timeout=timeout_s)
        else:
            client = docker.from_env(version="auto", timeout=timeout_s)
        client.ping()
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        raise EngineUnavailableError(f"Docker engine at {where} is unreachable: {exc}") from exc
    return client


def _translate(exc: BaseException, what: str) -> WorkloadRuntimeError | None:
    """The runtime error for an exception raised by the docker SDK, or None to re-raise as is."""
    if isinstance(exc, docker.errors.ImageNotFound):
        return StartError(
            f"{what}: image not present on the engine ({exc.explanation}); there is no registry, "
            "build it with `python -m tools.runtimes.images`"
        )
    if isinstance(exc, docker.errors.NotFound):
        return ContainerGoneError(f"{what}: {exc.explanation}")
    if isinstance(exc, docker.errors.APIError):
        return EngineError(f"{what}: {exc.explanation or exc}", exc.status_code)
    if isinstance(exc, requests.RequestException | ConnectionError):
        return EngineUnavailableError(f"{what}: Docker engine unreachable: {exc}")
    if isinstance(exc, docker.errors.DockerException):
        return EngineError(f"{what}: {exc}")
    return None


@dataclass
class _Slot:
    """The runtime's bookkeeping for one instance."""

    instance: Instance
    spec: WorkloadSpec
    seq: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    failures: int = 0
    not_before: float = 0.0

    @property
    def busy(self) -> bool:
        return self.lock.locked() or (self.task is not None and not self.task.done())


@dataclass
class _CpuSample:
    total_ns: int
    system_ns: int


@dataclass(frozen=True)
class _Observed:
    """One container as the engine's list call shows it."""

    container_id: str
    status: str
    unhealthy: bool


class DockerRuntime(Runtime):
    """Runs allowlisted services as supervised containers on host networking (see module doc)."""

    name = "docker"

    def __init__(
        self,
        specs: dict[str, WorkloadSpec],
        image_allowlist: set[str],
        site_id: str,
        host: str = "127.0.0.1",
        docker_url: str | None = None,
        supervise_interval_s: float = 1.0,
        cpu_period_ms: float | None = None,
    ) -> None:
        if not site_id:
            raise ValueError("site_id must not be empty")
        if supervise_interval_s <= 0:
            raise ValueError("supervise_interval_s must be > 0")
        if cpu_period_ms is not None and not MIN_CPU_PERIOD_MS <= cpu_period_ms <= MAX_CPU_PERIOD_MS:
            raise ValueError(f"cpu_period_ms must be in {MIN_CPU_PERIOD_MS:g}..{MAX_CPU_PERIOD_MS:g}")
        self.cpu_period_us = None if cpu_period_ms is None else round(cpu_period_ms * 1000)
        """The CFS period of each container's CPU limit, µs; None: the engine's (100 ms)."""
        super().__init__(specs, image_allowlist, site_id)
        self.host = host
        self._docker_url = docker_url
        self._interval = supervise_interval_s
        self._name_prefix = f"mec-{_NAME_UNSAFE.sub('-', site_id)}"

        self._client: docker.DockerClient | None = None
        self._http: httpx.AsyncClient | None = None
        self._gpu_engine = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open_lock = asyncio.Lock()
        self._scale_locks: dict[str, asyncio.Lock] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._suspects: set[str] = set()
        self._slots: dict[str, _Slot] = {}
        self._seq = 0
        self._counters: dict[str, int] = {}
        self._cpu_prev: dict[str, _CpuSample] = {}
        self._retiring: set[str] = set()
        self._engine_down_logged = False
        self.reconciles = 0
        """Supervision passes started so far."""

    # --- properties -------------------------------------------------------------------------

    @property
    def gpu_available(self) -> bool:
        """Whether the engine reports an nvidia runtime (known after `open()`)."""
        return self._gpu_engine

    @property
    def reachable(self) -> bool:
        """False from a supervision pass that found the engine unreachable until one that reached it."""
        return not self._engine_down_logged

    @property
    def label_filters(self) -> list[str]:
        """The label filters that select this site's containers."""
        return [f"{LABEL_SITE}={self.site_id}", f"{LABEL_MANAGED}=true"]

    # --- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, remove the site's leftover containers and start supervision. Idempotent."""
        async with self._open_lock:
            if self._client is not None:
                return
            client = await asyncio.to_thread(connect_engine, self._docker_url)
            try:
                info = await asyncio.to_thread(client.info)
                self._gpu_engine = "nvidia" in (info.get("Runtimes") or {})
                leftovers = await asyncio.to_thread(
                    client.containers.list, all=True, sparse=True, filters={"label": self.label_filters}
                )
                await asyncio.gather(*(asyncio.to_thread(_remove_quietly, client, c.id) for c in leftovers))
            except BaseException as exc:
                client.close()
                error = _translate(exc, "opening the Docker runtime")
                if error is None:
                    raise
                raise error from exc
            if leftovers:
                log.info("removed %d leftover container(s) of site %s", len(leftovers), self.site_id)
            self._client = client
            self._http = httpx.AsyncClient(trust_env=False, timeout=PROBE_TIMEOUT_S)
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            self._supervisor = asyncio.create_task(self._supervise(), name=f"docker-supervise-{self.site_id}")

    async def close(self, stop_instances: bool = True) -> None:
        """Cancel supervision; stop and remove the site's containers unless `stop_instances` is False.

        Safe to call more than once. Engine failures are logged, not raised: closing must not fail.
        """
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        pending = [slot.task for slot in self._slots.values() if slot.task is not None]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            try:
                if stop_instances:
                    await self._remove_site_containers(client)
            except WorkloadRuntimeError as exc:
                log.warning("could not remove the containers of site %s: %s", self.site_id, exc)
            finally:
                client.close()
        # The runtime forgets its instances either way: containers left running are leftovers
        # that the next `open()` removes.
        if stop_instances:
            for slot in self._slots.values():
                slot.instance.state = "stopped"
        self._slots.clear()
        self._cpu_prev.clear()
        self._suspects.clear()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _remove_site_containers(self, client: docker.DockerClient) -> None:
        found = await self._engine(
            client.containers.list, all=True, sparse=True, filters={"label": self.label_filters}
        )
        await asyncio.gather(*(asyncio.to_thread(_stop_and_remove, client, c.id) for c in found))

    # --- admission --------------------------------------------------------------------------

    # --- start / stop / restart / scale -----------------------------------------------------

    async def start(self, service: str, count: int = 1, image: str | None = None) -> list[Instance]:
        spec, chosen = self.admit(service, image)
        if count < 1:
            raise ValueError("count must be >= 1")
        await self.open()
        results = await asyncio.gather(
            *(self._launch(spec, chosen) for _ in range(count)), return_exceptions=True
        )
        started = [r for r in results if isinstance(r, Instance)]
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            # All or nothing: a partial start would leave the caller guessing what runs.
            await asyncio.gather(*(self._discard(inst.id) for inst in started), return_exceptions=True)
            first = failures[0]
            if isinstance(first, WorkloadRuntimeError | asyncio.CancelledError):
                raise first
            raise StartError(f"starting {service!r} failed: {first!r}") from first
        return started

    async def _launch(self, spec: WorkloadSpec, image: str) -> Instance:
        """Create, start and health-check one new instance; registered as soon as it is named."""
        self._seq += 1
        n = self._counters.get(spec.name, 0) + 1
        self._counters[spec.name] = n
        instance = Instance(
            id=f"{self._name_prefix}-{_NAME_UNSAFE.sub('-', spec.name)}-{n}",
            service=spec.name,
            host=self.host,
            port=self._reserve_port(),
            image=image,
            gpu=spec.gpu and self._gpu_engine,
        )
        slot = _Slot(instance=instance, spec=spec, seq=self._seq)
        self._slots[instance.id] = slot
        async with slot.lock:
            try:
                await self._create_and_start(slot)
                await self._await_healthy(slot, spec.start_timeout_s)
            except BaseException as exc:
                self._slots.pop(instance.id, None)
                tail = await self._log_tail(instance.container_id)
                await self._remove_container(instance.container_id)
                instance.state = "exited"
                if isinstance(exc, asyncio.CancelledError | EngineUnavailableError):
                    raise
                raise StartError(
                    f"instance {instance.id} of {spec.name!r} ({image}) did not start: {exc}"
                    + (f"\n--- last log lines ---\n{tail}" if tail else "")
                ) from exc
            instance.state = "running"
        log.info("started %s on %s (image %s, gpu=%s)", instance.id, instance.url, image, instance.gpu)
        return instance

    async def stop(self, instance_id: str) -> Instance:
        slot = self._slots.pop(instance_id, None)
        if slot is None:
            raise UnknownInstanceError(f"no instance {instance_id!r} on site {self.site_id}")
        if slot.task is not None:
            slot.task.cancel()
        async with slot.lock:
            instance = slot.instance
            instance.state = "stopped"
            self._cpu_prev.pop(instance_id, None)
            if instance.container_id is not None and self._client is not None:
                client = self._client
                # Supervision must not mistake the container for an orphan while it shuts down.
                self._retiring.add(instance.container_id)
                try:
                    exit_code = await self._engine(_stop_and_remove, client, instance.container_id)
                finally:
                    self._retiring.discard(instance.container_id)
                if exit_code is not None:
                    instance.last_exit_code = exit_code
        log.info("stopped %s", instance_id)
        return instance

    async def restart(self, instance_id: str) -> Instance:
        slot = self._slot(instance_id)
        if slot.task is not None and not slot.task.done():
            # A restart by supervision is already under way: let it finish, then restart again.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(slot.task)
        await self._revive(slot, "restart requested", raise_on_failure=True)
        return slot.instance

    async def scale(self, service: str, replicas: int) -> list[Instance]:
        spec, _ = self.admit(service, None)
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        await self.open()
        lock = self._scale_locks.setdefault(service, asyncio.Lock())
        async with lock:
            current = sorted(
                (slot for slot in self._slots.values() if slot.spec.name == service), key=lambda s: s.seq
            )
            if replicas > len(current):
                await self.start(service, replicas - len(current))
            elif replicas < len(current):
                newest_first = current[replicas:][::-1]
                await asyncio.gather(*(self.stop(slot.instance.id) for slot in newest_first))
        return self.instances(spec.name)

    async def _discard(self, instance_id: str) -> None:
        with contextlib.suppress(UnknownInstanceError):
            await self.stop(instance_id)

    # --- reads ------------------------------------------------------------------------------

    def instances(self, service: str | None = None) -> list[Instance]:
        return [
            slot.instance for slot in self._slots.values() if service is None or slot.spec.name == service
        ]

    async def logs(self, instance_id: str, tail: int = 100) -> str:
        slot = self._slot(instance_id)
        client = self._client
        if slot.instance.container_id is None or client is None:
            return ""
        try:
            raw = await self._engine(
                client.api.logs, slot.instance.container_id, stdout=True, stderr=True, tail=tail
            )
        except ContainerGoneError:
            return ""
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)

    async def inspect(self, instance_id: str) -> dict[str, Any]:
        slot = self._slot(instance_id)
        instance = slot.instance
        data: dict[str, Any] = {
            **instance.to_dict(),
            "runtime": self.name,
            "site": self.site_id,
            "port": instance.port,
            "restarts": instance.restarts,
            "spec": {"module": slot.spec.module, "memory_mb": slot.spec.memory_mb, "cpus": slot.spec.cpus},
            "container": None,
            "limits": {"memory_bytes": slot.spec.memory_mb * 1024 * 1024, **self._cpu_limit(slot.spec.cpus)},
        }
        client = self._client
        if instance.container_id is None or client is None:
            return data
        try:
            attrs = await self._engine(client.api.inspect_container, instance.container_id)
        except ContainerGoneError:
            return data
        state = attrs.get("State") or {}
        host_config = attrs.get("HostConfig") or {}
        data["container"] = {
            "id": attrs.get("Id"),
            "name": (attrs.get("Name") or "").lstrip("/"),
            "image": (attrs.get("Config") or {}).get("Image"),
            "image_id": attrs.get("Image"),
            "status": state.get("Status"),
            "health": (state.get("Health") or {}).get("Status"),
            "exit_code": state.get("ExitCode"),
            "oom_killed": state.get("OOMKilled"),
            "started_at": state.get("StartedAt"),
            "engine_restart_count": attrs.get("RestartCount"),
            "network_mode": host_config.get("NetworkMode"),
            "labels": (attrs.get("Config") or {}).get("Labels") or {},
        }
        period, quota = host_config.get("CpuPeriod") or 0, host_config.get("CpuQuota") or 0
        data["limits"] = {
            "memory_bytes": host_config.get("Memory"),
            "nano_cpus": host_config.get("NanoCpus"),
            "cpu_period_us": period or None,
            "cpu_quota_us": quota or None,
            "cpus": quota / period if period and quota > 0 else (host_config.get("NanoCpus") or 0) / 1e9,
            "pids": host_config.get("PidsLimit"),
        }
        return data

    async def stats(self) -> list[InstanceStats]:
        """One sample per running instance, taken concurrently.

        `cpu_percent` counts one busy core as 100 %: the first sample of an instance is its
        average since it started, later ones cover the time since the previous call. Memory
        excludes the page cache, as `docker stats` does. Meant for a background sampler, not
        the request path (see `_one_shot_stats` for the engine's latency).
        """
        client = self._client
        if client is None:
            return []
        running = [
            slot.instance
            for slot in self._slots.values()
            if slot.instance.state == "running" and slot.instance.container_id
        ]
        samples = await asyncio.gather(
            *(self._engine(_one_shot_stats, client, inst.container_id) for inst in running),
            return_exceptions=True,
        )
        result: list[InstanceStats] = []
        for inst, sample in zip(running, samples, strict=True):
            if isinstance(sample, ContainerGoneError):
                continue
            if isinstance(sample, BaseException):
                if isinstance(sample, WorkloadRuntimeError):
                    raise sample
                raise EngineError(f"stats of {inst.id}: {sample!r}") from sample
            result.append(self._to_stats(inst, sample))
        return result

    def _to_stats(self, inst: Instance, sample: dict[str, Any]) -> InstanceStats:
        cpu = sample.get("cpu_stats") or {}
        total = int((cpu.get("cpu_usage") or {}).get("total_usage") or 0)
        system = int(cpu.get("system_cpu_usage") or 0)
        cpus = int(cpu.get("online_cpus") or 1)
        previous = self._cpu_prev.get(inst.id)
        self._cpu_prev[inst.id] = _CpuSample(total_ns=total, system_ns=system)
        if previous is not None and total >= previous.total_ns and system > previous.system_ns:
            # The engine's formula: share of all host CPU time, scaled so one busy core is 100 %.
            cpu_percent = (total - previous.total_ns) / (system - previous.system_ns) * cpus * 100.0
        else:
            # First sample (one_shot carries no previous one): the average since the container started.
            elapsed_ns = max(time.time() - inst.started_at, 1e-3) * 1e9
            cpu_percent = total / elapsed_ns * 100.0
        memory = sample.get("memory_stats") or {}
        usage = int(memory.get("usage") or 0)
        detail = memory.get("stats") or {}
        inactive = int(detail.get("total_inactive_file", detail.get("inactive_file", 0)) or 0)
        limit = memory.get("limit")
        return InstanceStats(
            instance_id=inst.id,
            cpu_percent=round(cpu_percent, 2),
            memory_bytes=max(usage - inactive, 0) if usage > inactive else usage,
            memory_limit_bytes=int(limit) if limit else None,
        )

    # --- failure reports & supervision ------------------------------------------------------

    def report_failure(self, instance_id: str) -> None:
        loop = self._loop
        if instance_id not in self._slots or loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._mark_suspect(instance_id)
        else:
            loop.call_soon_threadsafe(self._mark_suspect, instance_id)

    def _mark_suspect(self, instance_id: str) -> None:
        slot = self._slots.get(instance_id)
        if slot is not None and slot.instance.state == "running":
            # Out of the router's view until a probe says it answers again.
            slot.instance.state = "unhealthy"
        self._suspects.add(instance_id)
        self._wake.set()

    async def _supervise(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            self._wake.clear()
            try:
                await self._reconcile()
                if self._engine_down_logged:
                    log.warning("Docker engine reachable again (site %s)", self.site_id)
                    self._engine_down_logged = False
            except EngineUnavailableError as exc:
                if not self._engine_down_logged:
                    log.error("supervision of site %s paused: %s", self.site_id, exc)
                    self._engine_down_logged = True
            except WorkloadRuntimeError as exc:
                log.warning("supervision of site %s: %s", self.site_id, exc)
            except Exception:
                log.exception("supervision of site %s failed; retrying", self.site_id)

    async def _reconcile(self) -> None:
        """Compare the site's containers with the instances it should run, and act on the difference."""
        client = self._client
        if client is None:
            return
        self.reconciles += 1
        listed = await self._engine(
            client.containers.list, all=True, sparse=True, filters={"label": self.label_filters}
        )
        observed: dict[str, _Observed] = {}
        orphans: list[str] = []
        for container in listed:
            attrs = container.attrs
            instance_id = (attrs.get("Labels") or {}).get(LABEL_INSTANCE, "")
            if instance_id not in self._slots:
                orphans.append(container.id)
                continue
            observed[instance_id] = _Observed(
                container_id=container.id,
                status=str(container.status),
                unhealthy="(unhealthy)" in str(attrs.get("Status", "")),
            )
        suspects, self._suspects = self._suspects, set()
        now = time.monotonic()
        for instance_id, slot in list(self._slots.items()):
            if slot.busy:
                continue
            seen = observed.get(instance_id)
            if seen is not None and seen.container_id != slot.instance.container_id:
                # Only ever ours by label; adopt the id the engine reports (e.g. after a recreate race).
                slot.instance.container_id = seen.container_id
            reason = self._needs_revival(slot, seen)
            if reason is not None:
                if now >= slot.not_before:
                    self._spawn(slot, self._revive(slot, reason))
            elif instance_id in suspects:
                self._spawn(slot, self._check_suspect(slot))
            elif slot.instance.state != "running":
                self._spawn(slot, self._confirm_healthy(slot))
        for container_id in orphans:
            if container_id in self._retiring:
                continue
            if not any(slot.instance.container_id == container_id for slot in self._slots.values()):
                log.info("removing container %s of site %s that no instance owns", container_id, self.site_id)
                await self._engine(_remove_quietly, client, container_id)

    @staticmethod
    def _needs_revival(slot: _Slot, seen: _Observed | None) -> str | None:
        if seen is None:
            return "container is gone"
        if seen.status != "running":
            return f"container is {seen.status}"
        if seen.unhealthy:
            return "container is unhealthy"
        return None

    def _spawn(self, slot: _Slot, work: Coroutine[Any, Any, None]) -> None:
        slot.task = asyncio.create_task(work, name=f"docker-heal-{slot.instance.id}")

    async def _check_suspect(self, slot: _Slot) -> None:
        """A caller reported a transport failure: probe a few times, restart if it stays silent."""
        for attempt in range(SUSPECT_PROBES):
            if await self._probe(slot.instance):
                slot.instance.state = "running"
                return
            if attempt + 1 < SUSPECT_PROBES:
                await asyncio.sleep(SUSPECT_PROBE_GAP_S)
        await self._revive(slot, "health probe failed after a reported failure")

    async def _confirm_healthy(self, slot: _Slot) -> None:
        """The container runs again (e.g. the engine's restart policy brought it back): re-admit it."""
        if slot.instance.state == "running" or slot.instance.id not in self._slots:
            return
        if await self._probe(slot.instance):
            slot.instance.state = "running"
            slot.failures = 0
            log.info("%s answers again on %s", slot.instance.id, slot.instance.url)

    async def _revive(self, slot: _Slot, reason: str, raise_on_failure: bool = False) -> None:
        """Bring one instance back on its port: restart its container, or recreate it if gone."""
        instance = slot.instance
        async with slot.lock:
            if instance.id not in self._slots:
                return
            instance.state = "restarting"
            instance.restarts += 1
            log.warning("restarting %s (%s), restart #%d", instance.id, reason, instance.restarts)
            try:
                await self._restart_container(slot)
                await self._await_healthy(slot, slot.spec.start_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                slot.failures += 1
                slot.not_before = time.monotonic() + min(2.0**slot.failures, MAX_BACKOFF_S)
                instance.state = "unhealthy"
                log.error(
                    "%s did not come back (%s); next attempt in ≥ %.0f s",
                    instance.id,
                    exc,
                    slot.not_before - time.monotonic(),
                )
                if raise_on_failure:
                    tail = await self._log_tail(instance.container_id)
                    raise StartError(
                        f"instance {instance.id} did not come back after restart: {exc}"
                        + (f"\n--- last log lines ---\n{tail}" if tail else "")
                    ) from exc
                return
            slot.failures = 0
            slot.not_before = 0.0
            self._cpu_prev.pop(instance.id, None)
            instance.state = "running"
            log.info("%s is back on %s", instance.id, instance.url)

    async def _restart_container(self, slot: _Slot) -> None:
        instance = slot.instance
        client = self._require_client()
        if instance.container_id is None:
            await self._create_and_start(slot)
            return
        try:
            attrs = await self._engine(client.api.inspect_container, instance.container_id)
        except ContainerGoneError:
            await self._create_and_start(slot)
            return
        state = attrs.get("State") or {}
        status = state.get("Status")
        if status != "running":
            instance.last_exit_code = state.get("ExitCode")
        if status == "restarting":
            # The engine's restart policy is at work; let it finish before deciding.
            status = await self._wait_while_restarting(client, instance.container_id)
        if status in (None, "dead", "removing"):
            await self._engine(_remove_quietly, client, instance.container_id)
            await self._create_and_start(slot)
        elif status == "paused":
            await self._engine(client.api.unpause, instance.container_id)
        elif status == "running":
            await self._engine(client.api.restart, instance.container_id, timeout=STOP_TIMEOUT_S)
        else:
            await self._engine(client.api.start, instance.container_id)
        instance.started_at = time.time()

    async def _wait_while_restarting(self, client: docker.DockerClient, container_id: str) -> str | None:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            try:
                attrs = await self._engine(client.api.inspect_container, container_id)
            except ContainerGoneError:
                return None
            status = (attrs.get("State") or {}).get("Status")
            if status != "restarting":
                return status
        return "restarting"

    # --- containers -------------------------------------------------------------------------

    def _cpu_limit(self, cpus: float) -> dict[str, int]:
        """The container's CPU limit: `cpus` of quota per CFS period.

        With the engine's period (100 ms) a container that spends its quota early in a period
        waits for the rest of it: at 0.25 CPU, up to 75 ms, a large part of a 100 ms budget. A
        shorter period bounds that wait to (1 - cpus) × period, at the cost of more scheduler
        passes (Kubernetes offers the same knob as the kubelet's `cpuCFSQuotaPeriod`).
        """
        if self.cpu_period_us is None:
            return {"nano_cpus": int(cpus * 1e9)}
        quota = max(MIN_CPU_QUOTA_US, round(cpus * self.cpu_period_us))
        return {"cpu_period": self.cpu_period_us, "cpu_quota": quota}

    def _container_kwargs(self, slot: _Slot) -> dict[str, Any]:
        instance, spec = slot.instance, slot.spec
        port = instance.port
        probe = (
            "import http.client as h;"
            f"c=h.HTTPConnection({self.host!r},{port},timeout={HEALTH_TIMEOUT_S - 0.5});"
            "c.request('GET','/healthz');"
            "raise SystemExit(c.getresponse().status!=200)"
        )
        env = {
            **spec.env,
            "MEC_WORKLOAD_HOST": self.host,
            "MEC_WORKLOAD_PORT": str(port),
            "MEC_WORKLOAD_DEVICE": "cuda" if instance.gpu else "cpu",
            "PYTHONUNBUFFERED": "1",
        }
        kwargs: dict[str, Any] = {
            "image": instance.image,
            "command": ["python3", "-m", spec.module, "--host", self.host, "--port", str(port)],
            "name": instance.id,
            "labels": {
                LABEL_SITE: self.site_id,
                LABEL_SERVICE: spec.name,
                LABEL_INSTANCE: instance.id,
                LABEL_PORT: str(port),
                LABEL_MANAGED: "true",
            },
            "environment": env,
            "network_mode": "host",
            "mem_limit": spec.memory_mb * 1024 * 1024,
            "memswap_limit": spec.memory_mb * 1024 * 1024,
            **self._cpu_limit(spec.cpus),
            "pids_limit": 512,
            "init": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "restart_policy": {"Name": "on-failure", "MaximumRetryCount": ON_FAILURE_RETRIES},
            "log_config": LogConfig(type="json-file", config={"max-size": "10m", "max-file": "3"}),
            "healthcheck": Healthcheck(
                test=["CMD", "python3", "-c", probe],
                interval=int(HEALTH_INTERVAL_S * 1e9),
                timeout=int(HEALTH_TIMEOUT_S * 1e9),
                retries=HEALTH_RETRIES,
                start_period=int(spec.start_timeout_s * 1e9),
            ),
        }
        if instance.gpu:
            kwargs["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        return kwargs

    async def _create_and_start(self, slot: _Slot) -> None:
        instance = slot.instance
        client = self._require_client()
        kwargs = self._container_kwargs(slot)
        try:
            container = await self._engine(client.containers.create, **kwargs)
        except EngineError as exc:
            if exc.status_code != 409:
                raise
            # The name is taken: by our own previous container of this instance (being removed
            # from outside, or left over) we replace it; anyone else's we leave alone.
            await self._replace_own_namesake(client, instance)
            container = await self._engine(client.containers.create, **kwargs)
        instance.container_id = container.id
        await self._engine(container.start)
        instance.started_at = time.time()

    async def _replace_own_namesake(self, client: docker.DockerClient, instance: Instance) -> None:
        try:
            attrs = await self._engine(client.api.inspect_container, instance.id)
        except ContainerGoneError:
            return
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_SITE) != self.site_id or labels.get(LABEL_INSTANCE) != instance.id:
            raise StartError(f"container name {instance.id!r} is taken by a container this site does not own")
        await self._engine(_remove_quietly, client, attrs["Id"])

    async def _await_healthy(self, slot: _Slot, timeout_s: float) -> None:
        """Poll /healthz every ~50 ms until it answers 200; fail fast if the container exits."""
        instance = slot.instance
        client = self._require_client()
        deadline = time.monotonic() + timeout_s
        next_state_check = time.monotonic() + 0.5
        while True:
            if await self._probe(instance):
                return
            now = time.monotonic()
            if now >= deadline:
                raise StartError(f"no answer from {instance.url}/healthz within {timeout_s:g} s")
            if now >= next_state_check and instance.container_id is not None:
                next_state_check = now + 0.5
                attrs = await self._engine(client.api.inspect_container, instance.container_id)
                state = attrs.get("State") or {}
                if state.get("Status") in ("exited", "dead", "restarting"):
                    instance.last_exit_code = state.get("ExitCode")
                    raise StartError(
                        f"container {state.get('Status')} (exit code {state.get('ExitCode')}) "
                        "before answering /healthz"
                    )
            await asyncio.sleep(POLL_INTERVAL_S)

    async def _probe(self, instance: Instance) -> bool:
        http = self._http
        if http is None:
            return False
        try:
            response = await http.get(f"{instance.url}/healthz")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def _log_tail(self, container_id: str | None) -> str:
        client = self._client
        if container_id is None or client is None:
            return ""
        try:
            raw = await self._engine(
                client.api.logs, container_id, stdout=True, stderr=True, tail=LOG_LINES_IN_ERRORS
            )
        except WorkloadRuntimeError:
            return ""
        return raw.decode("utf-8", "replace").rstrip() if isinstance(raw, bytes) else str(raw)

    async def _remove_container(self, container_id: str | None) -> None:
        client = self._client
        if container_id is None or client is None:
            return
        try:
            await self._engine(_remove_quietly, client, container_id)
        except WorkloadRuntimeError as exc:
            log.warning("could not remove container %s: %s", container_id, exc)

    # --- plumbing ---------------------------------------------------------------------------

    def _slot(self, instance_id: str) -> _Slot:
        slot = self._slots.get(instance_id)
        if slot is None:
            raise UnknownInstanceError(f"no instance {instance_id!r} on site {self.site_id}")
        return slot

    def _require_client(self) -> docker.DockerClient:
        if self._client is None:
            raise EngineUnavailableError("the Docker runtime is closed")
        return self._client

    def _reserve_port(self) -> int:
        taken = {slot.instance.port for slot in self._slots.values()}
        while True:
            port = free_port(self.host)
            if port not in taken:
                return port

    async def _engine(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run one blocking engine call in a worker thread, translating its errors."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as exc:
            error = _translate(exc, getattr(fn, "__name__", "engine call"))
            if error is None:
                raise
            raise error from exc


# --- blocking engine calls (run in worker threads) --------------------------------------------


def _remove_quietly(client: docker.DockerClient, container_id: str) -> None:
    """Force-remove a container; one that is already gone is fine."""
    with contextlib.suppress(docker.errors.NotFound):
        client.api.remove_container(container_id, force=True)


def _stop_and_remove(client: docker.DockerClient, container_id: str) -> int | None:
    """Stop gracefully (SIGTERM, then SIGKILL after `STOP_TIMEOUT_S`), remove, return the exit code."""
    try:
        client.api.stop(container_id, timeout=STOP_TIMEOUT_S)
        exit_code = (client.api.inspect_container(container_id).get("State") or {}).get("ExitCode")
    except docker.errors.NotFound:
        return None
    except docker.errors.APIError:
        exit_code = None
    _remove_quietly(client, container_id)
    return int(exit_code) if exit_code is not None else None


_ONE_SHOT_UNSUPPORTED = threading.Event()


def _one_shot_stats(client: docker.DockerClient, container_id: str) -> dict[str, Any]:
    """One stats sample; `one_shot` (API ≥ 1.41) skips the engine's one-second pre-sample.

    Measured on Docker 20.10: ~4 ms when the engine's stats collector is idle; a call made
    within about a second of the previous one waits for the collector's next 1 s tick instead.
    """
    if not _ONE_SHOT_UNSUPPORTED.is_set():
        try:
            return client.api.stats(container_id, stream=False, one_shot=True)
        except docker.errors.InvalidVersion:
            _ONE_SHOT_UNSUPPORTED.set()
    return client.api.stats(container_id, stream=False)
