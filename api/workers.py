"""The front-door worker processes of `mec serve --workers N`, as the supervisor runs them.

`WorkerPool` starts N `python -m api.worker` processes, hands each its bootstrap (one JSON line
on stdin: settings with the keys, the runtime socket's token, ...), waits until each says on its
stdout that it listens, starts again (with backoff) any that dies, and stops them all: SIGTERM,
then SIGKILL after a grace. Workers get SIGTERM from the kernel if the supervisor dies.

The listening port is shared in one of two ways (`ListenMode`):

* `reuseport` (the default): each worker binds its own socket with `SO_REUSEPORT` and the kernel
  spreads new connections over them by a hash of the client's address and port. The supervisor
  holds a bound socket that never listens, which reserves the port (and resolves port 0).
* `shared`: the supervisor binds and listens, and every worker accepts on that one socket
  (inherited with `pass_fds`); whichever worker wakes first takes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tools.runtimes.base import die_with_parent

log = logging.getLogger("mec.workers")

ListenMode = Literal["reuseport", "shared"]
LISTEN_MODE: ListenMode = "reuseport"
"""How the workers share the port; see the module doc and README ("Several front-door processes")."""

ROOT = Path(__file__).resolve().parents[1]
RESTART_MIN_S = 0.1
RESTART_MAX_S = 5.0
STABLE_AFTER_S = 30.0
"""A worker that ran this long before it died is restarted after `RESTART_MIN_S` again."""


class WorkerStartError(Exception):
    """A worker exited, or took too long, before it listened at start-up."""


async def bind_listener(host: str, port: int, mode: ListenMode, backlog: int = 2048) -> socket.socket:
    """A TCP socket bound to `host:port` (port 0: a free one). With `shared` it listens, to be
    inherited by the workers; with `reuseport` it only holds the port for the workers' own."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if mode == "reuseport":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if mode == "shared":
            sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def worker_environment() -> dict[str, str]:
    """The supervisor's environment without `MEC_*`: a worker's settings come whole on stdin."""
    return {name: value for name, value in os.environ.items() if not name.startswith("MEC_")}


@dataclass
class Worker:
    """One slot of the pool and the process that fills it now."""

    index: int
    process: asyncio.subprocess.Process | None = None
    listening: bool = False
    started_at: float = 0.0
    restarts: int = 0

    @property
    def pid(self) -> int | None:
        process = self.process
        return process.pid if process is not None and process.returncode is None else None


class WorkerPool:
    """N worker processes: started, watched, started again when one dies, stopped.

    `bootstrap(index)` is the JSON object a worker reads on stdin; `on_exit(index)` runs each time
    a worker's process has exited (the supervisor zeroes its row of the load counters there).
    """

    def __init__(
        self,
        count: int,
        bootstrap: Callable[[int], dict[str, Any]],
        *,
        on_exit: Callable[[int], None] | None = None,
        pass_fds: tuple[int, ...] = (),
        grace_s: float = 12.0,
        command: tuple[str, ...] = (sys.executable, "-m", "api.worker"),
    ) -> None:
        self.workers = [Worker(index) for index in range(count)]
        self._bootstrap = bootstrap
        self._on_exit = on_exit
        self._pass_fds = pass_fds
        self.grace_s = grace_s
        self._command = command
        self._env = worker_environment()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def pids(self) -> list[int]:
        """Pids of the workers alive now."""
        return [pid for worker in self.workers if (pid := worker.pid) is not None]

    async def start(self, timeout_s: float = 120.0) -> None:
        """Start every worker and wait until each listens; `WorkerStartError` if one exits or is
        not listening within `timeout_s` (the pool is then stopped)."""
        loop = asyncio.get_running_loop()
        first: list[asyncio.Future[None]] = [loop.create_future() for _ in self.workers]
        self._tasks = [
            loop.create_task(self._watch(worker, ready))
            for worker, ready in zip(self.workers, first, strict=True)
        ]
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*first)
        except TimeoutError:
            await self.stop()
            raise WorkerStartError(f"not every worker was listening within {timeout_s:g} s") from None
        except BaseException:
            await self.stop()
            for ready in first:  # the other workers' outcomes are moot now
                if ready.done() and not ready.cancelled():
                    ready.exception()
            raise

    async def _spawn(self, worker: Worker) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            *self._command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,  # the supervisor's: one log for the whole site
            cwd=ROOT,
            env=self._env,
            pass_fds=self._pass_fds,
            preexec_fn=die_with_parent,
        )
        worker.process, worker.started_at = process, time.monotonic()
        assert process.stdin is not None
        process.stdin.write(json.dumps(self._bootstrap(worker.index)).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await process.stdin.drain()
        process.stdin.close()
        return process

    @staticmethod
    async def _listening(process: asyncio.subprocess.Process) -> bool:
        """Read the worker's control pipe until it says it listens; False when it closed first."""
        assert process.stdout is not None
        while line := await process.stdout.readline():
            with contextlib.suppress(ValueError, AttributeError):
                if json.loads(line).get("listening"):
                    return True
        return False

    async def _watch(self, worker: Worker, first: asyncio.Future[None]) -> None:
        backoff = RESTART_MIN_S
        while not self._stopping.is_set():
            try:
                process = await self._spawn(worker)
            except OSError as exc:
                if not first.done():
                    first.set_exception(WorkerStartError(f"worker {worker.index} could not start: {exc}"))
                    return
                log.error("worker %d could not start: %s", worker.index, exc)
                process = None
            if process is not None:
                if self._stopping.is_set():
                    self._signal(process, signal.SIGTERM)
                worker.listening = await self._listening(process)
                if worker.listening and not first.done():
                    first.set_result(None)
                elif worker.listening:
                    log.warning("worker %d (pid %d) listens again", worker.index, process.pid)
                code = await process.wait()
                worker.listening = False
                if self._on_exit is not None:
                    try:
                        self._on_exit(worker.index)
                    except Exception:
                        log.exception("cleaning up after worker %d failed", worker.index)
                if self._stopping.is_set():
                    return
                if not first.done():
                    first.set_exception(
                        WorkerStartError(f"worker {worker.index} exited with {code} before it listened")
                    )
                    return
                if time.monotonic() - worker.started_at > STABLE_AFTER_S:
                    backoff = RESTART_MIN_S
                worker.restarts += 1
                log.warning(
                    "worker %d (pid %d) exited with %s; starting it again in %.1f s (restart #%d)",
                    worker.index,
                    process.pid,
                    code,
                    backoff,
                    worker.restarts,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            backoff = min(backoff * 2, RESTART_MAX_S)

    @staticmethod
    def _signal(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)

    async def stop(self) -> None:
        """SIGTERM every worker, SIGKILL those still running after `grace_s`, and wait for all."""
        self._stopping.set()
        for worker in self.workers:
            if worker.process is not None:
                self._signal(worker.process, signal.SIGTERM)
        tasks = [task for task in self._tasks if not task.done()]
        if tasks:
            _, lingering = await asyncio.wait(tasks, timeout=self.grace_s)
            if lingering:
                for worker in self.workers:
                    if worker.process is not None and worker.process.returncode is None:
                        log.warning(
                            "worker %d (pid %d) ignored SIGTERM; killing it", worker.index, worker.process.pid
                        )
                        self._signal(worker.process, signal.SIGKILL)
                await asyncio.wait(lingering)
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("watching a worker failed: %s", task.exception())
