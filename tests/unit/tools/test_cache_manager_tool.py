"""The `cache_manager` tool keeps the site's own namespaces out of reach."""

from __future__ import annotations

import pytest

from tools.cache_manager import CacheManager, cache_manager_tool
from tools.caches.memory import MemoryCache


@pytest.fixture
def cache() -> CacheManager:
    return CacheManager(MemoryCache(100))


async def test_stats_do_not_list_internal_namespaces(cache: CacheManager) -> None:
    await cache.set("_chat_sessions", "s1", b"{}", 60)
    await cache.set("inference", "k", b"1", 60)
    stats = await cache_manager_tool(cache)(action="stats")
    assert stats["namespaces_in_memory"] == {"inference": 1}


@pytest.mark.parametrize("action", ["get", "set", "delete", "flush"])
async def test_internal_namespaces_are_refused_for_every_action(cache: CacheManager, action: str) -> None:
    await cache.set("_chat_sessions", "s1", b"{}", 60)
    with pytest.raises(ValueError, match="internal"):
        await cache_manager_tool(cache)(action=action, namespace="_chat_sessions", key="s1", value=1)
    assert await cache.get("_chat_sessions", "s1") == b"{}"
