from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from redis import asyncio as aioredis

from tests.conftest import RedisServer
from tools.cache_manager import CacheManager
from tools.caches.memory import MemoryCache
from tools.caches.redis import RedisCache

pytestmark = pytest.mark.integration


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


async def test_value_written_by_another_site_is_read_through_redis(redis_server: RedisServer) -> None:
    writer = CacheManager(MemoryCache(100), RedisCache(redis_server.url))
    reader = CacheManager(MemoryCache(100), RedisCache(redis_server.url))
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
