"""The replicated state machine every site of the swarm holds.

`SwarmState.apply(index, command)` is the consensus backend's `Applier`: the only way the state
changes. It is deterministic (no clocks, no randomness, no I/O, no dependence on the site's own
settings), so every site that applies the same log holds the same state: the same members, the
same desired placement of each service and the same cloud-fallback sites.

A bad entry never stops the log: `apply` validates each command first and changes nothing for
one it refuses (an unknown site, negative replicas, fields of the wrong type), counts the
reason, and moves on; it never raises.

At most once: each command's `id` is remembered, and a command whose id was seen before (a
proposal retried after a timeout or a leader change that had in fact committed) changes nothing.
The memory is bounded to the last `id_memory` ids (default `ID_MEMORY`, 100 000) in insertion
order; a retry of a command older than that many log entries would apply twice. That is safe in
practice: a proposer retries within its propose timeout (seconds), while the control plane
commits a handful of commands a minute (joins, placements, mode changes): even a benchmark
that floods the log with `Note`s at 1 000 a second needs 100 s to push an id out. 100 000 ids
cost about 20 MB. Every site must use the same bound (it is part of the state machine's
definition: a different bound could decide a very late retry differently).

An id is remembered whatever became of its command (applied or refused): the log decided that
proposal once, and a retry of it must not be decided again with a different outcome.

Snapshots: `export()` is the whole state `apply` depends on as plain JSON data (members and
placements in the order the log made them, the cloud-fallback sites, the remembered ids with
their outcomes oldest first, the counters, the recent history, `applied_index`), and
`restore(data)` replaces the state with such an export. A site restored from another site's
export at index N and then given the entries after N ends in the same state, with the same
outcome for every retried id, as a site that applied the whole log: that is what lets the
consensus backends compact their logs (`StateSnapshotter` is the backends' `Snapshotter` over a
state). `listener_errors` is the site's own and is neither exported nor restored. A restore is
announced to the restore listeners (`subscribe_restore`), not to the entry listeners: no entry
was applied.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from swarm.commands import Command, JoinSite, LeaveSite, Note, SetCloudFallback, SetPlacement

log = logging.getLogger(__name__)

ID_MEMORY = 100_000
"""Command ids remembered for at-most-once application (see the module docstring)."""

HISTORY = 256
"""Log entries kept for `GET /v1/sites` and the operator agent."""

Outcome = Literal["applied", "duplicate", "ignored"]
Listener = Callable[[int, Command], None]
"""Called with (index, command) after each log entry, whatever its outcome, on the applier's
thread (the event loop)."""
RestoreListener = Callable[[int], None]
"""Called with the new `applied_index` after `restore` replaced the whole state."""

EXPORT_FORMAT = 1
"""The version of `SwarmState.export()`'s layout; `restore` refuses any other."""


@dataclass(frozen=True, slots=True)
class Member:
    """A site of the swarm as the log knows it."""

    site_id: str
    url: str
    capabilities: dict[str, Any]
    """As the site declared it (plain JSON data); callers must not mutate it."""
    joined_index: int
    """Log index of the `JoinSite` that made it a member (a later re-join of a member keeps it)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data (a deep copy)."""
        return {
            "site_id": self.site_id,
            "url": self.url,
            "capabilities": json.loads(json.dumps(self.capabilities)),
            "joined_index": self.joined_index,
        }


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """What became of one log entry."""

    index: int
    command: Command
    outcome: Outcome
    reason: str | None = None
    """Why a command was ignored: `duplicate`, `unknown_site`, `negative_replicas`, ..."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data: index, type, id, outcome, reason and the command's own fields (JSON
        values; a refused entry that is not valid JSON data appears as its `repr`)."""
        try:
            fields: Any = json.loads(json.dumps(asdict(self.command), allow_nan=False))
        except (TypeError, ValueError):
            fields = {"repr": repr(self.command)}
        command_id = getattr(self.command, "id", None)
        return {
            "index": self.index,
            "type": _type(self.command),
            "id": command_id if isinstance(command_id, str) else None,
            "outcome": self.outcome,
            "reason": self.reason,
            "command": fields,
        }


@dataclass(frozen=True, slots=True)
class _RestoredEntry:
    """A history entry that came with a restored export: only its plain data is known."""

    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.data))


class _Refused(Exception):
    """A command `apply` does not apply; `args[0]` is the reason (a short snake_case word)."""

    @property
    def reason(self) -> str:
        return str(self.args[0])


class SwarmState:
    """Members, desired placement and cloud-fallback sites, changed only by `apply`.

    Placement: `placements[service]` maps site ids to replicas (zeros are not stored). A service
    with an entry has been decided by the swarm (an empty mapping: it runs nowhere); a service
    without one has not (each site runs its own configured replicas). When a member leaves, its
    entries stay in the placements until the coordinator moves them (so the desired total is not
    lost); new placements may only name members.
    """

    def __init__(self, id_memory: int = ID_MEMORY, history: int = HISTORY) -> None:
        if id_memory < 1 or history < 0:
            raise ValueError("id_memory must be at least 1 and history at least 0")
        self.id_memory = id_memory
        self.applied_index = 0
        self._members: dict[str, Member] = {}
        self._placements: dict[str, dict[str, int]] = {}
        self._cloud_fallback: set[str] = set()
        self._seen: OrderedDict[str, str | None] = OrderedDict()
        """Remembered ids, oldest first: None for an applied command, else why it was refused."""
        self._history: deque[HistoryEntry | _RestoredEntry] = deque(maxlen=history)
        self._listeners: list[Listener] = []
        self._restore_listeners: list[RestoreListener] = []
        self.applied = 0
        """Commands applied."""
        self.duplicates = 0
        """Commands ignored because their id was applied (or refused) before."""
        self.ignored: Counter[str] = Counter()
        """Commands refused, by reason (duplicates included, as `duplicate`)."""
        self.listener_errors = 0

    # -- the applier ---------------------------------------------------------------------

    def apply(self, index: int, command: Command) -> None:
        """Apply one committed log entry. Never raises: a refused entry changes nothing but the
        counters, the history and `applied_index`."""
        if not isinstance(index, int) or index <= self.applied_index:
            # The backend promises growing indexes; an entry at or below the applied index was
            # applied already (a replay) and must not be counted or applied again.
            self.ignored["stale_index"] += 1
            log.warning("log entry %r is not after the applied index %d; ignored", index, self.applied_index)
            return
        self.applied_index = index
        outcome: Outcome
        reason: str | None = None
        command_id = getattr(command, "id", None)
        if not isinstance(command_id, str) or not command_id:
            outcome, reason = "ignored", "invalid_id"
        elif command_id in self._seen:
            outcome, reason = "duplicate", "duplicate"
            self.duplicates += 1
        else:
            try:
                self._apply(index, command)
                outcome = "applied"
            except _Refused as refused:
                outcome, reason = "ignored", refused.reason
            except Exception:  # a bug here must not stop the log either
                log.exception("log entry %d (%r) could not be applied", index, command)
                outcome, reason = "ignored", "error"
            self._remember(command_id, reason)
        if reason is None:
            self.applied += 1
        else:
            self.ignored[reason] += 1
            log.info("log entry %d (%s %s) ignored: %s", index, _type(command), command_id, reason)
        self._history.append(HistoryEntry(index, command, outcome, reason))
        for listener in list(self._listeners):
            try:
                listener(index, command)
            except Exception:
                self.listener_errors += 1
                log.exception("a listener of the swarm state failed on entry %d", index)

    def _remember(self, command_id: str, reason: str | None) -> None:
        self._seen[command_id] = reason
        while len(self._seen) > self.id_memory:
            self._seen.popitem(last=False)

    def _apply(self, index: int, command: Command) -> None:
        """Validate, then change the state; `_Refused` before any change for a bad command."""
        if isinstance(command, JoinSite):
            self._join(index, command)
        elif isinstance(command, LeaveSite):
            self._leave(command)
        elif isinstance(command, SetPlacement):
            self._set_placement(command)
        elif isinstance(command, SetCloudFallback):
            self._set_cloud_fallback(command)
        elif isinstance(command, Note):
            if not isinstance(command.text, str):
                raise _Refused("invalid")
        else:
            raise _Refused("unknown_command")

    def _join(self, index: int, command: JoinSite) -> None:
        site_id = _site_id(command.site_id)
        if not isinstance(command.url, str) or not isinstance(command.capabilities, dict):
            raise _Refused("invalid")
        try:
            capabilities = json.loads(json.dumps(command.capabilities, allow_nan=False))
        except (TypeError, ValueError):
            raise _Refused("invalid") from None
        previous = self._members.get(site_id)
        joined = previous.joined_index if previous is not None else index
        self._members[site_id] = Member(site_id, command.url, capabilities, joined)

    def _leave(self, command: LeaveSite) -> None:
        site_id = _site_id(command.site_id)
        if site_id not in self._members:
            raise _Refused("unknown_site")
        del self._members[site_id]
        self._cloud_fallback.discard(site_id)

    def _set_placement(self, command: SetPlacement) -> None:
        if not isinstance(command.service, str) or not command.service:
            raise _Refused("invalid")
        if not isinstance(command.replicas, dict):
            raise _Refused("invalid")
        placement: dict[str, int] = {}
        for site_id, replicas in command.replicas.items():
            if not isinstance(site_id, str) or isinstance(replicas, bool) or not isinstance(replicas, int):
                raise _Refused("invalid")
            if replicas < 0:
                raise _Refused("negative_replicas")
            if replicas == 0:
                continue  # "runs none" is what an absent site means already
            if site_id not in self._members:
                raise _Refused("unknown_site")
            placement[site_id] = replicas
        self._placements[command.service] = dict(sorted(placement.items()))

    def _set_cloud_fallback(self, command: SetCloudFallback) -> None:
        site_id = _site_id(command.site_id)
        if not isinstance(command.enabled, bool):
            raise _Refused("invalid")
        if site_id not in self._members:
            raise _Refused("unknown_site")
        if command.enabled:
            self._cloud_fallback.add(site_id)
        else:
            self._cloud_fallback.discard(site_id)

    # -- reading -------------------------------------------------------------------------

    @property
    def members(self) -> dict[str, Member]:
        """The current members by site id (a new dict each time)."""
        return dict(self._members)

    @property
    def placements(self) -> dict[str, dict[str, int]]:
        """Desired replicas of each decided service on each site (a deep copy)."""
        return {service: dict(sites) for service, sites in self._placements.items()}

    def placement(self, service: str) -> dict[str, int] | None:
        """The desired replicas of `service` by site, or None while the swarm has not decided."""
        sites = self._placements.get(service)
        return None if sites is None else dict(sites)

    def site_placement(self, site_id: str) -> dict[str, int]:
        """The desired replicas on `site_id` of every decided service (0 where it runs none)."""
        return {service: sites.get(site_id, 0) for service, sites in self._placements.items()}

    @property
    def cloud_fallback(self) -> frozenset[str]:
        """Sites that send their excess to the cloud."""
        return frozenset(self._cloud_fallback)

    def outcome(self, command_id: str) -> tuple[bool, str | None] | None:
        """What became of a remembered command: (True, None) applied, (False, reason) refused;
        None for an id not (or no longer) remembered."""
        if command_id not in self._seen:
            return None
        reason = self._seen[command_id]
        return (reason is None, reason)

    def remembered_ids(self) -> int:
        """How many command ids are remembered (at most `id_memory`)."""
        return len(self._seen)

    def history(self) -> list[dict[str, Any]]:
        """The last log entries, oldest first, as plain data."""
        return [entry.to_dict() for entry in self._history]

    def counters(self) -> dict[str, Any]:
        """What `apply` did so far: applied, duplicates, ignored by reason, listener errors."""
        return {
            "applied_index": self.applied_index,
            "applied": self.applied,
            "duplicates": self.duplicates,
            "ignored": dict(sorted(self.ignored.items())),
            "listener_errors": self.listener_errors,
            "remembered_ids": len(self._seen),
        }

    def snapshot(self) -> dict[str, Any]:
        """The state as plain data, in a canonical order (equal on sites that applied the same log)."""
        return {
            "applied_index": self.applied_index,
            "members": [self._members[site].to_dict() for site in sorted(self._members)],
            "placements": {service: dict(self._placements[service]) for service in sorted(self._placements)},
            "cloud_fallback": sorted(self._cloud_fallback),
        }

    # -- snapshots -----------------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """Everything `apply` depends on, as plain JSON data in a deterministic order (two sites
        that applied the same log export equal data); `restore` takes it back."""
        return {
            "format": EXPORT_FORMAT,
            "applied_index": self.applied_index,
            "members": [member.to_dict() for member in self._members.values()],
            "placements": [[service, dict(sites)] for service, sites in self._placements.items()],
            "cloud_fallback": sorted(self._cloud_fallback),
            "seen": [[command_id, reason] for command_id, reason in self._seen.items()],
            "applied": self.applied,
            "duplicates": self.duplicates,
            "ignored": dict(sorted(self.ignored.items())),
            "history": [entry.to_dict() for entry in self._history],
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Replace the state with an `export()` (of this site or another), then tell the restore
        listeners. `ValueError`, changing nothing, for data that is not such an export. Ids beyond
        this state's `id_memory` are forgotten oldest first; history beyond its length likewise."""
        try:
            restored = _Restored.of(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not an export of the swarm state: {type(exc).__name__}: {exc}") from None
        self.applied_index = restored.applied_index
        self._members = restored.members
        self._placements = restored.placements
        self._cloud_fallback = restored.cloud_fallback
        self._seen = restored.seen
        while len(self._seen) > self.id_memory:
            self._seen.popitem(last=False)
        self.applied = restored.applied
        self.duplicates = restored.duplicates
        self.ignored = restored.ignored
        self._history.clear()
        self._history.extend(restored.history)
        for listener in list(self._restore_listeners):
            try:
                listener(self.applied_index)
            except Exception:
                self.listener_errors += 1
                log.exception("a restore listener of the swarm state failed")

    # -- listeners -----------------------------------------------------------------------

    def subscribe(self, callback: Listener) -> Callable[[], None]:
        """Call `callback(index, command)` after each applied log entry; returns the function
        that unsubscribes it. A listener that raises is logged and counted, never propagated."""
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    def subscribe_restore(self, callback: RestoreListener) -> Callable[[], None]:
        """Call `callback(applied_index)` after each `restore` (the whole state was replaced:
        re-read whatever was derived from it); returns the function that unsubscribes it."""
        self._restore_listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._restore_listeners:
                self._restore_listeners.remove(callback)

        return unsubscribe


@dataclass(frozen=True, slots=True)
class _Restored:
    """An export, checked and turned back into the state's own structures."""

    applied_index: int
    members: dict[str, Member]
    placements: dict[str, dict[str, int]]
    cloud_fallback: set[str]
    seen: OrderedDict[str, str | None]
    applied: int
    duplicates: int
    ignored: Counter[str]
    history: list[_RestoredEntry]

    @classmethod
    def of(cls, data: dict[str, Any]) -> _Restored:
        if data.get("format") != EXPORT_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {EXPORT_FORMAT}")
        members: dict[str, Member] = {}
        for item in data["members"]:
            site_id = _text(item["site_id"])
            capabilities = item["capabilities"]
            if not isinstance(capabilities, dict):
                raise TypeError("capabilities must be an object")
            members[site_id] = Member(
                site_id,
                _text(item["url"], empty=True),
                json.loads(json.dumps(capabilities)),
                _count(item["joined_index"]),
            )
        placements: dict[str, dict[str, int]] = {}
        for service, sites in data["placements"]:
            placements[_text(service)] = {_text(site): _count(n) for site, n in dict(sites).items()}
        seen: OrderedDict[str, str | None] = OrderedDict()
        for command_id, reason in data["seen"]:
            seen[_text(command_id)] = None if reason is None else _text(reason)
        history = []
        for entry in data["history"]:
            if not isinstance(entry, dict):
                raise TypeError("a history entry must be an object")
            history.append(_RestoredEntry(json.loads(json.dumps(entry))))
        return cls(
            applied_index=_count(data["applied_index"]),
            members=members,
            placements=placements,
            cloud_fallback={_text(site) for site in data["cloud_fallback"]},
            seen=seen,
            applied=_count(data["applied"]),
            duplicates=_count(data["duplicates"]),
            ignored=Counter({_text(reason): _count(n) for reason, n in dict(data["ignored"]).items()}),
            history=history,
        )


class StateSnapshotter:
    """The consensus backends' `Snapshotter` over a `SwarmState`: `take()` is the applied index and
    the export as compact JSON bytes, `restore(index, data)` restores such bytes. Both run on the
    event loop, between two entries (where the state is)."""

    def __init__(self, state: SwarmState) -> None:
        self.state = state

    def take(self) -> tuple[int, bytes]:
        data = json.dumps(self.state.export(), separators=(",", ":"), allow_nan=False).encode()
        return self.state.applied_index, data

    def restore(self, index: int, data: bytes) -> None:
        try:
            exported = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"a snapshot of the swarm state is not JSON: {exc}") from None
        if not isinstance(exported, dict):
            raise ValueError("a snapshot of the swarm state must be a JSON object")
        state_index = exported.get("applied_index")
        if isinstance(state_index, int) and state_index > index:
            raise ValueError(f"a snapshot said to be at index {index} holds the state at {state_index}")
        self.state.restore(exported)


def _text(value: object, empty: bool = False) -> str:
    if not isinstance(value, str) or not (value or empty):
        raise TypeError(f"expected a non-empty string, not {value!r}")
    return value


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"expected a count, not {value!r}")
    return value


def _site_id(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _Refused("invalid")
    return value


def _type(command: object) -> str:
    return str(getattr(command, "type", type(command).__name__))
