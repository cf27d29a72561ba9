from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from redis import asyncio as aioredis

from tests.conftest import RedisServer
from tools.cache_manager import CacheManager
from tools.caches.memory import MemoryCache
from tools.caches.redis import RedisCache

pytestmark = pytest.mark.integration


async def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    """Poll `condition` until it holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def unreachable(server: RedisServer) -> AsyncIterator[None]:
    """Redis stops answering but keeps its data (SIGSTOP), and answers again on exit (SIGCONT)."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


async def test_values_live_in_redis_and_flush_removes_a_namespace(redis_server: RedisServer) -> None:
    cache = CacheManager(MemoryCache(100), RedisCache(redis_server.url), near_ttl_s=0.5)
    await cache.open()
    direct = aioredis.Redis.from_url(redis_server.url)
    try:
        await cache.set("inference", "k1", b'"one"', 60)
        await cache.set("inference", "k2", b'"two"', 60)
        await cache.set("sensor", "k1", b'"three"', 60)
        assert await direct.get("mec:inference:k1") == b'"one"'
        ttl_ms = await direct.pttl("mec:inference:k1")
        assert 55_000 < ttl_ms <= 60_000
        assert await cache.flush("inference") == 2
        assert await direct.exists("mec:inference:k1", "mec:inference:k2") == 0
        assert await direct.get("mec:sensor:k1") == b'"three"'
    finally:
        await direct.aclose()
        await cache.close()


async def test_value_written_by_another_process_of_the_same_site_is_read_through_redis(
    redis_server: RedisServer,
) -> None:
    writer = CacheManager(MemoryCache(100), RedisCache(redis_server.url, key_prefix="mec:site-1"))
    reader = CacheManager(MemoryCache(100), RedisCache(redis_server.url, key_prefix="mec:site-1"))
    try:
        await writer.set("inference", "shared", b"42", 60)
        assert await reader.get("inference", "shared") == b"42"
        assert reader.stats()["entries_in_memory"] == 1
    finally:
        await writer.close()
        await reader.close()


async def test_redis_down_serves_from_local_cache_and_reconnects(redis_server: RedisServer) -> None:
    cache = CacheManager(
        MemoryCache(100), RedisCache(redis_server.url, timeout_s=0.2), near_ttl_s=0.2, retry_s=0.1
    )
    await cache.open()
    try:
        # A freshly started redis-server on a busy machine may miss the first 0.2 s probe; the
        # cache reconnects by itself, so wait for that instead of asserting on the first try.
        deadline = time.monotonic() + 10
        while not cache.redis_up and time.monotonic() < deadline:  # noqa: ASYNC110 (polls a plain flag)
            await asyncio.sleep(0.05)
        assert cache.redis_up
        redis_server.kill()
        await cache.set("ns", "during-outage", b"1", 60)
        assert cache.redis_up is False
        assert await cache.get("ns", "during-outage") == b"1"
        assert cache.stats()["serving_from"] == "memory"
        redis_server.start()
        deadline = time.monotonic() + 5
        while not cache.redis_up and time.monotonic() < deadline:  # noqa: ASYNC110 (polls a plain flag)
            await asyncio.sleep(0.05)
        assert cache.redis_up, "the cache did not reconnect to redis by itself"
        await cache.set("ns", "after", b"2", 60)
        direct = aioredis.Redis.from_url(redis_server.url)
        try:
            assert await direct.get("mec:ns:after") == b"2"
        finally:
            await direct.aclose()
    finally:
        await cache.close()


async def test_redis_killed_mid_load_fails_no_request(redis_server: RedisServer, site_factory) -> None:
    site = site_factory({"MEC_REDIS_URL": redis_server.url, "MEC_REDIS_RETRY_S": "0.2"})
    statuses: list[int] = []
    tiers: list[str] = []
    stop_at = time.monotonic() + 4.0

    async def client(worker: int, http: httpx.AsyncClient) -> None:
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            body = {
                "service": "inference",
                "payload": {"text": f"play some music {n % 7}"},
                "client": {"kind": "mobile", "id": f"w{worker}"},
                # generous: a request late on a busy machine is not what this test is about
                "latency_budget_ms": 5000,
            }
            response = await http.post(f"{site.url}/v1/requests", json=body, headers=site.headers())
            statuses.append(response.status_code)
            if response.status_code == 200:
                tiers.append(response.json()["route"]["tier"])

    async with httpx.AsyncClient(timeout=10) as http:
        load = asyncio.gather(*(client(i, http) for i in range(8)))
        await asyncio.sleep(1.5)
        redis_server.kill()
        await load
        ready = (await http.get(f"{site.url}/readyz")).json()
        metrics = (
            await http.get(f"{site.url}/metrics", headers=site.headers("test-operator-key-0123456789"))
        ).text

    assert len(statuses) > 100
    assert [s for s in statuses if s != 200] == []
    assert "cache" in tiers and "local" in tiers
    assert ready["checks"]["cache"]["status"] == "degraded"
    assert ready["status"] == "degraded"
    assert 'mec_cache_redis_up{site="site-1"} 0' in metrics


async def test_one_redis_restart_counts_one_outage_and_no_flapping(redis_server: RedisServer) -> None:
    # A generous per-command timeout: only the restart may make Redis look down, not a busy CI host.
    cache = CacheManager(
        MemoryCache(10_000), RedisCache(redis_server.url, timeout_s=1.0), near_ttl_s=0.05, retry_s=0.2
    )
    await cache.open()
    direct = aioredis.Redis.from_url(redis_server.url)
    stop = asyncio.Event()

    async def burst(tag: str, width: int) -> list[str]:
        """`width` concurrent set-then-get pairs (one pooled connection each); values come from either tier."""

        async def one(i: int) -> str:
            key = f"{tag}-{i}"
            await cache.set("ns", key, tag.encode(), 60)
            assert await cache.get("ns", key) == tag.encode()
            return key

        return list(await asyncio.gather(*(one(i) for i in range(width))))

    async def steady_load() -> int:
        rounds = 0
        while not stop.is_set():
            rounds += 1
            await burst(f"steady{rounds}", 8)
            await asyncio.sleep(0.01)
        return rounds

    try:
        await burst("warm-up", 32)  # the pool now holds idle connections that the restart will leave stale
        load = asyncio.create_task(steady_load())
        redis_server.kill()
        await wait_until(lambda: not cache.redis_up, "the cache notices that redis is gone")
        assert await burst("while-down", 16)  # served from the in-process tier
        await asyncio.to_thread(redis_server.start)
        await wait_until(lambda: cache.redis_up, "the cache is back on redis")

        written_after: list[str] = []
        for n in range(20):  # wide bursts reach every pooled connection, stale ones included
            written_after += await burst(f"after{n}", 32)
        stop.set()
        assert await load > 0

        stats = cache.stats()
        assert stats["redis_outages"] == 1
        assert stats["serving_from"] == "redis"
        assert await direct.exists(*(f"mec:ns:{key}" for key in written_after)) == len(written_after)
    finally:
        stop.set()
        await direct.aclose()
        await cache.close()


async def test_flush_of_a_namespace_with_glob_characters_deletes_only_that_namespace(
    redis_server: RedisServer,
) -> None:
    redis = RedisCache(redis_server.url)
    namespaces = ["a*", "a", "ab", "a?", "a[b]", "[a]", "a\\", "a\\*", "a:b", "a%3Ab", "*", "b"]
    try:
        for namespace in namespaces:
            await redis.set(namespace, "k", namespace.encode(), 60)
        remaining = set(namespaces)
        for namespace in namespaces:
            assert await redis.flush(namespace) == 1, namespace
            remaining.discard(namespace)
            assert {ns for ns in namespaces if await redis.get(ns, "k") == ns.encode()} == remaining, (
                namespace
            )
    finally:
        await redis.close()


async def test_two_sites_sharing_one_redis_do_not_see_or_flush_each_others_keys(
    redis_server: RedisServer,
) -> None:
    site_a = CacheManager(
        MemoryCache(100), RedisCache(redis_server.url, key_prefix="mec:site-a"), near_ttl_s=0
    )
    site_b = CacheManager(
        MemoryCache(100), RedisCache(redis_server.url, key_prefix="mec:site-b"), near_ttl_s=0
    )
    direct = aioredis.Redis.from_url(redis_server.url)
    try:
        await site_a.set("inference", "k", b"from-a", 60)
        assert await site_b.get("inference", "k") is None
        await site_b.set("inference", "k", b"from-b", 60)
        await site_b.set("sensor", "k", b"from-b", 60)
        assert await site_a.get("inference", "k") == b"from-a"
        assert await direct.get("mec:site-a:inference:k") == b"from-a"
        assert await direct.get("mec:site-b:inference:k") == b"from-b"

        assert await site_a.flush("inference") == 1
        assert await site_b.get("inference", "k") == b"from-b"
        await site_a.set("sensor", "k", b"from-a", 60)
        assert await site_a.flush(None) == 1
        assert await site_b.get("inference", "k") == b"from-b"
        assert await site_b.get("sensor", "k") == b"from-b"
    finally:
        await direct.aclose()
        await site_a.close()
        await site_b.close()


async def test_delete_and_flush_made_while_redis_is_down_do_not_come_back_with_it(
    redis_server: RedisServer,
) -> None:
    cache = CacheManager(
        MemoryCache(100), RedisCache(redis_server.url, timeout_s=0.3), near_ttl_s=0, retry_s=0.1
    )
    await cache.open()
    try:
        await cache.set("ns", "deleted", b"old", 60)
        await cache.set("ns", "kept", b"kept", 60)
        await cache.set("flushed", "k", b"old", 60)
        await cache.set("other", "k", b"kept", 60)
        async with unreachable(redis_server):
            assert await cache.get("ns", "kept") is None  # times out: served from memory, which has no copy
            assert cache.redis_up is False
            await cache.delete("ns", "deleted")
            await cache.flush("flushed")
        await wait_until(lambda: cache.redis_up, "the cache is back on redis")

        assert await cache.get("ns", "deleted") is None
        assert await cache.get("flushed", "k") is None
        assert await cache.get("ns", "kept") == b"kept"
        assert await cache.get("other", "k") == b"kept"
        assert cache.stats()["redis_pending_removals"] == 0
    finally:
        await cache.close()


async def test_deletes_past_the_pending_bound_while_redis_is_down_flush_their_namespace_on_return(
    redis_server: RedisServer,
) -> None:
    cache = CacheManager(
        MemoryCache(100),
        RedisCache(redis_server.url, timeout_s=0.3),
        near_ttl_s=0,
        retry_s=0.1,
        max_pending_keys=2,
    )
    await cache.open()
    try:
        for key in ("k1", "k2", "k3", "untouched"):
            await cache.set("ns", key, b"old", 60)
        await cache.set("other", "k", b"kept", 60)
        async with unreachable(redis_server):
            assert await cache.get("ns", "k1") is None
            assert cache.redis_up is False
            for key in ("k1", "k2", "k3"):
                await cache.delete("ns", key)
            assert cache.stats()["redis_pending_removals"] == 1  # one flush of "ns" instead of three keys
        await wait_until(lambda: cache.redis_up, "the cache is back on redis")

        assert [await cache.get("ns", key) for key in ("k1", "k2", "k3", "untouched")] == [None] * 4
        assert await cache.get("other", "k") == b"kept"
    finally:
        await cache.close()
