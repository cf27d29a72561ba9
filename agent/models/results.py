"""What the rules model has seen since the operator's request: each tool call with its result.

A *round* is the tool calls of one assistant message with their results; `Rounds` holds every
round since the request, in order. `steps` reads them to decide the next calls and `answers` to
write the reply; the lookups both need are here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.models.events import ToolCall


@dataclass(frozen=True)
class Observation:
    """One tool call and what came back: `data` is the parsed JSON result (or the raw text)."""

    call: ToolCall
    ok: bool
    data: Any
    text: str

    @classmethod
    def of(cls, call: ToolCall, result: Mapping[str, Any]) -> Observation:
        """Read a strands toolResult block (text content holds JSON for the site's tools)."""
        texts: list[str] = []
        data: Any = None
        for item in result.get("content", []):
            if "json" in item:
                data = item["json"]
            if "text" in item:
                texts.append(item["text"])
        text = "\n".join(texts)
        if data is None:
            try:
                data = json.loads(text)
            except ValueError:
                data = text
        return cls(call=call, ok=result.get("status") != "error", data=data, text=text)

    @property
    def error(self) -> str:
        """The failure's reason without strands' "Error: " prefix."""
        return re.sub(r"^Error:\s*", "", self.text.strip()) or "no reason given"


Rounds = Sequence[Sequence[Observation]]
"""The rounds so far: each the observations of one assistant message's tool calls."""


def all_observations(rounds: Rounds) -> list[Observation]:
    """Every observation of `rounds`, in order."""
    return [obs for round_ in rounds for obs in round_]


def latest_result(rounds: Rounds, tool: str, action: str | None = None) -> Any:
    """The data of the latest successful call of `tool` (with `action`), or None."""
    for obs in reversed(all_observations(rounds)):
        if obs.ok and obs.call.name == tool and (action is None or obs.call.input.get("action") == action):
            return obs.data
    return None


def any_failed(round_: Sequence[Observation]) -> bool:
    """Whether a call of the round failed."""
    return any(not obs.ok for obs in round_)


def listed_instances(data: Any, service: str | None = None) -> list[Mapping[str, Any]]:
    """The instances in a ``container_ops list`` result (of `service` only, when given)."""
    instances = data.get("instances", []) if isinstance(data, dict) else []
    return [inst for inst in instances if service is None or inst.get("service") == service]


def placed_replicas(data: Any, service: str | None) -> dict[str, int]:
    """Site → replicas of `service` in a ``swarm_ops placements`` result (empty when it has none)."""
    placements = data.get("placements", {}) if isinstance(data, dict) else {}
    placement = placements.get(service) if isinstance(placements, dict) else None
    if not isinstance(placement, dict):
        return {}
    return {
        str(site): int(count) for site, count in placement.items() if isinstance(count, int) and count > 0
    }
