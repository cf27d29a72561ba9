"""What the operator agent may do: a strands `BeforeToolCall` hook, and the record of each call.

The hook first normalises the call's input with the tool's own input model, so it judges exactly
what the tool will act on (`replicas: "0"` is a scale to zero), and hands the tool that
normalised input. Then:

* every tool needs the scope `agent.scopes` gives it, the same as the REST route that shows the
  same data (a client key reads no metrics, logs or cache entries through chat);
* each call is classified `read`, `mutate` or `destructive`; changes stay under a per-key rate
  (kept across sessions, so a new or restored session does not reset it); destructive ones (stop,
  scale to 0 on this site or across the swarm, flush) also need the caller's explicit `confirm`;
  starts must name an allowlisted service and image.

A refused call never reaches the tool: the model receives an error tool result carrying the
reason, and the refusal is logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from strands.hooks import AfterToolCallEvent, BeforeToolCallEvent, HookProvider, HookRegistry
from strands.types.tools import AgentTool

from agent.limits import MutationLimiter
from agent.scopes import scope_for
from tools.alert_ops import ALERT_MUTATIONS, ALERT_READS
from tools.cache_manager import CACHE_DESTRUCTIVE, CACHE_MUTATIONS, CACHE_READS
from tools.container_ops import (
    CONTAINER_DESTRUCTIVE,
    CONTAINER_DESTRUCTIVE_AT_ZERO_REPLICAS,
    CONTAINER_MUTATIONS,
    CONTAINER_READS,
    CONTAINER_SERVICE_ACTIONS,
)
from tools.metrics_monitor import METRICS_MONITOR_READS_ONLY
from tools.swarm_ops import (
    SWARM_DESTRUCTIVE,
    SWARM_DESTRUCTIVE_AT_ZERO_REPLICAS,
    SWARM_MUTATIONS,
    SWARM_READS,
)

log = logging.getLogger(__name__)

CALLER_KEY = "mec_caller"
"""The key under which a chat turn's `Caller` travels in strands' invocation_state."""

Effect = Literal["read", "mutate", "destructive"]


@dataclass(frozen=True)
class ToolEffects:
    """One tool's actions (the values of its `action` input) by effect, as its module defines them."""

    reads: frozenset[str] = frozenset()
    mutations: frozenset[str] = frozenset()
    """Listed to make the table whole: `classify` counts any action it does not know as a mutation."""
    destructive: frozenset[str] = frozenset()
    destructive_at_zero_replicas: frozenset[str] = frozenset()
    """Mutations that are destructive when the call's `replicas` is 0."""
    every_call_reads: bool = False
    """A tool without actions that changes nothing."""


TOOL_EFFECTS: Mapping[str, ToolEffects] = {
    "metrics_monitor": ToolEffects(every_call_reads=METRICS_MONITOR_READS_ONLY),
    "container_ops": ToolEffects(
        reads=CONTAINER_READS,
        mutations=CONTAINER_MUTATIONS,
        destructive=CONTAINER_DESTRUCTIVE,
        destructive_at_zero_replicas=CONTAINER_DESTRUCTIVE_AT_ZERO_REPLICAS,
    ),
    "cache_manager": ToolEffects(reads=CACHE_READS, mutations=CACHE_MUTATIONS, destructive=CACHE_DESTRUCTIVE),
    "alert_ops": ToolEffects(reads=ALERT_READS, mutations=ALERT_MUTATIONS),
    "swarm_ops": ToolEffects(
        reads=SWARM_READS,
        mutations=SWARM_MUTATIONS,
        destructive=SWARM_DESTRUCTIVE,
        destructive_at_zero_replicas=SWARM_DESTRUCTIVE_AT_ZERO_REPLICAS,
    ),
}
"""The effects of each tool's actions, by tool name; each tool's module is the one definition."""

_UNKNOWN_TOOL = ToolEffects()


def classify(tool: str, tool_input: Mapping[str, Any]) -> Effect:
    """The effect of one tool call. Tools and actions `TOOL_EFFECTS` does not know count as mutations."""
    effects = TOOL_EFFECTS.get(tool, _UNKNOWN_TOOL)
    action = str(tool_input.get("action", ""))
    if effects.every_call_reads or action in effects.reads:
        return "read"
    if action in effects.destructive:
        return "destructive"
    if action in effects.destructive_at_zero_replicas and tool_input.get("replicas") == 0:
        return "destructive"
    return "mutate"


def normalised_input(tool: AgentTool | None, tool_input: Mapping[str, Any]) -> dict[str, Any]:
    """The input as the tool will receive it after its own validation (e.g. "0" → 0).

    Only the keys the caller gave are kept (defaults stay implicit). Input the tool's model
    rejects is returned unchanged: the tool refuses it itself, and the policy judges the raw form.
    """
    metadata = getattr(tool, "_metadata", None)  # strands' DecoratedFunctionTool keeps its input model here
    validate = getattr(metadata, "validate_input", None)
    if validate is None:
        return dict(tool_input)
    try:
        validated: dict[str, Any] = validate(dict(tool_input))
    except ValueError:
        return dict(tool_input)
    return {key: validated[key] for key in tool_input if key in validated}


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
    key_id: str = ""
    """The caller's API key id: changes are rate-limited per key (the session id without one)."""
    read_only: bool = False
    """Refuse every change (free-text client requests run this way)."""


class ToolPolicy(HookProvider):
    """The policy of one chat session; the mutation limiter is shared by the site's sessions."""

    def __init__(
        self,
        services: Iterable[str],
        image_allowlist: Iterable[str],
        mutations_per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        limiter: MutationLimiter | None = None,
    ) -> None:
        self.services = frozenset(services)
        self.image_allowlist = frozenset(image_allowlist)
        self.limiter = limiter or MutationLimiter(mutations_per_minute, clock)
        self._by_tool_use: dict[str, ToolCallRecord] = {}

    def register_hooks(self, registry: HookRegistry, **_: Any) -> None:
        registry.add_callback(BeforeToolCallEvent, self.before_tool_call)
        registry.add_callback(AfterToolCallEvent, self.after_tool_call)

    def refusal(self, caller: Caller | None, tool: str, tool_input: Mapping[str, Any]) -> str | None:
        """Why this call may not run, or None when it may. `tool_input` is already normalised."""
        action = tool_input.get("action", "call")
        needed = scope_for(tool)
        if caller is None or needed not in caller.scopes:
            return (
                f"refused: {tool} needs an {needed} key (the same scope as the REST API gives this data); "
                "this key may not read or change the site's state"
            )
        effect = classify(tool, tool_input)
        if effect == "read":
            return None
        if caller.read_only:
            return f"refused: {tool} {action} changes the site, and this request may only read"
        if tool == "container_ops" and isinstance(action, str) and action in CONTAINER_SERVICE_ACTIONS:
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
        if not self.limiter.take(caller.key_id or caller.session_id):
            return f"refused: rate limit of {self.limiter.per_minute} changing actions per minute reached"
        return None

    def before_tool_call(self, event: BeforeToolCallEvent) -> None:
        caller = event.invocation_state.get(CALLER_KEY)
        tool_use = event.tool_use
        raw = tool_use.get("input")
        tool_input = normalised_input(event.selected_tool, raw if isinstance(raw, Mapping) else {})
        if isinstance(raw, Mapping) and tool_input != raw:
            # The tool acts on exactly what the policy judged.
            event.tool_use = {**tool_use, "input": tool_input}
            tool_use = event.tool_use
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
