from __future__ import annotations

import pytest
from redis import asyncio as aioredis

from agent.chat import SESSION_NAMESPACE, ChatService
from agent.models import ScriptedModel, Turn
from agent.scopes import Principal
from config.settings import Settings
from tests.conftest import RedisServer
from tools.cache_manager import CacheManager, cache_manager_tool
from tools.caches.memory import MemoryCache
from tools.caches.redis import RedisCache

pytestmark = pytest.mark.integration

SETTINGS = Settings(chat_session_ttl_s=600)

CLIENT = Principal("client-key-id", frozenset({"client"}))


def _site_cache(url: str) -> CacheManager:
    return CacheManager(MemoryCache(100), RedisCache(url))


async def test_chat_session_lives_in_redis_and_resumes_on_another_process(redis_server: RedisServer) -> None:
    first_store = _site_cache(redis_server.url)
    first = ChatService(
        SETTINGS,
        "p",
        [cache_manager_tool(first_store)],
        lambda: ScriptedModel([Turn(text="noted")]),
        first_store,
    )
    reply = await first.chat("remember sensor-1", CLIENT)
    direct = aioredis.Redis.from_url(redis_server.url)
    try:
        ttl = await direct.ttl(f"mec:{SESSION_NAMESPACE}:{reply.session_id}")
        assert 590 < ttl <= 600
    finally:
        await direct.aclose()
    await first_store.close()

    second_store = _site_cache(redis_server.url)
    models: list[ScriptedModel] = []

    def factory() -> ScriptedModel:
        models.append(ScriptedModel([Turn(text="still here")]))
        return models[-1]

    second = ChatService(SETTINGS, "p", [cache_manager_tool(second_store)], factory, second_store)
    again = await second.chat("what did I say?", CLIENT, session_id=reply.session_id)
    await second_store.close()
    assert again.reply == "still here"
    texts = [b.get("text") for m in models[0].requests[0].messages for b in m["content"]]
    assert texts == ["remember sensor-1", "noted", "what did I say?"]
