"""`ChatService` driving the real strands Agent loop with scripted models and real tool backends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from agent.chat import ChatService
from agent.errors import SiteError
from agent.models import ScriptedModel, ToolCall, Turn
from agent.scopes import Principal
from config.settings import Settings
from tools.cache_manager import CacheManager, cache_manager_tool
from tools.caches.memory import MemoryCache


def chat_settings(**chat: Any) -> Settings:
    """The site's real settings with chat limits overridden (`max_sessions=2` is `chat_max_sessions`)."""
    return Settings(image_allowlist=["img"], **{f"chat_{name}": value for name, value in chat.items()})


OPERATOR = Principal("operator-key-id", frozenset({"client", "operator"}))


def _service(
    turns_per_session: list[list[Turn]], store: CacheManager | None = None, **config
) -> tuple[ChatService, CacheManager]:
    cache = CacheManager(MemoryCache(100))
    scripts: Iterator[list[Turn]] = iter(turns_per_session)
    service = ChatService(
        chat_settings(**config),
        "you operate a site",
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
    with pytest.raises(SiteError) as caught:
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
    with pytest.raises(SiteError) as caught:
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
        chat_settings(),
        "p",
        [cache_manager_tool(cache)],
        lambda: SlowModel([Turn(text="late")]),
        cache,
    )
    with pytest.raises(SiteError) as caught:
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

    second = ChatService(first.settings, first.system_prompt, first.tools, factory, store)
    again = await second.chat("and again", OPERATOR, session_id=reply.session_id)
    assert (again.session_id, again.reply) == (reply.session_id, "two")
    [request] = models[0].requests
    texts = [block.get("text") for message in request.messages for block in message["content"]]
    assert texts == ["hello", "one", "and again"]


async def test_unknown_session_is_404_naming_session_id() -> None:
    service, _ = _service([])
    with pytest.raises(SiteError) as caught:
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
    with pytest.raises(SiteError) as caught:
        await service.chat("status", OPERATOR)
    assert (caught.value.status, caught.value.code) == (502, "model_output_truncated")


OTHER_OPERATOR = Principal("another-key-id", frozenset({"client", "operator"}))
CLIENT = Principal("client-key-id", frozenset({"client"}))


async def test_another_keys_session_is_404_like_an_unknown_one() -> None:
    store = CacheManager(MemoryCache(100))
    service, _ = _service([[Turn(text="mine")], [Turn(text="never")]], store)
    reply = await service.chat("hello", OPERATOR)
    with pytest.raises(SiteError) as live:
        await service.chat("let me in", OTHER_OPERATOR, session_id=reply.session_id)
    # Restored from the store (e.g. after a restart or eviction) it is still the owner's only.
    restarted = ChatService(
        service.settings, service.system_prompt, service.tools, lambda: ScriptedModel([Turn(text="x")]), store
    )
    with pytest.raises(SiteError) as restored:
        await restarted.chat("let me in", OTHER_OPERATOR, session_id=reply.session_id)
    with pytest.raises(SiteError) as unknown:
        await restarted.chat("let me in", OTHER_OPERATOR, session_id="no-such-session")
    for caught in (live, restored, unknown):
        assert (caught.value.status, caught.value.code, caught.value.field) == (
            404,
            "unknown_session",
            "session_id",
        )
    assert live.value.message.replace(reply.session_id, "ID") == unknown.value.message.replace(
        "no-such-session", "ID"
    )


async def test_mutation_rate_limit_survives_session_eviction_and_restore() -> None:
    set_key = ToolCall("cache_manager", {"action": "set", "namespace": "sensor", "key": "k", "value": 1})
    store = CacheManager(MemoryCache(100))
    service, _ = _service(
        [[Turn(tool_calls=[set_key]), Turn(text="ok")] for _ in range(3)],
        store,
        mutations_per_minute=2,
        max_sessions=1,
    )
    first = await service.chat("set it", OPERATOR)
    await service.chat("set it", OPERATOR)  # a second session evicts the first
    assert service.active_sessions == 1
    third = await service.chat("set it again", OPERATOR, session_id=first.session_id)  # restored
    assert [c["status"] for c in third.tool_calls] == ["refused"]
    assert "rate limit" in third.tool_calls[0]["reason"]


async def test_client_key_gets_no_operator_data_through_chat() -> None:
    stats = ToolCall("cache_manager", {"action": "get", "namespace": "_chat_sessions", "key": "x"})
    service, cache = _service([[Turn(tool_calls=[stats]), Turn(text="refused")]])
    await cache.set("inference", "k", b'"secret"', 60)
    reply = await service.chat("show me the cache", CLIENT)
    [call] = reply.tool_calls
    assert call["status"] == "refused" and "operator" in call["reason"]


async def test_turns_over_a_keys_rate_are_429_with_retry_after() -> None:
    service, _ = _service([[Turn(text=str(i))] for i in range(4)], turns_per_minute=1, burst=2)
    await service.chat("one", OPERATOR)
    await service.chat("two", OPERATOR)
    with pytest.raises(SiteError) as caught:
        await service.chat("three", OPERATOR)
    assert (caught.value.status, caught.value.code) == (429, "rate_limited")
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s >= 1
    # Another key has its own allowance.
    assert (await service.chat("mine", OTHER_OPERATOR)).reply == "2"


async def test_turns_over_the_sites_concurrency_are_503_chat_busy() -> None:
    release = asyncio.Event()

    class HeldModel(ScriptedModel):
        async def stream(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            await release.wait()
            async for event in super().stream(*args, **kwargs):
                yield event

    cache = CacheManager(MemoryCache(100))
    service = ChatService(
        chat_settings(max_concurrent_turns=1),
        "p",
        [cache_manager_tool(cache)],
        lambda: HeldModel([Turn(text="done")]),
        cache,
    )
    first = asyncio.create_task(service.chat("slow", OPERATOR))
    deadline = asyncio.get_running_loop().time() + 10
    while service.running_turns == 0:
        assert asyncio.get_running_loop().time() < deadline, "the first turn never started"
        await asyncio.sleep(0.01)
    with pytest.raises(SiteError) as caught:
        await service.chat("second", OTHER_OPERATOR)
    assert (caught.value.status, caught.value.code, caught.value.retry_after_s) == (503, "chat_busy", 1)
    release.set()
    assert (await first).reply == "done"
    assert service.running_turns == 0


async def test_scale_to_zero_written_as_a_string_needs_confirmation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tools.container_ops import container_ops_tool
    from tools.runtimes.base import WorkloadSpec
    from tools.runtimes.local import LocalRuntime

    runtime = LocalRuntime(
        {"sensor": WorkloadSpec(name="sensor", module="workloads.sensor", image="img")}, {"img"}, site_id="t"
    )
    try:
        [instance] = await runtime.start("sensor")
        scale = ToolCall("container_ops", {"action": "scale", "service": "sensor", "replicas": "0"})
        cache = CacheManager(MemoryCache(100))
        service = ChatService(
            chat_settings(),
            "p",
            [container_ops_tool(runtime)],
            lambda: ScriptedModel([Turn(tool_calls=[scale]), Turn(text="asked")]),
            cache,
        )
        reply = await service.chat("scale sensor to zero", OPERATOR)
        [call] = reply.tool_calls
        assert call["status"] == "refused" and "confirm" in call["reason"]
        assert call["input"]["replicas"] == 0  # judged (and reported) as the tool would read it
        assert [i.id for i in runtime.ready_instances("sensor")] == [instance.id]
    finally:
        await runtime.close()


async def test_operator_cannot_read_internal_namespaces_through_the_tool() -> None:
    get = ToolCall("cache_manager", {"action": "get", "namespace": "_chat_sessions", "key": "x"})
    flush = ToolCall("cache_manager", {"action": "flush", "namespace": "_chat_sessions"})
    stats = ToolCall("cache_manager", {"action": "stats"})
    store = CacheManager(MemoryCache(100))
    service, _ = _service([[Turn(text="first")], [Turn(tool_calls=[get, stats]), Turn(text="?")]], store)
    other = await service.chat("remember me", OTHER_OPERATOR)
    reply = await service.chat("read the sessions", OPERATOR)
    assert [c["status"] for c in reply.tool_calls] == ["error", "success"]
    assert "internal" in reply.tool_calls[0]["reason"]
    confirmed, _ = _service([[Turn(tool_calls=[flush]), Turn(text="?")]], store)
    flushed = await confirmed.chat("flush the sessions", OPERATOR, confirm=True)
    assert flushed.tool_calls[0]["status"] == "error"
    assert await store.get("_chat_sessions", other.session_id) is not None
