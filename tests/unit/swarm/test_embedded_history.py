"""The embedded backend's replicated history (`_History`) without a cluster: what it hands the
loop, how it folds its oldest entries into a base, and what it hands after a snapshot is loaded.
pysyncobj is not running here: entries are set as its apply would leave them."""

from __future__ import annotations

from swarm.consensus.embedded import Handed, _History, _Restore


def _history(max_entries: int | None) -> tuple[_History, list[Handed]]:
    handed: list[Handed] = []
    return _History(handed.extend, max_entries), handed


def test_it_folds_the_entries_an_offered_snapshot_covers_once_over_its_bound() -> None:
    history, handed = _history(max_entries=4)
    history.entries = [(index, f"c{index}") for index in range(1, 5)]
    history.offer(2, b"state@2")
    history.tick()
    assert history.base is None and len(history.entries) == 4  # not over the bound: kept
    assert handed == [(index, f"c{index}") for index in range(1, 5)]

    history.entries.append((6, "c6"))  # index 5 was a no-op (a new leader's entry)
    history.tick()
    assert history.base == (2, b"state@2")
    assert history.entries == [(3, "c3"), (4, "c4"), (6, "c6")]
    assert handed[-1] == (6, "c6")  # what was handed already is not handed again, nor the base

    history.entries += [(7, "c7"), (8, "c8")]
    history.offer(1, b"state@1")  # older than the base: never folded in
    history.tick()
    assert history.base == (2, b"state@2") and len(history.entries) == 5
    history.offer(7, b"state@7")
    history.tick()
    assert history.base == (7, b"state@7") and history.entries == [(8, "c8")]
    assert history.folds == 2


def test_without_a_bound_nothing_is_folded() -> None:
    history, _ = _history(max_entries=None)
    history.entries = [(index, f"c{index}") for index in range(1, 50)]
    history.offer(40, b"state@40")
    history.tick()
    assert history.base is None and len(history.entries) == 49


def test_a_loaded_snapshot_hands_its_base_first_when_past_what_was_handed() -> None:
    history, handed = _history(max_entries=4)
    history.entries = [(1, "c1"), (2, "c2")]
    history.pump()
    handed.clear()
    # a leader's snapshot replaces the replicated attributes, as pysyncobj's load does
    history._deserialize({"base": (10, b"state@10"), "entries": [(11, "c11"), (12, "c12")]})
    history.pump()
    assert handed == [_Restore(10, b"state@10"), (11, "c11"), (12, "c12")]

    handed.clear()  # one whose base this node has passed: only the entries it lacks
    history._deserialize({"base": (8, b"state@8"), "entries": [(9, "c9"), (12, "c12"), (13, "c13")]})
    history.pump()
    assert handed == [(13, "c13")]


def test_the_base_and_entries_are_what_goes_into_pysyncobjs_snapshots() -> None:
    history, _ = _history(max_entries=4)
    history.entries = [(index, f"c{index}") for index in range(1, 7)]
    history.offer(5, b"state@5")
    history.fold()
    assert history._serialize() == {"base": (5, b"state@5"), "entries": [(6, "c6")]}
