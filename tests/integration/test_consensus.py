"""The consensus contract, against real node processes (`tests.support.consensus_node`) on
loopback: elections, forwarding, failover after SIGKILL, catch-up after a restart, a history
check under repeated leader kills, partitions by SIGSTOP, at-most-once proposals in a failover.

Parametrized over `backend`: the embedded Raft needs nothing external, so its tests always run;
the etcd backend's nodes are etcd clients over a 3-member etcd cluster that each test starts
(`consensus_cluster.EtcdNodeCluster`), so its tests are marked `integration` and skip with a
reason without `etcd` (a failure under MEC_REQUIRE_INTEGRATION=1). For etcd, the leader node is
the process that holds the leader lease: killed, it is replaced once its lease (1 s here)
expires; stopped (SIGSTOP), likewise, and after SIGCONT it follows. Another backend is one more
entry in `BACKENDS` plus its Cluster in `consensus_cluster.CLUSTERS`. Each test starts a cluster
of its own. No assertion depends on timing: every wait polls up to a generous deadline; failover
times are printed, and measured properly by `bench/consensus_bench.py`.
"""

from __future__ import annotations

import asyncio
import base64
import random
import shutil
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import etcd3gw
import pytest

from swarm.commands import Command, Note, new_command_id
from swarm.consensus.base import Applier, ConsensusError
from swarm.consensus.embedded import EmbeddedConsensus
from swarm.consensus.etcd import _prefix_end
from tests.integration.consensus_cluster import Cluster, EtcdNodeCluster, open_cluster, poll
from tests.integration.etcd_cluster import etcd_binary
from tools.runtimes.base import free_port

BACKENDS = [
    pytest.param("embedded", id="embedded"),
    pytest.param("etcd", id="etcd", marks=pytest.mark.integration),
]
LEADER_TIMEOUT_S = 30.0
"""Generous: the election itself takes about a second, but the machine may be busy."""
CONVERGE_TIMEOUT_S = 60.0


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "etcd" and etcd_binary() is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    return str(request.param)


@pytest.fixture
def cluster(backend: str, tmp_path: Path) -> Iterator[Cluster]:
    """Three started nodes with a leader; every process killed at the end."""
    with open_cluster(backend, tmp_path) as started:
        started.start()
        started.leader(timeout_s=LEADER_TIMEOUT_S)
        yield started


def others(cluster: Cluster, *nodes: str) -> list[str]:
    return [node for node in cluster.ids if node not in nodes]


@dataclass
class History:
    """What the client saw: acknowledged ids (with their index), attempts per id, ids given up."""

    acked: dict[str, int] = field(default_factory=dict)
    attempts: Counter[str] = field(default_factory=Counter)
    given_up: set[str] = field(default_factory=set)
    answers: Counter[int] = field(default_factory=Counter)

    def has_acked(self, count: int) -> bool:
        return len(self.acked) >= count


def commit(
    cluster: Cluster, node: str, text: str, history: History | None = None, command_id: str | None = None
) -> dict[str, Any]:
    """Propose through `node` and insist that it commits (retrying the same id while the
    cluster settles, e.g. right after an election); each attempt and the answer go into
    `history`, if given. `command_id`: an id proposed before (a retry); default: a new one."""
    command_id = command_id or new_command_id()
    answers: list[tuple[int, dict[str, Any]]] = []

    def attempt() -> dict[str, Any] | None:
        if history is not None:
            history.attempts[command_id] += 1
        code, body = cluster.propose(node, text, id=command_id)
        answers.append((code, body))
        if history is not None:
            history.answers[code] += 1
            if code == 200:
                history.acked[command_id] = int(body["index"])
        return body if code == 200 else None

    try:
        return poll(attempt, f"{text!r} commits through {node}", LEADER_TIMEOUT_S)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last answers: {answers[-3:]}") from None


def ids_of(sequence: list[tuple[int, str]]) -> list[str]:
    return [command_id for _, command_id in sequence]


def first_seen(sequence: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The log without the later copies of a command id (what the id dedupe leaves)."""
    seen: set[str] = set()
    kept = []
    for index, command_id in sequence:
        if command_id not in seen:
            seen.add(command_id)
            kept.append((index, command_id))
    return kept


def unique_ids(sequence: list[tuple[int, str]]) -> list[str]:
    return ids_of(first_seen(sequence))


def test_a_follower_proposal_commits_on_all_nodes_in_order(cluster: Cluster) -> None:
    leader = cluster.leader()
    followers = others(cluster, leader)
    acked = []
    for n in range(12):
        body = commit(cluster, [followers[0], followers[1], leader][n % 3], f"note {n}")
        acked.append((body["index"], body["id"]))
    assert [index for index, _ in acked] == sorted({index for index, _ in acked}), acked

    sequence = cluster.converged(timeout_s=CONVERGE_TIMEOUT_S)
    assert unique_ids(sequence) == [command_id for _, command_id in acked]  # a retry may commit twice
    assert set(acked) <= set(sequence)
    for node in cluster.ids:
        status = cluster.status(node)
        assert status is not None and status["applied_index"] >= acked[-1][0]

    def members_listed() -> bool:  # etcd: each node reads the members' keys every lease/3
        return all((cluster.status(node) or {}).get("members") == sorted(cluster.ids) for node in cluster.ids)

    assert poll(members_listed, "every node lists the three members", LEADER_TIMEOUT_S)

    def one_leader() -> bool:
        named = {(cluster.status(node) or {}).get("leader") for node in cluster.ids}
        return len(named) == 1 and None not in named

    assert poll(one_leader, "all nodes name the same leader", LEADER_TIMEOUT_S)


@pytest.mark.parametrize("signal_", ["SIGKILL", "SIGTERM"])
def test_a_killed_leader_is_replaced_and_nothing_acknowledged_is_lost(cluster: Cluster, signal_: str) -> None:
    """SIGKILL: a crash; SIGTERM: a clean stop (the etcd backend revokes its lease on the way out)."""
    old = cluster.leader()
    acked = [commit(cluster, node, f"before {node}")["id"] for node in cluster.ids]

    killed_at = time.monotonic()
    if signal_ == "SIGKILL":
        cluster.kill(old)
    else:
        cluster.terminate(old)
    new = cluster.leader(exclude={old}, timeout_s=LEADER_TIMEOUT_S)
    print(
        f"failover after {signal_} of the leader {old}: {new} leads after {time.monotonic() - killed_at:.2f} s"
    )
    assert new != old and new in cluster.live()

    survivors = others(cluster, old)
    assert set(acked) <= set(ids_of(cluster.converged(survivors, CONVERGE_TIMEOUT_S)))
    acked += [commit(cluster, node, f"after {node}")["id"] for node in survivors]

    cluster.restart(old)
    sequence = cluster.converged(cluster.ids, CONVERGE_TIMEOUT_S)
    assert unique_ids(sequence) == acked
    assert cluster.sequence(old) == sequence


def stream_proposals(cluster: Cluster, stop: threading.Event, history: History) -> None:
    """Propose one command after another to a random live node; on a 503 or no answer, retry the
    same command id (on any node) until it is acknowledged or the stream stops."""
    rng = random.Random()
    number = 0
    while not stop.is_set():
        number += 1
        command_id = new_command_id()
        give_up_at = time.monotonic() + LEADER_TIMEOUT_S
        while True:
            live = cluster.live()
            if live:
                history.attempts[command_id] += 1
                code, body = cluster.propose(
                    rng.choice(live), f"history {number}", id=command_id, timeout_s=2.0
                )
                history.answers[code] += 1
                if code == 200:
                    history.acked[command_id] = int(body["index"])
                    break
            if stop.is_set() or time.monotonic() >= give_up_at:
                history.given_up.add(command_id)
                break
            stop.wait(0.02)  # a retry's pause, not a wait for a condition


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "kills", [pytest.param(5, id="5-kills"), pytest.param(20, id="20-kills", marks=pytest.mark.slow)]
)
def test_history_under_repeated_leader_kills(cluster: Cluster, kills: int) -> None:
    history = History()
    stop = threading.Event()
    client = threading.Thread(
        target=stream_proposals, args=(cluster, stop, history), name="client", daemon=True
    )
    client.start()
    failovers = []
    try:
        for _ in range(kills):
            old = cluster.leader(timeout_s=LEADER_TIMEOUT_S)
            acked_before = len(history.acked)
            killed_at = time.monotonic()
            cluster.kill(old)
            cluster.leader(exclude={old}, timeout_s=LEADER_TIMEOUT_S)
            failovers.append(time.monotonic() - killed_at)
            poll(partial(history.has_acked, acked_before + 3), "commits after the failover", LEADER_TIMEOUT_S)
            cluster.restart(old)
            cluster.wait_joined(old, LEADER_TIMEOUT_S)
        acked_now = len(history.acked)
        poll(partial(history.has_acked, acked_now + 3), "commits after the last restart", LEADER_TIMEOUT_S)
    finally:
        stop.set()
        client.join(LEADER_TIMEOUT_S)
    assert not client.is_alive()

    twice = check_history(cluster, history)
    print(
        f"{kills} leader kills: {len(history.acked)} acknowledged, {len(history.given_up)} given up, "
        f"{sum(history.attempts.values())} attempts {dict(history.answers)}, {twice} committed twice "
        f"(retries), failovers {min(failovers):.2f}-{max(failovers):.2f} s"
    )


def check_history(cluster: Cluster, history: History) -> int:
    """Once every node has applied the same log: nothing acknowledged is lost or at another index,
    nothing unproposed is in it, a command is in it twice only if it was retried, and each node's
    state machine kept every command once. How many were in it twice."""
    sequence = cluster.converged(cluster.ids, CONVERGE_TIMEOUT_S)
    indexes = [index for index, _ in sequence]
    assert indexes == sorted(set(indexes)), "indexes must strictly grow"
    occurrences: dict[str, list[int]] = {}
    for index, command_id in sequence:
        occurrences.setdefault(command_id, []).append(index)
    assert set(occurrences) <= set(history.attempts), "an entry nobody proposed"
    lost = [command_id for command_id in history.acked if command_id not in occurrences]
    assert not lost, f"acknowledged but not in the log: {lost}"
    assert all(history.acked[c] in occurrences[c] for c in history.acked), "an acknowledged index is wrong"
    twice = {c: len(found) for c, found in occurrences.items() if len(found) > 1}
    assert all(history.attempts[c] > 1 for c in twice), f"committed twice without a retry: {twice}"
    for node in cluster.ids:  # the state machine (the harness) dedupes by id, the same on every node
        kept = [e["id"] for e in cluster.applied(node) if not e["duplicate"]]
        assert len(kept) == len(set(kept)) == len(occurrences)
    return len(twice)


def test_a_partitioned_minority_cannot_commit_and_the_majority_goes_on(cluster: Cluster) -> None:
    leader = cluster.leader()
    lagging, other = others(cluster, leader)

    cluster.stop(lagging)  # a follower cut off: the leader and the other follower are a majority
    acked = [commit(cluster, node, f"without {lagging}")["id"] for node in (leader, other, leader)]
    cluster.cont(lagging)
    assert unique_ids(cluster.converged(cluster.ids, CONVERGE_TIMEOUT_S)) == acked

    cluster.stop(leader)  # the leader cut off, alone
    new = cluster.leader(exclude={leader}, timeout_s=LEADER_TIMEOUT_S)
    acked += [
        commit(cluster, node, f"without {leader}")["id"] for node in (new, *others(cluster, leader, new))
    ]

    # a proposal that reaches the old leader as it wakes, still believing it leads: it must not
    # commit on the old leader's word alone (it fails, or commits through the new majority)
    old_leader_id = new_command_id()
    body = {"text": "to the old leader", "id": old_leader_id, "timeout_s": 3.0}
    answer = cluster.send(leader, "POST", "/propose", body)  # waits in the stopped node's socket
    cluster.cont(leader)
    code, body = answer()

    sequence = cluster.converged(cluster.ids, CONVERGE_TIMEOUT_S)
    ids = ids_of(sequence)
    assert [c for c in unique_ids(sequence) if c != old_leader_id] == acked
    if code == 200:
        assert (body["index"], old_leader_id) in sequence and ids.count(old_leader_id) == 1
    else:
        assert ids.count(old_leader_id) <= 1
    if old_leader_id in ids:  # proposed after every acknowledged one: it comes after them
        assert ids.index(old_leader_id) > max(ids.index(c) for c in acked)
    now = cluster.leader(timeout_s=LEADER_TIMEOUT_S)
    assert poll(lambda: (cluster.status(leader) or {}).get("leader") == now, f"{leader} follows {now}", 15)
    print(f"the old leader {leader} answered {code} {body}")


def propose_into(
    answers: dict[str, tuple[int, dict[str, Any]]], cluster: Cluster, node: str, text: str, command_id: str
) -> None:
    answers[node] = cluster.propose(node, text, id=command_id, timeout_s=3.0)


def test_a_proposal_during_failover_commits_once_or_fails_cleanly(cluster: Cluster) -> None:
    outcomes = []
    for round_ in range(3):
        old = cluster.leader(timeout_s=LEADER_TIMEOUT_S)
        survivors = others(cluster, old)
        proposals = {node: new_command_id() for node in survivors}
        answers: dict[str, tuple[int, dict[str, Any]]] = {}

        cluster.kill(old)
        senders = [  # one attempt each, no retries
            threading.Thread(
                target=propose_into, args=(answers, cluster, node, f"failover {round_}", command_id)
            )
            for node, command_id in proposals.items()
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(15)
        cluster.leader(exclude={old}, timeout_s=LEADER_TIMEOUT_S)
        sequence = cluster.converged(survivors, CONVERGE_TIMEOUT_S)
        counts = Counter(ids_of(sequence))
        for node, command_id in proposals.items():
            code, body = answers[node]
            outcomes.append(code)
            if code == 200:
                assert counts[command_id] == 1 and (body["index"], command_id) in sequence
            else:
                assert counts[command_id] <= 1, (node, code, body)
        cluster.restart(old)
        assert cluster.converged(cluster.ids, CONVERGE_TIMEOUT_S)[: len(sequence)] == sequence
    print(f"answers to proposals sent during a failover: {Counter(outcomes)}")


@pytest.mark.integration
def test_etcd_nodes_ride_out_a_killed_etcd_member(tmp_path: Path) -> None:
    """The etcd backend's own failure: an etcd member (node a's first endpoint) is SIGKILLed while
    a client streams proposals to the node processes, and restarted; the history holds as under
    leader kills, and every node commits through the members left."""
    if etcd_binary() is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    with open_cluster("etcd", tmp_path) as cluster:
        assert isinstance(cluster, EtcdNodeCluster)
        cluster.start()
        cluster.leader(timeout_s=LEADER_TIMEOUT_S)
        history = History()
        stop = threading.Event()
        client = threading.Thread(
            target=stream_proposals, args=(cluster, stop, history), name="client", daemon=True
        )
        client.start()
        try:
            poll(partial(history.has_acked, 3), "commits before the member is killed", LEADER_TIMEOUT_S)
            cluster.etcd.kill(0)
            acked = [commit(cluster, node, f"member killed {node}", history)["id"] for node in cluster.ids]
            poll(partial(history.has_acked, len(history.acked) + 3), "commits meanwhile", LEADER_TIMEOUT_S)
            cluster.etcd.restart(0)
            acked += [commit(cluster, node, f"member back {node}", history)["id"] for node in cluster.ids]
            poll(partial(history.has_acked, len(history.acked) + 3), "commits after it", LEADER_TIMEOUT_S)
        finally:
            stop.set()
            client.join(LEADER_TIMEOUT_S)
        assert not client.is_alive()
        twice = check_history(cluster, history)
        assert set(acked) <= set(history.acked)
        cluster.leader(timeout_s=LEADER_TIMEOUT_S)
        print(
            f"an etcd member killed and restarted: {len(history.acked)} acknowledged, "
            f"{sum(history.attempts.values())} attempts {dict(history.answers)}, {twice} committed twice"
        )


def test_embedded_catches_up_from_compacted_logs_and_snapshots(tmp_path: Path) -> None:
    """pysyncobj compacts its log into snapshots of the applied history: a node restarts from its
    own snapshot and journal, and a node whose disk was wiped catches up from the leader's."""
    with open_cluster("embedded", tmp_path, extra_args=["--compaction-entries", "16"]) as cluster:
        cluster.start()
        leader = cluster.leader(timeout_s=LEADER_TIMEOUT_S)
        lagging, wiped = others(cluster, leader)
        acked = [commit(cluster, leader, f"first {n}")["id"] for n in range(40)]

        cluster.kill(lagging)
        acked += [commit(cluster, leader, f"second {n}")["id"] for n in range(40)]
        cluster.restart(lagging)
        assert unique_ids(cluster.converged(cluster.ids, CONVERGE_TIMEOUT_S)) == acked
        assert (cluster.nodes[lagging].data_dir / "raft.dump").exists()

        assert (cluster.nodes[leader].data_dir / "raft.dump").exists()  # its log starts past index 2 now
        cluster.kill(wiped)
        shutil.rmtree(cluster.nodes[wiped].data_dir)  # only the leader's snapshot has the first entries
        acked += [commit(cluster, leader, f"third {n}")["id"] for n in range(20)]
        cluster.restart(wiped)
        assert unique_ids(cluster.converged(cluster.ids, CONVERGE_TIMEOUT_S)) == acked

        cluster.kill(leader)
        new = cluster.leader(exclude={leader}, timeout_s=LEADER_TIMEOUT_S)
        acked.append(commit(cluster, new, "after the leader")["id"])
        cluster.restart(leader)
        assert unique_ids(cluster.converged(cluster.ids, CONVERGE_TIMEOUT_S)) == acked


async def test_embedded_applies_on_its_loop_in_order_and_stop_fails_what_is_in_flight(tmp_path: Path) -> None:
    """In one process: every apply runs on the loop that started the node, in log order, an
    awaitable applier is awaited; `propose` reads its own write; `stop()` fails a proposal in
    flight with ConsensusError, is idempotent and leaves no thread or socket behind."""
    ids = ["a", "b", "c"]
    addresses = {node: f"127.0.0.1:{free_port()}" for node in ids}
    applied: dict[str, list[int]] = {node: [] for node in ids}
    threads_seen: set[int] = set()

    def applier_for(node: str) -> Applier:
        async def apply(index: int, command: Command) -> None:
            threads_seen.add(threading.get_ident())
            await asyncio.sleep(0)  # an applier that yields: the next entry must wait for it
            applied[node].append(index)

        return apply

    threads_before = set(threading.enumerate())
    nodes = {
        node: EmbeddedConsensus(
            node,
            addresses[node],
            {other: addresses[other] for other in ids if other != node},
            tmp_path / node,
            "a shared secret",
            applier_for(node),
        )
        for node in ids
    }
    try:
        for started in nodes.values():
            await started.start()
        leader = await nodes["a"].wait_leader(LEADER_TIMEOUT_S)
        follower = next(node for node in ids if node != leader)
        indexes = [await nodes[follower].propose(Note(text=f"n{n}"), LEADER_TIMEOUT_S) for n in range(5)]
        assert indexes == sorted(set(indexes))
        assert applied[follower][-5:] == indexes  # applied here before propose returned
        assert threads_seen == {threading.get_ident()}
        assert nodes[follower].status().applied_index >= indexes[-1]

        lonely = nodes[follower]
        for node in ids:
            if node != follower:
                await nodes[node].stop()
        in_flight = asyncio.create_task(lonely.propose(Note(text="no quorum"), LEADER_TIMEOUT_S))
        await asyncio.sleep(0)  # let it reach pysyncobj
        assert not in_flight.done()
        await lonely.stop()
        with pytest.raises(ConsensusError):
            await in_flight
        await lonely.stop()
        with pytest.raises(ConsensusError):
            await lonely.propose(Note(text="after stop"), 1.0)
        assert not lonely.status().healthy
    finally:
        for stopping in nodes.values():
            await stopping.stop()
    assert set(threading.enumerate()) - threads_before <= {
        t for t in threading.enumerate() if t.name.startswith("asyncio_")
    }, "pysyncobj threads left behind"
    for address in addresses.values():
        host, port = address.split(":")
        with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=1.0):
            pass


MAX_ENTRIES = 20
"""The compaction tests' bound on a node's log: small, so that 100 commands compact it often."""


def log_entries_held(cluster: Cluster, node: str) -> int | None:
    """How many log entries the node's backend keeps: the embedded history's entries after its
    base (from its status), the keys under the etcd log prefix (shared by every node); None when
    that cannot be read now."""
    if isinstance(cluster, EtcdNodeCluster):
        prefix = "/mec/log/"
        member = cluster.etcd.members[0]
        client = etcd3gw.client(host="127.0.0.1", port=member.client_port, timeout=5)
        request = {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix)), "count_only": True}
        return int(client.post(client.get_url("/kv/range"), json=request).get("count", 0))
    status = cluster.status(node)
    return None if status is None else int(status["detail"]["log_entries"])


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def bounded(cluster: Cluster, nodes: list[str]) -> bool:
    held = [log_entries_held(cluster, node) for node in nodes]
    return all(count is not None and count <= MAX_ENTRIES for count in held)


def same_exports(cluster: Cluster, at_least: int) -> list[dict[str, Any]] | None:
    """Every node's /state once all of them have applied `at_least` and export the same state."""
    states = [cluster.state(node) for node in cluster.ids]
    if any(state is None or state["export"]["applied_index"] < at_least for state in states):
        return None
    exports = [state["export"] for state in states if state is not None]
    return [state for state in states if state is not None] if all(e == exports[0] for e in exports) else None


def test_a_compacted_log_stays_bounded_and_a_late_node_restores_the_same_state(
    backend: str, tmp_path: Path
) -> None:
    """With snapshots of the swarm state (`--max-entries`): 100 commands keep every node's log at
    `MAX_ENTRIES`; a node stopped early and restarted after the compaction catches up through a
    snapshot to the state the others export; a command retried after its entry was compacted
    away is still a duplicate everywhere."""
    extra = ["--max-entries", str(MAX_ENTRIES)]
    if backend == "embedded":  # pysyncobj's own log compacts too: the late node needs a snapshot
        extra += ["--compaction-entries", "16"]
    with open_cluster(backend, tmp_path, extra_args=extra) as cluster:
        cluster.start()
        leader = cluster.leader(timeout_s=LEADER_TIMEOUT_S)
        late, other = others(cluster, leader)
        retried = commit(cluster, leader, "proposed once, retried after the compaction")
        for n in range(3):
            commit(cluster, late, f"before {late} stops {n}")
        cluster.converged(cluster.ids, CONVERGE_TIMEOUT_S)
        cluster.kill(late)

        most = 0
        for n in range(100):
            commit(cluster, (leader, other)[n % 2], f"compacted {n}")
            if n % 10 == 0:
                most = max(most, *(log_entries_held(cluster, node) or 0 for node in (leader, other)))
        assert poll(lambda: bounded(cluster, [leader, other]), f"logs of at most {MAX_ENTRIES}", 30)

        cluster.restart(late)
        again = commit(
            cluster, other, "proposed once, retried after the compaction", command_id=retried["id"]
        )
        assert again["index"] > retried["index"]
        states = poll(lambda: same_exports(cluster, again["index"]), "every node exports the same state", 60)
        export = states[0]["export"]
        assert export["duplicates"] == 1 and export["applied"] == 104
        assert [retried["id"], None] in export["seen"]
        restored = states[cluster.ids.index(late)]["restores"]
        assert restored >= 1, f"{late} caught up without a snapshot"
        assert poll(lambda: bounded(cluster, cluster.ids), f"every log at most {MAX_ENTRIES}", 30)
        print(
            f"{backend}: at most {most} log entries seen while committing; {late} restored {restored} snapshot(s)"
        )
