"""The `alert_ops` tool: the site's alerts as the operator agent sees them, and acknowledging one.

The backend is an `AlertDesk`: the site's own alert service, or (in the other front-door processes
of `mec serve --workers N`) the channel to the process that evaluates the rules. The REST routes
`GET /v1/alerts` and `POST /v1/alerts/{id}/ack` read and change the same desk with the same scope.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol, get_args

from strands import ToolContext, tool
from strands.types.tools import AgentTool

AlertAction = Literal["list", "ack"]
"""The one list of `alert_ops` actions."""
ALERT_ACTIONS: frozenset[AlertAction] = frozenset(get_args(AlertAction))
ALERT_READS: frozenset[AlertAction] = frozenset({"list"})
"""Actions that change nothing."""
ALERT_MUTATIONS: frozenset[AlertAction] = frozenset({"ack"})
"""Actions that change an alert (an acknowledgement is kept; another one changes nothing)."""
ALERT_DESTRUCTIVE: frozenset[AlertAction] = frozenset()
"""None: nothing `alert_ops` does takes anything away."""

AlertState = Literal["active", "resolved", "all"]
MAX_LISTED = 50
"""Alerts of each kind (active, resolved) one tool answer holds; the rest are counted."""


class AlertDeskUnavailableError(RuntimeError):
    """The process that keeps the alerts cannot be reached now (a worker restarting)."""


class AlertDesk(Protocol):
    """Where a site's alerts are read and acknowledged."""

    async def alerts(self, state: AlertState) -> dict[str, Any]:
        """`{"site", "active": [...], "resolved": [...]}` (only the lists `state` asks for)."""
        ...

    async def ack(self, alert_id: str, by: str) -> dict[str, Any] | None:
        """Acknowledge an alert as `by` (a key id): the alert, or None when there is no such alert."""
        ...


def _bounded(found: dict[str, Any]) -> dict[str, Any]:
    out = dict(found)
    for name in ("active", "resolved"):
        listed = out.get(name)
        if isinstance(listed, list) and len(listed) > MAX_LISTED:
            out[name] = listed[:MAX_LISTED]
            out[f"{name}_not_listed"] = len(listed) - MAX_LISTED
    return out


def alert_ops_tool(desk: AlertDesk, caller_id: Callable[[Mapping[str, Any]], str]) -> AgentTool:
    """Build the `alert_ops` tool over one site's alerts; `caller_id(invocation_state)` is the key
    id of the chat turn's caller, recorded as who acknowledged."""

    @tool(name="alert_ops", context=True)
    async def alert_ops(
        action: AlertAction,
        tool_context: ToolContext,
        alert_id: str | None = None,
        state: AlertState = "active",
    ) -> dict[str, Any]:
        """List this edge site's alerts, or acknowledge one.

        Alerts are raised by the site's rules (host CPU and memory, GPU, in-flight requests and
        p99 latency per service against its budget, error rate, unreachable peers, Redis, Docker
        or consensus down). Each has an id, a severity (critical, warning, info), the metric and
        subject it is about, when it started (and ended), its peak value and who acknowledged it.

        Args:
            action: "list" returns the alerts (`state` says which); "ack" acknowledges the alert
                `alert_id` (it stays acknowledged through repeats folded into it; acknowledging
                again changes nothing).
            alert_id: Alert id as shown by "list", e.g. "a-3f9c2e". Needed for "ack".
            state: For "list": "active" (firing now, most severe first; the default),
                "resolved" (recently resolved, newest first) or "all".

        Returns:
            For list: {"site", "active": [...], "resolved": [...]} with at most 50 of each (a
            `*_not_listed` count says how many more); for ack: the acknowledged alert.
        """
        if action not in ALERT_ACTIONS:
            raise ValueError(f"unknown action {action!r}; actions: {', '.join(sorted(ALERT_ACTIONS))}")
        if action == "list":
            if alert_id is not None:
                raise ValueError("alert_id is only for action 'ack'")
            return _bounded(await desk.alerts(state))
        if not alert_id:
            raise ValueError("action 'ack' needs an alert_id (see action 'list')")
        alert = await desk.ack(alert_id, caller_id(tool_context.invocation_state) or "chat")
        if alert is None:
            raise ValueError(f"no alert {alert_id!r} on this site (see action 'list')")
        return {"acknowledged": alert}

    return alert_ops
