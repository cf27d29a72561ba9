"""`OfflineModel`, the base of the in-process models: one reply → one provider-shaped message."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from agent.models.events import ToolCall
from agent.models.offline import ModelCall, OfflineModel, Reply


class Echo(OfflineModel):
    """Replies with the last user text and one fixed tool call; remembers what it was given."""

    def __init__(self) -> None:
        super().__init__("echo")
        self.calls: list[ModelCall] = []

    def reply(self, call: ModelCall) -> Reply:
        self.calls.append(call)
        text = call.messages[-1]["content"][0]["text"]
        return Reply([text, "!"], [ToolCall("cache_manager", {"action": "stats"}, "tooluse_1")])


class Verdict(BaseModel):
    healthy: bool


MESSAGES: Any = [{"role": "user", "content": [{"text": "two words"}]}]


async def test_a_reply_streams_as_one_assistant_message() -> None:
    model = Echo()
    spec: Any = {"name": "cache_manager", "description": "", "inputSchema": {"json": {}}}

    events = [
        event
        async for event in model.stream(
            MESSAGES, [spec], "be brief", invocation_state={"caller": "k"}, tool_choice={"auto": {}}
        )
    ]

    assert [next(iter(event)) for event in events] == [
        "messageStart",
        *["contentBlockStart", "contentBlockDelta", "contentBlockDelta", "contentBlockStop"],
        *["contentBlockStart", "contentBlockDelta", "contentBlockStop"],
        "messageStop",
        "metadata",
    ]
    assert events[-2] == {"messageStop": {"stopReason": "tool_use"}}
    assert events[-1]["metadata"]["usage"]["inputTokens"] == 4  # "be brief" + "two words"
    assert events[5]["contentBlockStart"]["start"]["toolUse"] == {
        "name": "cache_manager",
        "toolUseId": "tooluse_1",
    }
    (call,) = model.calls
    assert call.tool_specs == [spec] and call.system_prompt == "be brief"
    assert call.invocation_state == {"caller": "k"}


async def test_without_structured_reply_structured_output_is_not_implemented() -> None:
    with pytest.raises(NotImplementedError, match=r"Echo cannot produce structured output \(Verdict\)"):
        async for _ in Echo().structured_output(Verdict, MESSAGES):
            pass


async def test_configuration_is_the_model_id_and_usage_is_counted_in_words() -> None:
    model = Echo()
    model.update_config(model_id="echo-2")
    config = model.get_config()
    config["model_id"] = "changed"

    assert model.get_config() == {"model_id": "echo-2"}
    assert await model.count_tokens(MESSAGES, system_prompt="one more") == 4
