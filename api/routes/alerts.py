"""Alerts as operators see them: `GET /v1/alerts`, `POST /v1/alerts/{id}/ack`, and the live
stream `GET /v1/alerts/stream` (SSE). All need the operator scope, as the `alert_ops` tool does,
and read the same `site.alert_desk` (the first worker's alerts in every worker of `--workers N`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Security
from fastapi.responses import Response
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event

from agent.errors import SiteError
from agent.scopes import Principal
from api.auth import require
from api.deps import SiteDep
from api.schemas import error_responses
from monitoring.alert_desk import AlertFeed, StreamRefusedError
from tools.alert_ops import AlertDeskUnavailableError

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])

KEEPALIVE_S = 15.0
"""An idle stream sends a comment this often, so proxies keep it open."""

AlertReader = Annotated[Principal, Security(require("alerts.list"))]
AlertAcker = Annotated[Principal, Security(require("alerts.ack"))]


@router.get("", responses=error_responses(401, 403, 422), summary="Active and recently resolved alerts")
async def list_alerts(
    site: SiteDep,
    caller: AlertReader,
    state: Annotated[Literal["active", "resolved", "all"], Query(description="Which alerts")] = "all",
) -> dict[str, Any]:
    """Active alerts most severe first, then resolved ones newest first (the last 500)."""
    try:
        return await site.alert_desk.alerts(state)
    except AlertDeskUnavailableError as exc:
        raise _unavailable(exc) from exc


def _unavailable(exc: AlertDeskUnavailableError) -> SiteError:
    return SiteError(503, "alerts_unavailable", str(exc), retry_after_s=1)


@router.post(
    "/{alert_id}/ack",
    responses=error_responses(401, 403, 404),
    summary="Acknowledge an alert (it stays acknowledged through repeats folded into it)",
)
async def ack_alert(alert_id: str, site: SiteDep, caller: AlertAcker) -> dict[str, Any]:
    try:
        alert = await site.alert_desk.ack(alert_id, caller.key_id)
    except AlertDeskUnavailableError as exc:
        raise _unavailable(exc) from exc
    if alert is None:
        raise SiteError(
            404, "unknown_alert", f"no alert {alert_id!r} on site {site.settings.site_id}", "alert_id"
        )
    return alert


@router.get(
    "/stream",
    responses={
        **error_responses(401, 403, 503),
        200: {
            "content": {"text/event-stream": {}},
            "description": "`snapshot` (the active alerts) first, then one event per change: "
            "`alert.fired`, `alert.refired`, `alert.resolved`, `alert.acknowledged`; comments keep "
            "an idle stream open.",
        },
    },
    summary="Alert events as they happen (SSE)",
)
async def stream_alerts(site: SiteDep, caller: AlertReader) -> Response:
    try:
        feed = await site.alert_desk.subscribe()
    except StreamRefusedError as exc:
        raise SiteError(503, "too_many_streams", str(exc), retry_after_s=5) from exc
    except AlertDeskUnavailableError as exc:
        raise _unavailable(exc) from exc
    return EventSourceResponse(
        _events(feed), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def _encode(kind: str, data: Any) -> bytes:
    return format_sse_event(data_str=json.dumps(data, separators=(",", ":"), default=str), event=kind)


async def _events(feed: AlertFeed) -> AsyncIterator[bytes]:
    try:
        yield _encode("snapshot", {"active": feed.snapshot})
        while True:
            try:
                event = await feed.get(KEEPALIVE_S)
            except AlertDeskUnavailableError:
                return  # the first worker went away: the client reconnects (to its successor)
            if event is None:
                yield KEEPALIVE_COMMENT
                continue
            yield _encode(str(event["kind"]), event)
    finally:
        feed.close()
