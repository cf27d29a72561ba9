from __future__ import annotations

import pytest

from tools.cache_manager import CacheManager, PendingRemovals, cache_manager_tool
from tools.caches.memory import MemoryCache
from tools.caches.redis import RedisCache, redis_key, scan_pattern


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


def test_scan_pattern_matches_a_namespace_literally() -> None:
    assert scan_pattern("a*[b]?\\", "mec:site-1") == "mec:site-1:a\\*\\[b\\]\\?\\\\:*"
    assert scan_pattern(None, "mec:site-1") == "mec:site-1:*"
    # a namespace cannot contain the separator, so "a" never reaches into "a:b"
    assert redis_key("a:b", "k", "mec:site-1") == "mec:site-1:a%3Ab:k"
    assert redis_key("a", "b:k", "mec:site-1") == "mec:site-1:a:b:k"


def test_key_prefix_puts_the_site_in_every_key() -> None:
    redis = RedisCache("redis://127.0.0.1:1/0", key_prefix="mec:site-7")
    assert redis.key("inference", "k") == "mec:site-7:inference:k"


def test_pending_removals_stay_bounded_by_coarsening() -> None:
    pending = PendingRemovals(max_keys=2, max_namespaces=2)
    pending.add_key("a", "1")
    pending.add_key("a", "1")
    pending.add_key("b", "1")
    assert (set(pending.keys), pending.namespaces, len(pending)) == ({("a", "1"), ("b", "1")}, set(), 2)
    pending.add_key("a", "2")  # past max_keys: all of "a" goes, its listed keys are dropped
    assert (set(pending.keys), pending.namespaces) == ({("b", "1")}, {"a"})
    pending.add_key("a", "3")
    assert len(pending) == 2
    pending.add_namespace("b")
    pending.add_namespace("c")  # past max_namespaces: everything goes
    assert (pending.everything, pending.keys, pending.namespaces, len(pending)) == (True, {}, set(), 1)

    taken = pending.take()
    assert (len(pending), taken.everything) == (0, True)
    pending.add_key("d", "1")
    pending.merge(taken)
    assert (pending.everything, len(pending)) == (True, 1)
