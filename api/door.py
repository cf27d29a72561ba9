"""The fast path's front door: each request's clock, and refusal before the body when saturated.

Every `POST /v1/requests` gets a `RequestClock` when its first byte arrives (the HTTP protocol in
`api.server` stamps it; `api.fastlane` does under servers that do not, such as in-process tests):
its latency budget runs from there, whatever the site does before the dispatcher sees it.

`FrontDoor` decides, from the headers alone, whether the process can take one more. It keeps a
limit on how many admitted requests may wait before the dispatcher (and a hard cap,
`max_inflight`, on the fast-path requests it holds), and moves the limit once per `interval_ms`
by additive increase / multiplicative decrease (after Netflix's `AIMDLimit`) on two signals:

* **Admitted work that fails.** When more than `miss_tolerance` of the requests that finished in
  the interval missed their budget or were refused for capacity after their body was read
  (504, or 503 from the dispatcher), the process took in work it could not do in time: each of
  those cost a parse and a dispatch for nothing, and made the loop slower for the rest. The
  limit shrinks by a fifth, so the excess is refused for a fraction of that cost instead. This is
  the server-side reading of the SRE book's adaptive throttling (requests against accepts): the
  door lets in about what the site can turn into answers.
* **A standing queue** before the dispatcher (CoDel): the *shortest* wait between a body's
  arrival and the dispatcher starting on it exceeded `queue_target_ms` for a whole interval.
  A burst is a good queue; one that never drains is not.

Otherwise, when the limit was in use, it grows by a tenth. Above it the answer is a prebuilt 503
with `Retry-After`, written by the protocol before the body is read, without a task, a parse or a
route: rejecting costs far less than serving, so overload cannot starve the admitted requests.
A closed loop of clients at capacity whose requests all make their budgets is never refused.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.admission import LoopLag
from agent.errors import error_body

FAST_PATH = "/v1/requests"
CLOCK_KEY = "clock"
"""Where a request's `RequestClock` is kept in the ASGI scope's `state` (`request.state.clock`)."""
DECREASE = 0.8
INCREASE = 0.1
MIN_OUTCOMES = 20
"""Finished requests an interval needs before its share of failures counts."""


@dataclass(slots=True)
class RequestClock:
    """When one request arrived and how far it got through the front door."""

    arrived: float
    """`perf_counter()` at the request's first byte: its budget runs from here."""
    door: FrontDoor | None = None
    received: float = 0.0
    """When its body had arrived (0 until then: the dispatcher's entry stands in)."""
    entered: bool = False
    closed: bool = False
    missed: bool = False
    """Set when the request failed its budget or was refused for capacity after the door."""

    def enter(self) -> None:
        """The dispatcher starts on the request: it leaves the queue before the dispatcher."""
        if self.entered:
            return
        self.entered = True
        if self.door is not None:
            now = time.perf_counter()
            self.door.entered((now - (self.received or now)) * 1000)

    def note(self, status: int) -> None:
        """The dispatcher's answer: a 503 or 504 after the door is admitted work that failed."""
        if status in (503, 504):
            self.missed = True

    def close(self) -> None:
        """The request is over (whatever happened to it). Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.door is not None:
            self.door.finished(self.entered, self.missed)


@dataclass
class FrontDoor:
    """Site-wide admission of fast-path requests, decided before their body is read."""

    lag: LoopLag
    """The loop's lag, shown in the stats (the dispatcher's deadlines read the same probe)."""
    site_id: str
    queue_target_ms: float = 5.0
    miss_tolerance: float = 0.05
    max_inflight: int = 4096
    retry_after_s: int = 1
    interval_ms: float = 100.0
    min_limit: int = 8
    max_limit: int = 1024
    limit: float = 64.0
    clock: Callable[[], float] = time.perf_counter
    waiting: int = 0
    """Admitted requests the dispatcher has not started on yet."""
    active: int = 0
    """Admitted requests not finished yet."""
    admitted: int = 0
    refused: int = 0
    standing: int = 0
    """Intervals in which the queue before the dispatcher stood above the target."""
    failing: int = 0
    """Intervals in which too much admitted work failed its budget."""
    refusal_body: bytes = field(init=False, repr=False)
    refusal_keep_alive: bytes = field(init=False, repr=False)
    refusal_close: bytes = field(init=False, repr=False)
    _interval_end: float = field(default=0.0, init=False, repr=False)
    _shortest_ms: float = field(default=math.inf, init=False, repr=False)
    _most_waiting: int = field(default=0, init=False, repr=False)
    _finished: int = field(default=0, init=False, repr=False)
    _missed: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        body = error_body("overloaded", "the site is saturated; retry after the Retry-After delay", None)
        body["route"] = {"tier": "reject", "site": self.site_id, "target": ""}
        self.refusal_body = json.dumps(body, separators=(",", ":")).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            f"content-length: {len(self.refusal_body)}\r\nretry-after: {self.retry_after_s}\r\n"
        )
        self.refusal_keep_alive = f"{head}\r\n".encode() + self.refusal_body
        self.refusal_close = f"{head}connection: close\r\n\r\n".encode() + self.refusal_body
        self._interval_end = self.clock() + self.interval_ms / 1000

    def admit(self, arrived: float) -> RequestClock | None:
        """A clock for a request that may come in, or None: refuse it now."""
        if self.waiting >= int(self.limit) or self.active >= self.max_inflight:
            self.refused += 1
            return None
        self.waiting += 1
        self.active += 1
        self.admitted += 1
        if self.waiting > self._most_waiting:
            self._most_waiting = self.waiting
        return RequestClock(arrived, self)

    def entered(self, waited_ms: float) -> None:
        """One request left the queue before the dispatcher after `waited_ms`."""
        self.waiting -= 1
        self._tick()
        if waited_ms < self._shortest_ms:
            self._shortest_ms = waited_ms

    def finished(self, entered: bool, missed: bool = False) -> None:
        """One admitted request is over; `missed`: it failed its budget or found no capacity."""
        if not entered:
            self.waiting -= 1
        self.active -= 1
        self._tick()
        self._finished += 1
        if missed:
            self._missed += 1

    def _tick(self) -> None:
        now = self.clock()
        if now >= self._interval_end:
            self._adapt()
            self._interval_end = now + self.interval_ms / 1000

    def _adapt(self) -> None:
        """Once per interval: shrink the limit behind failing work or a standing queue, else grow
        it when it was in use."""
        failing = self._finished >= MIN_OUTCOMES and self._missed > self.miss_tolerance * self._finished
        standing = self._shortest_ms != math.inf and self._shortest_ms > self.queue_target_ms
        if failing or standing:
            self.failing += failing
            self.standing += standing
            self.limit = max(float(self.min_limit), self.limit * DECREASE)
        elif self._most_waiting * 2 >= self.limit:
            self.limit = min(float(self.max_limit), self.limit + max(1.0, self.limit * INCREASE))
        self._shortest_ms = math.inf
        self._most_waiting = self.waiting
        self._finished = self._missed = 0

    def stats(self) -> dict[str, float | int]:
        """The door's state and counters, for /metrics and the snapshot."""
        return {
            "limit": int(self.limit),
            "waiting": self.waiting,
            "active": self.active,
            "admitted": self.admitted,
            "refused": self.refused,
            "standing_intervals": self.standing,
            "failing_intervals": self.failing,
            "loop_lag_ms": round(self.lag.lag_ms, 3),
        }
