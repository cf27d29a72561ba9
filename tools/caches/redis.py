"""A Redis cache backend on redis.asyncio: one connection pool, short timeouts, bounded retries.

Failures surface as `CacheUnavailableError` so that the caller decides how to degrade.

Two ways in:

- the request path (`get`, `set`, `delete`, `ping`): each call has a hard deadline of `timeout_s`
  in total. Inside it, redis-py retries a command `retries` times on `ConnectionError` /
  `TimeoutError` after a short jittered backoff, reconnecting first, so a pooled connection
  that went stale (Redis restarted) is replaced instead of failing the request;
- the reconnect probe (`wait_until_reachable`): one PING at a time on its own connection,
  retried by a redis-py `Retry` with an equal-jitter exponential backoff for as long as it
  takes. It is the one that waits while Redis is down; the request path never does.

Keys are `{key_prefix}:{namespace}:{key}`; pass `key_prefix=f"mec:{site_id}"` so that sites
sharing one Redis do not share keys. Namespaces are escaped (`%` and `:`) so that one namespace
cannot reach into another, and SCAN patterns escape glob metacharacters so that `flush` of a
namespace matches that namespace literally.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError


class CacheUnavailableError(Exception):
    """Redis did not answer (refused, timed out, or returned an error)."""


KEY_PREFIX = "mec"
"""The default key prefix; a site passes `f"mec:{site_id}"` instead."""

SCAN_BATCH = 500
_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")


def glob_escape(text: str) -> str:
    """`text` as a Redis glob (SCAN MATCH, KEYS) that matches exactly `text`."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def namespace_part(namespace: str) -> str:
    """The namespace as one key segment: `%` and `:` escaped, so that it cannot contain a separator."""
    return namespace.replace("%", "%25").replace(":", "%3A")


def redis_key(namespace: str, key: str, prefix: str = KEY_PREFIX) -> str:
    return f"{prefix}:{namespace_part(namespace)}:{key}"


def scan_pattern(namespace: str | None, prefix: str = KEY_PREFIX) -> str:
    """The SCAN MATCH pattern of every key of `namespace` (every key under `prefix` when None)."""
    if namespace is None:
        return f"{glob_escape(prefix)}:*"
    return f"{glob_escape(prefix)}:{glob_escape(namespace_part(namespace))}:*"


def _connection_options() -> dict[str, Any]:
    """Options for the redis-py versions that have them (maintenance notifications, driver info: 7.x+)."""
    options: dict[str, Any] = {}
    try:
        from redis.maint_notifications import MaintNotificationsConfig
    except ImportError:
        pass
    else:
        # With maintenance notifications on (redis-py's default "auto" under RESP3), the pool skips
        # its check that a pooled socket has not been closed by the server, and a connection left
        # over from before a Redis restart fails the next command sent on it.
        options["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    try:
        from redis.driver_info import DriverInfo
    except ImportError:
        pass
    else:
        # Resolved once here: left to redis-py, every new connection looks up the installed redis
        # version (importlib.metadata, ~5 ms), stalling the event loop while the pool refills.
        options["driver_info"] = DriverInfo()
    return options


def _unavailable(exc: BaseException) -> CacheUnavailableError:
    error = CacheUnavailableError(str(exc) or type(exc).__name__)
    error.__cause__ = exc
    return error


class RedisCache:
    """Namespaced bytes values in Redis with a TTL on every key.

    Args:
        url: redis:// URL.
        timeout_s: the per-command socket timeout, and the most one request-path call
            (`get`, `set`, `delete`, `ping`) takes in total, retries included.
        max_connections: size of the request-path connection pool.
        key_prefix: the first key segment(s); `f"mec:{site_id}"` keeps sites apart.
        retries: how many times redis-py retries a request-path command on a connection or
            timeout error (after reconnecting), within the `timeout_s` budget.
        health_check_s: a pooled connection idle for longer than this is checked with a PING
            before it is used (0 disables the check).
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = 0.25,
        max_connections: int = 64,
        *,
        key_prefix: str = KEY_PREFIX,
        retries: int = 1,
        health_check_s: float = 5.0,
    ) -> None:
        if not key_prefix:
            raise ValueError("key_prefix must not be empty")
        if retries < 0:
            raise ValueError("retries must be at least 0")
        self.url = url
        self.key_prefix = key_prefix
        self.timeout_s = timeout_s
        common: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            **_connection_options(),
        }
        # A blocking pool: past `max_connections` busy connections a call waits for one (within
        # its budget) instead of failing with "Too many connections" and marking Redis down.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            retry=Retry(EqualJitterBackoff(cap=timeout_s / 10, base=timeout_s / 50), retries),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            health_check_interval=health_check_s,
            **common,
        )
        self._client = aioredis.Redis.from_pool(pool)
        # The reconnect probe: one connection, one PING per attempt; `wait_until_reachable` spaces them.
        self._probe = aioredis.Redis.from_url(url, max_connections=1, retry=Retry(NoBackoff(), 0), **common)

    def key(self, namespace: str, key: str) -> str:
        """The Redis key of `key` in `namespace`."""
        return redis_key(namespace, key, self.key_prefix)

    @asynccontextmanager
    async def _request(self) -> AsyncIterator[None]:
        """The request path's guard: at most `timeout_s` in all, every failure as `CacheUnavailableError`."""
        try:
            async with asyncio.timeout(self.timeout_s):
                yield
        except TimeoutError as exc:  # asyncio's deadline (builtin TimeoutError, an OSError)
            raise CacheUnavailableError(f"redis did not answer within {self.timeout_s}s") from exc
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def ping(self) -> None:
        async with self._request():
            await self._client.ping()

    async def get(self, namespace: str, key: str) -> bytes | None:
        async with self._request():
            value = await self._client.get(self.key(namespace, key))
        return value.encode() if isinstance(value, str) else value  # str only with decode_responses

    async def set(self, namespace: str, key: str, value: bytes, ttl_s: float) -> None:
        async with self._request():
            await self._client.set(self.key(namespace, key), value, px=max(1, int(ttl_s * 1000)))

    async def delete(self, namespace: str, key: str) -> bool:
        async with self._request():
            removed = await self._client.delete(self.key(namespace, key))
        return bool(removed)

    async def delete_many(self, items: Iterable[tuple[str, str]]) -> int:
        """UNLINK many `(namespace, key)` pairs in batches; not bounded by the request budget."""
        keys = [self.key(namespace, key) for namespace, key in items]
        removed = 0
        try:
            for start in range(0, len(keys), SCAN_BATCH):
                removed += await self._client.unlink(*keys[start : start + SCAN_BATCH])
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return removed

    async def flush(self, namespace: str | None = None) -> int:
        """Delete the keys of one namespace (all of this prefix's keys when None) with SCAN + UNLINK."""
        removed = 0
        try:
            batch: list[bytes] = []
            async for name in self._client.scan_iter(
                match=scan_pattern(namespace, self.key_prefix), count=SCAN_BATCH
            ):
                batch.append(name)
                if len(batch) >= SCAN_BATCH:
                    removed += await self._client.unlink(*batch)
                    batch.clear()
            if batch:
                removed += await self._client.unlink(*batch)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return removed

    async def values(self, namespace: str, limit: int) -> list[bytes]:
        """Up to `limit` values of one namespace (SCAN + MGET, in no particular order)."""
        names: list[bytes] = []
        try:
            async for name in self._client.scan_iter(
                match=scan_pattern(namespace, self.key_prefix), count=SCAN_BATCH
            ):
                names.append(name)
                if len(names) >= limit:
                    break
            found: list[bytes] = []
            for start in range(0, len(names), SCAN_BATCH):
                batch = await self._client.mget(names[start : start + SCAN_BATCH])
                found.extend(v if isinstance(v, bytes) else str(v).encode() for v in batch if v is not None)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return found

    async def count(self, namespace: str) -> int:
        total = 0
        try:
            async for _ in self._client.scan_iter(
                match=scan_pattern(namespace, self.key_prefix), count=SCAN_BATCH
            ):
                total += 1
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return total

    async def _probe_ping(self) -> None:
        try:
            await self._probe.ping()
        except OSError as exc:  # redis-py wraps socket errors, but not necessarily every one
            raise RedisConnectionError(str(exc) or type(exc).__name__) from exc

    async def probe(self) -> None:
        """One PING on the probe's own connection, no retry: at most about `timeout_s`."""
        try:
            await self._probe_ping()
        except RedisError as exc:
            raise _unavailable(exc) from exc

    async def wait_until_reachable(
        self,
        max_interval_s: float,
        on_failure: Callable[[CacheUnavailableError], Awaitable[None]] | None = None,
    ) -> None:
        """Return once a PING is answered; until then PING again after an equal-jitter exponential backoff.

        The waits grow from about `max_interval_s / 16` to between `max_interval_s / 2` and
        `max_interval_s`, and the first PING goes out after the shortest of them. On success the
        request pool's idle connections (all opened before the outage) are closed, so that
        requests start again on fresh ones.
        """
        backoff = EqualJitterBackoff(cap=max_interval_s, base=max_interval_s / 8)

        async def failed(error: Exception) -> None:
            if on_failure is not None:
                await on_failure(_unavailable(error))

        await asyncio.sleep(backoff.compute(0))
        retry = Retry(backoff, retries=-1, supported_errors=(RedisError,))
        await retry.call_with_retry(self._probe_ping, failed)
        await self._probe.connection_pool.disconnect()
        await self.reset_connections()

    async def reset_connections(self) -> None:
        """Close the request pool's idle connections; the next requests open new ones."""
        await self._client.connection_pool.disconnect(inuse_connections=False)

    async def close(self) -> None:
        await self._client.aclose()
        await self._probe.aclose()
