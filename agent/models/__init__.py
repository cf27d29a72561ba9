"""The operator agent's strands models (`build` makes one from settings: the chain of `fallback`).

* `RulesModel` — the offline, deterministic default: rule-based steps over the site's tools
  (parser in `intents`, the next tool calls in `steps`, the reply's English in `answers`, both
  reading the tool results through `results`).
* `ScriptedModel` — plays back a fixed script of `Turn`s (`ToolCall`s and/or text) and records
  every request, for deterministic tests and evals.

Both are `offline.OfflineModel`s: they produce one reply per call, which the base streams as the
exact events of a real provider (built once in `events`).
"""

from agent.models.events import ToolCall
from agent.models.rules import RulesModel
from agent.models.scripted import RecordedRequest, ScriptedModel, ScriptExhaustedError, Turn

__all__ = ["RecordedRequest", "RulesModel", "ScriptExhaustedError", "ScriptedModel", "ToolCall", "Turn"]
