"""A circuit breaker for one remote target: a dead target gets fast refusals, not piled-up timeouts.

States:

* `closed`: every call is allowed. `failure_threshold` consecutive failures open it; a success
  in between starts the count again.
* `open`: every call is refused (counted in `rejected`) for the current open time, which starts
  at `open_s`. Then it is half-open; `retry_after_s` says in whole seconds when that will be.
* `half_open`: at most `half_open_probes` calls are let through at once (the probes); others are
  refused. A probe that succeeds closes it (and the open time goes back to `open_s`); a probe
  that fails opens it again for twice the last open time, at most `max_open_s`.

The caller asks `allow()` before each call and gives exactly one verdict after it:
`record_success()`, `record_failure()`, or `release()` when the call says nothing about the
target (a refusal that was the caller's fault, a budget too short to tell, a cancelled call),
which only gives a probe slot back. A verdict may carry the `generation` read just after
`allow()`: the breaker counts its state changes, and a verdict from an earlier generation (a
call sent before it opened, ending after) is dropped, so a late answer neither closes a breaker
nor takes a slot from a probe of a later round. No I/O and no locks (one event loop), the clock
is injected, each call takes a microsecond or so.

What it takes from known designs (facts, not code):

* Envoy's outlier detection (`consecutive_5xx`, default 5): consecutive server errors, with
  connection failures counted among them, eject a host, and 4xx answers are no evidence against
  it. Envoy keeps an ejected host out for `base_ejection_time` times the number of times it was
  ejected, capped by `max_ejection_time`; here the open time doubles instead, up to `max_open_s`,
  and resets once a probe succeeds.
* Hystrix: after its sleep window (5 s by default) an open circuit lets a single trial request
  through; its success closes the circuit, its failure opens it for another window. Here that is
  `half_open_probes=1`, the default, with `open_s` 5 s in the site's settings. Not taken: its
  error percentage over a rolling window with a minimum request volume: a cloud target that
  fails five times in a row is down for the requests that would go there now.
* resilience4j: the three states by these names, and a half-open state that permits a number
  of calls (`permittedNumberOfCallsInHalfOpenState`); its half-open state has no time limit, so
  probes that never end keep it half-open (resilience4j issue #903). Here each call's timeout
  is its request's remaining budget and every allowed call ends in one verdict, so probe slots
  come back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]
_Phase = Literal["closed", "open", "probing"]
"""`open` past its open time reads as `half_open` until a call starts a probe round (`probing`)."""


class CircuitBreaker:
    """Closed → open after `failure_threshold` consecutive failures → half-open after the open
    time → closed on a probe's success, open again (for twice as long) on its failure."""

    __slots__ = (
        "_failures",
        "_open_for",
        "_open_until",
        "_phase",
        "_probes",
        "clock",
        "failure_threshold",
        "generation",
        "half_open_probes",
        "max_open_s",
        "open_s",
        "opened",
        "rejected",
    )

    def __init__(
        self,
        failure_threshold: int = 5,
        open_s: float = 5.0,
        *,
        half_open_probes: int = 1,
        max_open_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or half_open_probes < 1:
            raise ValueError("failure_threshold and half_open_probes must be at least 1")
        if open_s <= 0 or max_open_s < open_s:
            raise ValueError("open_s must be positive and max_open_s at least open_s")
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self.half_open_probes = half_open_probes
        self.max_open_s = max_open_s
        self.clock = clock
        self._phase: _Phase = "closed"
        self._failures = 0
        self._open_for = open_s
        self._open_until = 0.0
        self._probes = 0
        """Probes in flight (while probing)."""
        self.generation = 0
        """Counts state changes; a verdict from an earlier generation is dropped."""
        self.opened = 0
        """Times it opened (re-opening after a failed probe included)."""
        self.rejected = 0
        """Calls refused while open, or half-open with every probe slot taken."""

    @property
    def state(self) -> BreakerState:
        if self._phase == "open":
            return "open" if self.clock() < self._open_until else "half_open"
        return "half_open" if self._phase == "probing" else "closed"

    @property
    def failures(self) -> int:
        """Consecutive failures counted while closed."""
        return self._failures

    @property
    def open_for_s(self) -> float:
        """The open time of the latest opening (`open_s` while closed)."""
        return self._open_for

    @property
    def retry_after_s(self) -> int:
        """Whole seconds until it may let a call through again, at least 1."""
        if self._phase != "open":
            return 1
        return max(1, math.ceil(self._open_until - self.clock()))

    def available(self) -> bool:
        """Whether `allow()` would let a call through now; changes nothing (for planning)."""
        if self._phase == "closed":
            return True
        if self._phase == "open":
            return self.clock() >= self._open_until
        return self._probes < self.half_open_probes

    def allow(self) -> bool:
        """Whether a call may go now; half-open, a yes takes one probe slot."""
        if self._phase == "closed":
            return True
        if self._phase == "open":
            if self.clock() < self._open_until:
                self.rejected += 1
                return False
            self._phase = "probing"  # the first call past the open time starts a probe round
            self._probes = 0
            self.generation += 1
        if self._probes >= self.half_open_probes:
            self.rejected += 1
            return False
        self._probes += 1
        return True

    def record_success(self, generation: int | None = None) -> None:
        """A call succeeded: closed, the failure count starts again; a probe closes it."""
        if self._stale(generation):
            return
        if self._phase == "closed":
            self._failures = 0
        elif self._phase == "probing":
            self._phase = "closed"
            self._failures = 0
            self._probes = 0
            self._open_for = self.open_s
            self.generation += 1

    def record_failure(self, generation: int | None = None) -> None:
        """A call failed: closed, one more towards opening; a probe opens it for twice as long."""
        if self._stale(generation):
            return
        if self._phase == "closed":
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._open(self.open_s)
        elif self._phase == "probing":
            self._open(min(self._open_for * 2, self.max_open_s))

    def release(self, generation: int | None = None) -> None:
        """A call ended without telling anything about the target: its probe slot comes back."""
        if not self._stale(generation) and self._phase == "probing" and self._probes > 0:
            self._probes -= 1

    def _open(self, for_s: float) -> None:
        self._phase = "open"
        self._failures = 0
        self._probes = 0
        self._open_for = for_s
        self._open_until = self.clock() + for_s
        self.opened += 1
        self.generation += 1

    def _stale(self, generation: int | None) -> bool:
        return generation is not None and generation != self.generation
