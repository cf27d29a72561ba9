"""`OfflineModel`: the base of the strands models that answer in-process, with no provider behind them.

A subclass says what its next assistant message is (`reply`: text and/or tool calls) and, if it
can, what its structured output is (`structured_reply`). This class does the rest the same way for
all of them: it streams the reply as the events a real provider emits (`events.reply_events`),
keeps the configuration (only ``model_id``) and counts usage in words, the unit of the usage those
events report.

Subclasses: `RulesModel`, `ScriptedModel`, and the factory's `UnavailableModel` (every call raises).
"""

from __future__ import annotations

import abc
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, TypeVar

from pydantic import BaseModel
from strands.models.model import Model
from strands.types.content import Messages
from strands.types.streaming import StreamEvent
from strands.types.tools import ToolSpec
from typing_extensions import Unpack

from agent.models.events import ToolCall, count_input_words, reply_events

T = TypeVar("T", bound=BaseModel)


class OfflineConfig(TypedDict, total=False):
    """An offline model's configuration: `model_id` names it in traces (strands reads `config["model_id"]`)."""

    model_id: str


@dataclass(frozen=True)
class ModelCall:
    """What one `stream` call received: the conversation, the tools on offer, the system prompt and
    the caller's invocation state (empty when none was given)."""

    messages: Messages
    tool_specs: list[ToolSpec]
    system_prompt: str | None
    invocation_state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """One assistant message: its text as the deltas to stream (none: no text) and its tool calls."""

    deltas: Sequence[str] = ()
    tool_calls: Sequence[ToolCall] = ()


class OfflineModel(Model):
    """A strands `Model` whose every `stream` call is one `Reply` the subclass produces in-process.

    `stream` accepts and ignores the rest of strands' keyword arguments (tool_choice,
    model_state, cancel_signal, agent_metadata, structured_output_model, ...); `structured_output`
    yields the one event ``{"output": structured_reply(...)}``, or raises what that raises
    (`NotImplementedError` unless the subclass overrides it).
    """

    def __init__(self, model_id: str) -> None:
        self.config: OfflineConfig = {"model_id": model_id}

    def update_config(self, **model_config: Unpack[OfflineConfig]) -> None:  # type: ignore[override]
        """Update the configuration (only `model_id` exists)."""
        self.config.update(model_config)

    def get_config(self) -> OfflineConfig:
        """The configuration: `{"model_id": ...}`."""
        return OfflineConfig(**self.config)

    async def count_tokens(
        self,
        messages: Messages,
        tool_specs: list[ToolSpec] | None = None,
        system_prompt: str | None = None,
        system_prompt_content: list[Any] | None = None,
    ) -> int:
        """Input size in words, consistent with the usage these models report."""
        return count_input_words(messages, system_prompt)

    @abc.abstractmethod
    def reply(self, call: ModelCall) -> Reply:
        """The assistant message that answers `call` (or raise: the stream then fails before any event)."""

    def structured_reply(self, output_model: type[T], prompt: Messages, system_prompt: str | None) -> T:
        """The structured output for `prompt`; by default there is none (`NotImplementedError`)."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot produce structured output ({output_model.__name__})"
        )

    async def stream(
        self,
        messages: Messages,
        tool_specs: list[ToolSpec] | None = None,
        system_prompt: str | None = None,
        *,
        invocation_state: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Produce the reply and stream it as one assistant message (latency measured from the call)."""
        started = time.perf_counter()
        reply = self.reply(
            ModelCall(messages, list(tool_specs or []), system_prompt, dict(invocation_state or {}))
        )
        input_words = count_input_words(messages, system_prompt)
        for event in reply_events(reply.deltas, reply.tool_calls, input_words, started):
            yield event

    async def structured_output(
        self, output_model: type[T], prompt: Messages, system_prompt: str | None = None, **kwargs: Any
    ) -> AsyncGenerator[dict[str, T | Any], None]:
        """Yield `structured_reply`'s output as the one event ``{"output": ...}``."""
        yield {"output": self.structured_reply(output_model, prompt, system_prompt)}
