"""The interface every consensus backend implements.

The log holds `swarm.commands.Command`s. A backend delivers every committed command, in log
order and exactly once per index, to the `Applier` it was built with, on the event loop of the
site (never on a library thread). `propose` returns once the command is committed *and* applied
locally, so a caller that got an index reads its own write.

Compaction: a backend built with a `Snapshotter` keeps its log bounded. It takes the owner's
snapshot (`take()`, on the event loop, between two applies) and drops the entries the snapshot
covers; a node that needs entries no longer kept (a restart, a follower too far behind) gets
`restore(index, data)` of a snapshot first, then the entries after `index` through the `Applier`
as usual. A restore replaces the whole state and counts as applied up to `index`. Without a
`Snapshotter` a backend keeps every entry and replays them all. Every node of a cluster must be
configured alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from swarm.commands import Command

Applier = Callable[[int, Command], Awaitable[None] | None]
"""Called with (log index, command) for each committed entry, in order; indexes only grow."""


class Snapshotter(Protocol):
    """The owner's state machine as the backend compacts and restores it. Both methods run on the
    event loop the backend applies on, never while an `Applier` call is in progress."""

    def take(self) -> tuple[int, bytes]:
        """The index up to which every entry has been applied to the state, and the state
        serialized (the same bytes on every node at the same index)."""

    def restore(self, index: int, data: bytes) -> None:
        """Replace the state with `data`, a `take()` at `index` (maybe another node's); the next
        entry the applier gets is after `index`. Raises `ValueError` for data it cannot read."""


async def poll_leader(
    leader: Callable[[], str | None], timeout_s: float, poll_s: float, why_none: Callable[[], str]
) -> str:
    """`Consensus.wait_leader` for a backend that knows its leader locally: `leader()` polled
    every `poll_s` until it names one; `ConsensusError` with `why_none()` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = leader()
        if found is not None:
            return found
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ConsensusError(why_none())
        await asyncio.sleep(min(poll_s, remaining))


class ConsensusError(Exception):
    """A proposal that did not commit: no leader, lost leadership, timed out, or stopped."""


class NotLeaderError(ConsensusError):
    """This node is not the leader (and the backend does not forward); `leader` says who is."""

    def __init__(self, message: str, leader: str | None) -> None:
        super().__init__(message)
        self.leader = leader


@dataclass(frozen=True, slots=True)
class ConsensusStatus:
    """A node's view of the cluster."""

    node_id: str
    leader: str | None
    term: int
    commit_index: int
    applied_index: int
    members: tuple[str, ...]
    healthy: bool
    detail: dict[str, object] = field(default_factory=dict)


class Consensus(Protocol):
    """One node of the cluster. Node ids are the sites' ids."""

    node_id: str

    async def start(self) -> None:
        """Join the cluster (start the node's own threads and sockets); returns without waiting
        for a leader."""

    async def stop(self) -> None:
        """Leave the cluster's traffic and release every thread, socket and file. Idempotent."""

    async def propose(self, command: Command, timeout_s: float) -> int:
        """Append `command` to the log; its index once committed and applied here.

        Raises `ConsensusError` when it cannot commit within `timeout_s` (the command may still
        commit later: its id makes a retry safe).
        """

    def leader(self) -> str | None:
        """The current leader's node id, if known."""

    def is_leader(self) -> bool: ...

    async def wait_leader(self, timeout_s: float) -> str:
        """The leader's id once there is one; `ConsensusError` after `timeout_s`."""

    def status(self) -> ConsensusStatus: ...
