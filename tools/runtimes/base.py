"""The interface every container runtime implements, and the records it returns.

A runtime owns the instances of the site's services: it starts them (each bound to its own
127.0.0.1 port), watches them, restarts the ones that crash, and reports their state. The
fast path reads `ready_instances()` (a cheap in-memory read); everything else is awaited.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

InstanceState = Literal["starting", "running", "unhealthy", "restarting", "exited", "stopped"]


class WorkloadRuntimeError(Exception):
    """Base class for failures of the runtime that runs the site's workloads, which a caller can
    report to a user (not the builtin `RuntimeError`)."""


class NotAllowedError(WorkloadRuntimeError):
    """A service or image that the site's allowlist does not name."""


class UnknownInstanceError(WorkloadRuntimeError):
    """An instance id that this runtime does not own."""


class StartError(WorkloadRuntimeError):
    """An instance that could not be started or never became healthy."""


@dataclass(frozen=True)
class WorkloadSpec:
    """What a runtime needs to run one service; built from the site's settings."""

    name: str
    module: str
    image: str
    gpu: bool = False
    memory_mb: int = 256
    cpus: float = 1.0
    env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 30.0


@dataclass
class Instance:
    """One running (or recently running) copy of a service."""

    id: str
    service: str
    host: str
    port: int
    image: str
    gpu: bool
    state: InstanceState = "starting"
    pid: int | None = None
    container_id: str | None = None
    started_at: float = 0.0
    restarts: int = 0
    last_exit_code: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ready(self) -> bool:
        return self.state == "running"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "url": self.url,
            "image": self.image,
            "gpu": self.gpu,
            "state": self.state,
            "pid": self.pid,
            "container_id": self.container_id,
            "started_at": self.started_at,
            "restarts": self.restarts,
            "last_exit_code": self.last_exit_code,
        }


@dataclass(frozen=True)
class InstanceStats:
    """Resource use of one instance at one moment."""

    instance_id: str
    cpu_percent: float
    memory_bytes: int
    memory_limit_bytes: int | None = None


WORKLOAD_ENV_PASSTHROUGH: tuple[str, ...] = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
)
"""The only variables of the site's environment a workload inherits: never the site's API keys,
model keys, cloud credentials or anything else the site was given."""


def workload_environment(extra: Mapping[str, str], parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a workload process starts with: `WORKLOAD_ENV_PASSTHROUGH` of the site's
    own environment (or of `parent`), plus the workload's `extra` variables."""
    source = os.environ if parent is None else parent
    return {**{name: source[name] for name in WORKLOAD_ENV_PASSTHROUGH if name in source}, **extra}


def die_with_parent() -> None:
    """Run in a child before exec (`preexec_fn`): ask the kernel to send it SIGTERM when the
    process that started it dies (Linux `PR_SET_PDEATHSIG`; elsewhere nothing happens)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


RECENT_PORTS = 1024
"""How many ports `free_port` handed out last, which it does not hand out again."""
_recent_ports: deque[int] = deque(maxlen=RECENT_PORTS)
_recent_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now, and that this process was not
    handed in its last `RECENT_PORTS` calls: a port handed out is bound later by whoever asked,
    and meanwhile the kernel may offer it again (two instances, or a server and the client that
    starts it, then race for one port)."""
    with _recent_lock:
        for _ in range(64):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port not in _recent_ports:
                break
        _recent_ports.append(port)
        return port


class Runtime(ABC):
    """Runs the site's services as instances and keeps the desired number alive.

    Implementations: `LocalRuntime` (supervised subprocesses, the embedded default) and
    `DockerRuntime` (containers on host networking). Both check every start against the
    allowlist they were built with and raise `NotAllowedError` for anything else.
    """

    name: str
    owns_instances: bool = True
    """False for a view of a runtime that another process owns (`RemoteRuntime`): whoever uses it
    neither starts the configured services nor stops them when it closes."""

    @property
    def reachable(self) -> bool:
        """Whether what runs the instances answers (a Docker engine does not always); an alert reads it."""
        return True

    def __init__(self, specs: dict[str, WorkloadSpec], image_allowlist: set[str], site_id: str) -> None:
        self.specs = dict(specs)
        self.image_allowlist = frozenset(image_allowlist)
        self.site_id = site_id

    def admit(self, service: str, image: str | None = None) -> tuple[WorkloadSpec, str]:
        """The spec and image to run, or `NotAllowedError`. Checks memory only, never the engine."""
        spec = self.specs.get(service)
        if spec is None:
            raise NotAllowedError(
                f"service {service!r} is not in the allowlist of site {self.site_id} "
                f"(allowed: {', '.join(sorted(self.specs)) or 'none'})"
            )
        chosen = image or spec.image
        if chosen not in self.image_allowlist:
            raise NotAllowedError(
                f"image {chosen!r} for service {service!r} is not in the image allowlist of site {self.site_id}"
            )
        return spec, chosen

    async def open(self) -> None:  # noqa: B027 (an optional hook: most runtimes need nothing here)
        """Connect to whatever the runtime drives (e.g. the Docker engine); raise
        `WorkloadRuntimeError` when it cannot be reached. The default does nothing."""

    @abstractmethod
    async def start(self, service: str, count: int = 1, image: str | None = None) -> list[Instance]:
        """Start `count` more instances of an allowlisted service; return them once healthy."""

    @abstractmethod
    async def stop(self, instance_id: str) -> Instance:
        """Stop one instance for good (it is not restarted) and lower the desired count."""

    @abstractmethod
    async def restart(self, instance_id: str) -> Instance:
        """Restart one instance in place (same port); return it once healthy."""

    @abstractmethod
    async def scale(self, service: str, replicas: int) -> list[Instance]:
        """Start or stop instances until `replicas` run; return the service's instances."""

    @abstractmethod
    def instances(self, service: str | None = None) -> list[Instance]:
        """Every instance this runtime owns (any state), optionally of one service. No I/O."""

    def ready_instances(self, service: str) -> list[Instance]:
        """Instances of `service` that passed their health check. No I/O: the fast path calls it."""
        return [inst for inst in self.instances(service) if inst.ready]

    @abstractmethod
    async def logs(self, instance_id: str, tail: int = 100) -> str:
        """The last `tail` lines an instance wrote to stdout/stderr."""

    @abstractmethod
    async def inspect(self, instance_id: str) -> dict[str, Any]:
        """Everything the runtime knows about one instance, as plain data."""

    @abstractmethod
    async def stats(self) -> list[InstanceStats]:
        """Current CPU and memory use of every running instance."""

    @abstractmethod
    def report_failure(self, instance_id: str) -> None:
        """Tell the runtime a request to this instance failed at the transport level.

        The runtime re-checks the instance in the background and restarts it if it is dead;
        it must not block the caller.
        """

    @abstractmethod
    async def close(self, stop_instances: bool = True) -> None:
        """Stop supervising; stop the instances this runtime started unless told otherwise."""
