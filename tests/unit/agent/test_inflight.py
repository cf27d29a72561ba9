"""Load counters: one process's lists, and the shared-memory table that front-door workers share."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.inflight import LocalLoadCounters, SharedLoadCounters


def test_local_counters_give_each_instance_its_own_cells() -> None:
    counters = LocalLoadCounters()
    a, b = counters.slot("sensor-1"), counters.slot("sensor-2")
    counters.add_inflight(a, 2)
    counters.add_queued(b, 3)
    assert (counters.inflight(a), counters.queued(a)) == (2, 0)
    assert (counters.inflight(b), counters.queued(b)) == (0, 3)
    assert counters.slot("sensor-1") == a


def test_each_worker_writes_its_own_row_and_reads_the_sum_of_all() -> None:
    owner = SharedLoadCounters.create(rows=3, slots=4)
    try:
        workers = [owner.attach(owner.name, 3, 4, row, int) for row in range(3)]
        for row, worker in enumerate(workers):
            worker.add_inflight(worker.slot("2"), row + 1)
        workers[1].add_queued(2, 5)
        assert [w.inflight(2) for w in workers] == [6, 6, 6]
        assert owner.queued(2) == 5 and owner.inflight(1) == 0
        owner.clear_row(2)
        assert workers[0].inflight(2) == 3
        for worker in workers:
            worker.close()
    finally:
        owner.close()


def test_another_process_sees_and_changes_the_same_counts() -> None:
    owner = SharedLoadCounters.create(rows=2, slots=2)
    try:
        mine = owner.attach(owner.name, 2, 2, 0, int)
        mine.add_inflight(1, 4)
        script = (
            "import sys; from agent.inflight import SharedLoadCounters as S; "
            f"c = S.attach({owner.name!r}, 2, 2, 1, int); print(c.inflight(1)); c.add_inflight(1, 7); c.close()"
        )
        seen = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        assert seen.stdout.strip() == "4"
        assert mine.inflight(1) == 11
        mine.close()
    finally:
        owner.close()


def test_a_worker_row_outside_the_table_is_refused() -> None:
    owner = SharedLoadCounters.create(rows=1, slots=1)
    try:
        with pytest.raises(ValueError, match="row 1"):
            owner.attach(owner.name, 1, 1, 1, int)
    finally:
        owner.close()
