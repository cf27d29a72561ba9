"""A Redis cache backend on redis.asyncio: one connection pool, short timeouts, no retries.

Failures surface as `CacheUnavailableError` so that the caller decides how to degrade.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis import asyncio as aioredis
from redis.exceptions import RedisError


class CacheUnavailableError(Exception):
    """Redis did not answer (refused, timed out, or returned an error)."""


KEY_PREFIX = "mec"


def redis_key(namespace: str, key: str) -> str:
    return f"{KEY_PREFIX}:{namespace}:{key}"


@contextmanager
def _unavailable_on_error() -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise CacheUnavailableError(str(exc) or type(exc).__name__) from exc


class RedisCache:
    """Namespaced bytes values in Redis with a TTL on every key."""

    def __init__(self, url: str, timeout_s: float = 0.25, max_connections: int = 64) -> None:
        self.url = url
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            max_connections=max_connections,
            retry_on_timeout=False,
            retry=None,
        )

    async def ping(self) -> None:
        with _unavailable_on_error():
            await self._client.ping()

    async def get(self, namespace: str, key: str) -> bytes | None:
        with _unavailable_on_error():
            return await self._client.get(redis_key(namespace, key))

    async def set(self, namespace: str, key: str, value: bytes, ttl_s: float) -> None:
        with _unavailable_on_error():
            await self._client.set(redis_key(namespace, key), value, px=max(1, int(ttl_s * 1000)))

    async def delete(self, namespace: str, key: str) -> bool:
        with _unavailable_on_error():
            return bool(await self._client.delete(redis_key(namespace, key)))

    async def flush(self, namespace: str | None = None) -> int:
        """Delete the keys of one namespace (all of this site's keys when None) with SCAN + UNLINK."""
        pattern = f"{KEY_PREFIX}:{namespace}:*" if namespace is not None else f"{KEY_PREFIX}:*"
        removed = 0
        with _unavailable_on_error():
            batch: list[bytes] = []
            async for name in self._client.scan_iter(match=pattern, count=500):
                batch.append(name)
                if len(batch) >= 500:
                    removed += await self._client.unlink(*batch)
                    batch.clear()
            if batch:
                removed += await self._client.unlink(*batch)
        return removed

    async def count(self, namespace: str) -> int:
        total = 0
        with _unavailable_on_error():
            async for _ in self._client.scan_iter(match=f"{KEY_PREFIX}:{namespace}:*", count=500):
                total += 1
        return total

    async def close(self) -> None:
        await self._client.aclose()
