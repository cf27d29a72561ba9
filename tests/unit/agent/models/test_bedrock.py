"""Bedrock, offline: the REAL `bedrock-runtime` client behind strands' `BedrockModel`, answered by
`botocore.stub.Stubber` (moto implements neither `converse` nor `converse_stream`).

* `converse` (the model built with ``streaming=False``): a full round trip through a real
  `strands.Agent` and the real `cache_manager` tool — the stubbed model first asks for the tool,
  the agent runs it, then the stubbed model answers with text. The test reads back what
  BedrockModel sent on each call (model id, system prompt, tool config, max tokens, the tool
  result) from the parameters botocore received, and the client validates every request and
  response against Bedrock's service model on the way.
* `converse_stream`: Stubber cannot produce an event stream, so the streaming test pins the
  request instead. It gives Stubber the complete `expected_params` for `converse_stream`, written
  out by hand (Stubber compares them key by key and rejects missing or extra keys), and a
  `ThrottlingException` as the stubbed answer. A request that differs fails with
  `StubAssertionError`; a matching one reaches the stubbed error, which BedrockModel must turn into
  `ModelThrottledException` — the type the fallback chain and the agent's retry rely on.

Credentials are fake and set on the session; the region is us-east-1; nothing leaves the process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber
from strands import Agent
from strands.models.bedrock import BedrockModel
from strands.types.exceptions import ModelThrottledException

from agent.models.build import build_chat_model, build_model
from config.settings import Settings
from tools.cache_manager import CacheManager, cache_manager_tool
from tools.caches.memory import MemoryCache

MODEL_ID = "anthropic.claude-3-haiku-20240307-v1:0"
SYSTEM_PROMPT = "You operate edge site site-1. Use the tools; be brief."


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> boto3.Session:
    # Nothing from the developer's machine may leak in (profiles, real keys, a region).
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    return boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )


def bedrock(session: boto3.Session, **config: Any) -> BedrockModel:
    model = build_model(
        "bedrock",
        Settings(model="bedrock", model_id=MODEL_ID, model_max_tokens=256),
        ["inference"],
        boto_session=session,
    )
    assert isinstance(model, BedrockModel)
    model.update_config(**config)
    return model


@pytest.fixture
def cache() -> CacheManager:
    return CacheManager(MemoryCache(max_entries=100))


def usage(inp: int, out: int) -> dict[str, int]:
    return {"inputTokens": inp, "outputTokens": out, "totalTokens": inp + out}


def captured_calls(model: BedrockModel) -> list[tuple[str, dict[str, Any]]]:
    """Every (operation, parameters) the client receives, recorded before botocore builds the request."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.name, json.loads(json.dumps(params, default=str))))

    model.client.meta.events.register("before-parameter-build.bedrock-runtime.*", record)
    return calls


@pytest.fixture
def stubbed(session: boto3.Session) -> Iterator[tuple[BedrockModel, Stubber]]:
    model = bedrock(session, streaming=False)
    with Stubber(model.client) as stubber:
        yield model, stubber
        stubber.assert_no_pending_responses()


async def test_converse_round_trip_with_a_tool_call(
    stubbed: tuple[BedrockModel, Stubber], cache: CacheManager
) -> None:
    model, stubber = stubbed
    calls = captured_calls(model)
    stubber.add_response(
        "converse",
        {
            "output": {
                "message": {
                    "role": "assistant",
                    "content": [
                        {"text": "Checking the cache."},
                        {
                            "toolUse": {
                                "toolUseId": "tooluse_1",
                                "name": "cache_manager",
                                "input": {"action": "stats"},
                            }
                        },
                    ],
                }
            },
            "stopReason": "tool_use",
            "usage": usage(120, 20),
            "metrics": {"latencyMs": 310},
        },
    )
    stubber.add_response(
        "converse",
        {
            "output": {"message": {"role": "assistant", "content": [{"text": "The cache holds 0 entries."}]}},
            "stopReason": "end_turn",
            "usage": usage(180, 9),
            "metrics": {"latencyMs": 200},
        },
    )
    agent = Agent(
        model=model, tools=[cache_manager_tool(cache)], system_prompt=SYSTEM_PROMPT, callback_handler=None
    )

    result = await agent.invoke_async("How full is the cache?")

    assert (
        "".join(block.get("text", "") for block in result.message["content"]) == "The cache holds 0 entries."
    )
    assert result.stop_reason == "end_turn"
    assert [name for name, _ in calls] == ["Converse", "Converse"]
    first, second = calls[0][1], calls[1][1]
    for request in (first, second):
        assert request["modelId"] == MODEL_ID
        assert request["system"] == [{"text": SYSTEM_PROMPT}]
        assert request["inferenceConfig"] == {"maxTokens": 256}
        assert [tool["toolSpec"]["name"] for tool in request["toolConfig"]["tools"]] == ["cache_manager"]
        assert request["toolConfig"]["toolChoice"] == {"auto": {}}
        schema = request["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]
        assert "action" in schema["properties"]
    assert first["messages"] == [{"role": "user", "content": [{"text": "How full is the cache?"}]}]
    # The second call carries the tool's real result back to the model.
    tool_result = second["messages"][-1]["content"][0]["toolResult"]
    assert tool_result["toolUseId"] == "tooluse_1"
    assert tool_result["status"] == "success"
    stats = (
        json.loads(tool_result["content"][0]["text"])
        if "text" in tool_result["content"][0]
        else tool_result["content"][0]["json"]
    )
    assert stats["backend"] == "memory"
    assert cache.stats()["entries_in_memory"] == 0


async def test_converse_throttling_falls_back_in_the_chain(session: boto3.Session) -> None:
    """The chat chain over a stubbed, throttled Bedrock moves on to the embedded rules model."""
    chat = build_chat_model(
        Settings(model="bedrock", model_id=MODEL_ID, model_fallback=["rules"]),
        ["inference"],
        lambda: False,
        boto_session=session,
    )
    model = chat.links[0].model
    assert isinstance(model, BedrockModel)
    model.update_config(streaming=False)
    with Stubber(model.client) as stubber:
        stubber.add_client_error("converse", service_error_code="ThrottlingException", http_status_code=429)
        await Agent(model=chat, callback_handler=None).invoke_async("what is the cache hit ratio?")
        stubber.assert_no_pending_responses()

    assert chat.served_by == "rules"
    assert chat.attempts[0].outcome == "failed"
    assert "ModelThrottledException" in (chat.attempts[0].error or "")


async def test_converse_stream_request_is_what_bedrock_expects(
    session: boto3.Session, cache: CacheManager
) -> None:
    model = bedrock(session)  # streaming is the default
    tool = cache_manager_tool(cache)
    expected = {
        "modelId": MODEL_ID,
        "messages": [{"role": "user", "content": [{"text": "flush the inference cache"}]}],
        "system": [{"text": SYSTEM_PROMPT}],
        "toolConfig": {
            "tools": [
                {
                    "toolSpec": {
                        "name": "cache_manager",
                        "description": tool.tool_spec["description"],
                        "inputSchema": {"json": ANY},
                    }
                }
            ],
            "toolChoice": {"auto": {}},
        },
        "inferenceConfig": {"maxTokens": 256},
    }
    with Stubber(model.client) as stubber:
        stubber.add_client_error(
            "converse_stream",
            service_error_code="ThrottlingException",
            service_message="Too many requests",
            http_status_code=429,
            expected_params=expected,
        )
        with pytest.raises(ModelThrottledException, match="Too many requests"):
            async for _ in model.stream(
                [{"role": "user", "content": [{"text": "flush the inference cache"}]}],
                [tool.tool_spec],
                SYSTEM_PROMPT,
            ):
                pass
        stubber.assert_no_pending_responses()


async def test_converse_stream_request_mismatch_is_caught(session: boto3.Session) -> None:
    """The check above has teeth: a request that differs from `expected_params` does not pass."""
    model = bedrock(session)
    with Stubber(model.client) as stubber:
        stubber.add_client_error(
            "converse_stream",
            service_error_code="ThrottlingException",
            expected_params={
                "modelId": MODEL_ID,
                "messages": ANY,
                "system": ANY,
                "inferenceConfig": {"maxTokens": 999},
            },
        )
        with pytest.raises(Exception, match="Expected parameters") as caught:
            async for _ in model.stream([{"role": "user", "content": [{"text": "hi"}]}], None, SYSTEM_PROMPT):
                pass
        assert not isinstance(caught.value, ModelThrottledException)
