from __future__ import annotations

import pytest

from tools.caches.memory import MemoryCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_entry_expires_after_its_ttl() -> None:
    clock = FakeClock()
    cache = MemoryCache(10, clock=clock)
    cache.set("ns", "k", b"v", ttl_s=5)
    clock.now += 4.9
    assert cache.get("ns", "k") == b"v"
    clock.now += 0.2
    assert cache.get("ns", "k") is None
    assert len(cache) == 0


def test_least_recently_used_entry_is_evicted_first() -> None:
    cache = MemoryCache(2)
    cache.set("ns", "a", b"1", 60)
    cache.set("ns", "b", b"2", 60)
    assert cache.get("ns", "a") == b"1"
    cache.set("ns", "c", b"3", 60)
    assert cache.get("ns", "b") is None
    assert cache.get("ns", "a") == b"1"
    assert cache.evictions == 1


def test_flush_removes_only_its_namespace() -> None:
    cache = MemoryCache(10)
    cache.set("a", "1", b"x", 60)
    cache.set("a", "2", b"x", 60)
    cache.set("b", "1", b"x", 60)
    assert cache.flush("a") == 2
    assert cache.namespaces() == {"b": 1}
    assert cache.flush() == 1


def test_zero_ttl_set_removes_the_key() -> None:
    cache = MemoryCache(10)
    cache.set("ns", "k", b"v", 60)
    cache.set("ns", "k", b"w", 0)
    assert cache.get("ns", "k") is None


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MemoryCache(0)
