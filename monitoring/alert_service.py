"""The site's alerting: the engine, its sinks, and the live subscribers of `GET /v1/alerts/stream`.

`AlertService.evaluate(readings)` runs the engine (`monitoring.alerts`) on one sample and
publishes each event it returns:

* to every **subscriber** (an SSE stream): a bounded queue each; a subscriber too slow to keep up
  loses its oldest events, counted in `dropped`, and never slows the others or the evaluation;
* to the **sinks**, in event order, from one task: the structured JSON log (`JsonLogSink`, one
  line per event on the `mec.alerts` logger) and, when configured, the webhook
  (`monitoring.webhook.WebhookSink`: on disk before it is sent, retried until the receiver takes
  it). The hand-over queue is bounded (`MAX_PENDING`); past it an event is counted as dropped and
  logged, never blocking the sample loop.

Evaluation is synchronous and cheap (microseconds per rule and subject); nothing here waits on a
sink on the sampling path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, get_args

from config.settings import AlertSeverity
from monitoring.alerts import Alert, AlertEngine, AlertEvent, Reading

log = logging.getLogger(__name__)
alert_log = logging.getLogger("mec.alerts")

MAX_PENDING = 1000
"""Events waiting for the sinks at most."""
MAX_SUBSCRIBERS = 32
SUBSCRIBER_QUEUE = 256


class AlertSink(Protocol):
    """Where alert events go (the JSON log, the webhook)."""

    async def submit(self, event: Mapping[str, Any]) -> object: ...


class JsonLogSink:
    """One JSON line per event on the `mec.alerts` logger (WARNING for fired, INFO otherwise)."""

    async def submit(self, event: Mapping[str, Any]) -> None:
        level = logging.WARNING if event.get("kind") in ("alert.fired", "alert.refired") else logging.INFO
        alert_log.log(level, "%s", json.dumps(event, separators=(",", ":"), sort_keys=True))


class Subscription:
    """One live reader of alert events: a bounded queue that drops its oldest when full."""

    def __init__(self, service: AlertService, size: int) -> None:
        self._service = service
        self._events: deque[dict[str, Any]] = deque(maxlen=size)
        self._ready = asyncio.Event()
        self.dropped = 0

    def put(self, event: dict[str, Any]) -> None:
        if len(self._events) == self._events.maxlen:
            self.dropped += 1
        self._events.append(event)
        self._ready.set()

    async def get(self, timeout_s: float) -> dict[str, Any] | None:
        """The next event, or None when none came within `timeout_s`."""
        if not self._events:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._ready.wait()
        return self._events.popleft() if self._events else None

    def close(self) -> None:
        self._service._subscribers.discard(self)


class TooManySubscribersError(Exception):
    """Every subscriber slot is taken."""


class AlertService:
    """The engine with its sinks and subscribers (see the module docstring)."""

    def __init__(
        self,
        engine: AlertEngine,
        sinks: Sequence[AlertSink] = (),
        clock: Callable[[], float] = time.time,
        max_subscribers: int = MAX_SUBSCRIBERS,
    ) -> None:
        self.engine = engine
        self.sinks = list(sinks)
        self.clock = clock
        self.max_subscribers = max_subscribers
        self._subscribers: set[Subscription] = set()
        self._pending: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_PENDING)
        self._pump: asyncio.Task[None] | None = None
        self.published = 0
        self.events: dict[str, int] = {}
        """Events published so far by kind (`fired`, `refired`, `resolved`, `acknowledged`)."""
        self.dropped = 0
        self.sink_failures = 0
        self.evaluate_s = 0.0
        """CPU-side seconds spent in `evaluate` so far (the alerting cost figure)."""

    async def start(self) -> None:
        for sink in self.sinks:
            starter = getattr(sink, "start", None)
            if starter is not None:
                await starter()
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(self._deliver(), name="alert-sinks")

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every queued event has been through the sinks; False if not within `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._pending.join()
                return True
        return False

    async def stop(self) -> None:
        """Deliver what is queued (bounded wait), then stop the sinks."""
        if self._pump is not None:
            await self.drain(5.0)
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
        for sink in self.sinks:
            stopper = getattr(sink, "stop", None)
            if stopper is not None:
                await stopper()

    # -- the sample path --

    def evaluate(self, readings: Iterable[Reading]) -> list[AlertEvent]:
        started = time.perf_counter()
        events = self.engine.evaluate(readings, self.clock())
        for event in events:
            self.publish(event)
        self.evaluate_s += time.perf_counter() - started
        return events

    def publish(self, event: AlertEvent) -> None:
        data = event.to_dict()
        self.published += 1
        self.events[event.kind] = self.events.get(event.kind, 0) + 1
        for subscriber in list(self._subscribers):
            subscriber.put(data)
        if not self.sinks:
            return
        try:
            self._pending.put_nowait(data)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("alert sinks are %d events behind; dropped %s", MAX_PENDING, data.get("kind"))

    async def _deliver(self) -> None:
        while True:
            event = await self._pending.get()
            try:
                for sink in self.sinks:
                    try:
                        await sink.submit(event)
                    except Exception:  # one sink failing never stops the others or the loop
                        self.sink_failures += 1
                        log.exception("alert sink %s failed", type(sink).__name__)
            finally:
                self._pending.task_done()

    # -- operators --

    def ack(self, alert_id: str, by: str) -> Alert | None:
        found = self.engine.ack(alert_id, by, self.clock())
        if found is None:
            return None
        alert, event = found
        if event is not None:
            self.publish(event)
        return alert

    def subscribe(self) -> Subscription:
        if len(self._subscribers) >= self.max_subscribers:
            raise TooManySubscribersError(f"{self.max_subscribers} alert streams are open already")
        subscription = Subscription(self, SUBSCRIBER_QUEUE)
        self._subscribers.add(subscription)
        return subscription

    def report(self) -> dict[str, Any]:
        """Counters for `GET /v1/metrics/snapshot` and Prometheus."""
        active = self.engine.active()
        by_severity = dict.fromkeys(get_args(AlertSeverity), 0)
        for alert in active:
            by_severity[alert.severity] += 1
        return {
            "active": len(active),
            "active_by_severity": by_severity,
            "events": dict(self.events),
            "published": self.published,
            "dropped": self.dropped,
            "sink_failures": self.sink_failures,
            "subscribers": len(self._subscribers),
            "evaluations": self.engine.evaluations,
            "transitions": self.engine.transitions,
            "evaluate_s": round(self.evaluate_s, 6),
        }
