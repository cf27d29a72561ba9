"""Consensus bench: commit latency and failover time of a 3-node cluster on loopback.

    .venv/bin/python bench/consensus_bench.py                  # 200 proposals, 20 leader kills
    .venv/bin/python bench/consensus_bench.py --quick          # 50 proposals, 5 kills
    .venv/bin/python bench/consensus_bench.py --backend embedded -n 500 -k 10

The nodes are `tests.support.consensus_node` processes started by
`tests.integration.consensus_cluster` (the contract tests' cluster), each with its own data dir
in a temporary directory.

* Commit latency: N sequential proposals, each sent to the leader; a proposal's latency runs from
  just before the request to the moment the last of the three nodes applied it (each node records
  `time.time()` when it applies an entry; the bench reads it back with a long poll, so waiting
  adds nothing). The leader's acknowledgement (the answer to the request) is reported too.
* Failover: K times, SIGKILL the leader and time until another node answers /status as leader,
  and until a proposal sent to a survivor (retried every time it fails) commits; then restart the
  killed node and wait until it has caught up before the next kill.

It prints a table; the exit code is 0 (it checks nothing against targets).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parents[1]
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))  # run as a script: this checkout's packages come first

from swarm.commands import new_command_id  # noqa: E402
from tests.integration.consensus_cluster import CLUSTERS, HOST, Cluster, open_cluster  # noqa: E402

POLL_S = 0.005


class Client:
    """Keep-alive JSON requests to one node's control API."""

    def __init__(self, port: int, timeout_s: float = 10.0) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        for attempt in range(2):  # once more on a fresh connection when a kept one went stale
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout_s)
            try:
                data = json.dumps(body).encode() if body is not None else None
                self.conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
                response = self.conn.getresponse()
                return response.status, json.loads(response.read() or b"null")
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def commit_latency(cluster: Cluster, proposals: int) -> tuple[list[float], list[float]]:
    """(propose -> applied on all nodes, propose -> acknowledged) in seconds, per proposal."""
    clients = {node: Client(cluster.nodes[node].http_port) for node in cluster.ids}
    committed, acked = [], []
    leader = cluster.leader()
    try:
        for n in range(proposals):
            started = time.time()
            code, body = clients[leader].request("POST", "/propose", {"text": f"bench {n}", "timeout_s": 5.0})
            answered = time.time()
            if code != 200:
                raise RuntimeError(f"proposal {n} to the leader {leader} failed: {code} {body}")
            index = body["index"]
            applied_at = []
            for node, client in clients.items():
                entry = None
                deadline = time.monotonic() + 10.0
                while entry is None and time.monotonic() < deadline:
                    _, found = client.request("GET", f"/applied?after={index - 1}&wait_s=5")
                    entry = next((e for e in found["entries"] if e["index"] == index), None)
                if entry is None or entry["id"] != body["id"]:
                    raise RuntimeError(f"node {node} did not apply entry {index} ({body['id']}): {entry}")
                applied_at.append(entry["applied_at"])
            committed.append(max(applied_at) - started)
            acked.append(answered - started)
    finally:
        for client in clients.values():
            client.close()
    return committed, acked


def own_leadership(cluster: Cluster, node: str) -> bool:
    status = cluster.status(node, timeout_s=0.5)
    return status is not None and status["leader"] == node


def propose_until_committed(cluster: Cluster, node: str, committed_at: list[float]) -> None:
    """Propose one command through `node`, retried (same id) until it commits; note when."""
    command_id = new_command_id()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        code, _ = cluster.propose(node, "failover", id=command_id, timeout_s=1.0)
        if code == 200:
            committed_at.append(time.monotonic())
            return
        time.sleep(POLL_S)  # a pause between retries of an answer that came back at once


def failovers(cluster: Cluster, kills: int) -> tuple[list[float], list[float]]:
    """Per kill: (SIGKILL -> another node says it leads, SIGKILL -> a proposal commits)."""
    to_leader, to_commit = [], []
    for _ in range(kills):
        old = cluster.leader(timeout_s=30)
        survivors = [node for node in cluster.ids if node != old]
        committed_at: list[float] = []

        killed_at = time.monotonic()
        cluster.kill(old)
        proposer = threading.Thread(
            target=propose_until_committed, args=(cluster, survivors[0], committed_at), daemon=True
        )
        proposer.start()
        new = None
        while new is None and time.monotonic() < killed_at + 30:
            new = next((node for node in survivors if own_leadership(cluster, node)), None)
            if new is None:
                time.sleep(POLL_S)
        if new is None:
            raise RuntimeError(f"no new leader within 30 s of killing {old}")
        to_leader.append(time.monotonic() - killed_at)
        proposer.join(35)
        if not committed_at:
            raise RuntimeError(f"nothing committed within 30 s of killing {old}")
        to_commit.append(committed_at[0] - killed_at)
        cluster.restart(old)
        cluster.converged(cluster.ids, timeout_s=60)
        cluster.wait_joined(old, 30)
    return to_leader, to_commit


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def row(what: str, values: Sequence[float]) -> str:
    if not values:
        return f"| {what} | 0 | - | - | - | - |"
    return (
        f"| {what} | {len(values)} | {ms(statistics.median(values))} | {ms(percentile(values, 99))} | "
        f"{ms(max(values))} | {ms(statistics.fmean(values))} |"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=sorted(CLUSTERS), default="embedded")
    p.add_argument("--quick", action="store_true", help="50 proposals and 5 kills")
    p.add_argument("-n", "--proposals", type=int, help="sequential proposals (default 200)")
    p.add_argument("-k", "--kills", type=int, help="leader kills (default 20)")
    p.add_argument("--keep", action="store_true", help="keep the nodes' data dirs")
    args = p.parse_args(argv)
    proposals = args.proposals if args.proposals is not None else 50 if args.quick else 200
    kills = args.kills if args.kills is not None else 5 if args.quick else 20

    root = Path(tempfile.mkdtemp(prefix="consensus-bench-"))
    load = os.getloadavg()
    print(
        f"consensus bench: backend {args.backend}, 3 nodes on loopback, {os.cpu_count()} CPUs, "
        f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    try:
        with open_cluster(args.backend, root) as cluster:
            started = time.monotonic()
            cluster.start()
            cluster.leader(timeout_s=30)
            print(f"cluster up with a leader in {time.monotonic() - started:.2f} s; data in {root}")
            cluster.propose(cluster.leader(), "warm-up")
            committed, acked = commit_latency(cluster, proposals)
            to_leader, to_commit = failovers(cluster, kills)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print("| what | n | p50 | p99 | max | mean |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(row("commit: propose on the leader -> applied on all 3", committed))
    print(row("ack: propose on the leader -> its answer", acked))
    print(row("failover: SIGKILL leader -> another answers /status as leader", to_leader))
    print(row("failover: SIGKILL leader -> a proposal via a survivor commits", to_commit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
