"""A cluster of consensus node processes (`tests.support.consensus_node`) on loopback, for the
consensus contract tests and `bench/consensus_bench.py`.

`Cluster` runs one node process per id, each with free loopback ports and a data dir of its own
under `root`; it talks to them over their control API, inflicts failures by pid (SIGKILL, and
SIGSTOP/SIGCONT for a partition of one) and always kills every process it started on `close()`
(or at the end of a `with` block). Every wait polls up to a deadline.

A backend is a subclass that says how its nodes are started (`node_args`), registered in
`CLUSTERS` under the harness's backend name; `open_cluster` picks it. `EtcdNodeCluster` also
starts (and kills) a 3-member etcd cluster of its own (`tests.integration.etcd_cluster`): its
node processes are etcd's clients, so killing the leader node kills the process that holds the
leader lease, while etcd stays up (`etcd.kill(i)` fails a member).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

from api.launcher import ChildProcess
from tests.integration.etcd_cluster import EtcdCluster, etcd_binary
from tools.runtimes.base import free_port

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
POLL_S = 0.05
READY_TIMEOUT_S = 30.0
T = TypeVar("T")


def poll(predicate: Callable[[], T | None], what: str, timeout_s: float) -> T:
    """The first value of `predicate()` that is not None/false; AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(POLL_S)


@dataclass
class Node:
    """One node process of the cluster (its ports and data dir outlive restarts)."""

    id: str
    raft_port: int
    http_port: int
    data_dir: Path
    proc: ChildProcess | None = None
    paused: bool = False
    terminating: bool = False
    starts: int = 0

    @property
    def raft_address(self) -> str:
        return f"{HOST}:{self.raft_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running


class Cluster:
    """Node processes of one backend; `start()` them, then inflict failures and read their state.

    Its methods take node ids. `kill` is SIGKILL, `terminate` is SIGTERM (a clean stop), `restart`
    starts a killed or terminated node again on the same ports and data dir, `stop`/`cont` are
    SIGSTOP/SIGCONT (the node keeps its sockets but answers nothing: a partition of one). `live()`
    lists the nodes that run and are neither stopped nor terminating.
    """

    backend: ClassVar[str] = "embedded"

    def __init__(
        self,
        root: Path,
        ids: Sequence[str] = ("a", "b", "c"),
        *,
        extra_args: Sequence[str] = (),
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        self.root = root
        self.password = secrets.token_hex(16)
        self.extra_args = list(extra_args)
        self.ready_timeout_s = ready_timeout_s
        self.nodes = {
            node: Node(node, free_port(HOST), free_port(HOST), root / f"node-{node}") for node in ids
        }

    # --- processes --------------------------------------------------------------------------------

    @property
    def ids(self) -> list[str]:
        return list(self.nodes)

    @property
    def quorum(self) -> int:
        return len(self.nodes) // 2 + 1

    def node_args(self, node: Node) -> list[str]:
        """The backend's flags for `node` (the embedded backend: its Raft address and partners)."""
        args = ["--raft", node.raft_address, f"--password={self.password}"]
        for other in self.nodes.values():
            if other.id != node.id:
                args += ["--partner", f"{other.id}={other.raft_address}"]
        return args

    def command(self, node: Node) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tests.support.consensus_node",
            "--backend",
            self.backend,
            "--id",
            node.id,
            "--data-dir",
            str(node.data_dir),
            "--http-port",
            str(node.http_port),
            *self.node_args(node),
            *self.extra_args,
        ]

    def launch(self, node_id: str) -> None:
        """Start the node's process without waiting for it."""
        node = self.nodes[node_id]
        if node.terminating and node.proc is not None:
            node.proc.stop()  # wait for the clean stop `terminate` asked for
            node.terminating = False
        if node.running:
            raise RuntimeError(f"node {node_id} runs already")
        if node.proc is not None:
            node.proc.stop()  # reap what is left of the previous one
        node.data_dir.mkdir(parents=True, exist_ok=True)
        node.proc = ChildProcess(
            self.command(node), name=f"node-{node_id}", cwd=ROOT, log=node.data_dir / "node.log"
        )
        node.proc.start()
        node.paused = False
        node.starts += 1

    def wait_ready(self, node_id: str) -> None:
        """Wait for the node's `ready` line (NotReadyError, with its output, if it exits first)."""
        proc = self.nodes[node_id].proc
        assert proc is not None, f"node {node_id} was not launched"
        proc.wait_line(f"ready {node_id} ", self.ready_timeout_s)

    def start(self) -> Self:
        """Start every node, then wait until each serves its API."""
        for node_id in self.nodes:
            self.launch(node_id)
        for node_id in self.nodes:
            self.wait_ready(node_id)
        return self

    def kill(self, node_id: str) -> None:
        """SIGKILL the node's process (and reap it)."""
        node = self.nodes[node_id]
        assert node.proc is not None
        node.proc.kill()
        node.paused = node.terminating = False

    def terminate(self, node_id: str) -> None:
        """SIGTERM: the node stops its backend cleanly (etcd: revokes its lease) and exits; this
        returns at once (`restart` waits for the exit)."""
        node = self.nodes[node_id]
        assert node.proc is not None and node.running and not node.paused
        node.proc.send_signal(signal.SIGTERM)
        node.terminating = True

    def restart(self, node_id: str) -> None:
        """Start a killed (or terminated) node again (same ports, same data dir) and wait until it serves."""
        self.launch(node_id)
        self.wait_ready(node_id)

    def stop(self, node_id: str) -> None:
        """SIGSTOP: the node freezes with its sockets open."""
        node = self.nodes[node_id]
        assert node.proc is not None and node.running
        node.proc.send_signal(signal.SIGSTOP)
        node.paused = True

    def cont(self, node_id: str) -> None:
        """SIGCONT a stopped node."""
        node = self.nodes[node_id]
        assert node.proc is not None
        node.proc.send_signal(signal.SIGCONT)
        node.paused = False

    def live(self) -> list[str]:
        """The nodes that run and are neither stopped nor terminating."""
        return [
            node.id
            for node in self.nodes.values()
            if node.running and not node.paused and not node.terminating
        ]

    def close(self) -> None:
        """Kill every node process by pid (continuing stopped ones first) and reap it."""
        for node in self.nodes.values():
            if node.proc is None:
                continue
            with contextlib.suppress(ProcessLookupError, OSError):
                if node.paused and node.running:
                    node.proc.send_signal(signal.SIGCONT)
                node.proc.kill()
            node.proc.stop()
            node.paused = node.terminating = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def tail(self, node_id: str) -> str:
        """The end of the node's output since its last start."""
        proc = self.nodes[node_id].proc
        return proc.tail() if proc is not None else ""

    # --- the control API --------------------------------------------------------------------------

    def request(
        self, node_id: str, method: str, path: str, body: Any = None, timeout_s: float = 5.0
    ) -> tuple[int, Any]:
        """(HTTP status, JSON body) from the node; (0, {"error": ...}) when it does not answer."""
        conn = http.client.HTTPConnection(HOST, self.nodes[node_id].http_port, timeout=timeout_s)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return 0, {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            conn.close()

    def send(
        self, node_id: str, method: str, path: str, body: Any = None, timeout_s: float = 10.0
    ) -> Callable[[], tuple[int, Any]]:
        """Send a request now (a stopped node's kernel still takes it in) and return a function
        that waits for its answer: (HTTP status, JSON body), or (0, {"error"})."""
        conn = http.client.HTTPConnection(HOST, self.nodes[node_id].http_port, timeout=timeout_s)
        failure: list[Exception] = []
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(
                method, path, body=data, headers={"Content-Type": "application/json"} if data else {}
            )
        except (OSError, http.client.HTTPException) as exc:
            failure.append(exc)

        def answer() -> tuple[int, Any]:
            try:
                if failure:
                    raise failure[0]
                response = conn.getresponse()
                return response.status, json.loads(response.read() or b"null")
            except (OSError, http.client.HTTPException, ValueError) as exc:
                return 0, {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                conn.close()

        return answer

    def status(self, node_id: str, timeout_s: float = 1.0) -> dict[str, Any] | None:
        """The node's `ConsensusStatus` as JSON, or None when it does not answer."""
        code, body = self.request(node_id, "GET", "/status", timeout_s=timeout_s)
        return body if code == 200 else None

    def propose(
        self, node_id: str, text: str, *, id: str | None = None, timeout_s: float = 3.0
    ) -> tuple[int, dict[str, Any]]:
        """Propose a Note through the node: (200, {"index", "id"}), (503, {"error", ...}), or
        (0, {"error"}) when the node does not answer in time."""
        body: dict[str, Any] = {"text": text, "timeout_s": timeout_s}
        if id is not None:
            body["id"] = id
        code, answer = self.request(node_id, "POST", "/propose", body, timeout_s=timeout_s + 2.0)
        return code, answer if isinstance(answer, dict) else {"error": repr(answer)}

    def applied(self, node_id: str, after: int = 0, wait_s: float = 0.0) -> list[dict[str, Any]]:
        """The node's applied entries after index `after` (waiting up to `wait_s` for one)."""
        code, body = self.request(
            node_id, "GET", f"/applied?after={after}&wait_s={wait_s}", timeout_s=wait_s + 5.0
        )
        if code != 200:
            raise AssertionError(f"node {node_id} did not answer /applied: {code} {body}")
        return list(body["entries"])

    def state(self, node_id: str) -> dict[str, Any] | None:
        """The node's `/state`: its `SwarmState` export and how many snapshots it restored; None
        when it does not answer."""
        code, body = self.request(node_id, "GET", "/state")
        return body if code == 200 else None

    # --- waiting for the cluster ----------------------------------------------------------------

    def current_leader(self, exclude: Iterable[str] = ()) -> str | None:
        """The node that says it leads and that a quorum of the nodes names as leader, if any."""
        excluded = set(exclude)
        statuses = {node: self.status(node) for node in self.live()}
        votes = Counter(s["leader"] for s in statuses.values() if s is not None and s["leader"])
        for candidate, count in votes.most_common():
            own = statuses.get(candidate)
            if candidate in excluded or own is None or own["leader"] != candidate:
                continue
            if count >= self.quorum:
                return str(candidate)
        return None

    def leader(self, exclude: Iterable[str] = (), timeout_s: float = 15.0) -> str:
        """`current_leader()`, polled until there is one (AssertionError after `timeout_s`)."""
        excluded = set(exclude)
        return poll(
            lambda: self.current_leader(excluded), f"a leader other than {sorted(excluded)}", timeout_s
        )

    def wait_joined(self, node_id: str, timeout_s: float = 15.0) -> str:
        """Wait until the node names a leader (a restarted node has rejoined); that leader."""

        def named() -> str | None:
            status = self.status(node_id)
            return str(status["leader"]) if status is not None and status["leader"] else None

        return poll(named, f"node {node_id} knows a leader", timeout_s)

    def sequence(self, node_id: str) -> list[tuple[int, str]]:
        """The node's applied log as (index, command id)."""
        return [(entry["index"], entry["id"]) for entry in self.applied(node_id)]

    def converged(self, nodes: Iterable[str] | None = None, timeout_s: float = 30.0) -> list[tuple[int, str]]:
        """Wait until the nodes (default: the live ones) have applied everything committed and
        their applied logs are the same; that log as (index, command id)."""
        members = list(nodes) if nodes is not None else self.live()

        def same() -> tuple[list[tuple[int, str]]] | None:
            statuses = [self.status(node) for node in members]
            if any(s is None for s in statuses):
                return None
            commit = max(s["commit_index"] for s in statuses if s is not None)
            if any(s["applied_index"] < commit for s in statuses if s is not None):
                return None
            sequences = [self.sequence(node) for node in members]
            return (sequences[0],) if all(seq == sequences[0] for seq in sequences) else None

        return poll(same, f"nodes {members} applied the same log", timeout_s)[0]


class EtcdNodeCluster(Cluster):
    """Node processes of the etcd backend over an etcd cluster of their own on loopback.

    `start()` starts the etcd members first (fast election: leases of 1 s are allowed), then the
    nodes, node i with the members' endpoints rotated to start at member i; `close()` kills the
    nodes, then the members, by pid. A killed node's leadership passes on once its lease
    (`lease_ttl_s`) expires; a node stopped by SIGTERM revokes it at once.
    """

    backend: ClassVar[str] = "etcd"

    def __init__(
        self,
        root: Path,
        ids: Sequence[str] = ("a", "b", "c"),
        *,
        lease_ttl_s: int = 1,
        etcd_members: int = 3,
        extra_args: Sequence[str] = (),
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        super().__init__(root, ids, extra_args=extra_args, ready_timeout_s=ready_timeout_s)
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError("etcd is not installed (apt-get install etcd-server)")
        self.lease_ttl_s = lease_ttl_s
        self.etcd = EtcdCluster(binary, root / "etcd", etcd_members)

    def node_args(self, node: Node) -> list[str]:
        endpoints = self.etcd.endpoints
        first = self.ids.index(node.id) % len(endpoints)
        rotated = [*endpoints[first:], *endpoints[:first]]
        return ["--etcd-endpoints", ",".join(rotated), "--etcd-lease-ttl", str(self.lease_ttl_s)]

    def start(self) -> Self:
        """Start the etcd members (until each is healthy), then every node."""
        self.etcd.start()
        return super().start()

    def close(self) -> None:
        """Kill every node process, then every etcd member, by pid."""
        try:
            super().close()
        finally:
            self.etcd.close()


CLUSTERS: dict[str, type[Cluster]] = {"embedded": Cluster, "etcd": EtcdNodeCluster}
"""Harness backend name -> the Cluster that starts its nodes."""


def open_cluster(backend: str, root: Path, **kwargs: Any) -> Cluster:
    """A Cluster of `backend` nodes under `root` (not started yet)."""
    return CLUSTERS[backend](root, **kwargs)
