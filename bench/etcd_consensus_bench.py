"""Benchmark of the etcd consensus backend (`swarm.consensus.etcd.EtcdConsensus`) on loopback.

Run: `.venv/bin/python bench/etcd_consensus_bench.py [--proposals 200] [--failovers 10] [--crashes 3]`.
Prints a table (and `--json PATH` writes the figures); about 15 s with the defaults.

Method: three etcd members (the installed `etcd`, etcd's own heartbeat and election timeouts
unless told otherwise) and three `EtcdConsensus` nodes in this process, on one event loop, each
starting on a member of its own.

1. Latency: `--proposals` `Note`s, one at a time, from the three nodes in turn. For each, from
   just before `propose()` to (a) its return (committed and applied by the proposer) and (b) the
   moment the last of the three appliers ran for that index (each applier stamps
   `perf_counter()`). The next proposal starts once all three applied.
2. Burst: every node proposes `--burst` `Note`s at once (3 × burst concurrent proposals racing for
   the same next index); wall time until every node applied all of them.
3. Failover after a clean stop, `--failovers` times: from just before `stop()` of the leader node
   (which revokes its lease) until both survivors name one new leader (polled every 1 ms on the
   loop). A fresh node takes the stopped one's place before the next round.
4. Failover after a crash, `--crashes` times: the same with `stop(revoke_lease=False)`, so etcd
   has to expire the lease (`--lease-ttl`, plus up to 0.5 s of etcd's expiry scan).

Every etcd process is killed by pid in a `finally`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))  # run as a script: this checkout's packages come first

from swarm.commands import Command, Note  # noqa: E402
from swarm.consensus.etcd import EtcdConsensus  # noqa: E402
from tests.integration.etcd_cluster import EtcdCluster, etcd_binary  # noqa: E402

NODE_IDS = ("a", "b", "c")
WAIT_S = 30.0


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


class Node:
    """One node and the time each index was applied on it."""

    def __init__(self, node_id: str, endpoints: Sequence[str], ttl_s: int) -> None:
        self.node_id = node_id
        self.applied_at: dict[int, float] = {}
        self.consensus = EtcdConsensus(node_id, endpoints, self.apply, lease_ttl_s=ttl_s)

    def apply(self, index: int, command: Command) -> None:
        self.applied_at[index] = time.perf_counter()


async def until(predicate: Any, what: str, interval_s: float = 0.001) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(interval_s)
    raise RuntimeError(f"not within {WAIT_S:g} s: {what}")


def agreed_leader(nodes: Sequence[Node], other_than: str | None = None) -> str | None:
    named = {node.consensus.leader() for node in nodes}
    if len(named) != 1:
        return None
    leader = named.pop()
    return leader if leader is not None and leader != other_than else None


class Swarm:
    def __init__(self, cluster: EtcdCluster, ttl_s: int) -> None:
        self.cluster = cluster
        self.ttl_s = ttl_s
        self.nodes: dict[str, Node] = {}

    async def start_node(self, node_id: str) -> Node:
        number = NODE_IDS.index(node_id)
        endpoints = [*self.cluster.endpoints[number:], *self.cluster.endpoints[:number]]
        node = Node(node_id, endpoints, self.ttl_s)
        self.nodes[node_id] = node
        await node.consensus.start()
        return node

    async def settled(self) -> str:
        """The leader, once all nodes name it, list every member and have applied the whole log."""
        nodes = list(self.nodes.values())
        leader = await until(lambda: agreed_leader(nodes), "one leader named by all")
        await until(
            lambda: all(node.consensus.status().members == NODE_IDS for node in nodes), "all members listed"
        )
        await until(
            lambda: len({node.consensus.status().applied_index for node in nodes}) == 1, "all applied alike"
        )
        return str(leader)

    async def stop_all(self) -> None:
        for node in self.nodes.values():
            await node.consensus.stop()


def applied_on_all(nodes: Sequence[Node], index: int) -> bool:
    return all(index in node.applied_at for node in nodes)


async def latency(swarm: Swarm, count: int) -> dict[str, float]:
    nodes = list(swarm.nodes.values())
    returned: list[float] = []
    everywhere: list[float] = []
    for i in range(count):
        proposer = nodes[i % len(nodes)]
        started = time.perf_counter()
        index = await proposer.consensus.propose(Note(f"latency-{i}"), timeout_s=10)
        returned.append(time.perf_counter() - started)
        await until(functools.partial(applied_on_all, nodes, index), f"entry {index} applied on all")
        everywhere.append(max(node.applied_at[index] for node in nodes) - started)
    return {
        "returned_p50_ms": 1000 * percentile(returned, 50),
        "returned_p99_ms": 1000 * percentile(returned, 99),
        "all_p50_ms": 1000 * percentile(everywhere, 50),
        "all_p99_ms": 1000 * percentile(everywhere, 99),
        "all_max_ms": 1000 * max(everywhere),
    }


async def burst(swarm: Swarm, per_node: int) -> dict[str, float]:
    nodes = list(swarm.nodes.values())
    started = time.perf_counter()
    indexes = await asyncio.gather(
        *(
            node.consensus.propose(Note(f"burst-{node.node_id}-{i}"), timeout_s=30)
            for node in nodes
            for i in range(per_node)
        )
    )
    last = max(indexes)
    await until(lambda: all(last in node.applied_at for node in nodes), "the burst applied on all")
    seconds = time.perf_counter() - started
    assert len(set(indexes)) == len(indexes) == last - min(indexes) + 1, "the burst's indexes are not dense"
    return {"proposals": len(indexes), "seconds": seconds, "per_s": len(indexes) / seconds}


async def failovers(swarm: Swarm, rounds: int, revoke: bool) -> list[float]:
    seconds: list[float] = []
    for _ in range(rounds):
        old = await swarm.settled()
        survivors = [node for node_id, node in swarm.nodes.items() if node_id != old]
        started = time.perf_counter()
        await swarm.nodes[old].consensus.stop(revoke_lease=revoke)
        await until(functools.partial(agreed_leader, survivors, other_than=old), "a new leader")
        seconds.append(time.perf_counter() - started)
        await swarm.start_node(old)  # a fresh node in its place
    await swarm.settled()
    return seconds


def row(what: str, figures: str) -> str:
    return f"| {what:<58} | {figures:<44} |"


async def run(args: argparse.Namespace, cluster: EtcdCluster) -> dict[str, Any]:
    swarm = Swarm(cluster, args.lease_ttl)
    try:
        for node_id in NODE_IDS:
            await swarm.start_node(node_id)
        await swarm.settled()
        results: dict[str, Any] = {"latency": await latency(swarm, args.proposals)}
        results["burst"] = await burst(swarm, args.burst)
        results["failover_stop_s"] = await failovers(swarm, args.failovers, revoke=True)
        results["failover_crash_s"] = (
            await failovers(swarm, args.crashes, revoke=False) if args.crashes else []
        )
        return results
    finally:
        await swarm.stop_all()


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    lat, bur = results["latency"], results["burst"]
    print(
        f"etcd {args.etcd_version}, 3 members on loopback (heartbeat {args.heartbeat_ms} ms, election "
        f"{args.election_ms} ms); 3 EtcdConsensus nodes on one loop; lease TTL {args.lease_ttl} s; "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} before the start"
    )
    print(row("measure", "figures"))
    print(row("-" * 58, "-" * 44))
    print(
        row(
            f"propose() returned (committed, applied here), n={args.proposals}",
            f"p50 {lat['returned_p50_ms']:.1f} ms, p99 {lat['returned_p99_ms']:.1f} ms",
        )
    )
    print(
        row(
            f"propose → applied on all 3, n={args.proposals}",
            f"p50 {lat['all_p50_ms']:.1f} ms, p99 {lat['all_p99_ms']:.1f} ms, max {lat['all_max_ms']:.1f} ms",
        )
    )
    print(
        row(
            f"burst: 3 × {args.burst} concurrent proposals, until applied on all",
            f"{bur['seconds'] * 1000:.0f} ms, {bur['per_s']:.0f} proposals/s",
        )
    )
    for label, key in (
        ("clean stop (lease revoked)", "failover_stop_s"),
        ("crash (lease expires)", "failover_crash_s"),
    ):
        values = results[key]
        if values:
            print(
                row(
                    f"failover after a {label}, n={len(values)}",
                    f"median {1000 * statistics.median(values):.0f} ms, max {1000 * max(values):.0f} ms",
                )
            )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Latency and failover of the etcd consensus backend.")
    parser.add_argument("--proposals", type=int, default=200, help="sequential proposals timed (default 200)")
    parser.add_argument("--burst", type=int, default=50, help="concurrent proposals per node (default 50)")
    parser.add_argument("--failovers", type=int, default=10, help="clean-stop failovers (default 10)")
    parser.add_argument("--crashes", type=int, default=3, help="crash failovers, each ≈ a lease (default 3)")
    parser.add_argument("--lease-ttl", type=int, default=2, help="the nodes' lease TTL in s (default 2)")
    parser.add_argument("--heartbeat-ms", type=int, default=100, help="etcd's heartbeat (default 100)")
    parser.add_argument(
        "--election-ms", type=int, default=1000, help="etcd's election timeout (default 1000)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    binary = etcd_binary()
    if binary is None:
        print("etcd is not installed (apt-get install etcd-server)", file=sys.stderr)
        return 2
    args.etcd_version = (
        subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
        .stdout.split("\n")[0]
        .split()[-1]
    )
    with tempfile.TemporaryDirectory(prefix="etcd-bench-") as workdir:
        cluster = EtcdCluster(
            binary, Path(workdir), 3, heartbeat_ms=args.heartbeat_ms, election_ms=args.election_ms
        )
        try:
            cluster.start()
            results = asyncio.run(run(args, cluster))
        finally:
            cluster.close()
    report(args, results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
