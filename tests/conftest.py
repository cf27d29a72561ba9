"""Shared fixtures: real services on free ports, always cleaned up by process id.

Integration tests (marked `integration`) need real binaries (redis-server, dockerd). Outside CI
they skip with a reason when one is missing; with MEC_REQUIRE_INTEGRATION=1 (set by .ci/run) a
skipped integration test is reported as a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tools.runtimes.base import free_port

REQUIRE_INTEGRATION = os.environ.get("MEC_REQUIRE_INTEGRATION") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_INTEGRATION and report.skipped and item.get_closest_marker("integration") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"integration test skipped under MEC_REQUIRE_INTEGRATION=1: {reason}"


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """Terminate a child by pid, then kill it if it lingers."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


class RedisServer:
    """A throwaway redis-server on a free loopback port that can be killed and started again."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10

        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: the abrupt failure the site must ride out."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(binary, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


CLIENT_KEY = "test-client-key-0123456789"
OPERATOR_KEY = "test-operator-key-0123456789"


class SiteProcess:
    """`mec serve` as a real child process on a free port, read from its `ready on` line."""

    def __init__(
        self, data_dir: Path, env: dict[str, str] | None = None, args: list[str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.env = {
            **os.environ,
            "MEC_DATA_DIR": str(data_dir),
            "MEC_CLIENT_KEYS": CLIENT_KEY,
            "MEC_OPERATOR_KEYS": OPERATOR_KEY,
            "MEC_SUPERVISE_INTERVAL_S": "0.3",
            "MEC_WORKERS": "1",  # one process whatever the machine's cores; tests ask for more
            **(env or {}),
        }
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.output: list[str] = []

    def start(self, timeout_s: float = 60.0, ready_prefix: str = "ready on ") -> None:
        log = (self.data_dir / "site.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", "0", *self.args],
            stdout=subprocess.PIPE,
            stderr=log,
            env=self.env,
            cwd=Path(__file__).resolve().parents[1],
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            self.output.append(line.rstrip())
            if line.startswith(ready_prefix):
                self.url = line.split(ready_prefix, 1)[1].strip()
                return
        self.stop()
        raise RuntimeError(f"site did not start: {self.output}\n{(self.data_dir / 'site.log').read_text()}")

    def headers(self, key: str = CLIENT_KEY) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace_s=15)


@contextmanager
def running_site(data_dir: Path, env: dict[str, str] | None = None) -> Iterator[SiteProcess]:
    """A started `mec serve` child process, stopped (by pid) on exit."""
    site = SiteProcess(data_dir, env)
    site.start()
    try:
        yield site
    finally:
        site.stop()


@pytest.fixture
def site_factory(tmp_path: Path) -> Iterator[Callable[..., SiteProcess]]:
    started: list[SiteProcess] = []

    def start(env: dict[str, str] | None = None, args: list[str] | None = None) -> SiteProcess:
        data_dir = tmp_path / f"site{len(started)}"
        data_dir.mkdir()
        site = SiteProcess(data_dir, env, args)
        started.append(site)
        site.start()
        return site

    try:
        yield start
    finally:
        for site in started:
            site.stop()
