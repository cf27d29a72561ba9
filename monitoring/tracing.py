"""OpenTelemetry traces of the site, exported over OTLP/HTTP when an endpoint is configured.

`start_tracing(endpoint, site_id)` (at site start) builds a `TracerProvider` whose resource names
the service (`mec-orchestrator`) and the site, hands it to strands' own telemetry setup
(`StrandsTelemetry.setup_otlp_exporter`: a `BatchSpanProcessor` over an `OTLPSpanExporter` sending
to `ENDPOINT/v1/traces`), and makes it the process-wide tracer provider, which is where strands
writes the agent's spans (`invoke_agent …`, `execute_event_loop_cycle`, `chat`, `execute_tool …`).
The site's own request spans (`agent.request_trace`) go through `Tracing.tracer`. `shutdown()` (at
site stop) exports what is still queued, then stops the exporter.

Spans are queued in memory (the processor's bounded queue, 2048 spans by default; past it new
spans are dropped) and sent from the processor's own thread, never on the event loop.

OpenTelemetry lets a process set its global tracer provider once: a second site started in the
same process (tests, embedding) gets its own provider for its request spans, while the agent's
spans keep going to the first one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer
from strands.telemetry import StrandsTelemetry

log = logging.getLogger(__name__)

SERVICE_NAME = "mec-orchestrator"
TRACES_PATH = "/v1/traces"
"""Where an OTLP/HTTP collector takes traces, under the endpoint's base URL."""
EXPORT_TIMEOUT_S = 5.0
"""Longest one export request may take."""
SHUTDOWN_TIMEOUT_S = 10.0
"""Longest the site waits at stop for the queued spans to go out."""


def traces_url(endpoint: str) -> str:
    """The traces URL of an `OTEL_EXPORTER_OTLP_ENDPOINT` base URL (the signal path appended)."""
    return endpoint.rstrip("/") + TRACES_PATH


@dataclass
class Tracing:
    """The site's tracer provider while tracing is on."""

    provider: TracerProvider
    url: str

    def tracer(self, name: str) -> Tracer:
        return self.provider.get_tracer(name)

    async def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Export the queued spans and stop the exporter, off the event loop, waiting `timeout_s`
        at most (an unreachable collector does not hold up the site's stop longer)."""
        worker = asyncio.ensure_future(asyncio.to_thread(self.provider.shutdown))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(worker), timeout_s)
        if not worker.done():
            log.warning("spans still queued for %s after %g s; not waiting longer", self.url, timeout_s)


def start_tracing(endpoint: str | None, site_id: str, worker: int = 0) -> Tracing | None:
    """Tracing to the OTLP/HTTP collector at `endpoint` (a base URL); None without one."""
    if not endpoint:
        return None
    resource = Resource.create({"service.name": SERVICE_NAME, "mec.site_id": site_id, "mec.worker": worker})
    provider = TracerProvider(resource=resource)
    url = traces_url(endpoint)
    StrandsTelemetry(tracer_provider=provider).setup_otlp_exporter(endpoint=url, timeout=EXPORT_TIMEOUT_S)
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        log.warning("a tracer provider is already set in this process; agent spans keep going there")
    else:
        trace.set_tracer_provider(provider)
    log.info("exporting traces to %s", url)
    return Tracing(provider, url)
