"""Admission control for the fast path: which instance can still answer a request in time.

Each instance has an `InstanceGate`:

* an **adaptive concurrency limit** (`GradientLimit`, after Netflix's Gradient2): how many requests
  the site lets the instance work on at once, moved by the ratio of the long-term to the recent
  upstream latency. When latency rises above its long-term level the limit shrinks; while it
  stays there and the limit is in use, it grows by a little headroom.
* a **service-time estimate**: the instance's recent latency divided by the requests it was
  working on when each was sent, i.e. the time one more request costs it. A request sent now is
  predicted to be answered after `(in flight + queued + 1) × service time`.
* a **bounded queue** of requests waiting for a slot at the site (cheap: a future each), not at
  the instance. A waiter whose remaining budget can no longer cover the instance's latency is
  refused when its turn comes, before it is sent. Once the queue has not been empty for
  `standing_after_ms` it is a standing queue (CoDel's test, as Facebook's "controlled delay"
  applies it to request queues): it is then served newest first (adaptive LIFO: the newest
  requests have the most budget left), and a request that joins it waits at most
  `queue_target_ms` before it is refused, so that under overload waiting stays short and
  connections are not held for whole budgets.

Counts come from `agent.inflight.LoadCounters`, so every front-door process sees every other's
requests. `LoopLag` measures how late this process's event loop runs; the router adds it to every
prediction, and the front door reads it as a sign of saturation.

Nothing here does I/O. Every method runs in microseconds on the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from agent.inflight import LoadCounters
from tools.runtimes.base import Instance

Clock = Callable[[], float]


class AdmissionLimits(Protocol):
    """What admission reads of the site's settings (`config.settings.Settings` has it)."""

    instance_capacity: int
    instance_queue: int
    queue_target_ms: float


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    """The knobs of admission control: the site's limits (`of`) and tuning constants."""

    max_limit: int = 32
    """Ceiling of each instance's adaptive concurrency limit."""
    initial_limit: int = 8
    min_limit: int = 1
    max_queue: int = 64
    """Requests that may wait at the site for one instance."""
    queue_target_ms: float = 5.0
    """Longest a request waits behind a standing queue before it is refused."""
    standing_after_ms: float = 100.0
    """A queue not empty for this long is a standing queue."""
    probe_after_s: float = 1.0
    """An idle instance whose estimate says "too slow" still gets one request after this long."""

    @classmethod
    def of(cls, limits: AdmissionLimits) -> AdmissionSettings:
        """The site's limits with the default tuning (the limit starts at 8 or the ceiling)."""
        return cls(
            max_limit=limits.instance_capacity,
            initial_limit=min(8, limits.instance_capacity),
            max_queue=limits.instance_queue,
            queue_target_ms=limits.queue_target_ms,
        )


class _Average:
    """A mean over the first `warmup` samples, then an exponential average over ~`window` samples."""

    __slots__ = ("count", "factor", "value", "warmup")

    def __init__(self, window: int, warmup: int) -> None:
        self.factor = 2.0 / (window + 1)
        self.warmup = warmup
        self.count = 0
        self.value = 0.0

    def add(self, sample: float) -> float:
        if self.count < self.warmup:
            self.count += 1
            self.value += (sample - self.value) / self.count
        else:
            self.value += (sample - self.value) * self.factor
        return self.value


class GradientLimit:
    """A concurrency limit that follows the gradient of latency (Netflix's Gradient2).

    Per sample: `gradient = clamp(tolerance × long / short, 0.5, 1)`, `new = limit × gradient +
    headroom`,
    smoothed by `smoothing`; it does not grow while fewer than half the slots are in use (the
    caller, not the instance, is the limit then), and a long-term average far above the recent
    one (after a load spike) is pulled down so the limit can recover.
    """

    __slots__ = ("_long", "_short", "headroom", "limit", "max_limit", "min_limit", "smoothing", "tolerance")

    def __init__(
        self,
        initial: int,
        min_limit: int,
        max_limit: int,
        smoothing: float = 0.2,
        headroom: float = 4.0,
        tolerance: float = 1.5,
        short_window: int = 10,
        long_window: int = 600,
    ) -> None:
        self.limit = float(max(min_limit, min(max_limit, initial)))
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.smoothing = smoothing
        self.headroom = headroom
        self.tolerance = tolerance
        """How far recent latency may rise above the long-term level before the limit shrinks
        (Netflix's `rttTolerance`): noise and the site's own loop delays stay below it."""
        self._short = _Average(short_window, 1)
        self._long = _Average(long_window, 10)

    @property
    def short_ms(self) -> float:
        return self._short.value

    @property
    def long_ms(self) -> float:
        return self._long.value

    def update(self, latency_ms: float, inflight: int) -> int:
        """Take one latency sample (with `inflight` the requests under way when it was sent)."""
        short = self._short.add(latency_ms)
        long = self._long.add(latency_ms)
        if short > 0 and long / short > 2:
            self._long.value = long = long * 0.9
        if inflight < self.limit / 2:
            return int(self.limit)
        gradient = 1.0 if short <= 0 else max(0.5, min(1.0, self.tolerance * long / short))
        target = self.limit * gradient + self.headroom
        limit = self.limit * (1 - self.smoothing) + target * self.smoothing
        self.limit = max(float(self.min_limit), min(float(self.max_limit), limit))
        return int(self.limit)


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[bool]
    deadline: float


SERVICE_EWMA_ALPHA = 0.1


class InstanceGate:
    """Admission to one instance: its limit, its service-time estimate and its waiting requests."""

    def __init__(
        self,
        instance_id: str,
        counters: LoadCounters,
        settings: AdmissionSettings,
        clock: Clock = time.perf_counter,
    ) -> None:
        self.instance_id = instance_id
        self.counters = counters
        self.slot = counters.slot(instance_id)
        self.settings = settings
        self.clock = clock
        self.limiter = GradientLimit(settings.initial_limit, settings.min_limit, settings.max_limit)
        self.service_ms = 0.0
        """What one more request costs the instance, ms (0 until the first answer)."""
        self.samples = 0
        self.last_sample_at = 0.0
        self.local_inflight = 0
        """Requests this process has in flight at the instance (the counters hold every process's)."""
        self._waiters: deque[_Waiter] = deque()
        self._last_empty = clock()
        """When the queue was last empty (or became non-empty)."""
        self._recheck: asyncio.TimerHandle | None = None
        self.sent = 0
        self.refused_in_queue = 0

    # What the router reads (see `agent.view.InstanceLoad`).

    @property
    def inflight(self) -> int:
        return self.counters.inflight(self.slot)

    @property
    def queued(self) -> int:
        return self.counters.queued(self.slot)

    @property
    def outstanding(self) -> int:
        return self.counters.inflight(self.slot) + self.counters.queued(self.slot)

    @property
    def limit(self) -> int:
        return int(self.limiter.limit)

    @property
    def idle_here(self) -> bool:
        """Nothing of this process is in flight or queued at the instance."""
        return self.local_inflight == 0 and not self._waiters

    @property
    def has_room(self) -> bool:
        """Whether one more request may be sent or queued here."""
        return self.outstanding < int(self.limiter.limit) + self.settings.max_queue

    @property
    def predicted_ms(self) -> float:
        """When a request sent (or queued) now would be answered, in ms from now.

        An idle instance that has not been tried for `probe_after_s` predicts 0: one request may
        find out whether it got faster (a half-open probe), since no estimate moves without
        samples.
        """
        ahead = self.outstanding
        if ahead == 0 and self.clock() - self.last_sample_at >= self.settings.probe_after_s:
            return 0.0
        return (ahead + 1) * self.service_ms

    # The dispatcher's side.

    def try_acquire(self) -> bool:
        """Take a slot now if one is free and nobody here waits for one."""
        if self._waiters or self.counters.inflight(self.slot) >= int(self.limiter.limit):
            return False
        self._take()
        return True

    @property
    def queue_full(self) -> bool:
        return len(self._waiters) >= self.settings.max_queue

    async def acquire(self, deadline: float) -> bool:
        """Wait in the queue for a slot; False when none comes in time (or the queue is full).

        `deadline` is the request's (`perf_counter` seconds); the request leaves the queue when
        what is left of it no longer covers the instance's latency.
        """
        if self.queue_full:
            return False
        now = self.clock()
        if not self._waiters:
            self._last_empty = now
        wait_until = deadline
        if self.standing(now):
            wait_until = min(deadline, now + self.settings.queue_target_ms / 1000)
        waiter = _Waiter(asyncio.get_running_loop().create_future(), deadline)
        self._waiters.append(waiter)
        self.counters.add_queued(self.slot, 1)
        if self.local_inflight == 0:
            self._arm_recheck()  # no local release will wake us: slots are held by other processes
        try:
            async with asyncio.timeout(max(0.0, wait_until - now)):
                return await waiter.future
        except TimeoutError:
            if self._granted(waiter):
                return True  # the slot came as the wait ran out: the caller sees the clock
            self._forget(waiter)
            return False
        except BaseException:
            if self._granted(waiter):
                self.release(None, 0)  # cancelled with a slot in hand: give it back
            else:
                self._forget(waiter)
                waiter.future.cancel()
            raise

    @staticmethod
    def _granted(waiter: _Waiter) -> bool:
        future = waiter.future
        return future.done() and not future.cancelled() and future.result()

    def release(self, latency_ms: float | None, concurrency: int) -> None:
        """A request sent here is over; `latency_ms` is its upstream time (None: no sample)."""
        self.local_inflight -= 1
        self.counters.add_inflight(self.slot, -1)
        if latency_ms is not None:
            self._sample(latency_ms, concurrency)
        self._wake()

    # Internals.

    def _take(self) -> None:
        self.local_inflight += 1
        self.counters.add_inflight(self.slot, 1)
        self.sent += 1

    def _sample(self, latency_ms: float, concurrency: int) -> None:
        cost = latency_ms / max(1, concurrency)
        if self.samples == 0:
            self.service_ms = cost
        else:
            self.service_ms += (cost - self.service_ms) * SERVICE_EWMA_ALPHA
        self.samples += 1
        self.last_sample_at = self.clock()
        self.limiter.update(latency_ms, concurrency)

    def standing(self, now: float) -> bool:
        """Whether the queue has not been empty for `standing_after_ms`."""
        return bool(self._waiters) and (now - self._last_empty) * 1000 > self.settings.standing_after_ms

    def _forget(self, waiter: _Waiter) -> None:
        """Take a waiter that gave up out of the queue (it may have been handed out already)."""
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
            self.counters.add_queued(self.slot, -1)
        if not self._waiters:
            self._last_empty = self.clock()

    def _wake(self) -> None:
        """Hand free slots to waiters: FIFO, or newest first behind a standing queue."""
        waiters = self._waiters
        while waiters and self.counters.inflight(self.slot) < int(self.limiter.limit):
            now = self.clock()
            waiter = waiters.pop() if self.standing(now) else waiters.popleft()
            self.counters.add_queued(self.slot, -1)
            if waiter.future.done():
                continue
            latency_ms = (self.counters.inflight(self.slot) + 1) * self.service_ms
            if (waiter.deadline - now) * 1000 < latency_ms:
                self.refused_in_queue += 1
                waiter.future.set_result(False)
                continue
            self._take()
            waiter.future.set_result(True)
        if not waiters:
            self._last_empty = self.clock()
        elif self.local_inflight == 0:
            self._arm_recheck()

    def _arm_recheck(self) -> None:
        if self._recheck is not None:
            return
        delay = max(0.0005, self.service_ms / 1000)

        def recheck() -> None:
            self._recheck = None
            self._wake()

        self._recheck = asyncio.get_running_loop().call_later(delay, recheck)

    def figures(self) -> dict[str, float | int]:
        """The gate's state, for the metrics snapshot and /metrics."""
        return {
            "inflight": self.inflight,
            "queued": self.queued,
            "limit": self.limit,
            "service_ms": round(self.service_ms, 3),
            "latency_short_ms": round(self.limiter.short_ms, 3),
            "latency_long_ms": round(self.limiter.long_ms, 3),
            "sent": self.sent,
            "refused_in_queue": self.refused_in_queue,
        }


class LoopLag:
    """How late this process's event loop runs its timers, in ms (a smoothed average).

    A probe sleeps `interval_s` again and again and measures how much later than asked it woke:
    that is what any callback waits before it can run. `lag_ms` is an exponential average of
    those delays (one stall moves it a little; a loop that stays busy moves it all the way);
    `worst_ms` is the largest single delay seen.
    """

    def __init__(self, interval_s: float = 0.005, alpha: float = 0.25) -> None:
        self.interval_s = interval_s
        self.alpha = alpha
        self.lag_ms = 0.0
        self.worst_ms = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        clock = time.perf_counter
        while True:
            asked = clock() + self.interval_s
            await asyncio.sleep(self.interval_s)
            late_ms = max(0.0, (clock() - asked) * 1000)
            self.lag_ms += (late_ms - self.lag_ms) * self.alpha
            self.worst_ms = max(self.worst_ms, late_ms)


PRUNE_EVERY = 4096
"""`Admission.loads` calls between two looks for gates of instances that are gone."""
FORGET_AFTER_S = 60.0


@dataclass
class Admission:
    """The gates of every instance this process sends to, and the loop's lag.

    Gates are made on first sight of an instance and dropped once the instance has not been
    planned for `FORGET_AFTER_S` and nothing of this process is in flight or queued there, so the
    table holds only instances that exist.
    """

    counters: LoadCounters
    settings: AdmissionSettings = field(default_factory=AdmissionSettings)
    lag: LoopLag = field(default_factory=LoopLag)
    clock: Clock = time.perf_counter
    gates: dict[str, InstanceGate] = field(default_factory=dict)
    _seen: dict[str, float] = field(default_factory=dict, repr=False)
    _calls: int = 0

    def gate(self, instance: Instance) -> InstanceGate:
        gate = self.gates.get(instance.id)
        if gate is None:
            gate = self.gates[instance.id] = InstanceGate(
                instance.id, self.counters, self.settings, self.clock
            )
        return gate

    def loads(self, instances: list[Instance]) -> Mapping[str, InstanceGate]:
        """The gates of `instances` (created on first sight); the router reads them."""
        gates, seen, now = self.gates, self._seen, self.clock()
        for instance in instances:
            if instance.id not in gates:
                self.gate(instance)
            seen[instance.id] = now
        self._calls += 1
        if self._calls % PRUNE_EVERY == 0:
            self._prune(now)
        return gates

    def _prune(self, now: float) -> None:
        for instance_id, gate in list(self.gates.items()):
            if gate.idle_here and now - self._seen.get(instance_id, now) > FORGET_AFTER_S:
                del self.gates[instance_id]
                self._seen.pop(instance_id, None)

    @property
    def lag_ms(self) -> float:
        return self.lag.lag_ms
