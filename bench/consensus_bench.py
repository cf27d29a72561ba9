"""Consensus bench: commit latency and failover time of a 3-node cluster on loopback, per backend.

    .venv/bin/python bench/consensus_bench.py                  # embedded: 200 proposals, 20 kills, 20 stops
    .venv/bin/python bench/consensus_bench.py --quick --backend both   # both, one table
    .venv/bin/python bench/consensus_bench.py --backend etcd -n 500 -k 10 --etcd-lease-ttl 2

The nodes are `tests.support.consensus_node` processes started by
`tests.integration.consensus_cluster` (the contract tests' cluster), each with its own data dir
in a temporary directory. For `etcd` the bench also starts (and kills) a 3-member etcd cluster of
the installed `etcd` on loopback (`tests.integration.etcd_cluster.EtcdCluster`: heartbeat 50 ms,
election 500 ms), and the three nodes are its clients with a lease of `--etcd-lease-ttl` s;
`--backend both` runs embedded, then etcd, and prints one table with a row per backend.

* Commit latency: N sequential proposals, each sent to the leader; a proposal's latency runs from
  just before the request to the moment the last of the three nodes applied it (each node records
  `time.time()` when it applies an entry; the bench reads it back with a long poll, so waiting
  adds nothing). The leader's acknowledgement (the answer to the request) is reported too.
* Burst: B proposals sent at once through each of the three nodes (3 × B concurrent requests,
  one attempt each); per proposal, from the start of the burst until the last node applied it
  (its max is the burst's wall time).
* Failover: K times, SIGKILL the leader and time until another node answers /status as leader,
  and until a proposal sent to a survivor (retried every time it fails) commits; then restart the
  killed node and wait until it has caught up before the next kill. The same S times with SIGTERM
  (a clean stop: the etcd backend revokes its lease, the embedded one just leaves).

It prints a table; the exit code is 0 (it checks nothing against targets), 2 when etcd is needed
and not installed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import shutil
import statistics
import subprocess
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
from tests.integration.etcd_cluster import ELECTION_MS, HEARTBEAT_MS, etcd_binary  # noqa: E402

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


def burst(cluster: Cluster, per_node: int) -> tuple[list[float], int]:
    """3 × `per_node` proposals at once, `per_node` through each node, one attempt each: per
    committed proposal, burst start -> applied on all nodes; and how many failed."""
    jobs = [(node, f"burst {node} {n}") for node in cluster.ids for n in range(per_node)]
    applied_from = max((entry["index"] for entry in cluster.applied(cluster.ids[0])), default=0)
    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        answers = list(pool.map(lambda job: cluster.propose(job[0], job[1], timeout_s=30.0), jobs))
    committed = {body["id"]: body["index"] for code, body in answers if code == 200}
    last = max(committed.values(), default=applied_from)
    applied_at: dict[str, list[float]] = {command_id: [] for command_id in committed}
    for node in cluster.ids:
        entries: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30.0
        while (not entries or entries[-1]["index"] < last) and time.monotonic() < deadline:
            after = entries[-1]["index"] if entries else applied_from
            entries += cluster.applied(node, after=after, wait_s=5.0)
        seen = {entry["id"]: entry["applied_at"] for entry in reversed(entries)}  # the first copy
        for command_id in committed:
            if command_id not in seen:
                raise RuntimeError(f"node {node} did not apply {command_id} of the burst")
            applied_at[command_id].append(seen[command_id])
    return [max(times) - started for times in applied_at.values()], len(jobs) - len(committed)


def failovers(cluster: Cluster, rounds: int, signal_: str = "SIGKILL") -> tuple[list[float], list[float]]:
    """Per round, SIGKILL (or SIGTERM) the leader: (-> another node says it leads, -> a proposal
    through a survivor commits)."""
    to_leader, to_commit = [], []
    for _ in range(rounds):
        old = cluster.leader(timeout_s=30)
        survivors = [node for node in cluster.ids if node != old]
        committed_at: list[float] = []

        killed_at = time.monotonic()
        if signal_ == "SIGKILL":
            cluster.kill(old)
        else:
            cluster.terminate(old)
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
            raise RuntimeError(f"no new leader within 30 s of the {signal_} of {old}")
        to_leader.append(time.monotonic() - killed_at)
        proposer.join(35)
        if not committed_at:
            raise RuntimeError(f"nothing committed within 30 s of the {signal_} of {old}")
        to_commit.append(committed_at[0] - killed_at)
        cluster.restart(old)
        cluster.converged(cluster.ids, timeout_s=60)
        cluster.wait_joined(old, 30)
    return to_leader, to_commit


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def row(what: str, backend: str, values: Sequence[float]) -> str:
    if not values:
        return f"| {what} | {backend} | 0 | - | - | - | - |"
    return (
        f"| {what} | {backend} | {len(values)} | {ms(statistics.median(values))} | "
        f"{ms(percentile(values, 99))} | {ms(max(values))} | {ms(statistics.fmean(values))} |"
    )


ROWS = [
    ("commit", "commit: propose on the leader -> applied on all 3"),
    ("ack", "ack: propose on the leader -> its answer"),
    ("burst", "burst: 3 x B concurrent proposals, start -> each applied on all 3"),
    ("kill_leader", "failover: SIGKILL leader -> another answers /status as leader"),
    ("kill_commit", "failover: SIGKILL leader -> a proposal via a survivor commits"),
    ("term_leader", "failover: SIGTERM leader -> another answers /status as leader"),
    ("term_commit", "failover: SIGTERM leader -> a proposal via a survivor commits"),
]


def etcd_version() -> str:
    binary = etcd_binary()
    if binary is None:
        return "not installed"
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
    return output.stdout.split("\n")[0].split()[-1]


def measure(backend: str, args: argparse.Namespace) -> dict[str, list[float]]:
    """Every measure of one backend, on a fresh cluster in a temporary directory."""
    root = Path(tempfile.mkdtemp(prefix=f"consensus-bench-{backend}-"))
    options: dict[str, Any] = {"lease_ttl_s": args.etcd_lease_ttl} if backend == "etcd" else {}
    results: dict[str, list[float]] = {}
    try:
        with open_cluster(backend, root, **options) as cluster:
            started = time.monotonic()
            cluster.start()
            cluster.leader(timeout_s=30)
            print(
                f"{backend}: cluster up with a leader in {time.monotonic() - started:.2f} s; data in {root}"
            )
            cluster.propose(cluster.leader(), "warm-up")
            results["commit"], results["ack"] = commit_latency(cluster, args.proposals)
            results["burst"], failed = burst(cluster, args.burst)
            if failed:
                print(f"{backend}: {failed} of the burst's {3 * args.burst} proposals failed")
            results["kill_leader"], results["kill_commit"] = failovers(cluster, args.kills, "SIGKILL")
            results["term_leader"], results["term_commit"] = failovers(cluster, args.stops, "SIGTERM")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=[*sorted(CLUSTERS), "both"], default="embedded")
    p.add_argument("--quick", action="store_true", help="50 proposals, bursts of 20, 5 kills, 5 stops")
    p.add_argument("-n", "--proposals", type=int, help="sequential proposals (default 200)")
    p.add_argument("-b", "--burst", type=int, help="concurrent proposals per node (default 50)")
    p.add_argument("-k", "--kills", type=int, help="leader kills (default 20)")
    p.add_argument("-s", "--stops", type=int, help="leader clean stops, SIGTERM (default 20)")
    p.add_argument(
        "--etcd-lease-ttl", type=int, default=1, help="etcd: the nodes' lease TTL in s (default 1)"
    )
    p.add_argument("--keep", action="store_true", help="keep the nodes' data dirs")
    args = p.parse_args(argv)
    args.proposals = args.proposals if args.proposals is not None else 50 if args.quick else 200
    args.burst = args.burst if args.burst is not None else 20 if args.quick else 50
    args.kills = args.kills if args.kills is not None else 5 if args.quick else 20
    args.stops = args.stops if args.stops is not None else 5 if args.quick else 20
    backends = sorted(CLUSTERS) if args.backend == "both" else [args.backend]
    if "etcd" in backends and etcd_binary() is None:
        print("etcd is not installed (apt-get install etcd-server)", file=sys.stderr)
        return 2

    load = os.getloadavg()
    print(
        f"consensus bench: {', '.join(backends)}; 3 nodes on loopback, {os.cpu_count()} CPUs, "
        f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    if "etcd" in backends:
        print(
            f"etcd {etcd_version()}: 3 members on loopback (heartbeat {HEARTBEAT_MS} ms, election "
            f"{ELECTION_MS} ms), node lease TTL {args.etcd_lease_ttl} s"
        )
    results = {backend: measure(backend, args) for backend in backends}
    print()
    print(f"n = {args.proposals} proposals, B = {args.burst}, {args.kills} kills, {args.stops} stops")
    print("| what | backend | n | p50 | p99 | max | mean |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for key, what in ROWS:
        for backend in backends:
            print(row(what, backend, results[backend][key]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
