from __future__ import annotations

import pytest

from tools.cache_manager import CacheManager, cache_manager_tool
from tools.caches.memory import MemoryCache
from tools.caches.redis import RedisCache


async def test_memory_backend_round_trips_and_counts_hits() -> None:
    cache = CacheManager(MemoryCache(100))
    await cache.set("inference", "k", b'{"a":1}', 60)
    assert await cache.get("inference", "k") == b'{"a":1}'
    assert await cache.get("inference", "other") is None
    stats = cache.stats()
    assert (stats["backend"], stats["hits"], stats["misses"], stats["hit_ratio"]) == ("memory", 1, 1, 0.5)
    assert stats["redis_up"] is None


async def test_unreachable_redis_at_start_is_reported_and_memory_serves() -> None:
    from tools.runtimes.base import free_port

    cache = CacheManager(MemoryCache(100), RedisCache(f"redis://127.0.0.1:{free_port()}/0", 0.1), retry_s=60)
    await cache.open()
    try:
        assert cache.redis_up is False
        await cache.set("ns", "k", b"v", 60)
        assert await cache.get("ns", "k") == b"v"
        stats = cache.stats()
        assert stats["serving_from"] == "memory"
        assert stats["redis_outages"] == 1
        assert stats["last_error"]
    finally:
        await cache.close()


async def test_tool_sets_gets_and_flushes_json_values() -> None:
    cache = CacheManager(MemoryCache(100))
    tool = cache_manager_tool(cache)
    assert tool.tool_name == "cache_manager"
    assert (await tool(action="set", namespace="sensor", key="a", value={"x": [1, 2]}, ttl_s=30))["stored"]
    assert (await tool(action="get", namespace="sensor", key="a")) == {
        "namespace": "sensor",
        "key": "a",
        "found": True,
        "value": {"x": [1, 2]},
    }
    assert (await tool(action="flush", namespace="sensor"))["removed"] == 1
    assert (await tool(action="get", namespace="sensor", key="a"))["found"] is False


async def test_tool_refuses_actions_missing_their_arguments() -> None:
    tool = cache_manager_tool(CacheManager(MemoryCache(10)))
    with pytest.raises(ValueError, match="needs a namespace"):
        await tool(action="flush")
    with pytest.raises(ValueError, match="needs a key"):
        await tool(action="get", namespace="ns")
    with pytest.raises(ValueError, match="ttl_s"):
        await tool(action="set", namespace="ns", key="k", value=1, ttl_s=0)


def test_tool_schema_tells_the_model_the_actions() -> None:
    spec = cache_manager_tool(CacheManager(MemoryCache(10))).tool_spec
    props = spec["inputSchema"]["json"]["properties"]
    assert props["action"]["enum"] == ["get", "set", "delete", "stats", "flush"]
    assert "destructive" in spec["description"] or "destructive" in str(props)
