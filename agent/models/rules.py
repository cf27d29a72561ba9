"""`RulesModel`: the embedded, offline, deterministic operator model, as a strands `Model`.

It follows rules instead of generating text. On each call it reads the conversation strands sends it:

* the latest user message that holds text (not tool results) is the operator's request; it is
  parsed into an intent by `agent.models.intents` (a table of patterns and extractors);
* the assistant tool calls and user tool results after it are the rounds run so far;
* `agent.models.steps` turns request + rounds into the next step: more tool calls (several
  independent ones may share a turn), or the final answer, which `agent.models.answers` writes
  from the real tool results.
  A compound message ("CPU and GPU load?", "restart sensor-1 and show its logs") is taken part
  by part, reads side by side and changes one after another, and answered part by part.

Text that matches no intent gets a plain reply saying so and listing what is understood: the
model never invents a tool call, and it never calls a tool the agent did not offer it. It emits the
same stream events as a real provider (see `agent.models.events`), so the strands `Agent` loop,
hooks, metrics and evaluators treat it like any model. Usage counts words, not tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

from pydantic import BaseModel
from strands.types.content import Messages

from agent.models import steps
from agent.models.answers import CAPABILITIES, describe, not_understood
from agent.models.events import ToolCall
from agent.models.intents import IntentParser, Request
from agent.models.offline import ModelCall, OfflineModel, Reply
from agent.models.results import Observation
from agent.models.steps import Step

T = TypeVar("T", bound=BaseModel)

MAX_ROUNDS = 4
"""Tool rounds per stage after which the model stops calling and answers with what it has (a
safety net: every single request is answered in at most `steps.STEP_ROUNDS` = 2 rounds; a compound request gets
this many per stage, see `steps.stages`)."""


class Conversation:
    """The operator's latest request and the tool rounds that followed it, read from messages."""

    def __init__(self, messages: Messages) -> None:
        self.request_text: str | None = None
        self.rounds: list[list[Observation]] = []
        start = None
        for index in range(len(messages) - 1, -1, -1):
            message = messages[index]
            content = message.get("content", [])
            if (
                message.get("role") == "user"
                and any("text" in block for block in content)
                and not any("toolResult" in block for block in content)
            ):
                start = index
                self.request_text = " ".join(block["text"] for block in content if "text" in block).strip()
                break
        if start is None:
            return
        calls: dict[str, ToolCall] = {}
        for message in messages[start + 1 :]:
            if message.get("role") == "assistant":
                for block in message.get("content", []):
                    if "toolUse" in block:
                        use = block["toolUse"]
                        calls[use["toolUseId"]] = ToolCall(
                            use["name"], dict(use.get("input") or {}), use["toolUseId"]
                        )
                continue
            round_ = [
                Observation.of(
                    calls.pop(block["toolResult"]["toolUseId"], ToolCall("unknown", {})),
                    block["toolResult"],
                )
                for block in message.get("content", [])
                if "toolResult" in block
            ]
            if round_:
                self.rounds.append(round_)


class RulesModel(OfflineModel):
    """Rule-based steps over the site's tools for the operator's intents, run by the strands Agent loop.

    Args:
        services: The site's service names; intents match service mentions against them.
        model_id: The name reported in the config (and so in traces).
        kinds: Client kind → service ("gaming" → "game-state"); defaults to
            `intents.DEFAULT_KINDS`, and a kind whose service is not in `services` is ignored.

    `structured_output` is not supported (there is no schema-filling in a rules model): it raises
    `NotImplementedError`. Use an LLM model kind for structured output.
    """

    def __init__(
        self,
        services: Sequence[str],
        model_id: str = "rules-v1",
        *,
        kinds: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(model_id)
        self.services: tuple[str, ...] = tuple(services)
        self.parser = IntentParser(self.services, kinds)

    def next_step(self, text: str, rounds: Sequence[Sequence[Observation]] = ()) -> Step:
        """The step for a request text after `rounds` (the first step when there are none)."""
        request: Request | None = self.parser.parse(text)
        if request is None:
            return Step(text=not_understood(text, self.services))
        step = steps.next_step(request, rounds, self.services)
        if step.calls and len(rounds) >= MAX_ROUNDS * len(steps.stages(request)):
            return steps.unfinished(request, rounds, self.services)
        return step

    def respond(self, messages: Messages, tool_names: frozenset[str]) -> Step:
        """The step for a whole conversation, restricted to the tools on offer."""
        conversation = Conversation(messages)
        if not conversation.request_text:
            return Step(text=f"I have no request to act on. {CAPABILITIES}")
        step = self.next_step(conversation.request_text, conversation.rounds)
        if not step.calls and not step.text:
            return Step(text="Done; the tools returned nothing to report.")
        unavailable = [call for call in step.calls if call.name not in tool_names]
        if unavailable:
            names = sorted({call.name for call in unavailable})
            return Step(
                text=f"I cannot {describe(unavailable[0])}: this agent has no {', '.join(names)} tool. "
                f"Tools available: {', '.join(sorted(tool_names)) or 'none'}."
            )
        return step

    def reply(self, call: ModelCall) -> Reply:
        """The next step as one assistant message.

        It depends only on the messages and on which tools are offered: the system prompt and the
        invocation state are not read.
        """
        step = self.respond(call.messages, frozenset(spec["name"] for spec in call.tool_specs))
        return Reply([step.text] if step.text else [], step.calls)

    def structured_reply(self, output_model: type[T], prompt: Messages, system_prompt: str | None) -> T:
        """Not supported: raises `NotImplementedError` (a rules model cannot fill a schema)."""
        raise NotImplementedError(
            f"RulesModel cannot produce structured output ({output_model.__name__}): it only plans "
            "tool calls for known operator intents; use the openai-compatible or bedrock model for this"
        )
