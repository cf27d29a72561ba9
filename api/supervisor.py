"""`mec serve --workers N`: one supervisor process owns the runtime, N workers serve the port.

The supervisor resolves the settings and keys once, binds the port, builds and opens the runtime,
starts every service's replicas (failing as one process does when one cannot start), serves the
runtime to the workers (`tools.runtimes.remote.RuntimeServer`) with a block of shared load
counters (`agent.inflight.SharedLoadCounters`), and starts the workers (`api.workers`). Once every
worker listens it prints what one process prints (`ready on URL`). It serves no HTTP itself.

SIGTERM/SIGINT: stop the workers (SIGTERM, SIGKILL after a grace), then the instances; remove
the shared memory, the runtime socket and the site file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

from agent.inflight import SharedLoadCounters
from api.server import GRACEFUL_SHUTDOWN_S
from api.serving import announce, remove_site_file, report_start_failure
from api.site import SiteStartError, build_runtime, resolve_keys, start_services, unready_services
from api.workers import LISTEN_MODE, ListenMode, WorkerPool, WorkerStartError, bind_listener
from config.settings import Settings
from tools.probes import GpuProbe
from tools.runtimes.base import Runtime
from tools.runtimes.remote import RuntimeServer

log = logging.getLogger("mec.supervisor")

MAX_SOCKET_PATH = 100
"""Unix socket paths longer than this (the kernel allows 107 bytes) go to a private temp dir."""
STOP_GRACE_S = GRACEFUL_SHUTDOWN_S + 2.0
"""How long a worker may take to finish its requests after SIGTERM before it is killed."""


def counter_slots(settings: Settings) -> int:
    """Slots in the shared load counters: room for every service at its largest, many times over
    (a freed slot is handed out again only after all the others)."""
    most = sum(max(svc.replicas, svc.max_replicas) for svc in settings.services.values())
    return max(256, 4 * most)


def runtime_socket_path(data_dir: Path) -> tuple[Path, Path | None]:
    """Where the runtime socket goes: the data dir, or a private temp dir (returned second, to be
    removed) when that path is too long for a Unix socket. Sockets that supervisors which are
    gone left in the data dir (killed with SIGKILL) are removed."""
    for stale in [*data_dir.glob("runtime-*.sock"), *data_dir.glob("alerts-*.sock")]:
        pid = stale.stem.partition("-")[2]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            stale.unlink(missing_ok=True)
    path = data_dir.resolve() / f"runtime-{os.getpid()}.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path, None
    private = Path(tempfile.mkdtemp(prefix="mec-runtime-"))  # mode 0700
    return private / "runtime.sock", private


def alerts_socket_path(runtime_socket: Path) -> Path:
    """The first worker's alert channel: beside the runtime socket (same directory, same rules)."""
    return runtime_socket.with_name(runtime_socket.name.replace("runtime", "alerts", 1))


class Supervisor:
    """What `serve_with_workers` starts, in order, and stops in reverse."""

    def __init__(self, settings: Settings, log_level: str, listen_mode: ListenMode = LISTEN_MODE) -> None:
        self.settings = settings
        self.log_level = log_level
        self.listen_mode = listen_mode
        self.count = settings.workers
        self.listener: socket.socket | None = None
        self.runtime: Runtime | None = None
        self.start_errors: dict[str, str] = {}
        self.counters: SharedLoadCounters | None = None
        self.server: RuntimeServer | None = None
        self.socket_dir: Path | None = None
        self.pool: WorkerPool | None = None
        self.site_file: Path | None = None
        self._worker_settings: dict[str, Any] = {}
        self._token = secrets.token_urlsafe(32)
        self._alerts_token = secrets.token_urlsafe(32)

    async def start(self) -> bool:
        """Everything up to `ready on`; False (with the reason printed) when the site cannot serve.

        Raises `SiteStartError` when a service cannot start (the caller reports it).
        """
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        _, generated = resolve_keys(settings)
        try:
            self.listener = await bind_listener(settings.host, settings.port, self.listen_mode)
        except OSError as exc:
            print(f"mec serve: could not listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
            return False
        port = int(self.listener.getsockname()[1])
        keys = (
            {"client_keys": [generated["client"]], "operator_keys": [generated["operator"]]}
            if generated
            else {}
        )
        # Generated keys are resolved here, once: workers never generate or read their own.
        self._worker_settings = settings.model_copy(
            update={**keys, "data_dir": settings.data_dir.resolve(), "port": port}
        ).model_dump(mode="json")
        self.runtime = build_runtime(settings, GpuProbe().available)
        self.start_errors = await start_services(settings, self.runtime)
        slots = counter_slots(settings)
        self.counters = SharedLoadCounters.create(rows=self.count, slots=slots)
        path, self.socket_dir = runtime_socket_path(settings.data_dir)
        self.server = RuntimeServer(
            self.runtime, path, self._token, slots=slots, clear_slot=self.counters.clear_slot
        )
        await self.server.start()
        fds = (self.listener.fileno(),) if self.listen_mode == "shared" else ()
        self.pool = WorkerPool(
            self.count, self._bootstrap, on_exit=self.counters.clear_row, pass_fds=fds, grace_s=STOP_GRACE_S
        )
        try:
            await self.pool.start()
        except WorkerStartError as exc:
            print(f"mec serve: {exc} (its log is above)", file=sys.stderr, flush=True)
            return False
        log.info("%d workers listening (pids %s)", self.count, self.pool.pids())
        url = f"http://{settings.host}:{port}"
        missing = unready_services(settings, self.runtime)
        self.site_file = announce(settings, url, generated, missing, self.start_errors)
        return True

    def _bootstrap(self, index: int) -> dict[str, Any]:
        assert self.server is not None and self.counters is not None and self.listener is not None
        settings = self.settings
        start_timeout = max((svc.start_timeout_s for svc in settings.services.values()), default=30.0)
        return {
            "index": index,
            "count": self.count,
            "supervisor_pid": os.getpid(),
            "settings": self._worker_settings,
            "max_connections": max(1, settings.max_connections // self.count),
            "start_errors": self.start_errors,
            "runtime_socket": str(self.server.path),
            "runtime_token": self._token,
            "alerts_socket": str(alerts_socket_path(self.server.path)),
            "alerts_token": self._alerts_token,
            "change_timeout_s": max(120.0, 4 * start_timeout),
            "counters_name": self.counters.name,
            "counter_slots": self.counters.slots,
            "listen_fd": self.listener.fileno() if self.listen_mode == "shared" else None,
            "listen_host": settings.host,
            "listen_port": int(self.listener.getsockname()[1]),
            "log_level": self.log_level,
        }

    async def stop(self) -> None:
        """Workers first (so no request is left without its instance), then the instances, then
        the shared memory, the runtime socket and the port. Safe after a partial start."""
        if self.site_file is not None:
            remove_site_file(self.site_file)
            self.site_file = None
        if self.pool is not None:
            await self.pool.stop()
            self.pool = None
        try:
            if self.runtime is not None:
                await self.runtime.close()
                self.runtime = None
        finally:
            if self.counters is not None:
                self.counters.close()
                self.counters = None
            if self.server is not None:
                alerts_socket_path(self.server.path).unlink(missing_ok=True)  # a killed worker 0's
                await self.server.close()
                self.server = None
            if self.socket_dir is not None:
                shutil.rmtree(self.socket_dir, ignore_errors=True)
                self.socket_dir = None
            if self.listener is not None:
                self.listener.close()
                self.listener = None


async def serve_with_workers(settings: Settings, log_level: str) -> int:
    """Run the site as a supervisor and `settings.workers` front-door workers until SIGINT/SIGTERM."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    stopping = asyncio.Event()
    phase = "starting"

    def on_signal() -> None:
        # While the services and workers start, interrupt that; afterwards, stop serving (and
        # let a stop under way finish).
        if phase == "starting":
            main.cancel()
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    supervisor = Supervisor(settings, log_level)
    try:
        try:
            if not await supervisor.start():
                return 1
        except SiteStartError as exc:
            report_start_failure(settings, exc)
            return 1
        except asyncio.CancelledError:
            return 130
        phase = "serving"
        await stopping.wait()
        log.info("stopping the workers, then the instances")
        return 0
    finally:
        phase = "stopping"
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
