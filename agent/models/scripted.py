"""`ScriptedModel`: a strands `Model` that plays back a fixed script, for tests and evals.

Each call to `stream` plays the next `Turn`: tool calls, text (streamed in one or several
deltas), or both, or an exception to raise. Every request is recorded (`requests`), so a test
can assert on exactly what the Agent sent: messages, tool specs, system prompt, tool results.
Calling it after the last turn raises `ScriptExhaustedError`. The events come from
`agent.models.events`, the same builders `RulesModel` uses.
"""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, TypeVar

from pydantic import BaseModel
from strands.types.content import Messages
from strands.types.streaming import StreamEvent
from strands.types.tools import ToolResult, ToolSpec
from typing_extensions import Unpack

from agent.models.events import ToolCall, WordCountedModel, count_input_words, reply_events

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
class RecordedRequest:
    """What one `stream` call received (messages are a deep copy, taken on arrival)."""

    messages: Messages
    tool_specs: list[ToolSpec]
    system_prompt: str | None
    invocation_state: dict[str, Any] = field(default_factory=dict)

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


class ScriptedConfig(TypedDict, total=False):
    """ScriptedModel configuration: only `model_id`."""

    model_id: str


class ScriptedModel(WordCountedModel):
    """Plays `turns` in order, one per `stream` call, and records each request."""

    def __init__(self, turns: Sequence[Turn], model_id: str = "scripted") -> None:
        self.turns: tuple[Turn, ...] = tuple(turns)
        self.requests: list[RecordedRequest] = []
        self.config: ScriptedConfig = {"model_id": model_id}

    @property
    def played(self) -> int:
        """How many turns have been played (a raised turn counts)."""
        return min(len(self.requests), len(self.turns))

    @property
    def remaining(self) -> int:
        """Turns not played yet."""
        return len(self.turns) - self.played

    def update_config(self, **model_config: Unpack[ScriptedConfig]) -> None:  # type: ignore[override]
        """Update the configuration (only `model_id` exists)."""
        self.config.update(model_config)

    def get_config(self) -> ScriptedConfig:
        """The configuration: `{"model_id": ...}`."""
        return ScriptedConfig(**self.config)

    async def stream(
        self,
        messages: Messages,
        tool_specs: list[ToolSpec] | None = None,
        system_prompt: str | None = None,
        *,
        invocation_state: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Record the request, then play the next turn (or raise its exception)."""
        started = time.perf_counter()
        request = RecordedRequest(
            messages=copy.deepcopy(messages),
            tool_specs=list(tool_specs or []),
            system_prompt=system_prompt,
            invocation_state=dict(invocation_state or {}),
        )
        turn = self._take(request, request.describe_last())
        for event in reply_events(
            turn.deltas, turn.tool_calls, count_input_words(messages, system_prompt), started
        ):
            yield event

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

    async def structured_output(
        self, output_model: type[T], prompt: Messages, system_prompt: str | None = None, **kwargs: Any
    ) -> AsyncGenerator[dict[str, T | Any], None]:
        """Play the next turn as structured output: its text must be JSON for `output_model`.

        The call is recorded like a `stream` call (without tool specs).
        """
        request = RecordedRequest(messages=copy.deepcopy(prompt), tool_specs=[], system_prompt=system_prompt)
        turn = self._take(request, f"structured output {output_model.__name__}")
        yield {"output": output_model.model_validate_json("".join(turn.deltas))}
