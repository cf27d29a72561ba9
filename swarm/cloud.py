"""Cloud compute: the last tier of the fast path, for requests no local instance and no peer can
answer within their budget.

Each service may name one cloud endpoint (`ServiceSettings.cloud_url`: an API Gateway, ALB or
Lambda function URL in production). `CloudCompute` holds one `CloudTarget` per such service: its
URL, its circuit breaker (`swarm.breaker`), and its measured time to answer. `choice(service,
budget_ms)` is what the pure router asks (through its view): a `CloudChoice` when the service has
an endpoint, its breaker lets a call through, and its expected time to answer fits the budget;
else None, and `blocked(service)` says whether that was the breaker (the caller answers 503
`cloud_unavailable` with `Retry-After`). Both are pure reads of memory, a microsecond or so; the
call itself is `agent.cloud_forwarding.CloudForwarder`.

The expected time to answer is an EWMA of successful calls' time to answer (send to last byte,
so the endpoint's own compute is in it), `assumed_rtt_ms` until the first one.

The cloud endpoint contract (what an endpoint must implement):

    POST <cloud_url>
    Content-Type: application/json
    Authorization: Bearer <cloud_token>      (only when a token is configured)
    X-Mec-Site: <the sending site's id>

    {"service": "sensor",
     "client": {"kind": "iot", "id": "dev-42"},
     "payload": {...the client's payload, as it sent it...},
     "latency_budget_ms": 87}

`latency_budget_ms` is what is left of the request's budget when it is sent: the site waits that
long and no longer, so an answer after it is wasted work. Answers:

* 200 `{"result": <any JSON>}`: the result, given to the client as `route.tier == "cloud"`.
* 4xx `{"error": {"code", "message", "field"}}`: the payload is refused (passed to the client
  with its status, code `cloud_refused`; `field` names a payload field). 401/403/407 say the
  site's token is refused (a 502 `cloud_auth_failed` to the client: not its fault); 429 (with
  `Retry-After`, in seconds) that it is busy (a 503 `cloud_busy` with that `Retry-After`). None
  of these count against the endpoint's breaker: it answered. A 4xx other than 429 counts as
  a success (it closes a half-open breaker); a 429 counts neither way.
* 5xx, a closed connection, a body that is not that JSON, no answer in time: a failure, counted
  by the breaker (a time-out only when it waited at least `SLOW_TIMEOUT_FACTOR` times the
  expected answer, so a client's tight budget does not trip a healthy endpoint's breaker).
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from config.settings import Settings
from swarm.breaker import BreakerState, CircuitBreaker

CLOUD_OVERHEAD_MS = 2.0
"""What a cloud call adds to the endpoint's answer on this side: the envelope, the client's CPU
(httpx: 0.4–1.5 ms per request on this kind of machine)."""
RTT_EWMA_ALPHA = 0.2
ANSWER_WINDOW = 128
"""Answer times kept per target for the p50 of `snapshot()`."""
SLOW_TIMEOUT_FACTOR = 2.0
"""A call that ran out of budget counts against the endpoint once it waited at least this many
times the expected answer."""


@dataclass(frozen=True, slots=True)
class CloudChoice:
    """The cloud endpoint picked for one request."""

    service: str
    url: str
    target: str
    """The endpoint's host (and port when one is given): `route.target` of its answers."""
    predicted_ms: float
    """When it is expected to answer, overhead included, in ms from now."""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CloudBlocked:
    """A service whose cloud endpoint's breaker refuses calls now."""

    service: str
    target: str
    state: BreakerState
    retry_after_s: int


def endpoint_host(url: str) -> str:
    """`host` or `host:port` of a URL (never its credentials or path)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port is not None else host


class CloudTarget:
    """One service's cloud endpoint: its URL, its breaker, what its answers took."""

    __slots__ = (
        "_answers",
        "answered",
        "assumed_rtt_ms",
        "breaker",
        "failed",
        "refused",
        "rtt_ms",
        "sent",
        "service",
        "target",
        "timed_out",
        "url",
    )

    def __init__(
        self,
        service: str,
        url: str,
        breaker: CircuitBreaker,
        assumed_rtt_ms: float,
        target: str | None = None,
    ) -> None:
        self.service = service
        self.url = url
        self.target = target or endpoint_host(url)
        self.breaker = breaker
        self.assumed_rtt_ms = assumed_rtt_ms
        self.rtt_ms: float | None = None
        """EWMA of successful calls' time to answer; None before the first."""
        self._answers: deque[float] = deque(maxlen=ANSWER_WINDOW)
        self.sent = 0
        self.answered = 0
        """200s with a result."""
        self.refused = 0
        """4xx answers (the payload, the token, or throttling)."""
        self.failed = 0
        """Calls counted against the breaker (time-outs among them)."""
        self.timed_out = 0
        """Calls that ran out of budget, whether or not they counted against the breaker."""

    @property
    def expected_ms(self) -> float:
        """What the next call is expected to take: the measured EWMA, else the assumed RTT."""
        return self.rtt_ms if self.rtt_ms is not None else self.assumed_rtt_ms

    def answered_in(self, elapsed_ms: float) -> None:
        """A successful call took `elapsed_ms`: learn from it."""
        self.answered += 1
        self._answers.append(elapsed_ms)
        rtt = self.rtt_ms
        self.rtt_ms = elapsed_ms if rtt is None else rtt + (elapsed_ms - rtt) * RTT_EWMA_ALPHA

    def slow(self, waited_ms: float) -> bool:
        """Whether a call that ran out of budget after `waited_ms` says the endpoint is failing."""
        return waited_ms >= SLOW_TIMEOUT_FACTOR * self.expected_ms

    def snapshot(self) -> dict[str, Any]:
        """Its state and figures, for metrics and the dashboard."""
        breaker = self.breaker
        answers = list(self._answers)
        return {
            "service": self.service,
            "target": self.target,
            "state": breaker.state,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 3),
            "answer_p50_ms": round(statistics.median(answers), 3) if answers else None,
            "expected_ms": round(self.expected_ms, 3),
            "failures": breaker.failures,
            "opened": breaker.opened,
            "rejected": breaker.rejected,
            "retry_after_s": breaker.retry_after_s if breaker.state == "open" else None,
            "sent": self.sent,
            "answered": self.answered,
            "refused": self.refused,
            "failed": self.failed,
            "timed_out": self.timed_out,
        }


class CloudCompute:
    """The site's cloud targets, one per service that has a cloud endpoint."""

    def __init__(
        self,
        urls: Mapping[str, str],
        *,
        token: str | None = None,
        assumed_rtt_ms: float = 50.0,
        breaker_failures: int = 5,
        breaker_open_s: float = 5.0,
        breaker_max_open_s: float = 60.0,
        half_open_probes: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token = token
        self.targets: dict[str, CloudTarget] = {
            service: CloudTarget(
                service,
                url,
                CircuitBreaker(
                    breaker_failures,
                    breaker_open_s,
                    half_open_probes=half_open_probes,
                    max_open_s=breaker_max_open_s,
                    clock=clock,
                ),
                assumed_rtt_ms,
            )
            for service, url in urls.items()
        }

    @classmethod
    def of(cls, settings: Settings) -> CloudCompute | None:
        """The configured cloud targets; None when no service has a cloud endpoint."""
        urls = {name: svc.cloud_url for name, svc in settings.services.items() if svc.cloud_url}
        if not urls:
            return None
        return cls(
            urls,
            token=settings.cloud_token,
            assumed_rtt_ms=settings.cloud_assumed_rtt_ms,
            breaker_failures=settings.cloud_breaker_failures,
            breaker_open_s=settings.cloud_breaker_open_s,
            breaker_max_open_s=settings.cloud_breaker_max_open_s,
        )

    def choice(self, service: str, budget_ms: float) -> CloudChoice | None:
        """The service's cloud endpoint, if it has one, its breaker lets a call through, and its
        expected answer fits in `budget_ms`. Pure: it takes no probe slot (the forward does)."""
        target = self.targets.get(service)
        if target is None or not target.breaker.available():
            return None
        predicted = target.expected_ms + CLOUD_OVERHEAD_MS
        if predicted > budget_ms:
            return None
        return CloudChoice(
            service,
            target.url,
            target.target,
            predicted,
            f"the cloud endpoint {target.target} is expected to answer in {predicted:.0f} ms",
        )

    def blocked(self, service: str) -> CloudBlocked | None:
        """The service's cloud endpoint when its breaker refuses calls now (else None)."""
        target = self.targets.get(service)
        if target is None or target.breaker.available():
            return None
        breaker = target.breaker
        return CloudBlocked(service, target.target, breaker.state, breaker.retry_after_s)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Each target's state and figures, by service."""
        return {service: target.snapshot() for service, target in self.targets.items()}
