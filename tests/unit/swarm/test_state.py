"""`SwarmState`: the same log gives the same state everywhere; retries apply once; bad entries
are skipped with a reason and never stop the log."""

from __future__ import annotations

import json
from typing import Any

import pytest

from swarm.commands import (
    Command,
    JoinSite,
    LeaveSite,
    Note,
    SetCloudFallback,
    SetPlacement,
    command_from_json,
    to_json,
)
from swarm.state import StateSnapshotter, SwarmState


def _log() -> list[Command]:
    """A small but varied log, including entries that must be refused."""
    join_1 = JoinSite("site-1", "http://10.0.0.1:8080", {"gpus": 1, "cpus": 8})
    return [
        join_1,
        JoinSite("site-2", "http://10.0.0.2:8080", {"gpus": 0, "cpus": 4, "services": ["sensor"]}),
        SetPlacement("inference", {"site-1": 2}),
        SetPlacement("sensor", {"site-1": 1, "site-2": 1}),
        SetPlacement("sensor", {"site-9": 1}),  # unknown site
        SetPlacement("sensor", {"site-1": -1}),  # negative
        join_1,  # a retry of a committed command
        SetCloudFallback("site-2", True),
        Note("hello"),
        JoinSite("site-3", "http://10.0.0.3:8080", {"cpus": 2}),
        LeaveSite("site-3"),
        JoinSite("site-1", "http://10.0.0.11:8080", {"gpus": 2, "cpus": 8}),  # re-join: new url
    ]


def _applied(log: list[Command], state: SwarmState | None = None) -> SwarmState:
    state = state or SwarmState()
    for index, command in enumerate(log, start=1):
        state.apply(index, command)
    return state


def test_the_same_log_gives_equal_snapshots_on_two_sites() -> None:
    log = _log()
    # The second site gets the log as the backends deliver it: JSON on the wire.
    over_the_wire = [command_from_json(to_json(command)) for command in log]
    one, two = _applied(log), _applied(over_the_wire)
    assert one.snapshot() == two.snapshot()
    assert one.history() == two.history()
    assert one.snapshot() == {
        "applied_index": 12,
        "members": [
            {
                "site_id": "site-1",
                "url": "http://10.0.0.11:8080",
                "capabilities": {"gpus": 2, "cpus": 8},
                "joined_index": 1,
            },
            {
                "site_id": "site-2",
                "url": "http://10.0.0.2:8080",
                "capabilities": {"gpus": 0, "cpus": 4, "services": ["sensor"]},
                "joined_index": 2,
            },
        ],
        "placements": {"inference": {"site-1": 2}, "sensor": {"site-1": 1, "site-2": 1}},
        "cloud_fallback": ["site-2"],
    }


def test_a_command_retried_with_the_same_id_is_applied_once() -> None:
    state = SwarmState()
    state.apply(1, JoinSite("site-1", "http://a", {}))
    first = SetPlacement("sensor", {"site-1": 1})
    state.apply(2, first)
    state.apply(3, SetPlacement("sensor", {"site-1": 3}))
    state.apply(4, first)  # committed twice after a timeout: must not undo entry 3
    assert state.placement("sensor") == {"site-1": 3}
    assert state.duplicates == 1
    assert state.applied == 3
    assert state.applied_index == 4
    assert state.outcome(first.id) == (True, None)
    assert [entry["outcome"] for entry in state.history()] == ["applied", "applied", "applied", "duplicate"]


def test_a_refused_command_is_not_decided_again_by_its_retry() -> None:
    state = SwarmState()
    early = SetPlacement("sensor", {"site-1": 1})
    state.apply(1, early)  # site-1 is not a member yet
    state.apply(2, JoinSite("site-1", "http://a", {}))
    state.apply(3, early)
    assert state.placement("sensor") is None
    assert state.outcome(early.id) == (False, "unknown_site")
    assert state.ignored == {"unknown_site": 1, "duplicate": 1}


class _Stranger:
    """An entry of a type this state machine does not know (say, from a newer site)."""

    id = "c0ffee"
    type = "set_quota"


def test_bad_entries_are_skipped_with_reasons_and_the_log_goes_on() -> None:
    state = SwarmState()
    state.apply(1, JoinSite("site-1", "http://a", {"cpus": 4}))
    bad: list[Any] = [
        SetPlacement("sensor", {"site-2": 1}),
        SetPlacement("sensor", {"site-1": -2}),
        SetPlacement("sensor", {"site-1": "3"}),  # type: ignore[dict-item]  # a string from a hand-written JSON entry
        SetPlacement("sensor", {"site-1": True}),
        SetPlacement("", {"site-1": 1}),
        SetPlacement("sensor", ["site-1"]),  # type: ignore[arg-type]
        LeaveSite("site-7"),
        SetCloudFallback("site-7", True),
        SetCloudFallback("site-1", "yes"),  # type: ignore[arg-type]
        JoinSite("site-2", "http://b", {"bad": object()}),
        JoinSite("", "http://b", {}),
        Note("no id", id=""),
        "not a command at all",  # no id either
        _Stranger(),
    ]
    for index, command in enumerate(bad, start=2):
        state.apply(index, command)
    state.apply(100, SetPlacement("sensor", {"site-1": 2, "site-3": 0}))  # zeros need no member
    assert state.snapshot() == {
        "applied_index": 100,
        "members": [{"site_id": "site-1", "url": "http://a", "capabilities": {"cpus": 4}, "joined_index": 1}],
        "placements": {"sensor": {"site-1": 2}},
        "cloud_fallback": [],
    }
    assert state.ignored == {
        "unknown_site": 3,
        "negative_replicas": 1,
        "invalid": 7,
        "invalid_id": 2,
        "unknown_command": 1,
    }
    assert state.applied == 2
    reasons = [
        (entry["index"], entry["reason"]) for entry in state.history() if entry["outcome"] == "ignored"
    ]
    assert reasons[:2] == [(2, "unknown_site"), (3, "negative_replicas")]
    json.dumps(state.history())  # what GET /v1/sites serves, even for entries it refused


def test_an_entry_at_or_below_the_applied_index_is_not_applied_again() -> None:
    state = SwarmState()
    state.apply(5, JoinSite("site-1", "http://a", {}))
    state.apply(5, LeaveSite("site-1"))
    state.apply(3, LeaveSite("site-1"))
    assert list(state.members) == ["site-1"]
    assert state.applied_index == 5
    assert state.ignored == {"stale_index": 2}


def test_the_id_memory_is_bounded_and_forgets_the_oldest_first() -> None:
    state = SwarmState(id_memory=3, history=2)
    notes = [Note(f"n{i}") for i in range(5)]
    for index, note in enumerate(notes, start=1):
        state.apply(index, note)
    assert state.remembered_ids() == 3
    assert state.outcome(notes[0].id) is None and state.outcome(notes[1].id) is None
    assert state.outcome(notes[4].id) == (True, None)
    state.apply(6, notes[4])  # still remembered: a duplicate
    state.apply(7, notes[0])  # forgotten: older than the memory, so it applies again (documented)
    assert state.duplicates == 1
    assert state.applied == 6
    assert [entry["index"] for entry in state.history()] == [6, 7]


def test_leaving_keeps_the_placement_for_the_coordinator_and_drops_the_cloud_mode() -> None:
    state = _applied(
        [
            JoinSite("site-1", "http://a", {}),
            JoinSite("site-2", "http://b", {}),
            SetPlacement("sensor", {"site-1": 1, "site-2": 2}),
            SetCloudFallback("site-2", True),
            LeaveSite("site-2"),
            SetPlacement("game-state", {"site-2": 1}),  # no longer a member
            SetPlacement("inference", {}),  # decided: runs nowhere
        ]
    )
    assert list(state.members) == ["site-1"]
    assert state.placement("sensor") == {"site-1": 1, "site-2": 2}
    assert state.placement("game-state") is None
    assert state.placement("inference") == {}
    assert state.site_placement("site-1") == {"sensor": 1, "inference": 0}
    assert state.cloud_fallback == frozenset()


def test_listeners_run_after_each_entry_and_a_failing_one_is_counted() -> None:
    state = SwarmState()
    seen: list[tuple[int, str, int]] = []

    def record(index: int, command: Command) -> None:
        seen.append((index, command.type, state.applied_index))

    def broken(index: int, command: Command) -> None:
        raise RuntimeError("listener bug")

    unsubscribe = state.subscribe(record)
    state.subscribe(broken)
    state.apply(1, JoinSite("site-1", "http://a", {}))
    state.apply(2, LeaveSite("site-9"))  # refused entries are announced too
    unsubscribe()
    state.apply(3, Note("after"))
    assert seen == [(1, "join_site", 1), (2, "leave_site", 2)]
    assert state.listener_errors == 3
    assert state.applied_index == 3


def test_snapshot_is_plain_data_that_callers_cannot_change_the_state_through() -> None:
    capabilities: dict[str, Any] = {"gpus": 1, "services": ["inference"]}
    state = SwarmState()
    state.apply(1, JoinSite("site-1", "http://a", capabilities))
    state.apply(2, SetPlacement("inference", {"site-1": 1}))
    capabilities["services"].append("sensor")
    snapshot = state.snapshot()
    snapshot["members"][0]["capabilities"]["gpus"] = 0
    snapshot["placements"]["inference"]["site-1"] = 5
    state.placements["inference"]["site-1"] = 6
    assert state.snapshot()["members"][0]["capabilities"] == {"gpus": 1, "services": ["inference"]}
    assert state.placement("inference") == {"site-1": 1}


def _retried_and_more(log: list[Command]) -> list[Command]:
    """Commands that follow `log`: retries of some of its ids (applied and refused ones) and new ones."""
    return [
        log[0],  # an applied JoinSite retried
        log[4],  # a refused SetPlacement retried
        SetPlacement("inference", {"site-1": 1, "site-2": 1}),
        LeaveSite("site-2"),
        log[7],  # SetCloudFallback retried after its site left
        Note("later"),
    ]


def test_a_state_restored_from_an_export_goes_on_exactly_like_the_original() -> None:
    log = _log()
    original = _applied(log)
    exported = original.export()
    json.dumps(exported, allow_nan=False)  # plain JSON data
    copy = SwarmState()
    copy.apply(1, Note("a state that is replaced whole"))
    copy.restore(json.loads(json.dumps(exported)))
    assert copy.export() == exported
    assert copy.snapshot() == original.snapshot() and copy.history() == original.history()

    later = _retried_and_more(log)
    for offset, command in enumerate(later, start=1):
        original.apply(len(log) + offset, command)
        copy.apply(len(log) + offset, command_from_json(to_json(command)))
    assert copy.export() == original.export()
    assert copy.duplicates == original.duplicates == 4  # the retries stayed retries
    for command in log:
        assert copy.outcome(command.id) == original.outcome(command.id) is not None
    assert list(copy.members) == list(original.members)  # the log's order, not a sorted one


def test_export_keeps_the_id_memory_and_restore_fits_it_to_its_own_bound() -> None:
    notes = [Note(f"n{i}") for i in range(6)]
    source = SwarmState(id_memory=10, history=4)
    for index, note in enumerate(notes, start=1):
        source.apply(index, note)
    small = SwarmState(id_memory=3, history=2)
    small.restore(source.export())
    assert small.remembered_ids() == 3
    assert small.outcome(notes[2].id) is None and small.outcome(notes[3].id) == (True, None)
    assert [entry["index"] for entry in small.history()] == [5, 6]
    small.apply(7, notes[5])
    assert small.duplicates == 1


def test_a_restore_is_announced_and_bad_data_changes_nothing() -> None:
    state = _applied(_log())
    before = state.export()
    restored: list[int] = []
    applied: list[int] = []
    state.subscribe(lambda index, command: applied.append(index))
    unsubscribe = state.subscribe_restore(restored.append)
    broken = {**before, "members": [{"site_id": "", "url": "x", "capabilities": {}, "joined_index": 1}]}
    for bad in ({}, {**before, "format": 99}, broken, {**before, "seen": [["id", 3]]}):
        with pytest.raises(ValueError):
            state.restore(bad)
    assert state.export() == before and restored == []
    other = SwarmState()
    other.apply(40, JoinSite("site-9", "http://z", {}))
    state.restore(other.export())
    assert restored == [40] and applied == []
    assert list(state.members) == ["site-9"] and state.applied_index == 40
    unsubscribe()
    state.restore(before)
    assert restored == [40]


def test_the_snapshotter_round_trips_the_state_as_json_bytes() -> None:
    source = _applied(_log())
    index, data = StateSnapshotter(source).take()
    assert index == source.applied_index == 12
    target = SwarmState()
    StateSnapshotter(target).restore(index, data)
    assert target.export() == source.export()
    with pytest.raises(ValueError):
        StateSnapshotter(target).restore(3, data)  # a state past the index it is said to be at
    with pytest.raises(ValueError):
        StateSnapshotter(target).restore(12, b"not json")
