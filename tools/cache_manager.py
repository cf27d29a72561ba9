"""The site cache (`CacheManager`) and the `cache_manager` tool that exposes it to the LLM.

Two tiers: a bounded in-process LRU+TTL map in front of an optional Redis. With Redis healthy,
values live in Redis and the in-process map keeps them for at most `near_ttl_s` (so a hit costs
microseconds); when Redis stops answering, the site keeps serving from the in-process map with
full TTLs, reports `redis_up = false`, and a background task reconnects by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from strands import tool
from strands.types.tools import AgentTool

from tools.caches.memory import MemoryCache
from tools.caches.redis import CacheUnavailableError, RedisCache

log = logging.getLogger(__name__)

MAX_TTL_S = 7 * 24 * 3600.0


@dataclass
class CacheCounters:
    hits: int = 0
    misses: int = 0
    sets: int = 0
    deletes: int = 0
    redis_errors: int = 0
    redis_outages: int = 0


class CacheManager:
    """Namespaced get/set/delete/flush over the in-process map and, when configured, Redis.

    No method raises because Redis is down: reads fall back to the in-process map and writes
    land there with their full TTL until Redis is back.
    """

    def __init__(
        self,
        memory: MemoryCache,
        redis: RedisCache | None = None,
        near_ttl_s: float = 2.0,
        retry_s: float = 1.0,
    ) -> None:
        self.memory = memory
        self.redis = redis
        self.near_ttl_s = near_ttl_s
        self.retry_s = retry_s
        self.counters = CacheCounters()
        self.redis_up = redis is not None
        self.last_error: str | None = None
        self.down_since: float | None = None
        self._reconnect_task: asyncio.Task[None] | None = None

    @property
    def backend(self) -> Literal["memory", "redis"]:
        return "redis" if self.redis is not None else "memory"

    async def open(self) -> None:
        """Check Redis once at start-up; a dead Redis is reported, not fatal."""
        if self.redis is None:
            return
        try:
            await self.redis.ping()
        except CacheUnavailableError as exc:
            self._mark_down(exc)

    async def get(self, namespace: str, key: str) -> bytes | None:
        value = self.memory.get(namespace, key)
        if value is None and self.redis_up and self.redis is not None:
            try:
                value = await self.redis.get(namespace, key)
            except CacheUnavailableError as exc:
                self._mark_down(exc)
            else:
                if value is not None:
                    self.memory.set(namespace, key, value, self.near_ttl_s)
        if value is None:
            self.counters.misses += 1
        else:
            self.counters.hits += 1
        return value

    async def set(self, namespace: str, key: str, value: bytes, ttl_s: float) -> None:
        ttl_s = min(ttl_s, MAX_TTL_S)
        self.counters.sets += 1
        if self.redis_up and self.redis is not None:
            try:
                await self.redis.set(namespace, key, value, ttl_s)
            except CacheUnavailableError as exc:
                self._mark_down(exc)
            else:
                self.memory.set(namespace, key, value, min(ttl_s, self.near_ttl_s))
                return
        self.memory.set(namespace, key, value, ttl_s)

    async def delete(self, namespace: str, key: str) -> bool:
        self.counters.deletes += 1
        removed = self.memory.delete(namespace, key)
        if self.redis_up and self.redis is not None:
            try:
                removed = await self.redis.delete(namespace, key) or removed
            except CacheUnavailableError as exc:
                self._mark_down(exc)
        return removed

    async def flush(self, namespace: str | None = None) -> int:
        """Remove a namespace (everything when None); return how many entries went."""
        removed = self.memory.flush(namespace)
        if self.redis_up and self.redis is not None:
            try:
                removed = max(removed, await self.redis.flush(namespace))
            except CacheUnavailableError as exc:
                self._mark_down(exc)
        return removed

    def stats(self) -> dict[str, Any]:
        lookups = self.counters.hits + self.counters.misses
        return {
            "backend": self.backend,
            "redis_up": self.redis_up if self.redis is not None else None,
            "serving_from": "redis" if self.redis is not None and self.redis_up else "memory",
            "down_since": self.down_since,
            "last_error": self.last_error,
            "entries_in_memory": len(self.memory),
            "memory_capacity": self.memory.max_entries,
            "evictions": self.memory.evictions,
            "hits": self.counters.hits,
            "misses": self.counters.misses,
            "hit_ratio": round(self.counters.hits / lookups, 4) if lookups else None,
            "sets": self.counters.sets,
            "deletes": self.counters.deletes,
            "redis_errors": self.counters.redis_errors,
            "redis_outages": self.counters.redis_outages,
            "namespaces_in_memory": self.memory.namespaces(),
        }

    def _mark_down(self, exc: Exception) -> None:
        self.counters.redis_errors += 1
        self.last_error = str(exc)
        if not self.redis_up:
            return
        self.redis_up = False
        self.down_since = time.time()
        self.counters.redis_outages += 1
        log.warning("redis unreachable (%s); serving from the in-process cache", exc)
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        assert self.redis is not None
        while not self.redis_up:
            await asyncio.sleep(self.retry_s)
            try:
                await self.redis.ping()
            except CacheUnavailableError as exc:
                self.last_error = str(exc)
                continue
            self.redis_up = True
            self.down_since = None
            log.info("redis reachable again; using it")

    async def close(self) -> None:
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        if self.redis is not None:
            await self.redis.close()


def cache_manager_tool(cache: CacheManager) -> AgentTool:
    """Build the `cache_manager` tool over one site's cache."""

    @tool(name="cache_manager")
    async def cache_manager(
        action: Literal["get", "set", "delete", "stats", "flush"],
        namespace: str | None = None,
        key: str | None = None,
        value: Any = None,
        ttl_s: float = 300.0,
    ) -> dict[str, Any]:
        """Read and manage this edge site's response cache.

        Cached responses are grouped by namespace; the site caches each service's responses
        under the service's name (e.g. namespace "inference"). Values are JSON.

        Args:
            action: "get" reads one key; "set" stores `value` under a key for `ttl_s` seconds;
                "delete" removes one key; "flush" removes every key of a namespace (this is
                destructive: callers confirm it first); "stats" reports hits, misses, hit ratio,
                entry counts per namespace and whether Redis is reachable.
            namespace: The namespace to act on. Required for get, set, delete and flush.
            key: The key inside the namespace. Required for get, set and delete.
            value: The JSON value to store (set only).
            ttl_s: Seconds the stored value lives (set only), 1 to 604800.

        Returns:
            A JSON object describing the outcome, e.g. {"found": true, "value": ...} for get.
        """
        if action == "stats":
            return cache.stats()
        if not namespace:
            raise ValueError(f"action {action!r} needs a namespace")
        if action == "flush":
            return {"namespace": namespace, "removed": await cache.flush(namespace)}
        if not key:
            raise ValueError(f"action {action!r} needs a key")
        if action == "get":
            raw = await cache.get(namespace, key)
            if raw is None:
                return {"namespace": namespace, "key": key, "found": False}
            return {"namespace": namespace, "key": key, "found": True, "value": json.loads(raw)}
        if action == "set":
            if not 1 <= ttl_s <= MAX_TTL_S:
                raise ValueError("ttl_s must be between 1 and 604800 seconds")
            await cache.set(namespace, key, json.dumps(value).encode(), ttl_s)
            return {"namespace": namespace, "key": key, "stored": True, "ttl_s": ttl_s}
        return {"namespace": namespace, "key": key, "deleted": await cache.delete(namespace, key)}

    return cache_manager
