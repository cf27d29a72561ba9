"""Shared fixtures: real services on free ports, always cleaned up by process id.

Integration tests (marked `integration`) need real binaries (redis-server, dockerd). Outside CI
they skip with a reason when one is missing; with MEC_REQUIRE_INTEGRATION=1 (set by .ci/run) a
skipped integration test is reported as a failure.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from api import launcher
from api.launcher import ChildProcess
from tests.support.cloud_endpoint import CloudEndpoint
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


class RedisServer:
    """A throwaway redis-server on a free loopback port that can be killed and started again."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: ChildProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.stop()  # what is left of the previous process, if any
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.workdir)]
        self.proc = ChildProcess(args, name="redis-server").start()
        self.proc.wait_ready(self._answers_ping, timeout_s=10)

    def _answers_ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def kill(self) -> None:
        """SIGKILL: the abrupt failure the site must ride out."""
        if self.proc is not None:
            self.proc.kill()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(binary, tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


ROOT = Path(__file__).resolve().parents[1]
CLIENT_KEY = "test-client-key-0123456789"
OPERATOR_KEY = "test-operator-key-0123456789"
TEST_SITE_ENV = {
    "MEC_SUPERVISE_INTERVAL_S": "0.3",
    "MEC_WORKERS": "1",  # one process whatever the machine's cores; tests ask for more
}


class SiteProcess(launcher.SiteProcess):
    """`mec serve` of this checkout as a child process with the tests' keys (`api.launcher`)."""

    def __init__(
        self, data_dir: Path, env: dict[str, str] | None = None, args: list[str] | None = None
    ) -> None:
        super().__init__(
            data_dir,
            client_key=CLIENT_KEY,
            operator_key=OPERATOR_KEY,
            env={**TEST_SITE_ENV, **(env or {})},
            args=args or [],
            cwd=ROOT,
        )


def running_site(data_dir: Path, env: dict[str, str] | None = None) -> SiteProcess:
    """A started `mec serve` child process; use it in a `with` block, which stops it (by pid)."""
    return SiteProcess(data_dir, env).start()


@pytest.fixture
def site_factory(tmp_path: Path) -> Iterator[Callable[..., SiteProcess]]:
    """Starts sites, each in a data dir of its own; stops them all at the end."""
    with ExitStack() as started:
        count = itertools.count()

        def start(env: dict[str, str] | None = None, args: list[str] | None = None) -> SiteProcess:
            site = SiteProcess(tmp_path / f"site{next(count)}", env, args)
            return started.enter_context(site.start())

        yield start


@pytest.fixture
def cloud_endpoint() -> Iterator[CloudEndpoint]:
    """A started stand-in cloud compute endpoint (`tests.support.cloud_endpoint`), stopped by pid."""
    endpoint = CloudEndpoint()
    try:
        yield endpoint.start()
    finally:
        endpoint.stop()
