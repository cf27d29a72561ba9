"""Alerts as operators see them: `GET /v1/alerts`, `POST /v1/alerts/{id}/ack`, and the live
stream `GET /v1/alerts/stream` (SSE). All need the operator scope, as the `alert_ops` tool does."""

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
from monitoring.alert_service import Subscription, TooManySubscribersError

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
    engine = site.alerts.engine
    found: dict[str, Any] = {"site": site.settings.site_id}
    if state in ("active", "all"):
        found["active"] = [alert.to_dict() for alert in engine.active()]
    if state in ("resolved", "all"):
        found["resolved"] = [alert.to_dict() for alert in engine.resolved()]
    return found


@router.post(
    "/{alert_id}/ack",
    responses=error_responses(401, 403, 404),
    summary="Acknowledge an alert (it stays acknowledged through repeats folded into it)",
)
async def ack_alert(alert_id: str, site: SiteDep, caller: AlertAcker) -> dict[str, Any]:
    alert = site.alerts.ack(alert_id, caller.key_id)
    if alert is None:
        raise SiteError(
            404, "unknown_alert", f"no alert {alert_id!r} on site {site.settings.site_id}", "alert_id"
        )
    return alert.to_dict()


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
        subscription = site.alerts.subscribe()
    except TooManySubscribersError as exc:
        raise SiteError(503, "too_many_streams", str(exc), retry_after_s=5) from exc
    active = [alert.to_dict() for alert in site.alerts.engine.active()]
    return EventSourceResponse(
        _events(subscription, active), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def _encode(kind: str, data: Any) -> bytes:
    return format_sse_event(data_str=json.dumps(data, separators=(",", ":"), default=str), event=kind)


async def _events(subscription: Subscription, active: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        yield _encode("snapshot", {"active": active})
        while True:
            event = await subscription.get(KEEPALIVE_S)
            if event is None:
                yield KEEPALIVE_COMMENT
                continue
            yield _encode(str(event["kind"]), event)
    finally:
        subscription.close()
