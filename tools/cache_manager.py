"""The site cache (`CacheManager`) and the `cache_manager` tool that exposes it to the LLM.

Two tiers: a bounded in-process LRU+TTL map in front of an optional Redis. With Redis healthy,
values live in Redis and the in-process map keeps them for at most `near_ttl_s` (so a hit costs
microseconds); when Redis stops answering, the site keeps serving from the in-process map with
full TTLs, reports `redis_up = false`, and a background task reconnects by itself.

While Redis is marked down the request path does not touch it at all (no added latency); only the
reconnect probe talks to Redis, backing off between PINGs. Deletes and flushes made meanwhile are
remembered (bounded) and applied to Redis before it is marked up again, so that a removed value
does not come back from Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from strands import tool
from strands.types.tools import AgentTool

from tools.caches.memory import MemoryCache
from tools.caches.redis import CacheUnavailableError, RedisCache

log = logging.getLogger(__name__)

MAX_TTL_S = 7 * 24 * 3600.0
MAX_PENDING_KEYS = 10_000
MAX_PENDING_NAMESPACES = 100
MAX_CATCH_UP_ROUNDS = 8


@dataclass
class CacheCounters:
    hits: int = 0
    misses: int = 0
    sets: int = 0
    deletes: int = 0
    redis_errors: int = 0
    redis_outages: int = 0


@dataclass
class PendingRemovals:
    """Removals that Redis still owes: keys deleted and namespaces flushed while it was unreachable.

    Bounded: past `max_keys` keys, a further delete in a namespace becomes a flush of that whole
    namespace (its listed keys are dropped); past `max_namespaces` namespaces, everything becomes
    one flush of all of this site's keys. Coarser removals only cost cache hits, never correctness.
    """

    max_keys: int = MAX_PENDING_KEYS
    max_namespaces: int = MAX_PENDING_NAMESPACES
    keys: dict[tuple[str, str], None] = field(default_factory=dict)
    namespaces: set[str] = field(default_factory=set)
    everything: bool = False

    def __len__(self) -> int:
        return len(self.keys) + len(self.namespaces) + int(self.everything)

    def add_key(self, namespace: str, key: str) -> None:
        if self.everything or namespace in self.namespaces:
            return
        if (namespace, key) not in self.keys and len(self.keys) >= self.max_keys:
            self.add_namespace(namespace)
            return
        self.keys[(namespace, key)] = None

    def add_namespace(self, namespace: str | None) -> None:
        """Owe a flush of `namespace` (of everything when None)."""
        if self.everything:
            return
        if namespace is None or (
            namespace not in self.namespaces and len(self.namespaces) >= self.max_namespaces
        ):
            self.everything = True
            self.keys.clear()
            self.namespaces.clear()
            return
        self.namespaces.add(namespace)
        self.keys = {slot: None for slot in self.keys if slot[0] != namespace}

    def take(self) -> PendingRemovals:
        """Hand over everything owed and start empty."""
        taken = PendingRemovals(
            self.max_keys, self.max_namespaces, self.keys, self.namespaces, self.everything
        )
        self.keys, self.namespaces, self.everything = {}, set(), False
        return taken

    def merge(self, other: PendingRemovals) -> None:
        """Owe `other` again (its replay failed; removals are idempotent)."""
        if other.everything:
            self.add_namespace(None)
        for namespace in other.namespaces:
            self.add_namespace(namespace)
        for namespace, key in other.keys:
            self.add_key(namespace, key)


class CacheManager:
    """Namespaced get/set/delete/flush over the in-process map and, when configured, Redis.

    No method raises because Redis is down: reads fall back to the in-process map and writes
    land there with their full TTL until Redis is back.

    Args:
        memory: the in-process tier.
        redis: the shared tier, if any.
        near_ttl_s: how long the in-process tier keeps a copy of a value that lives in Redis.
        retry_s: the longest wait between two reconnect probes while Redis is down.
        max_pending_keys, max_pending_namespaces: bounds of the removals remembered while Redis
            is down (see `PendingRemovals`).
    """

    def __init__(
        self,
        memory: MemoryCache[bytes],
        redis: RedisCache | None = None,
        near_ttl_s: float = 2.0,
        retry_s: float = 1.0,
        max_pending_keys: int = MAX_PENDING_KEYS,
        max_pending_namespaces: int = MAX_PENDING_NAMESPACES,
    ) -> None:
        self.memory = memory
        self.redis = redis
        self.near_ttl_s = near_ttl_s
        self.retry_s = retry_s
        self.counters = CacheCounters()
        self.redis_up = redis is not None
        self.last_error: str | None = None
        self.down_since: float | None = None
        self._pending = PendingRemovals(max_pending_keys, max_pending_namespaces)
        # Bumped each time Redis is marked up again: a call that started in an earlier up-period
        # and fails afterwards reports an error, not a new outage.
        self._generation = 0
        self._sync_task: asyncio.Task[None] | None = None

    @property
    def backend(self) -> Literal["memory", "redis"]:
        return "redis" if self.redis is not None else "memory"

    async def open(self) -> None:
        """Check Redis once at start-up; a dead Redis is reported, not fatal."""
        if self.redis is None:
            return
        generation = self._generation
        try:
            await self.redis.ping()
        except CacheUnavailableError as exc:
            self._mark_down(exc, generation)

    async def get(self, namespace: str, key: str) -> bytes | None:
        value = self.memory.get(namespace, key)
        if value is None and self.redis_up and self.redis is not None:
            generation = self._generation
            try:
                value = await self.redis.get(namespace, key)
            except CacheUnavailableError as exc:
                self._mark_down(exc, generation)
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
            generation = self._generation
            try:
                await self.redis.set(namespace, key, value, ttl_s)
            except CacheUnavailableError as exc:
                self._mark_down(exc, generation)
            else:
                self.memory.set(namespace, key, value, min(ttl_s, self.near_ttl_s))
                return
        self.memory.set(namespace, key, value, ttl_s)

    async def delete(self, namespace: str, key: str) -> bool:
        self.counters.deletes += 1
        removed = self.memory.delete(namespace, key)
        if self.redis is None:
            return removed
        if self.redis_up:
            generation = self._generation
            try:
                return await self.redis.delete(namespace, key) or removed
            except CacheUnavailableError as exc:
                self._mark_down(exc, generation)
        self._pending.add_key(namespace, key)
        self._ensure_sync()
        return removed

    async def flush(self, namespace: str | None = None) -> int:
        """Remove a namespace (everything when None); return how many entries went."""
        removed = self.memory.flush(namespace)
        if self.redis is None:
            return removed
        if self.redis_up:
            generation = self._generation
            try:
                return max(removed, await self.redis.flush(namespace))
            except CacheUnavailableError as exc:
                self._mark_down(exc, generation)
        self._pending.add_namespace(namespace)
        self._ensure_sync()
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
            "redis_pending_removals": len(self._pending),
            "namespaces_in_memory": self.memory.namespaces(),
        }

    def _mark_down(self, exc: Exception, generation: int) -> None:
        """Record a failed Redis call that started in up-period `generation`; the first one of an outage marks Redis down."""
        self.counters.redis_errors += 1
        self.last_error = str(exc)
        if not self.redis_up or generation != self._generation:
            return
        self.redis_up = False
        self.down_since = time.time()
        self.counters.redis_outages += 1
        log.warning("redis unreachable (%s); serving from the in-process cache", exc)
        self._ensure_sync()

    def _ensure_sync(self) -> None:
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.get_running_loop().create_task(self._sync())

    async def _probe_failed(self, exc: CacheUnavailableError) -> None:
        self.last_error = str(exc)

    async def _sync(self) -> None:
        """Wait for Redis while it is down, apply the removals it owes, then mark it up."""
        assert self.redis is not None
        probed = False  # a PING was answered since Redis was last seen failing
        catch_up_rounds = 0
        while True:
            if not self.redis_up and not probed:
                await self.redis.wait_until_reachable(self.retry_s, self._probe_failed)
                probed, catch_up_rounds = True, 0
            generation = self._generation
            owed = self._pending.take()
            try:
                await self._replay(owed)
            except CacheUnavailableError as exc:
                self._pending.merge(owed)
                probed = False
                if self.redis_up:
                    self._mark_down(exc, generation)
                else:
                    self.counters.redis_errors += 1
                    self.last_error = str(exc)
                continue
            catch_up_rounds += 1
            # Removals made during the replay are replayed too before Redis serves reads again;
            # under a steady stream of them, Redis is marked up after a few rounds and the rest
            # is replayed right after (this loop goes on while any is owed).
            if len(self._pending) and (self.redis_up or catch_up_rounds < MAX_CATCH_UP_ROUNDS):
                continue
            if not self.redis_up:
                if not probed:  # marked down while replaying: wait for Redis again
                    continue
                self.redis_up = True
                self.down_since = None
                self._generation += 1
                log.info("redis reachable again; using it")
            if not len(self._pending):
                return

    async def _replay(self, owed: PendingRemovals) -> None:
        assert self.redis is not None
        if owed.everything:
            await self.redis.flush(None)
        for namespace in sorted(owed.namespaces):
            await self.redis.flush(namespace)
        if owed.keys:
            await self.redis.delete_many(owed.keys)
        if len(owed):
            log.info("applied %d removal(s) made while redis was unreachable", len(owed))

    async def close(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
        if self.redis is not None:
            await self.redis.close()


INTERNAL_NAMESPACE_PREFIX = "_"
"""Namespaces starting with this hold the site's own state (chat sessions, ...), not responses."""


def is_internal(namespace: str) -> bool:
    """Whether `namespace` belongs to the site itself (chat sessions and other state), not to the tool."""
    return namespace.startswith(INTERNAL_NAMESPACE_PREFIX)


CacheAction = Literal["get", "set", "delete", "stats", "flush"]
"""The one list of `cache_manager` actions; each is in exactly one of the three sets below."""
CACHE_ACTIONS: frozenset[CacheAction] = frozenset(get_args(CacheAction))

CACHE_READS: frozenset[CacheAction] = frozenset({"get", "stats"})
"""Actions that change nothing."""
CACHE_MUTATIONS: frozenset[CacheAction] = frozenset({"set", "delete"})
"""Actions that change one entry."""
CACHE_DESTRUCTIVE: frozenset[CacheAction] = frozenset({"flush"})
"""Actions that remove a whole namespace; the policy wants the caller's confirmation first."""


def cache_manager_tool(cache: CacheManager) -> AgentTool:
    """Build the `cache_manager` tool over one site's cache."""

    @tool(name="cache_manager")
    async def cache_manager(
        action: CacheAction,
        namespace: str | None = None,
        key: str | None = None,
        value: Any = None,
        ttl_s: float = 300.0,
    ) -> dict[str, Any]:
        """Read and manage this edge site's response cache.

        Cached responses are grouped by namespace; the site caches each service's responses
        under the service's name (e.g. namespace "inference"). Values are JSON. Namespaces
        starting with "_" belong to the site itself and are refused.

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
            stats = cache.stats()
            stats["namespaces_in_memory"] = {
                ns: count for ns, count in stats["namespaces_in_memory"].items() if not is_internal(ns)
            }
            return stats
        if not namespace:
            raise ValueError(f"action {action!r} needs a namespace")
        if is_internal(namespace):
            raise ValueError(
                f"namespace {namespace!r} is internal to the site (chat sessions and other state); "
                "it cannot be read or changed with cache_manager"
            )
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
