"""The model factory: one kind of model from settings, and a chat session's chain of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from pydantic import BaseModel
from strands import Agent
from strands.models.bedrock import BedrockModel
from strands.models.model import Model
from strands.models.openai import OpenAIModel
from strands.types.streaming import StreamEvent

from agent.models.build import (
    ModelUnavailableError,
    UnavailableModel,
    build_chat_model,
    build_model,
    parse_chain_entry,
    plain_text_messages,
)
from agent.models.events import count_input_words
from config.settings import ModelKind, Settings

SERVICES = ("inference", "sensor", "game-state")


async def collect(model: Model) -> list[StreamEvent]:
    return [event async for event in model.stream([{"role": "user", "content": [{"text": "hi"}]}])]


def settings(**overrides: Any) -> Settings:
    return Settings(**overrides)


def test_missing_model_url_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="model_url"):
        build_model("openai-compatible", settings(model="openai-compatible", model_id="m"), SERVICES)


def test_missing_model_id_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="model_id"):
        build_model(
            "openai-compatible",
            settings(model="openai-compatible", model_url="http://127.0.0.1:1/v1"),
            SERVICES,
        )
    with pytest.raises(ValueError, match="model id"):
        build_model("bedrock", settings(model="bedrock"), SERVICES)


def test_unknown_kind_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model("gpt", settings(), SERVICES)
    with pytest.raises(ValueError, match="bedrok"):  # refused by Settings before the chain is built
        build_chat_model(settings(model_fallback=["bedrok"]), SERVICES, lambda: False)


def test_openai_compatible_model_is_configured_from_settings() -> None:
    model = build_model(
        "openai-compatible",
        settings(
            model_url="http://127.0.0.1:8081/v1", model_id="smol", model_timeout_s=7, model_max_tokens=64
        ),
        SERVICES,
    )
    assert isinstance(model, OpenAIModel)
    assert model.get_config()["model_id"] == "smol"
    assert model.get_config()["params"] == {"max_tokens": 64}
    assert model.client_args == {
        "base_url": "http://127.0.0.1:8081/v1",
        "api_key": "none",
        "timeout": 7,
        "max_retries": 0,
    }


def test_bedrock_model_is_configured_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    session = boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="eu-west-1"
    )
    model = build_model(
        "bedrock",
        settings(model_id="anthropic.claude-3-haiku-20240307-v1:0", model_timeout_s=12, model_max_tokens=100),
        SERVICES,
        boto_session=session,
    )
    assert isinstance(model, BedrockModel)
    assert model.get_config()["model_id"] == "anthropic.claude-3-haiku-20240307-v1:0"
    assert model.get_config()["max_tokens"] == 100
    assert model.client.meta.region_name == "eu-west-1"
    assert model.client.meta.config.read_timeout == 12
    assert model.client.meta.config.connect_timeout == 5
    assert model.client.meta.config.retries["total_max_attempts"] == 1


def test_bedrock_uses_the_settings_region_by_default() -> None:
    model = build_model(
        "bedrock", settings(model_id="amazon.nova-micro-v1:0", bedrock_region="ap-south-1"), SERVICES
    )
    assert isinstance(model, BedrockModel)
    assert model.client.meta.region_name == "ap-south-1"


def test_openai_compatible_requests_use_plain_string_content() -> None:
    model = build_model(
        "openai-compatible", settings(model_url="http://127.0.0.1:1/v1", model_id="m"), SERVICES
    )
    request = model.format_request(  # type: ignore[attr-defined]
        [
            {"role": "user", "content": [{"text": "first"}, {"text": "second"}]},
            {
                "role": "assistant",
                "content": [{"toolUse": {"toolUseId": "t1", "name": "cache_manager", "input": {}}}],
            },
            {
                "role": "user",
                "content": [
                    {"toolResult": {"toolUseId": "t1", "status": "success", "content": [{"json": {"a": 1}}]}}
                ],
            },
        ],
        system_prompt="be brief",
    )
    assert request["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first\nsecond"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"arguments": "{}", "name": "cache_manager"}, "id": "t1", "type": "function"}
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": '{"a": 1}'},
    ]


def test_plain_text_messages_keeps_images() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "look"}, image]}]
    assert plain_text_messages(messages) == messages


def test_chain_entries_may_carry_a_model_id() -> None:
    assert parse_chain_entry("bedrock:anthropic.claude-3-haiku-20240307-v1:0") == (
        "bedrock",
        "anthropic.claude-3-haiku-20240307-v1:0",
    )
    assert parse_chain_entry(" rules ") == ("rules", None)


def test_chat_model_chain_follows_settings() -> None:
    model = build_chat_model(
        settings(
            model="openai-compatible",
            model_url="http://127.0.0.1:8081/v1",
            model_id="smol",
            model_fallback=["bedrock:amazon.nova-micro-v1:0", "rules", "openai-compatible"],
        ),
        SERVICES,
        lambda: False,
        boto_session=boto3.Session(aws_access_key_id="t", aws_secret_access_key="t", region_name="us-east-1"),
    )
    assert model.labels == ("openai-compatible", "bedrock", "rules")
    assert [link.local for link in model.links] == [True, False, False]
    assert model.links[1].model.get_config()["model_id"] == "amazon.nova-micro-v1:0"
    assert model.get_config()["model_id"] == "openai-compatible>bedrock>rules"


def test_chat_model_without_fallback_is_a_chain_of_one() -> None:
    model = build_chat_model(settings(model="rules"), SERVICES, lambda: False)
    assert model.labels == ("rules",)


async def test_unbuildable_kind_does_not_break_the_chain() -> None:
    model = build_chat_model(
        settings(model="openai-compatible", model_fallback=["rules"]), SERVICES, lambda: False
    )
    assert isinstance(model.links[0].model, UnavailableModel)

    agent = Agent(model=model, callback_handler=None)
    await agent.invoke_async("what is the cache hit ratio?")

    assert model.served_by == "rules"
    assert "model_url" in (model.attempts[0].error or "")


async def test_unbuildable_only_model_fails_each_call_clearly() -> None:
    model = build_chat_model(settings(model="openai-compatible"), SERVICES, lambda: False)
    with pytest.raises(ModelUnavailableError, match="model_url"):
        await collect(model)


async def test_unavailable_model_raises_on_every_call_and_estimates_like_a_provider() -> None:
    model = UnavailableModel("bedrock", "no region")
    prompt: Any = [
        {"role": "user", "content": [{"text": "antidisestablishmentarianism, supercalifragilistic!"}]}
    ]

    with pytest.raises(ModelUnavailableError, match="'bedrock' is not available: no region"):
        await collect(model)
    with pytest.raises(ModelUnavailableError, match="no region"):
        async for _ in model.structured_output(BaseModel, prompt):
            pass
    model.update_config(model_id="ignored")
    assert model.get_config() == {"model_id": "bedrock (unavailable)"}
    estimate = await model.count_tokens(prompt)
    assert estimate == await Model.count_tokens(model, prompt)
    assert estimate != count_input_words(prompt)  # not the words the other offline models count


@dataclass
class OnlyModelSettings:
    """The fields of `ModelSettings` and nothing else of the site's settings."""

    model: ModelKind = "rules"
    model_fallback: list[str] = field(default_factory=list)
    model_url: str | None = None
    model_id: str | None = None
    model_api_key: str = "none"
    model_timeout_s: float = 30.0
    model_max_tokens: int = 512
    bedrock_region: str = "us-east-1"


def test_the_factory_reads_only_the_model_settings() -> None:
    given = OnlyModelSettings(
        model="openai-compatible",
        model_url="http://127.0.0.1:8081/v1",
        model_id="smol",
        model_fallback=["rules"],
        model_max_tokens=64,
    )
    model = build_chat_model(given, SERVICES, lambda: False)

    assert model.labels == ("openai-compatible", "rules")
    assert model.links[0].model.get_config()["params"] == {"max_tokens": 64}
