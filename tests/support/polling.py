"""Waiting for a condition in tests: poll it until a deadline, never a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psutil

INTERVAL_S = 0.02


def until(
    predicate: Callable[[], Any],
    what: str,
    timeout_s: float = 30.0,
    interval_s: float = INTERVAL_S,
    tolerate: tuple[type[Exception], ...] = (),
) -> Any:
    """The first truthy value of `predicate()`; AssertionError naming `what` after `timeout_s`.

    An exception in `tolerate` (e.g. a server that is restarting) counts as "not yet"."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except tolerate as exc:
            value, last = None, exc
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"not within {timeout_s:g} s: {what}" + (f" (last error: {last!r})" if last else ""))


async def eventually(predicate: Callable[[], Any], what: str, timeout_s: float = 15.0) -> Any:
    """`until` for a test on the event loop: sleeps without blocking it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(INTERVAL_S)
    raise AssertionError(f"not within {timeout_s:g} s: {what}")


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (dead, not yet waited for)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
