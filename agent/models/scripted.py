"""`ScriptedModel`: a strands `Model` that plays back a fixed script, for tests and evals.

Each call to `stream` plays the next `Turn`: tool calls, text (streamed in one or several
deltas), or both, or an exception to raise. Every request is recorded (`requests`), so a test
can assert on exactly what the Agent sent: messages, tool specs, system prompt, tool results.
Calling it after the last turn raises `ScriptExhaustedError`. Its base, `offline.OfflineModel`,
streams each turn with the same event builders as `RulesModel`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel
from strands.types.content import Messages
from strands.types.tools import ToolResult

from agent.models.events import ToolCall
from agent.models.offline import ModelCall, OfflineModel, Reply

T = TypeVar("T", bound=BaseModel)


class ScriptExhaustedError(RuntimeError):
    """The model was called more times than its script has turns."""


@dataclass(frozen=True)
class Turn:
    """One assistant message of the script.

    Attributes:
        tool_calls: Tool calls to make (stop reason "tool_use").
        text: The reply text; a sequence streams as one delta per item.
        raises: An exception `stream` raises instead of answering (before any event).
    """

    tool_calls: Sequence[ToolCall] = ()
    text: str | Sequence[str] = ()
    raises: BaseException | None = None

    def __post_init__(self) -> None:
        if not self.tool_calls and not self.text and self.raises is None:
            raise ValueError("a Turn needs tool_calls, text or raises")

    @property
    def deltas(self) -> list[str]:
        """The text as the deltas to stream."""
        return [self.text] if isinstance(self.text, str) else list(self.text)


@dataclass(frozen=True)
class RecordedRequest(ModelCall):
    """What one `stream` call received (messages are a deep copy, taken on arrival)."""

    @property
    def tool_names(self) -> list[str]:
        """The names of the tools offered."""
        return [spec["name"] for spec in self.tool_specs]

    @property
    def tool_results(self) -> list[ToolResult]:
        """Every toolResult block in the messages, in order."""
        return [
            block["toolResult"]
            for message in self.messages
            for block in message.get("content", [])
            if "toolResult" in block
        ]

    @property
    def last_text(self) -> str:
        """The text of the last message (empty when it holds only tool results)."""
        if not self.messages:
            return ""
        return " ".join(block["text"] for block in self.messages[-1].get("content", []) if "text" in block)

    def describe_last(self) -> str:
        """The last message in a few words, for error messages."""
        if self.last_text:
            return f"last message {self.last_text[:200]!r}"
        results = (
            [block for block in self.messages[-1].get("content", []) if "toolResult" in block]
            if self.messages
            else []
        )
        return f"last message holds {len(results)} tool result{'' if len(results) == 1 else 's'}"


class ScriptedModel(OfflineModel):
    """Plays `turns` in order, one per `stream` call, and records each request."""

    def __init__(self, turns: Sequence[Turn], model_id: str = "scripted") -> None:
        super().__init__(model_id)
        self.turns: tuple[Turn, ...] = tuple(turns)
        self.requests: list[RecordedRequest] = []

    @property
    def played(self) -> int:
        """How many turns have been played (a raised turn counts)."""
        return min(len(self.requests), len(self.turns))

    @property
    def remaining(self) -> int:
        """Turns not played yet."""
        return len(self.turns) - self.played

    def reply(self, call: ModelCall) -> Reply:
        """Record the request, then play the next turn (or raise its exception)."""
        request = RecordedRequest(
            messages=copy.deepcopy(call.messages),
            tool_specs=call.tool_specs,
            system_prompt=call.system_prompt,
            invocation_state=call.invocation_state,
        )
        turn = self._take(request, request.describe_last())
        return Reply(turn.deltas, turn.tool_calls)

    def _take(self, request: RecordedRequest, context: str) -> Turn:
        """Record `request` and return its turn; raise past the script or for a raising turn."""
        self.requests.append(request)
        call = len(self.requests)
        if call > len(self.turns):
            raise ScriptExhaustedError(
                f"ScriptedModel {self.config.get('model_id')!r} ran past its script: it has "
                f"{len(self.turns)} turn{'' if len(self.turns) == 1 else 's'} and this is call {call} ({context})"
            )
        turn = self.turns[call - 1]
        if turn.raises is not None:
            raise turn.raises
        return turn

    def structured_reply(self, output_model: type[T], prompt: Messages, system_prompt: str | None) -> T:
        """Play the next turn as structured output: its text must be JSON for `output_model`.

        The call is recorded like a `stream` call (without tool specs).
        """
        request = RecordedRequest(messages=copy.deepcopy(prompt), tool_specs=[], system_prompt=system_prompt)
        turn = self._take(request, f"structured output {output_model.__name__}")
        return output_model.model_validate_json("".join(turn.deltas))
