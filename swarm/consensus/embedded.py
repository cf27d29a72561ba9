"""The embedded backend: Raft in the site's own process, over pysyncobj.

Each site runs one `EmbeddedConsensus` node; the nodes of a swarm know each other by id and Raft
address (`host:port`, which is how pysyncobj names a node) and form a fixed cluster (no dynamic
membership).

How it works, and the decisions behind it:

* The log's entries are the commands' JSON (`swarm.commands.to_json`), handed to one
  `@replicated` method of a pysyncobj consumer (a `SyncObjConsumer` rather than a `SyncObj`
  subclass, so that its state goes into pysyncobj's snapshots; see Snapshots). pysyncobj pickles
  its own wire messages and journal records; every connection between nodes is encrypted and authenticated with
  `password` (Fernet), so a peer without it cannot get anything unpickled.
* Index: an entry's log index is the Raft index pysyncobj applies it at, `raftLastApplied + 1`
  inside the apply method (pysyncobj increments `raftLastApplied` right after each apply). Indexes
  grow but have gaps: each new leader's no-op entry takes one, as does the initial entry 1.
* Delivery: pysyncobj applies on its tick thread. The apply method only records the entry and
  hands it to the asyncio loop that called `start()` (`call_soon_threadsafe`, never waiting on the
  loop), where one task calls the `Applier` for each entry in log order, exactly once per index
  in this process, awaiting it when it returns an awaitable. A slow applier therefore never
  stalls Raft; entries queue up in memory meanwhile. An applier that raises is logged and counted
  (`status().detail["apply_errors"]`) and the entry still counts as applied: one bad entry must
  not wedge the node.
* Forwarding: `propose` works on any node: pysyncobj forwards a replicated call made on a
  follower to the leader that follower knows and reports the outcome back, so being a follower is
  no error here. A proposal fails with `ConsensusError` when the leader changed before it
  acknowledged the entry (`leader_changed`: what a proposal sent to a follower while the leader is
  dead but not yet replaced gets, once the new leader is elected), when a new leader's entry took
  its place (`discarded`), or on a timeout; with `NotLeaderError` (a `ConsensusError`, `leader`:
  who this node thinks leads) when the node it was forwarded to answered that it does not lead.
  While no leader is known at all, a proposal waits in pysyncobj's queue until one is elected or
  `timeout_s` runs out.
* `propose` returns the index once the entry is committed and the local applier has run for it
  (read your writes). `status().applied_index` is the index up to which everything committed has
  been applied on this node (the no-ops in between count). On any failure the command may still
  commit later (a queued command is still sent once a leader appears; an entry the old leader
  replicated before it died commits under the new one), so a caller retries with the same
  command id and the state machine dedupes by id.
* Durability and catch-up: the Raft journal (`data_dir/raft.journal`, plus its `.meta` with the
  term, vote and commit index) and pysyncobj's snapshots (`data_dir/raft.dump`) are kept on disk.
  Journal records are written through an mmap before the node acknowledges them, so they survive
  SIGKILL (not a power cut: nothing is fsynced). A restarted node hands its applier its own
  snapshot (its base to restore, then the entries after it) and its journal, then fetches what
  it missed from the leader; a node too far behind a leader that compacted its log gets the
  leader's snapshot.
* Snapshots: pysyncobj compacts its log (every `compaction_entries` entries or
  `compaction_interval_s`) into a snapshot of the replicated object. The state machine lives
  outside pysyncobj (behind the applier), so the replicated object is the applied history: a
  `base`, `(index, the owner's serialized state)` or None, and the entries after it, `(index,
  command JSON)` each. Loading a pysyncobj snapshot (at start, or one the leader sent) whose base
  is past what the node has applied hands the applier's owner `Snapshotter.restore(base)` first,
  then the entries after the base, on the loop like any entry; a base at or below it is skipped.
* Bounding the history: with a `snapshotter`, the loop hands pysyncobj's thread the owner's
  `take()` every `max_entries / 2` applied commands (the latest one in a slot that the loop writes
  and the Raft thread reads: a tuple assigned whole); on each tick the Raft thread, once it holds
  more than `max_entries` entries, folds those at or below that snapshot's index into the base.
  So a node holds one serialized state and at most `max_entries` entries plus those its applier
  has not reached yet (and pysyncobj's own log, up to `compaction_entries`), and its dump holds no
  more; `status().detail` shows `log_entries` and the base's `snapshot_index`. Each node folds
  its own history with its own state machine's snapshots: the state machine is deterministic, so
  the base at an index is the same everywhere. Without a `snapshotter` nothing is folded and the
  history grows with the log (every node of a cluster must be configured alike: a node without
  one cannot take a base it is sent, and says so in `restore_errors`).
* `stop()` fails every proposal in flight with `ConsensusError` (they may still commit on the
  others), drops entries not yet applied locally (a restart replays them from the journal),
  stops pysyncobj's thread and closes its sockets and journal. It is idempotent.
* Liveness tweaks on top of pysyncobj: `appendEntriesUseBatch=False` (an entry is sent at once,
  not with the next heartbeat), election timeouts of 0.3-0.6 s by default, fast reconnects, and a
  small keepalive message on every link: pysyncobj drops a connection it has read nothing from for
  `connectionTimeout`, which it checks when it next sends, and followers send each other nothing
  between elections, so without it the first vote request after a quiet spell is lost with its
  connection.

The node's pysyncobj thread checks that the thread that started it is alive: call `start()` from
the loop's own, long-lived thread (as a site does).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import inspect
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

from swarm.commands import Command, command_from_json, to_json
from swarm.consensus.base import (
    Applier,
    ConsensusError,
    ConsensusStatus,
    NotLeaderError,
    Snapshotter,
    poll_leader,
)

# pysyncobj's `win_inet_pton` (imported by its TCP layer) replaces `socket.inet_ntop` for the
# whole process with a Windows-only function, on every platform: every later caller (psutil's
# connection listing, asyncio's address formatting) would raise. Keep the real one.
_INET_NTOP, _INET_PTON = socket.inet_ntop, socket.inet_pton
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated  # noqa: E402
from pysyncobj.transport import TCPTransport  # noqa: E402

socket.inet_ntop, socket.inet_pton = _INET_NTOP, _INET_PTON

logger = logging.getLogger(__name__)

Entry = tuple[int, str]
"""One applied log entry: (Raft index, the command's JSON)."""
Base = tuple[int, bytes]
"""The history's base: (index, the owner's state serialized at that index)."""


@dataclass(frozen=True, slots=True)
class _Restore:
    """The loop's cue to restore the owner's state from a base before the entries after it."""

    index: int
    data: bytes


Handed = tuple[int, str | None] | _Restore
"""What the Raft thread hands the loop: an entry, (index, None): applied up to there, or a base."""

JOURNAL_FILE = "raft.journal"
DUMP_FILE = "raft.dump"
STOP_TIMEOUT_S = 5.0
"""How long `stop()` waits for pysyncobj's thread to finish."""
BIND_TIMEOUT_S = 5.0
"""How long `start()` keeps trying to bind the Raft port."""
POLL_S = 0.01

_FAIL_NAMES = {
    getattr(FAIL_REASON, name): name.lower()
    for name in dir(FAIL_REASON)
    if not name.startswith("_") and isinstance(getattr(FAIL_REASON, name), int)
}


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"a Raft address is host:port, not {address!r}")
    return host, int(port)


class _KeepaliveTransport(TCPTransport):
    """pysyncobj's TCP transport plus a tiny message on every established link every
    `keepalive_s`, so that a link nobody else talks on is not dropped as timed out the moment it
    is needed (see the module docstring). SyncObj ignores message types it does not know."""

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any, *, keepalive_s: float | None) -> None:
        self._keepalive_s = keepalive_s
        self._next_keepalive = 0.0
        self._linked: set[Any] = set()
        super().__init__(syncObj, selfNode, otherNodes)

    def _onNodeConnected(self, node: Any) -> None:
        self._linked.add(node)  # the handshake (keys, node address) is done
        super()._onNodeConnected(node)

    def _onNodeDisconnected(self, node: Any) -> None:
        self._linked.discard(node)
        super()._onNodeDisconnected(node)

    def _onTick(self) -> None:
        super()._onTick()
        if self._keepalive_s is None:
            return
        now = time.monotonic()
        if now >= self._next_keepalive:
            self._next_keepalive = now + self._keepalive_s
            for node in list(self._linked):
                self.send(node, {"type": "keepalive"})


class _History(SyncObjConsumer):
    """The replicated object: a base (the owner's state at an index, or None) and every applied
    command after it as (index, JSON), in log order.

    `append` runs on pysyncobj's thread for each committed entry. `pump` (also on that thread:
    from `append` and on every tick) hands the loop a base it has not handed yet (one loaded with
    a snapshot, past what was handed) and every entry not handed yet; on every tick too, because
    loading a snapshot (at start, or one sent by the leader) replaces `base` and `entries` without
    calling `append`. `fold` (on every tick) keeps `entries` to `max_entries` once the loop has
    `offer`ed a snapshot that covers the oldest ones (None: never folds).
    """

    def __init__(self, deliver: Callable[[list[Handed]], None], max_entries: int | None = None) -> None:
        # Attributes set before SyncObjConsumer.__init__ stay out of pysyncobj's snapshots.
        self._deliver = deliver
        self._max_entries = max_entries
        self._handed = 0
        self._offered: Base | None = None
        self.folds = 0
        super().__init__()
        self.base: Base | None = None  # in the snapshots
        self.entries: list[Entry] = []  # in the snapshots

    @replicated
    def append(self, entry: str) -> int:
        index = int(self._syncObj.raftLastApplied) + 1  # pysyncobj counts it applied right after
        self.entries.append((index, entry))
        self.pump()
        return index

    def offer(self, index: int, data: bytes) -> None:
        """From the loop's thread: the owner's state at `index` (every entry up to it applied);
        replaces the one offered before. One assignment of a tuple: safe across threads."""
        self._offered = (index, data)

    def tick(self) -> None:
        """pysyncobj's tick callback (its thread)."""
        self.fold()
        self.pump()

    def fold(self) -> None:
        """While there are more than `max_entries` entries, fold those covered by the latest
        offered snapshot into the base (nothing when it covers none past the base)."""
        offered, limit = self._offered, self._max_entries
        if offered is None or limit is None or len(self.entries) <= limit:
            return
        index = offered[0]
        if self.base is not None and index <= self.base[0]:
            return
        cut = bisect.bisect_right(self.entries, index, key=itemgetter(0))
        if cut == 0:
            return
        self.base = offered
        self.entries = self.entries[cut:]
        self.folds += 1

    def pump(self) -> None:
        batch: list[Handed] = []
        base = self.base
        if base is not None and base[0] > self._handed:
            batch.append(_Restore(*base))
            self._handed = base[0]
        entries = self.entries
        if entries and entries[-1][0] > self._handed:
            batch.extend(entries[bisect.bisect_right(entries, self._handed, key=itemgetter(0)) :])
            self._handed = entries[-1][0]
        if self._syncObj is not None:
            # everything up to raftLastApplied went through `append` (or came with a snapshot):
            # the no-ops and other non-command entries in between count as applied too
            applied = int(self._syncObj.raftLastApplied)
            if applied > self._handed:
                batch.append((applied, None))
                self._handed = applied
        if batch:
            self._deliver(batch)


class EmbeddedConsensus:
    """One node of an embedded Raft cluster (see the module docstring for the semantics).

    `node_id` and the keys of `partners` are the sites' ids; `self_address` and the values of
    `partners` are their Raft addresses (`host:port`; the node binds exactly `self_address`).
    `data_dir` holds the journal and snapshots (created if missing). `password` is the cluster's
    shared secret: it authenticates and encrypts all Raft traffic.

    Timing: `election_timeout_s` is the range a follower waits without a leader before it starts
    an election (failover takes about that plus one round trip); the leader sends heartbeats every
    `heartbeat_s` (default: a sixth of the shortest election timeout). `keepalive_s` (None: off)
    paces the link keepalive, `compaction_entries` / `compaction_interval_s` the log compaction.

    `snapshotter` (the applier's owner, see `swarm.consensus.base.Snapshotter`) bounds the applied
    history to about `max_entries` entries after a base; without it the history keeps every entry.
    """

    def __init__(
        self,
        node_id: str,
        self_address: str,
        partners: Mapping[str, str],
        data_dir: Path,
        password: str,
        applier: Applier,
        *,
        election_timeout_s: tuple[float, float] = (0.3, 0.6),
        heartbeat_s: float | None = None,
        keepalive_s: float | None = 0.25,
        connection_retry_s: float = 0.25,
        compaction_entries: int = 5000,
        compaction_interval_s: float = 300.0,
        snapshotter: Snapshotter | None = None,
        max_entries: int = 1000,
    ) -> None:
        if max_entries < 2:
            raise ValueError("max_entries must be at least 2")
        if not password:
            raise ValueError("the embedded consensus needs a password (it encrypts Raft traffic)")
        if node_id in partners:
            raise ValueError(f"{node_id!r} is among its own partners")
        low, high = election_timeout_s
        heartbeat = heartbeat_s if heartbeat_s is not None else low / 6
        if not 0 < heartbeat * 3 < low < high:
            raise ValueError("need 0 < 3 * heartbeat_s < election_timeout_s[0] < election_timeout_s[1]")
        addresses = {node_id: self_address, **partners}
        for address in addresses.values():
            _split_address(address)
        if len(set(addresses.values())) != len(addresses):
            raise ValueError("two nodes share a Raft address")
        self.node_id = node_id
        self.self_address = self_address
        self.partners = dict(partners)
        self.data_dir = Path(data_dir)
        self.members: tuple[str, ...] = tuple(sorted(addresses))
        self._id_by_address = {address: node for node, address in addresses.items()}
        self._password = password
        self._applier = applier
        self._election_timeout_s = (low, high)
        self._heartbeat_s = heartbeat
        self._keepalive_s = keepalive_s
        self._connection_retry_s = connection_retry_s
        self._compaction_entries = compaction_entries
        self._compaction_interval_s = compaction_interval_s
        self._snapshotter = snapshotter
        self._max_entries = max_entries
        self._offer_every = max(1, max_entries // 2)

        self._loop: asyncio.AbstractEventLoop | None = None
        self._node: SyncObj | None = None
        self._history: _History | None = None
        self._pending: collections.deque[Handed] = collections.deque()  # from the Raft thread
        self._wake = asyncio.Event()
        self._applier_task: asyncio.Task[None] | None = None
        self._applied_index = 0
        self._apply_errors = 0
        self._since_offer = 0  # commands applied since the last snapshot offered
        self._restores = 0
        self._restore_errors = 0
        self._snapshot_errors = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._in_flight: set[asyncio.Future[tuple[Any, int]]] = set()
        self._stopped = False

    # --- lifecycle ------------------------------------------------------------------------------

    def _conf(self) -> SyncObjConf:
        low, high = self._election_timeout_s
        return SyncObjConf(
            password=self._password,
            bindAddress=self.self_address,  # pysyncobj would bind 0.0.0.0 otherwise
            journalFile=str(self.data_dir / JOURNAL_FILE),
            fullDumpFile=str(self.data_dir / DUMP_FILE),
            useFork=False,  # no fork() of a threaded process to write a snapshot
            appendEntriesUseBatch=False,
            raftMinTimeout=low,
            raftMaxTimeout=high,
            appendEntriesPeriod=self._heartbeat_s,
            autoTickPeriod=self._heartbeat_s,
            leaderFallbackTimeout=2 * high,
            connectionTimeout=max(2.0, 2 * high),
            connectionRetryTime=self._connection_retry_s,
            bindRetryTime=0.1,
            maxBindRetries=int(BIND_TIMEOUT_S / 0.1),
            commandsWaitLeader=True,
            dynamicMembershipChange=False,
            logCompactionMinEntries=self._compaction_entries,
            logCompactionMinTime=self._compaction_interval_s,
        )

    async def start(self) -> None:
        """Start pysyncobj (its thread, its socket on `self_address`, the journal) and the task that
        applies entries on this loop. Returns once the Raft port is bound, without waiting for a
        leader; `ConsensusError` when the port cannot be bound within a few seconds."""
        if self._node is not None or self._stopped:
            raise RuntimeError(f"node {self.node_id} was started already")
        self._loop = asyncio.get_running_loop()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._applier_task = self._loop.create_task(self._apply_entries(), name=f"raft-{self.node_id}-apply")
        self._history = _History(self._from_raft, self._max_entries if self._snapshotter else None)
        try:
            self._node = SyncObj(
                self.self_address,
                list(self.partners.values()),
                conf=self._conf(),
                consumers=[self._history],
                transportClass=_partial_transport(self._keepalive_s),
            )
        except Exception as exc:  # e.g. a journal it cannot open
            await self.stop()
            raise ConsensusError(f"node {self.node_id} cannot start: {exc}") from exc
        self._node.addOnTickCallback(self._history.tick)
        try:
            await asyncio.to_thread(self._node.waitBinded)
        except Exception as exc:
            await self.stop()
            raise ConsensusError(f"node {self.node_id} cannot listen on {self.self_address}: {exc}") from None

    async def stop(self) -> None:
        """Fail the proposals in flight, stop pysyncobj's thread and release its sockets and files,
        stop applying. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        error = ConsensusError(f"node {self.node_id} stopped")
        for future in list(self._in_flight):
            if not future.done():
                future.set_exception(error)
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(error)
        self._waiters.clear()
        node, self._node = self._node, None
        if node is not None:
            if not node.tick_thread_alive():  # it gave up early (could not bind): close its parts here
                node._doDestroy()
            else:
                node.destroy()  # the thread closes sockets and the journal at its next tick, then ends
                if not await asyncio.to_thread(_thread_ended, node, STOP_TIMEOUT_S):
                    logger.warning(
                        "node %s: pysyncobj's thread still runs after %g s", self.node_id, STOP_TIMEOUT_S
                    )
        self._history = None
        task, self._applier_task = self._applier_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pending.clear()

    # --- applying -------------------------------------------------------------------------------

    def _from_raft(self, batch: list[Handed]) -> None:
        """On pysyncobj's thread: queue entries for the loop; never waits for it."""
        loop = self._loop
        if loop is None or self._stopped:
            return
        self._pending.extend(batch)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to apply to
            loop.call_soon_threadsafe(self._wake.set)

    async def _apply_entries(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                handed = self._pending.popleft()
                if isinstance(handed, _Restore):
                    if handed.index > self._applied_index:
                        self._restore(handed)
                        self._applied_index = handed.index
                        self._wake_waiters()
                    continue
                index, text = handed
                if index <= self._applied_index:
                    continue
                if text is not None:
                    await self._apply_one(index, text)
                    self._since_offer += 1
                self._applied_index = index
                self._wake_waiters()
                if self._snapshotter is not None and self._since_offer >= self._offer_every:
                    self._offer()

    def _restore(self, base: _Restore) -> None:
        """Hand the owner the state at a base it has not reached (the entries up to it are gone)."""
        self._since_offer = 0
        if self._snapshotter is None:
            self._restore_errors += 1
            logger.error(
                "node %s: a snapshot's base at %d arrived, but this node has no snapshotter: the "
                "entries up to it are not applied here (configure every node alike)",
                self.node_id,
                base.index,
            )
            return
        try:
            self._snapshotter.restore(base.index, base.data)
            self._restores += 1
        except Exception:
            self._restore_errors += 1
            logger.exception("node %s: restoring the state at %d failed", self.node_id, base.index)

    def _offer(self) -> None:
        """Take the owner's snapshot and leave it for pysyncobj's thread to fold the history into."""
        assert self._snapshotter is not None
        self._since_offer = 0
        history = self._history
        try:
            index, data = self._snapshotter.take()
        except Exception:
            self._snapshot_errors += 1
            logger.exception("node %s: taking a snapshot failed", self.node_id)
            return
        if index > self._applied_index:
            self._snapshot_errors += 1
            logger.error(
                "node %s: a snapshot at %d is past the applied index %d; not used",
                self.node_id,
                index,
                self._applied_index,
            )
            return
        if history is not None:
            history.offer(index, bytes(data))

    async def _apply_one(self, index: int, text: str) -> None:
        try:
            command = command_from_json(text)
        except ValueError as exc:
            self._apply_errors += 1
            logger.error("node %s: log entry %d is not a command (%s); skipped", self.node_id, index, exc)
            return
        try:
            result = self._applier(index, command)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            self._apply_errors += 1
            logger.exception("node %s: the applier failed on entry %d (%s)", self.node_id, index, command.id)

    def _wake_waiters(self) -> None:
        if not self._waiters:
            return
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for index, waiter in self._waiters:
            if index <= self._applied_index:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                keep.append((index, waiter))
        self._waiters = keep

    async def _applied(self, index: int) -> None:
        if self._applied_index >= index:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((index, waiter))
        await waiter

    # --- proposing ------------------------------------------------------------------------------

    async def propose(self, command: Command, timeout_s: float) -> int:
        """Append `command` (on any node: a follower forwards it to the leader); its index once it
        is committed and applied here. `ConsensusError` when that does not happen within
        `timeout_s`, the entry was discarded or the leader changed first, or the node stops; the
        command may still commit then, so retry with the same id."""
        node, history = self._node, self._history
        if node is None or history is None or self._stopped:
            raise ConsensusError(f"node {self.node_id} is not running")
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[tuple[Any, int]] = loop.create_future()

        def settle(result: Any, error: int) -> None:
            if not outcome.done():
                outcome.set_result((result, error))

        def callback(result: Any, error: int) -> None:  # on pysyncobj's thread
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, result, error)

        self._in_flight.add(outcome)
        try:
            async with asyncio.timeout(timeout_s):
                history.append(to_json(command), callback=callback)
                result, error = await outcome
                if error != FAIL_REASON.SUCCESS:
                    raise self._failure(command, error)
                index = int(result)
                await self._applied(index)
                return index
        except TimeoutError:
            raise ConsensusError(
                f"{command.type} {command.id} not committed and applied on {self.node_id} within "
                f"{timeout_s:g} s (it may still commit)"
            ) from None
        finally:
            self._in_flight.discard(outcome)

    def _failure(self, command: Command, error: int) -> ConsensusError:
        reason = _FAIL_NAMES.get(error, str(error))
        message = f"{command.type} {command.id} did not commit through {self.node_id}: {reason}"
        if error in (FAIL_REASON.NOT_LEADER, FAIL_REASON.MISSING_LEADER):
            return NotLeaderError(message, self.leader())
        return ConsensusError(message)

    # --- the cluster as this node sees it ---------------------------------------------------------

    def leader(self) -> str | None:
        """The leader's node id as this node last heard (it may be out of date)."""
        node = self._node
        if node is None:
            return None
        leader = node._getLeader()
        if leader is None:
            return None
        return self._id_by_address.get(getattr(leader, "address", str(leader)))

    def is_leader(self) -> bool:
        """Whether this node is in the leader state (a deposed leader that has not heard of its
        successor yet still says so)."""
        node = self._node
        return node is not None and bool(node._isLeader())

    async def wait_leader(self, timeout_s: float) -> str:
        """The leader's id once this node knows one; `ConsensusError` after `timeout_s`."""
        return await poll_leader(
            self.leader,
            timeout_s,
            POLL_S,
            lambda: f"node {self.node_id} knows no leader after {timeout_s:g} s",
        )

    def status(self) -> ConsensusStatus:
        """This node's view: leader, term, commit index, the last index applied here; in `detail`,
        the history it holds (`log_entries` after the base at `snapshot_index`) and its restores."""
        node, history = self._node, self._history
        leader = self.leader()
        running = node is not None and not self._stopped and bool(node.tick_thread_alive())
        quorum = False
        if node is not None:
            with contextlib.suppress(RuntimeError):  # a set changed under us on the Raft thread
                quorum = bool(node.hasQuorum)
        role = "stopped"
        if running:
            role = "leader" if self.is_leader() else "follower" if leader is not None else "candidate"
        return ConsensusStatus(
            node_id=self.node_id,
            leader=leader,
            term=int(node.raftCurrentTerm) if node is not None else 0,
            commit_index=int(node.raftCommitIndex) if node is not None else 0,
            applied_index=self._applied_index,
            members=self.members,
            healthy=running and leader is not None and quorum,
            detail={
                "backend": "embedded",
                "address": self.self_address,
                "role": role,
                "has_quorum": quorum,
                "raft_applied": int(node.raftLastApplied) if node is not None else 0,
                "pending_applies": len(self._pending),
                "apply_errors": self._apply_errors,
                "log_entries": len(history.entries) if history is not None else 0,
                "snapshot_index": history.base[0] if history is not None and history.base else 0,
                "folds": history.folds if history is not None else 0,
                "restores": self._restores,
                "restore_errors": self._restore_errors,
                "snapshot_errors": self._snapshot_errors,
            },
        )


def _thread_ended(node: SyncObj, timeout_s: float) -> bool:
    """Whether pysyncobj's thread ends within `timeout_s` (polled: it offers no join with a timeout)."""
    deadline = time.monotonic() + timeout_s
    while node.tick_thread_alive():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


def _partial_transport(keepalive_s: float | None) -> Callable[[Any, Any, Iterable[Any]], TCPTransport]:
    """The transport class pysyncobj instantiates as `transportClass(syncObj, selfNode, others)`."""

    def make(syncObj: Any, selfNode: Any, otherNodes: Iterable[Any]) -> TCPTransport:
        return _KeepaliveTransport(syncObj, selfNode, otherNodes, keepalive_s=keepalive_s)

    return make


__all__ = ["EmbeddedConsensus"]
