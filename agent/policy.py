"""What the operator agent may do: a strands `BeforeToolCall` hook, and the record of each call.

Every tool call is classified as `read`, `mutate` or `destructive` from its name and input.
Mutations need the caller's `operator` scope and stay under a per-session rate; destructive ones
(stop, scale to 0, flush) also need the caller's explicit `confirm`; starts must name an
allowlisted service and image. A refused call never reaches the tool: the model receives an error
tool result carrying the reason, and the refusal is logged.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from strands.hooks import AfterToolCallEvent, BeforeToolCallEvent, HookProvider, HookRegistry

log = logging.getLogger(__name__)

CALLER_KEY = "mec_caller"
"""The key under which a chat turn's `Caller` travels in strands' invocation_state."""

Effect = Literal["read", "mutate", "destructive"]

_READS: dict[str, set[str]] = {
    "metrics_monitor": {"*"},
    "container_ops": {"list", "logs", "inspect"},
    "cache_manager": {"get", "stats"},
}
_DESTRUCTIVE: dict[str, set[str]] = {"container_ops": {"stop"}, "cache_manager": {"flush"}}


def classify(tool: str, tool_input: Mapping[str, Any]) -> Effect:
    """The effect of one tool call. Tools this table does not know count as mutations."""
    action = str(tool_input.get("action", ""))
    reads = _READS.get(tool, set())
    if "*" in reads or action in reads:
        return "read"
    if action in _DESTRUCTIVE.get(tool, set()):
        return "destructive"
    if tool == "container_ops" and action == "scale" and tool_input.get("replicas") == 0:
        return "destructive"
    return "mutate"


@dataclass
class ToolCallRecord:
    """One tool call of a chat turn, as the API reports it."""

    name: str
    input: dict[str, Any]
    status: Literal["running", "success", "error", "refused"] = "running"
    duration_ms: float = 0.0
    reason: str | None = None
    started: float = field(default=0.0, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "input": self.input,
            "status": self.status,
            "duration_ms": round(self.duration_ms, 3),
        }
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass
class Caller:
    """Who is asking in this turn, and what they allowed; the record of its tool calls."""

    session_id: str
    scopes: frozenset[str]
    confirm: bool = False
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    on_tool_event: Callable[[str, ToolCallRecord], None] | None = None


class ToolPolicy(HookProvider):
    """The policy of one chat session (it owns that session's mutation rate window)."""

    def __init__(
        self,
        services: Iterable[str],
        image_allowlist: Iterable[str],
        mutations_per_minute: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.services = frozenset(services)
        self.image_allowlist = frozenset(image_allowlist)
        self.mutations_per_minute = mutations_per_minute
        self._clock = clock
        self._mutations: deque[float] = deque()
        self._by_tool_use: dict[str, ToolCallRecord] = {}

    def register_hooks(self, registry: HookRegistry, **_: Any) -> None:
        registry.add_callback(BeforeToolCallEvent, self.before_tool_call)
        registry.add_callback(AfterToolCallEvent, self.after_tool_call)

    def refusal(self, caller: Caller | None, tool: str, tool_input: Mapping[str, Any]) -> str | None:
        """Why this call may not run, or None when it may."""
        effect = classify(tool, tool_input)
        if effect == "read":
            return None
        action = tool_input.get("action", "call")
        if caller is None or "operator" not in caller.scopes:
            return f"refused: {tool} {action} changes the site and needs an operator key"
        if tool == "container_ops" and action in ("start", "scale"):
            service = tool_input.get("service")
            if service not in self.services:
                return (
                    f"refused: service {service!r} is not in this site's allowlist ({sorted(self.services)})"
                )
            image = tool_input.get("image")
            if image is not None and image not in self.image_allowlist:
                return f"refused: image {image!r} is not in this site's image allowlist"
        if effect == "destructive" and not caller.confirm:
            return (
                f"needs confirmation: {tool} {action} is destructive; "
                "ask the operator to confirm and resend the request with confirm: true"
            )
        now = self._clock()
        while self._mutations and now - self._mutations[0] > 60:
            self._mutations.popleft()
        if len(self._mutations) >= self.mutations_per_minute:
            return f"refused: rate limit of {self.mutations_per_minute} changing actions per minute reached"
        self._mutations.append(now)
        return None

    def before_tool_call(self, event: BeforeToolCallEvent) -> None:
        caller = event.invocation_state.get(CALLER_KEY)
        tool_use = event.tool_use
        tool_input = tool_use.get("input") or {}
        record = ToolCallRecord(name=tool_use["name"], input=dict(tool_input), started=time.perf_counter())
        reason = self.refusal(caller, record.name, tool_input)
        if reason is not None:
            event.cancel_tool = reason
            record.status, record.reason = "refused", reason
            log.warning(
                "policy refused %s %s for session %s: %s",
                record.name,
                tool_input,
                caller.session_id if caller else "?",
                reason,
            )
        self._by_tool_use[tool_use["toolUseId"]] = record
        if caller is not None:
            caller.tool_calls.append(record)
            if caller.on_tool_event is not None:
                caller.on_tool_event("tool_start", record)

    def after_tool_call(self, event: AfterToolCallEvent) -> None:
        record = self._by_tool_use.pop(event.tool_use["toolUseId"], None)
        if record is None:
            return
        record.duration_ms = (time.perf_counter() - record.started) * 1000
        if record.status != "refused":
            failed = event.exception is not None or event.result.get("status") == "error"
            record.status = "error" if failed else "success"
            if failed:
                content = event.result.get("content") or [{}]
                record.reason = str(content[0].get("text", event.exception or "error"))[:500]
        caller = event.invocation_state.get(CALLER_KEY)
        if caller is not None and caller.on_tool_event is not None:
            caller.on_tool_event("tool_end", record)
