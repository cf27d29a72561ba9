"""`ChatService` driving the real strands Agent loop with scripted models and real tool backends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from agent.chat import ChatConfig, ChatError, ChatService
from agent.models import ScriptedModel, ToolCall, Turn
from tools.cache_manager import CacheManager, cache_manager_tool
from tools.caches.memory import MemoryCache

OPERATOR = frozenset({"client", "operator"})


def _service(
    turns_per_session: list[list[Turn]], store: CacheManager | None = None, **config
) -> tuple[ChatService, CacheManager]:
    cache = CacheManager(MemoryCache(100))
    scripts: Iterator[list[Turn]] = iter(turns_per_session)
    service = ChatService(
        ChatConfig(
            system_prompt="you operate a site", services=("sensor",), image_allowlist=("img",), **config
        ),
        [cache_manager_tool(cache)],
        lambda: ScriptedModel(next(scripts)),
        store or CacheManager(MemoryCache(100)),
    )
    return service, cache


async def test_turn_reports_tool_calls_usage_and_reply() -> None:
    service, _ = _service(
        [[Turn(tool_calls=[ToolCall("cache_manager", {"action": "stats"})]), Turn(text=["All ", "good."])]]
    )
    reply = await service.chat("cache stats", OPERATOR)
    assert reply.reply == "All good."
    assert [(c["name"], c["status"]) for c in reply.tool_calls] == [("cache_manager", "success")]
    assert reply.tool_calls[0]["duration_ms"] >= 0
    assert reply.usage["total_tokens"] > 0
    assert service.turns == {(reply.model, "ok"): 1}


async def test_refused_destructive_call_never_reaches_the_cache() -> None:
    service, cache = _service(
        [
            [
                Turn(tool_calls=[ToolCall("cache_manager", {"action": "flush", "namespace": "sensor"})]),
                Turn(text="ask"),
            ]
        ]
    )
    await cache.set("sensor", "k", b"1", 60)
    reply = await service.chat("flush the sensor cache", OPERATOR)
    assert reply.tool_calls[0]["status"] == "refused"
    assert await cache.get("sensor", "k") == b"1"


async def test_model_failure_is_a_503_chat_error() -> None:
    service, _ = _service([[Turn(raises=ConnectionRefusedError("model server down"))]])
    with pytest.raises(ChatError) as caught:
        await service.chat("status", OPERATOR)
    assert (caught.value.status, caught.value.code) == (503, "model_unavailable")
    assert "model server down" in caught.value.message


async def test_failure_after_a_tool_round_is_unwrapped_to_the_model_error() -> None:
    service, _ = _service(
        [
            [
                Turn(tool_calls=[ToolCall("cache_manager", {"action": "stats"})]),
                Turn(raises=TimeoutError("read timed out")),
            ]
        ]
    )
    with pytest.raises(ChatError) as caught:
        await service.chat("status", OPERATOR)
    assert "read timed out" in caught.value.message


async def test_slow_model_turn_is_a_504() -> None:
    class SlowModel(ScriptedModel):
        async def stream(self, *args, **kwargs):  # type: ignore[override]
            await asyncio.sleep(5)
            async for event in super().stream(*args, **kwargs):
                yield event

    cache = CacheManager(MemoryCache(10))
    service = ChatService(
        ChatConfig(system_prompt="p", services=(), image_allowlist=()),
        [cache_manager_tool(cache)],
        lambda: SlowModel([Turn(text="late")]),
        cache,
    )
    with pytest.raises(ChatError) as caught:
        await service.chat("status", OPERATOR, timeout_s=0.2)
    assert caught.value.status == 504


async def test_session_continues_after_a_restart_from_the_store() -> None:
    store = CacheManager(MemoryCache(100))
    first, _ = _service([[Turn(text="one")]], store)
    reply = await first.chat("hello", OPERATOR)
    models: list[ScriptedModel] = []

    def factory() -> ScriptedModel:
        models.append(ScriptedModel([Turn(text="two")]))
        return models[-1]

    second = ChatService(first.config, first.tools, factory, store)
    again = await second.chat("and again", OPERATOR, session_id=reply.session_id)
    assert (again.session_id, again.reply) == (reply.session_id, "two")
    [request] = models[0].requests
    texts = [block.get("text") for message in request.messages for block in message["content"]]
    assert texts == ["hello", "one", "and again"]


async def test_unknown_session_is_404_naming_session_id() -> None:
    service, _ = _service([])
    with pytest.raises(ChatError) as caught:
        await service.chat("hi", OPERATOR, session_id="nope")
    assert (caught.value.status, caught.value.field) == (404, "session_id")


async def test_sessions_are_bounded() -> None:
    service, _ = _service([[Turn(text=str(i))] for i in range(5)], max_sessions=2)
    for i in range(5):
        await service.chat(f"m{i}", OPERATOR)
    assert service.active_sessions == 2


async def test_answer_cut_at_max_tokens_is_a_502_naming_the_limit() -> None:
    from strands.types.exceptions import MaxTokensReachedException

    service, _ = _service([[Turn(raises=MaxTokensReachedException("max tokens"))]])
    with pytest.raises(ChatError) as caught:
        await service.chat("status", OPERATOR)
    assert (caught.value.status, caught.value.code) == (502, "model_output_truncated")
