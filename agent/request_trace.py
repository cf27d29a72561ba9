"""One OpenTelemetry span per client request the dispatcher finished (`mec.request`).

The dispatcher holds a `RequestTracer` only while tracing is on (`Dispatcher.tracer`); without one
the fast path pays a single `is not None` test and nothing of OpenTelemetry runs. The span is
written after the fact, when the outcome is known: it starts when the request reached the site
(`ClientCall.arrived`, a `perf_counter` time, turned into wall-clock nanoseconds) and ends when the
dispatcher finished it, so its duration is what the client's budget was spent on.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

if TYPE_CHECKING:
    from agent.dispatch import ClientCall, Outcome

SPAN_NAME = "mec.request"


class RequestTracer:
    """Writes the `mec.request` span of each finished request through `tracer`."""

    def __init__(self, tracer: Tracer, site_id: str) -> None:
        self.tracer = tracer
        self.site_id = site_id

    def finished(
        self, call: ClientCall, outcome: Outcome, arrived: float, now: float, budget_ms: float | None
    ) -> None:
        """The span of one request that arrived at `arrived` and was finished at `now`
        (`time.perf_counter()` times); a 5xx is marked as an error with its code."""
        end_ns = time.time_ns()
        start_ns = end_ns - int((now - arrived) * 1e9)
        attributes: dict[str, AttributeValue] = {
            "mec.service": outcome.service,
            "mec.tier": outcome.tier,
            "mec.status": outcome.status,
            "mec.site": outcome.site or self.site_id,
            "mec.client_kind": call.client_kind,
            "mec.forwarded": call.forwarded,
        }
        if outcome.target:
            attributes["mec.target"] = outcome.target
        if budget_ms is not None:
            attributes["mec.budget_ms"] = budget_ms
        if outcome.error is not None:
            attributes["mec.error"] = outcome.error.code
        span = self.tracer.start_span(
            SPAN_NAME, kind=SpanKind.SERVER, attributes=attributes, start_time=start_ns
        )
        if outcome.status >= 500:
            span.set_status(Status(StatusCode.ERROR, outcome.error.code if outcome.error else None))
        span.end(end_time=end_ns)
