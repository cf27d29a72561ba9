"""Admission control: the adaptive limit, predictions, and the deadline-aware bounded queue."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent.admission import (
    FORGET_AFTER_S,
    PRUNE_EVERY,
    Admission,
    AdmissionSettings,
    GradientLimit,
    InstanceGate,
    LoopLag,
)
from agent.inflight import LocalLoadCounters, SharedLoadCounters
from tools.runtimes.base import Instance


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _gate(
    max_limit: int = 4, initial: int = 2, max_queue: int = 8, clock: Clock | None = None, **extra: float
) -> InstanceGate:
    settings = AdmissionSettings(
        max_limit=max_limit, initial_limit=initial, min_limit=1, max_queue=max_queue, **extra
    )
    return InstanceGate("svc-1", LocalLoadCounters(), settings, clock or time.perf_counter)


def test_latency_rising_at_a_busy_limit_shrinks_it() -> None:
    limit = GradientLimit(initial=20, min_limit=1, max_limit=64)
    for _ in range(200):
        limit.update(2.0, inflight=20)
    steady = limit.limit
    for _ in range(30):
        limit.update(8.0, inflight=int(limit.limit))
    assert limit.limit < steady * 0.75


def test_steady_latency_at_a_busy_limit_grows_it_up_to_the_ceiling() -> None:
    limit = GradientLimit(initial=4, min_limit=1, max_limit=16)
    for _ in range(500):
        limit.update(2.0, inflight=int(limit.limit))
    assert limit.limit == 16


def test_a_limit_the_caller_does_not_use_does_not_grow() -> None:
    limit = GradientLimit(initial=10, min_limit=1, max_limit=64)
    for _ in range(200):
        limit.update(2.0, inflight=2)
    assert limit.limit == 10


def test_the_limit_recovers_once_a_latency_spike_is_over() -> None:
    limit = GradientLimit(initial=20, min_limit=1, max_limit=64)
    for _ in range(100):
        limit.update(2.0, inflight=20)
    for _ in range(100):
        limit.update(40.0, inflight=int(limit.limit))
    low = limit.limit
    for _ in range(300):
        limit.update(2.0, inflight=int(limit.limit))
    assert limit.limit > low + 10


def test_prediction_is_the_work_ahead_times_what_one_request_costs() -> None:
    gate = _gate()
    assert gate.try_acquire() and gate.try_acquire()
    gate.release(10.0, concurrency=2)  # 10 ms with 2 under way: 5 ms each
    assert gate.service_ms == pytest.approx(5.0)
    assert gate.outstanding == 1
    assert gate.predicted_ms == pytest.approx(10.0)  # one ahead, plus itself


def test_an_idle_instance_long_untried_predicts_zero_so_one_request_can_probe_it() -> None:
    clock = Clock()
    gate = _gate(clock=clock, probe_after_s=1.0)
    assert gate.try_acquire()
    gate.release(500.0, concurrency=1)
    assert gate.predicted_ms == pytest.approx(500.0)
    clock.now += 1.5
    assert gate.predicted_ms == 0.0


def test_slots_beyond_the_limit_are_not_taken_at_once() -> None:
    gate = _gate(initial=2)
    assert [gate.try_acquire() for _ in range(3)] == [True, True, False]
    assert gate.inflight == 2


async def test_a_waiter_gets_the_slot_a_finished_request_frees() -> None:
    gate = _gate(initial=1)
    assert gate.try_acquire()
    waiter = asyncio.create_task(gate.acquire(time.perf_counter() + 5))
    await _until(lambda: gate.queued == 1)
    gate.release(1.0, concurrency=1)
    assert await waiter is True
    assert (gate.inflight, gate.queued) == (1, 0)


async def test_a_waiter_whose_budget_no_longer_covers_the_latency_is_refused_in_turn() -> None:
    gate = _gate(initial=1)
    assert gate.try_acquire()
    gate.release(200.0, concurrency=1)  # the instance takes 200 ms per request
    assert gate.try_acquire()
    waiter = asyncio.create_task(gate.acquire(time.perf_counter() + 0.05))  # 50 ms left
    await _until(lambda: gate.queued == 1)
    gate.release(None, concurrency=1)
    assert await waiter is False
    assert (gate.inflight, gate.queued, gate.refused_in_queue) == (0, 0, 1)


async def test_a_full_queue_refuses_at_once() -> None:
    gate = _gate(initial=1, max_queue=1)
    assert gate.try_acquire()
    first = asyncio.create_task(gate.acquire(time.perf_counter() + 5))
    await _until(lambda: gate.queued == 1)
    assert await gate.acquire(time.perf_counter() + 5) is False
    assert not gate.has_room
    gate.release(1.0, concurrency=1)
    assert await first is True


async def test_a_waiter_past_its_deadline_leaves_the_queue() -> None:
    gate = _gate(initial=1)
    assert gate.try_acquire()
    assert await gate.acquire(time.perf_counter() + 0.02) is False
    assert gate.queued == 0


async def test_a_cancelled_waiter_leaves_no_count_behind() -> None:
    gate = _gate(initial=1)
    assert gate.try_acquire()
    waiter = asyncio.create_task(gate.acquire(time.perf_counter() + 5))
    await _until(lambda: gate.queued == 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.queued == 0
    gate.release(1.0, concurrency=1)
    assert gate.inflight == 0


async def test_behind_a_standing_queue_the_newest_waiter_goes_first() -> None:
    clock = Clock()
    gate = _gate(initial=1, clock=clock, queue_target_ms=60_000.0, standing_after_ms=100.0)
    assert gate.try_acquire()
    order: list[str] = []

    async def wait(name: str) -> None:
        if await gate.acquire(clock.now + 5):
            order.append(name)
            gate.release(1.0, concurrency=1)

    old = asyncio.create_task(wait("old"))
    await _until(lambda: gate.queued == 1)
    clock.now += 0.150  # the queue has not been empty for 150 ms: a standing queue
    assert gate.standing(clock.now)
    new = asyncio.create_task(wait("new"))
    await _until(lambda: gate.queued == 2)
    gate.release(None, concurrency=1)
    await asyncio.gather(old, new)
    assert order == ["new", "old"]


async def test_behind_a_standing_queue_a_newcomer_waits_only_the_queue_target() -> None:
    clock = Clock()
    gate = _gate(initial=1, clock=clock, queue_target_ms=20.0, standing_after_ms=100.0)
    assert gate.try_acquire()
    first = asyncio.create_task(gate.acquire(clock.now + 5))
    await _until(lambda: gate.queued == 1)
    clock.now += 0.150
    # 5 s of budget left, but behind a standing queue it waits the 20 ms target, then gives up.
    assert await gate.acquire(clock.now + 5) is False
    assert gate.queued == 1
    gate.release(1.0, concurrency=1)
    assert await first is True
    assert not gate.standing(clock.now)


async def test_a_gate_counts_the_requests_other_processes_have_in_flight() -> None:
    table = SharedLoadCounters.create(rows=2, slots=1)
    try:
        mine = SharedLoadCounters.attach(table.name, 2, 1, 0, lambda _: 0)
        theirs = SharedLoadCounters.attach(table.name, 2, 1, 1, lambda _: 0)
        settings = AdmissionSettings(max_limit=2, initial_limit=2, min_limit=1)
        gate = InstanceGate("svc-1", mine, settings)
        theirs.add_inflight(0, 2)
        assert gate.inflight == 2 and not gate.try_acquire()
        waiter = asyncio.create_task(gate.acquire(time.perf_counter() + 5))
        await _until(lambda: gate.queued == 1)
        theirs.add_inflight(0, -1)  # the other process's request ends: no local release wakes us
        assert await waiter is True
        assert gate.inflight == 2
        mine.close()
        theirs.close()
    finally:
        table.close()


def test_gates_of_instances_no_longer_planned_are_dropped_but_busy_ones_kept() -> None:
    clock = Clock()
    admission = Admission(LocalLoadCounters(), clock=clock)
    old, busy, live = (Instance(i, "svc", "127.0.0.1", 1, "img", False, "running") for i in ("a", "b", "c"))
    admission.loads([old, busy, live])
    assert admission.gate(busy).try_acquire()
    clock.now += FORGET_AFTER_S + 1
    for _ in range(PRUNE_EVERY):
        admission.loads([live])
    assert set(admission.gates) == {"b", "c"}


async def test_loop_lag_shows_a_blocked_event_loop() -> None:
    lag = LoopLag(interval_s=0.002)
    lag.start()
    try:
        await asyncio.sleep(0.01)
        time.sleep(0.05)  # noqa: ASYNC251 (blocks the loop on purpose, as a CPU-bound handler would)
        await _until(lambda: lag.worst_ms >= 30)
    finally:
        await lag.stop()


async def _until(condition, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)
