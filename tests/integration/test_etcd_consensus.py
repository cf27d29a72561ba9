"""`swarm.consensus.etcd.EtcdConsensus` against a real 3-member etcd cluster on loopback.

Each "site" is its own `EtcdConsensus` in this process (all on the test's event loop), each with
the three members' endpoints, starting from a different one. The log in etcd is read directly
(etcd3gw) to check what the nodes applied against what is stored.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import etcd3gw
import pytest

from swarm.commands import Command, Note, SetCloudFallback, command_from_json, to_json
from swarm.consensus import etcd as etcd_module
from swarm.consensus.base import ConsensusError
from swarm.consensus.etcd import EtcdConsensus
from tests.integration.etcd_cluster import EtcdCluster, running_etcd_cluster
from tests.support.polling import eventually
from tools.runtimes.base import free_port

pytestmark = pytest.mark.integration

PROPOSE_S = 15.0
"""A proposal's timeout: generous, since a member kill costs an etcd election first."""
BOUND_S = 30.0
"""What 'within its timeout' is checked against: a call that hangs fails the test here."""


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    with running_etcd_cluster(tmp_path / "etcd") as cluster:
        yield cluster


@dataclass
class Site:
    """One site's consensus node and what its applier saw."""

    node_id: str
    asynchronous: bool = False
    applied: list[tuple[int, str]] = field(default_factory=list)
    """(index, command id) in the order the applier was called."""
    apply_threads: set[int] = field(default_factory=set)
    node: EtcdConsensus = field(init=False)

    def apply(self, index: int, command: Command) -> Any:
        if not self.asynchronous:
            self._record(index, command)
            return None
        return self._apply_later(index, command)

    async def _apply_later(self, index: int, command: Command) -> None:
        await asyncio.sleep(0)  # an applier that awaits: the next entry still waits for it
        self._record(index, command)

    def _record(self, index: int, command: Command) -> None:
        self.apply_threads.add(threading.get_ident())
        self.applied.append((index, command.id))


def rotated(endpoints: Sequence[str], start: int) -> list[str]:
    """The endpoints beginning with the `start`-th: each site starts on a member of its own."""
    return [*endpoints[start:], *endpoints[:start]]


@asynccontextmanager
async def sites(
    endpoints: Sequence[str],
    ids: Sequence[str] = ("a", "b", "c"),
    asynchronous: Sequence[str] = (),
    **options: Any,
) -> AsyncIterator[dict[str, Site]]:
    """Started nodes, one per id (site i starts on endpoint i); all stopped on the way out."""
    made: dict[str, Site] = {}
    try:
        for number, node_id in enumerate(ids):
            site = Site(node_id, asynchronous=node_id in asynchronous)
            site.node = EtcdConsensus(
                node_id, rotated(endpoints, number % len(endpoints)), site.apply, **options
            )
            made[node_id] = site
            await site.node.start()
        yield made
    finally:
        for site in made.values():
            await site.node.stop()


def stored_log(cluster: EtcdCluster, member: int = 0, prefix: str = "/mec") -> list[tuple[int, str]]:
    """(index, JSON) of every entry in etcd, read from `member`, in key order."""
    member_ = cluster.members[member]
    client = etcd3gw.client(host="127.0.0.1", port=member_.client_port, timeout=5)
    entries = client.get_prefix(f"{prefix}/log/", sort_order="ascend", sort_target="key")
    return [(int(meta["key"].decode().rsplit("/", 1)[1]), value.decode()) for value, meta in entries]


def stored_ids(cluster: EtcdCluster, member: int = 0) -> list[tuple[int, str]]:
    """(index, command id) of every entry in etcd."""
    return [(index, command_from_json(text).id) for index, text in stored_log(cluster, member)]


def agreed_leader(group: Sequence[Site], other_than: str | None = None) -> str | None:
    """The leader every node of `group` names, when they all name the same one (not `other_than`)."""
    named = {site.node.leader() for site in group}
    if len(named) != 1:
        return None
    leader = named.pop()
    return leader if leader is not None and leader != other_than else None


async def test_one_leader_is_elected_and_every_node_sees_it(etcd: EtcdCluster) -> None:
    async with sites(etcd.endpoints) as group:
        for site in group.values():
            await site.node.wait_leader(timeout_s=10)
        leader = await eventually(lambda: agreed_leader(list(group.values())), "one leader named by all")
        assert leader in group
        await eventually(lambda: group[leader].node.is_leader(), "the leader knows it leads")
        assert [site.node_id for site in group.values() if site.node.is_leader()] == [leader]
        await eventually(
            lambda: all(site.node.status().members == ("a", "b", "c") for site in group.values()),
            "every node lists the three members",
        )
        # healthy: each node has read the cluster recently; one just started may not have yet
        await eventually(
            lambda: all(site.node.status().healthy for site in group.values()), "every node healthy"
        )
        statuses = [site.node.status() for site in group.values()]
        assert len({status.term for status in statuses}) == 1 and statuses[0].term > 0
        assert all(status.detail["backend"] == "etcd" for status in statuses)


async def test_proposals_from_every_node_apply_in_one_order_everywhere_on_the_loop(etcd: EtcdCluster) -> None:
    loop_thread = threading.get_ident()
    async with sites(etcd.endpoints, asynchronous=("c",)) as group:
        proposed: list[tuple[int, str]] = []
        for round_ in range(4):
            for site in group.values():
                command = Note(f"{site.node_id}-{round_}")
                index = await site.node.propose(command, timeout_s=PROPOSE_S)
                assert (index, command.id) in site.applied  # applied here before propose returns
                proposed.append((index, command.id))
        assert [index for index, _ in proposed] == list(range(1, 13))
        await eventually(
            lambda: all(site.applied == proposed for site in group.values()), "every node applied all 12"
        )
        assert stored_ids(etcd) == proposed
        for site in group.values():
            assert site.apply_threads == {loop_thread}, f"{site.node_id} applied off the event loop's thread"
            status = site.node.status()
            assert status.applied_index == status.commit_index == 12


async def test_concurrent_proposals_from_all_nodes_form_one_dense_log(etcd: EtcdCluster) -> None:
    per_node = 20
    async with sites(etcd.endpoints) as group:
        commands = [(site, Note(f"{site.node_id}-{i}")) for site in group.values() for i in range(per_node)]
        indexes = await asyncio.gather(
            *(site.node.propose(command, timeout_s=PROPOSE_S) for site, command in commands)
        )
        total = len(commands)
        assert sorted(indexes) == list(range(1, total + 1)), "each proposal got an index of its own, no gap"
        await eventually(
            lambda: all(len(site.applied) == total for site in group.values()), "every node applied all"
        )
        reference = group["a"].applied
        assert [index for index, _ in reference] == list(range(1, total + 1))
        for site in group.values():
            assert site.applied == reference, f"{site.node_id} applied another order"
        by_id = {command_id: index for index, command_id in reference}
        assert len(by_id) == total, "a command was applied twice"
        assert {command.id: index for (_, command), index in zip(commands, indexes, strict=True)} == by_id
        assert stored_ids(etcd) == reference


async def test_stopping_the_leader_node_hands_leadership_to_another(etcd: EtcdCluster) -> None:
    async with sites(etcd.endpoints) as group:
        old = await eventually(lambda: agreed_leader(list(group.values())), "a leader")
        await eventually(lambda: group[old].node.is_leader(), "the leader knows it leads")
        old_term = group[old].node.status().term
        await group[old].node.stop()  # revokes its lease: the leader key goes at once
        assert not group[old].node.is_leader() and group[old].node.leader() is None
        survivors = [site for node_id, site in group.items() if node_id != old]
        new = await eventually(lambda: agreed_leader(survivors, other_than=old), "a new leader", timeout_s=10)
        await eventually(lambda: group[new].node.is_leader(), "the new leader knows it leads")
        assert all(site.node.status().term > old_term for site in survivors)
        await eventually(
            lambda: all(old not in site.node.status().members for site in survivors), "the old leader left"
        )
        command = Note("after the failover")
        index = await survivors[0].node.propose(command, timeout_s=PROPOSE_S)
        await eventually(
            lambda: all((index, command.id) in site.applied for site in survivors), "the survivors applied it"
        )
        with pytest.raises(ConsensusError):
            await group[old].node.propose(Note("from a stopped node"), timeout_s=PROPOSE_S)
        await group[old].node.stop()  # again: nothing happens


async def test_a_crashed_leader_is_replaced_once_its_lease_expires(etcd: EtcdCluster) -> None:
    async with sites(etcd.endpoints) as group:
        old = await eventually(lambda: agreed_leader(list(group.values())), "a leader")
        await group[old].node.stop(revoke_lease=False)  # as a crash: etcd has to let the lease expire
        survivors = [site for node_id, site in group.items() if node_id != old]
        new = await eventually(
            lambda: agreed_leader(survivors, other_than=old),
            "a new leader after the lease expired",
            timeout_s=20,
        )
        assert new in group and new != old
        await eventually(lambda: group[new].node.is_leader(), "the new leader knows it leads")


async def test_a_leader_restarted_within_its_old_lease_does_not_name_itself(etcd: EtcdCluster) -> None:
    """A leader site that crashes and comes back before its lease expired finds the leader key
    with its own id, on the lease of its previous run: it neither leads nor names itself leader
    (it would forward to itself) until that lease expires, and then it can lead again."""
    async with sites(etcd.endpoints, ids=("a",), lease_ttl_s=3) as group:
        await eventually(lambda: group["a"].node.is_leader(), "a leads")
        old_term = group["a"].node.status().term
        await group["a"].node.stop(revoke_lease=False)  # a crash: the leader key stays for 3 s
        async with sites(etcd.endpoints, ids=("a",), lease_ttl_s=3) as again:
            node = again["a"].node
            status = await eventually(lambda: (s := node.status()).term > 0 and s, "the new run read the key")
            if status.term == old_term:  # the old key still (always, unless the box stalled for 3 s)
                assert status.leader is None and not node.is_leader()
            await eventually(lambda: node.is_leader(), "it leads once the old lease expired", timeout_s=20)
            assert node.leader() == "a"


async def test_the_log_keeps_committing_when_an_etcd_member_is_killed(etcd: EtcdCluster) -> None:
    async with sites(etcd.endpoints) as group:
        proposed: list[tuple[int, str]] = []

        async def one_round(label: str) -> None:
            for site in group.values():
                command = Note(f"{label}-{site.node_id}")
                proposed.append((await site.node.propose(command, timeout_s=PROPOSE_S), command.id))

        await one_round("before")
        etcd.kill(0)  # site a's member (and perhaps etcd's raft leader)
        for round_ in range(3):
            await one_round(f"killed-{round_}")
        await eventually(
            lambda: all(site.applied == proposed for site in group.values()), "every node applied every entry"
        )
        assert [index for index, _ in proposed] == list(range(1, len(proposed) + 1))
        await eventually(lambda: all(site.node.status().healthy for site in group.values()), "all healthy")
        assert group["a"].node.status().detail["endpoint"] != etcd.members[0].client_url
        assert stored_ids(etcd, member=1) == proposed

        etcd.restart(0)
        await one_round("restarted")
        await eventually(
            lambda: all(site.applied == proposed for site in group.values()), "every node applied every entry"
        )
        assert stored_ids(etcd, member=0) == proposed  # the restarted member caught up


async def test_the_same_command_proposed_twice_is_two_entries(etcd: EtcdCluster) -> None:
    """The log keeps what was proposed: the command id is the state machine's to dedupe."""
    async with sites(etcd.endpoints, ids=("a", "b")) as group:
        command = SetCloudFallback(site_id="a", enabled=True)
        first = await group["a"].node.propose(command, timeout_s=PROPOSE_S)
        second = await group["b"].node.propose(command, timeout_s=PROPOSE_S)
        assert second == first + 1
        assert stored_log(etcd) == [(first, to_json(command)), (second, to_json(command))]
        expected = [(first, command.id), (second, command.id)]
        await eventually(
            lambda: all(site.applied == expected for site in group.values()), "both applied twice"
        )


async def test_a_node_started_later_replays_the_whole_log_in_order(etcd: EtcdCluster) -> None:
    async with sites(etcd.endpoints, ids=("a",)) as group:
        indexes = await asyncio.gather(
            *(group["a"].node.propose(Note(f"early-{i}"), timeout_s=PROPOSE_S) for i in range(40))
        )
        assert sorted(indexes) == list(range(1, 41))
        # small reads and a short queue: the replay goes through many ranges and waits for the applier
        async with sites(
            etcd.endpoints, ids=("late",), asynchronous=("late",), batch_size=4, max_pending=8
        ) as late:
            await eventually(lambda: late["late"].applied == group["a"].applied, "the late node replayed all")
            command = Note("after the replay")
            index = await late["late"].node.propose(command, timeout_s=PROPOSE_S)
            assert index == 41
            await eventually(lambda: (41, command.id) in group["a"].applied, "the first node applied it")


async def test_a_node_that_cannot_reach_etcd_fails_in_time_and_reports_unhealthy() -> None:
    site = Site("lonely")
    site.node = EtcdConsensus(
        "lonely", [f"http://127.0.0.1:{free_port()}"], site.apply, request_timeout_s=0.5
    )
    await site.node.start()
    try:
        with pytest.raises(ConsensusError):
            await asyncio.wait_for(site.node.propose(Note("nobody hears"), timeout_s=1.0), timeout=BOUND_S)
        with pytest.raises(ConsensusError):
            await asyncio.wait_for(site.node.wait_leader(timeout_s=0.5), timeout=BOUND_S)
        status = site.node.status()
        assert not status.healthy and status.detail["error"]
        assert status.leader is None and not site.node.is_leader()
        assert site.applied == []
    finally:
        await asyncio.wait_for(site.node.stop(), timeout=BOUND_S)


async def test_a_paused_etcd_member_bounds_proposals_and_the_node_recovers(etcd: EtcdCluster) -> None:
    only = [etcd.endpoints[2]]  # this node knows one member, which stops answering (SIGSTOP)
    async with sites(only, ids=("a",), request_timeout_s=0.5) as group:
        node = group["a"].node
        await node.propose(Note("before"), timeout_s=PROPOSE_S)
        etcd.pause(2)
        try:
            with pytest.raises(ConsensusError):
                await asyncio.wait_for(node.propose(Note("while paused"), timeout_s=1.5), timeout=BOUND_S)
            await eventually(lambda: not node.status().healthy, "the node reports it cannot reach etcd")
        finally:
            etcd.resume(2)
        await eventually(lambda: node.status().healthy, "healthy again once the member answers", timeout_s=20)
        command = Note("after")
        index = await node.propose(command, timeout_s=PROPOSE_S)
        # the paused proposal may have committed once the member read its request: both are fine
        assert index in (2, 3)
        assert [i for i, _ in group["a"].applied] == list(range(1, index + 1))
        assert group["a"].applied[-1] == (index, command.id)
        await eventually(lambda: node.is_leader(), "the only node leads again on a new lease", timeout_s=20)


async def test_stop_releases_every_thread_and_is_idempotent(etcd: EtcdCluster) -> None:
    site = Site("solo")
    site.node = EtcdConsensus("solo", etcd.endpoints, site.apply)
    with pytest.raises(ConsensusError):
        await site.node.propose(Note("before start"), timeout_s=1.0)
    await site.node.start()
    await site.node.propose(Note("running"), timeout_s=PROPOSE_S)
    await site.node.stop()
    await site.node.stop()
    with pytest.raises(ConsensusError):
        await site.node.start()
    await eventually(
        lambda: not [t.name for t in threading.enumerate() if t.name.startswith("etcd-solo-")],
        "the node's threads ended",
    )
    status = site.node.status()
    assert not status.healthy and status.leader is None


async def test_an_append_whose_answer_was_lost_is_not_written_twice(etcd: EtcdCluster) -> None:
    """The first append transaction reaches etcd and commits, but its answer is dropped (as when a
    member dies mid-request): the retry finds its own entries and adds none."""
    async with sites(etcd.endpoints, ids=("a",)) as group:
        node = group["a"].node
        cluster = node._cluster
        real_attempt = cluster.attempt
        dropped: list[int] = []

        def drop_first_answer(fn: Any, timeout_s: float) -> Any:
            answer = real_attempt(fn, timeout_s)
            if getattr(fn, "func", None) == node._try_append and not dropped:
                dropped.append(fn.args[0])
                raise etcd_module._Unavailable("the answer was lost")
            return answer

        cluster.attempt = drop_first_answer  # type: ignore[method-assign]
        commands = [Note(f"lost-answer-{i}") for i in range(3)]
        indexes = await asyncio.gather(*(node.propose(command, timeout_s=PROPOSE_S) for command in commands))
        assert dropped, "no append answer was dropped"
        assert sorted(indexes) == [1, 2, 3]
        stored = stored_ids(etcd)
        assert sorted(command_id for _, command_id in stored) == sorted(command.id for command in commands)
        assert [index for index, _ in stored] == [1, 2, 3]
        assert dict(zip((c.id for c in commands), indexes, strict=True)) == {cid: i for i, cid in stored}


class PaddedState:
    """A state machine (the applied ids) whose snapshots are padded past one etcd chunk."""

    def __init__(self, padding: int) -> None:
        self.padding = padding
        self.ids: list[str] = []
        self.index = 0
        self.restored: list[int] = []

    def apply(self, index: int, command: Command) -> None:
        self.ids.append(command.id)
        self.index = index

    def take(self) -> tuple[int, bytes]:
        return self.index, json.dumps({"ids": self.ids, "padding": "x" * self.padding}).encode()

    def restore(self, index: int, data: bytes) -> None:
        self.ids = list(json.loads(data)["ids"])
        self.index = index
        self.restored.append(index)


async def test_a_node_started_after_compaction_restores_a_snapshot_of_several_chunks(
    etcd: EtcdCluster,
) -> None:
    """The snapshot goes to etcd in chunks (it is larger than one request may be); a node that
    starts once the log's first entries are gone reads them back whole, then the entries after,
    and its first proposal goes after the last entry, never into a compacted slot."""
    padding = 2 * etcd_module.CHUNK_BYTES + 1000
    first = PaddedState(padding)
    node = EtcdConsensus("a", etcd.endpoints, first.apply, snapshotter=first, max_entries=5)
    await node.start()
    late_node: EtcdConsensus | None = None
    try:
        await node.wait_leader(BOUND_S)
        await eventually(node.is_leader, "the only node leads")
        for n in range(12):
            await node.propose(Note(f"early-{n}"), timeout_s=PROPOSE_S)
        await eventually(
            lambda: node.status().detail["snapshot_index"] >= 10, "a snapshot past entry 10", timeout_s=60
        )
        assert stored_log(etcd)[0][0] > 1 and len(stored_log(etcd)) <= 5
        # a node that knows no index yet tries slot 1 first: compacted, not free
        fresh = EtcdConsensus("fresh", etcd.endpoints, first.apply)  # never started
        stray = Note("appended by a node that knows no index")
        slot = await asyncio.to_thread(fresh._append, [to_json(stray)], time.monotonic() + PROPOSE_S)
        assert slot == 13 and stored_log(etcd)[-1] == (13, to_json(stray))

        late = PaddedState(padding)
        late_node = EtcdConsensus(
            "late", rotated(etcd.endpoints, 1), late.apply, snapshotter=late, max_entries=5
        )
        await late_node.start()
        await eventually(lambda: late.ids == first.ids, "the late node holds every id", BOUND_S)
        assert late.restored and late.restored[0] >= 10
        index = await late_node.propose(Note("from the late node"), timeout_s=PROPOSE_S)
        assert index == 14
        await eventually(lambda: first.ids == late.ids and len(late.ids) == 14, "both applied it")
    finally:
        if late_node is not None:
            await late_node.stop()
        await node.stop()
