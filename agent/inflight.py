"""How many requests each instance has in flight and queued, summed over every front-door process.

One site may run several front-door processes (`mec serve --workers N`) in front of one set of
instances. Admission needs the instance's whole load, not one process's share, so the counts live
in a table every process reads and each process writes only its own row of: no locks, no lost
updates, and a process that dies takes its row with it (the supervisor zeroes it).

* `LocalLoadCounters`: one process; plain lists.
* `SharedLoadCounters`: a `multiprocessing.shared_memory` block of int64 cells,
  `[row][slot][inflight, queued]`, created by the supervisor (`create`) and attached by each worker
  (`attach`). A slot is the supervisor's number for one instance id (`slot_of`).

Every method is a few list or memoryview operations: the fast path calls them per request.
"""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing import resource_tracker, shared_memory
from typing import Protocol

_INFLIGHT, _QUEUED = 0, 1
_CELLS = 2
_CELL_BYTES = 8


class LoadCounters(Protocol):
    """Per-instance counts of requests in flight (sent, not yet answered) and queued at the site."""

    def slot(self, instance_id: str) -> int:
        """The cell index of an instance (stable for as long as the instance id exists)."""
        ...

    def inflight(self, slot: int) -> int:
        """Requests in flight at the instance, from every front-door process."""
        ...

    def queued(self, slot: int) -> int:
        """Requests waiting at the site for a slot of the instance, from every process."""
        ...

    def add_inflight(self, slot: int, delta: int) -> None:
        """Change this process's own in-flight count of the instance."""
        ...

    def add_queued(self, slot: int, delta: int) -> None:
        """Change this process's own queued count of the instance."""
        ...


class LocalLoadCounters:
    """The counters of a site that runs one front-door process."""

    def __init__(self) -> None:
        self._slots: dict[str, int] = {}
        self._inflight: list[int] = []
        self._queued: list[int] = []

    def slot(self, instance_id: str) -> int:
        slot = self._slots.get(instance_id)
        if slot is None:
            slot = self._slots[instance_id] = len(self._inflight)
            self._inflight.append(0)
            self._queued.append(0)
        return slot

    def inflight(self, slot: int) -> int:
        return self._inflight[slot]

    def queued(self, slot: int) -> int:
        return self._queued[slot]

    def add_inflight(self, slot: int, delta: int) -> None:
        self._inflight[slot] += delta

    def add_queued(self, slot: int, delta: int) -> None:
        self._queued[slot] += delta


class SharedLoadCounters:
    """Counters in shared memory: `rows` front-door processes × `slots` instances.

    The supervisor `create`s the block (and `unlink`s it at the end); each worker `attach`es with
    its own `row` and a `slot_of` that maps instance ids to the supervisor's slot numbers. Reads
    sum one column (one cell per process); writes touch only the caller's row.
    """

    def __init__(
        self,
        block: shared_memory.SharedMemory,
        rows: int,
        slots: int,
        row: int | None,
        slot_of: Callable[[str], int] | None,
        owner: bool,
    ) -> None:
        self._block = block
        self.rows = rows
        self.slots = slots
        self.row = row
        self._slot_of = slot_of
        self._owner = owner
        buf = block.buf
        assert buf is not None
        self._cells = buf[: rows * slots * _CELLS * _CELL_BYTES].cast("q")
        self._stride = slots * _CELLS

    @staticmethod
    def size(rows: int, slots: int) -> int:
        return rows * slots * _CELLS * _CELL_BYTES

    @classmethod
    def create(cls, rows: int, slots: int) -> SharedLoadCounters:
        """A new zeroed block for `rows` processes and `slots` instances (the supervisor's)."""
        if rows < 1 or slots < 1:
            raise ValueError("rows and slots must be at least 1")
        block = shared_memory.SharedMemory(create=True, size=cls.size(rows, slots))
        counters = cls(block, rows, slots, None, None, owner=True)
        for row in range(rows):
            counters.clear_row(row)
        return counters

    @classmethod
    def attach(
        cls, name: str, rows: int, slots: int, row: int, slot_of: Callable[[str], int]
    ) -> SharedLoadCounters:
        """A worker's view of the supervisor's block: it writes row `row` only."""
        if not 0 <= row < rows:
            raise ValueError(f"row {row} is outside 0..{rows - 1}")
        block = shared_memory.SharedMemory(name=name)
        # Python < 3.13 registers an attached block with this process's resource tracker, which
        # would unlink it when the worker exits; the supervisor owns it.
        resource_tracker.unregister(block._name, "shared_memory")  # type: ignore[attr-defined]
        if block.size < cls.size(rows, slots):
            block.close()
            raise ValueError(f"shared block {name} is smaller than {rows} rows × {slots} slots")
        return cls(block, rows, slots, row, slot_of, owner=False)

    @property
    def name(self) -> str:
        return self._block.name

    def slot(self, instance_id: str) -> int:
        if self._slot_of is None:
            raise RuntimeError("the supervisor's view has no slot table; workers resolve slots")
        slot = self._slot_of(instance_id)
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} of {instance_id} is outside 0..{self.slots - 1}")
        return slot

    def _column(self, slot: int, cell: int) -> int:
        cells, stride, base = self._cells, self._stride, slot * _CELLS + cell
        return sum(cells[row * stride + base] for row in range(self.rows))

    def inflight(self, slot: int) -> int:
        return self._column(slot, _INFLIGHT)

    def queued(self, slot: int) -> int:
        return self._column(slot, _QUEUED)

    def _own(self, slot: int, cell: int) -> int:
        if self.row is None:
            raise RuntimeError("the supervisor's view writes no row")
        return self.row * self._stride + slot * _CELLS + cell

    def add_inflight(self, slot: int, delta: int) -> None:
        index = self._own(slot, _INFLIGHT)
        self._cells[index] += delta

    def add_queued(self, slot: int, delta: int) -> None:
        index = self._own(slot, _QUEUED)
        self._cells[index] += delta

    def clear_row(self, row: int) -> None:
        """Zero one process's row (the supervisor does it when that worker exits)."""
        start = row * self._stride
        for index in range(start, start + self._stride):
            self._cells[index] = 0

    def clear_slot(self, slot: int) -> None:
        """Zero one instance's cells in every row (before its slot number is given out again)."""
        for row in range(self.rows):
            base = row * self._stride + slot * _CELLS
            self._cells[base + _INFLIGHT] = 0
            self._cells[base + _QUEUED] = 0

    def close(self) -> None:
        """Detach; the owner also removes the block."""
        self._cells.release()
        self._block.close()
        if self._owner:
            self._block.unlink()
