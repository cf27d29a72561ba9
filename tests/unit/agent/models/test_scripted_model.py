"""ScriptedModel through the real strands Agent loop, with the real cache tool."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel
from strands import Agent
from strands.types.exceptions import EventLoopException
from strands.types.tools import AgentTool

from agent.models import ScriptedModel, ScriptExhaustedError, ToolCall, Turn
from tools.cache_manager import CacheManager, cache_manager_tool
from tools.caches.memory import MemoryCache

SYSTEM_PROMPT = "You are the operations agent of one MEC site."


@pytest.fixture
def cache() -> CacheManager:
    return CacheManager(MemoryCache(100))


@pytest.fixture
def cache_tool(cache: CacheManager) -> AgentTool:
    return cache_manager_tool(cache)


def _agent(model: ScriptedModel, tools: list[AgentTool]) -> Agent:
    return Agent(model=model, tools=tools, system_prompt=SYSTEM_PROMPT, callback_handler=None)


async def test_recorded_requests_hold_prompt_tools_and_the_tool_results(
    cache_tool: AgentTool, cache: CacheManager
) -> None:
    model = ScriptedModel(
        [
            Turn(
                tool_calls=[
                    ToolCall(
                        "cache_manager",
                        {"action": "set", "namespace": "sensor", "key": "k", "value": 7},
                        "t-1",
                    )
                ]
            ),
            Turn(text="Stored it."),
        ]
    )
    agent = _agent(model, [cache_tool])
    result = await agent.invoke_async("store 7 under k")

    assert str(result).strip() == "Stored it."
    assert await cache.get("sensor", "k") == b"7"
    first, second = model.requests
    assert first.system_prompt == SYSTEM_PROMPT
    assert first.tool_names == ["cache_manager"]
    assert first.last_text == "store 7 under k"
    assert first.tool_results == []
    [tool_result] = second.tool_results
    assert tool_result["toolUseId"] == "t-1" and tool_result["status"] == "success"
    assert json.loads(tool_result["content"][0]["text"])["stored"] is True
    assert model.remaining == 0


async def test_text_turn_streams_one_delta_per_part(cache_tool: AgentTool) -> None:
    model = ScriptedModel([Turn(text=["The cache ", "is ", "empty."])])
    deltas = [
        event["data"] async for event in _agent(model, [cache_tool]).stream_async("cache?") if "data" in event
    ]
    assert deltas == ["The cache ", "is ", "empty."]


async def test_invocation_state_reaches_the_recorded_request(cache_tool: AgentTool) -> None:
    model = ScriptedModel([Turn(text="ok")])
    await _agent(model, [cache_tool]).invoke_async("hi", invocation_state={"mec_caller": "op-1"})
    assert model.requests[0].invocation_state["mec_caller"] == "op-1"


async def test_an_exception_turn_propagates_out_of_the_agent(cache_tool: AgentTool) -> None:
    model = ScriptedModel([Turn(raises=ConnectionError("model server is down"))])
    with pytest.raises(ConnectionError, match="model server is down"):
        await _agent(model, [cache_tool]).invoke_async("status")
    assert len(model.requests) == 1


async def test_running_past_the_script_raises_a_clear_error(cache_tool: AgentTool) -> None:
    model = ScriptedModel([Turn(text="first answer")])
    agent = _agent(model, [cache_tool])
    await agent.invoke_async("one")
    with pytest.raises(
        ScriptExhaustedError,
        match=r"ran past its script: it has 1 turn and this is call 2 \(last message 'two'\)",
    ):
        await agent.invoke_async("two")


async def test_a_model_error_after_a_tool_round_arrives_wrapped_by_the_event_loop(
    cache_tool: AgentTool,
) -> None:
    """strands wraps exceptions of every model call but the first in `EventLoopException`."""
    model = ScriptedModel([Turn(tool_calls=[ToolCall("cache_manager", {"action": "stats"})])])
    with pytest.raises(EventLoopException) as caught:
        await _agent(model, [cache_tool]).invoke_async("cache stats")
    assert isinstance(caught.value.__cause__, ScriptExhaustedError)
    assert "call 2 (last message holds 1 tool result)" in str(caught.value.__cause__)


def test_an_empty_turn_is_rejected() -> None:
    with pytest.raises(ValueError, match="tool_calls, text or raises"):
        Turn()


async def test_structured_output_validates_the_turns_text() -> None:
    class Answer(BaseModel):
        replicas: int

    model = ScriptedModel([Turn(text='{"replicas": 3}')])
    events = [
        event
        async for event in model.structured_output(Answer, [{"role": "user", "content": [{"text": "n?"}]}])
    ]
    assert events == [{"output": Answer(replicas=3)}]
