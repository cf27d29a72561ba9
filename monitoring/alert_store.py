"""Alerts kept in Redis when the site has one: they survive a restart of the site.

`RedisAlertStore` is a sink of `monitoring.alert_service.AlertService`: every event writes its
alert's latest state under `mec-alerts:<site_id>:alert:<id>` (a key prefix of its own, so no cache
flush of the site can remove them), kept `ttl_s` after its last change. At start `load()` reads
them back for `AlertEngine.restore`, so a restarted site still lists its alerts and does not
announce a still-firing one again. Redis being down costs the store its writes (counted as sink
failures by the service), never an alert's delivery to the other sinks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from tools.caches.redis import CacheUnavailableError, RedisCache

log = logging.getLogger(__name__)

NAMESPACE = "alert"
TTL_S = 7 * 24 * 3600.0
MAX_LOADED = 5000


class RedisAlertStore:
    def __init__(self, redis_url: str, site_id: str, timeout_s: float = 0.5, ttl_s: float = TTL_S) -> None:
        self.redis = RedisCache(redis_url, timeout_s, max_connections=2, key_prefix=f"mec-alerts:{site_id}")
        self.ttl_s = ttl_s

    async def submit(self, event: Mapping[str, Any]) -> None:
        alert = event.get("alert")
        if not isinstance(alert, Mapping) or "id" not in alert:
            return
        data = json.dumps(alert, separators=(",", ":"), sort_keys=True).encode()
        await self.redis.set(NAMESPACE, str(alert["id"]), data, self.ttl_s)

    async def load(self, limit: int = MAX_LOADED) -> list[dict[str, Any]]:
        """The alerts kept, oldest start first; [] (logged) when Redis cannot be read."""
        try:
            raw = await self.redis.values(NAMESPACE, limit)
        except CacheUnavailableError as exc:
            log.warning("alerts kept in Redis could not be read: %s", exc)
            return []
        found = []
        for value in raw:
            try:
                alert = json.loads(value)
            except ValueError:
                continue
            if isinstance(alert, dict):
                found.append(alert)
        return sorted(found, key=lambda a: (a.get("started_at", 0), str(a.get("id"))))

    async def stop(self) -> None:
        await self.redis.close()
