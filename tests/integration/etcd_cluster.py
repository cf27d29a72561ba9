"""A real etcd cluster on loopback for the consensus tests and benchmarks: `EtcdCluster` starts
`size` members of the installed `etcd` (free client and peer ports, data dirs under a work
directory, a fast heartbeat and election), waits until each answers healthy, can SIGKILL, restart,
SIGSTOP and SIGCONT one member, and kills every member by pid when it closes.

`etcd_cluster` is a pytest fixture of three members; `running_etcd_cluster` is the same as a
context manager (benchmarks, other fixtures). Both skip with a reason when `etcd` is not installed
(`apt-get install etcd-server`); under MEC_REQUIRE_INTEGRATION=1 the project's conftest makes that
skip a failure.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.launcher import ChildProcess
from tools.runtimes.base import free_port

HEARTBEAT_MS = 50
ELECTION_MS = 500
"""Fast for tests on loopback (etcd's defaults are 100 and 1000); a lease is at least 1.5 × the
election timeout, so leases of 1 s are allowed."""
START_TIMEOUT_S = 30.0


def etcd_binary() -> str | None:
    """The installed etcd server, if any."""
    return shutil.which("etcd")


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class EtcdMember:
    """One etcd member: its ports, data dir, log and process."""

    def __init__(self, name: str, client_port: int, peer_port: int, workdir: Path) -> None:
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = workdir / f"{name}.etcd"
        self.log = workdir / f"{name}.log"
        self.proc: ChildProcess | None = None
        self.paused = False

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running

    def healthy(self) -> bool:
        """Whether the member answers /health with true (it is in a cluster that has a leader)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.client_port, timeout=0.5)
        try:
            conn.request("GET", "/health")
            response = conn.getresponse()
            body = response.read()
            return response.status == 200 and json.loads(body).get("health") == "true"
        except (OSError, http.client.HTTPException, ValueError):
            return False
        finally:
            conn.close()


class EtcdCluster:
    """`size` etcd members on loopback; `start()`, then `endpoints` for the clients; `close()`
    kills them all by pid."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        size: int = 3,
        *,
        heartbeat_ms: int = HEARTBEAT_MS,
        election_ms: int = ELECTION_MS,
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        workdir.mkdir(parents=True, exist_ok=True)
        ports = _free_ports(2 * size)
        self.members = [EtcdMember(f"m{i}", ports[2 * i], ports[2 * i + 1], workdir) for i in range(size)]
        self.token = f"mec-test-{os.getpid()}-{ports[0]}"

    @property
    def endpoints(self) -> list[str]:
        """Every member's client URL, in member order."""
        return [member.client_url for member in self.members]

    def _args(self, member: EtcdMember) -> list[str]:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        return [
            self.binary,
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial}",
            "--initial-cluster-state=new",  # ignored once the data dir exists (a restart)
            f"--initial-cluster-token={self.token}",
            f"--heartbeat-interval={self.heartbeat_ms}",
            f"--election-timeout={self.election_ms}",
            "--logger=zap",
            "--log-level=warn",
        ]

    def _launch(self, member: EtcdMember) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("ETCD")}
        member.proc = ChildProcess(self._args(member), name=f"etcd-{member.name}", env=env, log=member.log)
        member.proc.start()
        member.paused = False

    def start(self) -> None:
        """Start every member (together: each waits for a quorum) and wait until all are healthy."""
        try:
            for member in self.members:
                self._launch(member)
            for member in self.members:
                self.wait_healthy(member)
        except BaseException:
            self.close()
            raise

    def wait_healthy(self, member: EtcdMember, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until `member` answers healthy; NotReadyError (with its log) if it exits or times out."""
        assert member.proc is not None
        member.proc.wait_ready(member.healthy, timeout_s=timeout_s)

    def kill(self, index: int) -> None:
        """SIGKILL member `index` by pid (and reap it): a crash, no goodbye to its peers."""
        member = self.members[index]
        if member.proc is not None:
            if member.paused:
                self.resume(index)
            member.proc.kill()
            member.proc.stop()

    def restart(self, index: int) -> None:
        """Start member `index` again on its data dir (after `kill`) and wait until it is healthy."""
        member = self.members[index]
        if member.running:
            raise RuntimeError(f"{member.name} is running")
        self._launch(member)
        self.wait_healthy(member)

    def pause(self, index: int) -> None:
        """SIGSTOP member `index`: it keeps its sockets open and answers nothing."""
        member = self.members[index]
        assert member.proc is not None and member.running
        os.kill(member.proc.pid, signal.SIGSTOP)
        member.paused = True

    def resume(self, index: int) -> None:
        """SIGCONT member `index`."""
        member = self.members[index]
        assert member.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(member.proc.pid, signal.SIGCONT)
        member.paused = False

    def close(self) -> None:
        """Kill every member by pid and reap it (the data is throwaway); idempotent."""
        for index, member in enumerate(self.members):
            if member.proc is None:
                continue
            with contextlib.suppress(Exception):
                if member.paused:
                    self.resume(index)
            with contextlib.suppress(Exception):
                member.proc.kill()
            member.proc.stop(grace_s=1.0)


@contextlib.contextmanager
def running_etcd_cluster(workdir: Path, size: int = 3) -> Iterator[EtcdCluster]:
    """A started `EtcdCluster` of `size` members under `workdir`, killed on the way out; skips the
    test when etcd is not installed."""
    binary = etcd_binary()
    if binary is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    cluster = EtcdCluster(binary, workdir, size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """Three etcd members on loopback for one test."""
    with running_etcd_cluster(tmp_path / "etcd") as cluster:
        yield cluster
