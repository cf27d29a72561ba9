"""A bounded in-process cache: least-recently-used eviction and a TTL per entry.

The site's one LRU/TTL map: the cache's bytes, and any other bounded table of live objects with an
idle lifetime (the operator agent's chat sessions)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    expires_at: float


class MemoryCache(Generic[V]):
    """An LRU + TTL map of `namespace:key` to values (bytes for the site's cache). Every operation
    is O(1) but `flush` of one namespace and `namespaces`, and none does I/O.

    Not thread-safe: it is used from the event loop only.
    """

    def __init__(self, max_entries: int = 50_000, clock: Callable[[], float] | None = None) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock or time.monotonic
        self._entries: OrderedDict[tuple[str, str], _Entry[V]] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, namespace: str, key: str) -> V | None:
        slot = (namespace, key)
        entry = self._entries.get(slot)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            del self._entries[slot]
            return None
        self._entries.move_to_end(slot)
        return entry.value

    def set(self, namespace: str, key: str, value: V, ttl_s: float) -> None:
        if ttl_s <= 0:
            self._entries.pop((namespace, key), None)
            return
        slot = (namespace, key)
        self._entries[slot] = _Entry(value, self._clock() + ttl_s)
        self._entries.move_to_end(slot)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1

    def delete(self, namespace: str, key: str) -> bool:
        return self._entries.pop((namespace, key), None) is not None

    def flush(self, namespace: str | None = None) -> int:
        """Drop every entry of `namespace` (all entries when None); return how many."""
        if namespace is None:
            count = len(self._entries)
            self._entries.clear()
            return count
        doomed = [slot for slot in self._entries if slot[0] == namespace]
        for slot in doomed:
            del self._entries[slot]
        return len(doomed)

    def namespaces(self) -> dict[str, int]:
        """Live entry count per namespace (expired entries are not counted)."""
        now = self._clock()
        counts: dict[str, int] = {}
        for (namespace, _), entry in self._entries.items():
            if entry.expires_at > now:
                counts[namespace] = counts.get(namespace, 0) + 1
        return counts
