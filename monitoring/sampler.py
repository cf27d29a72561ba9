"""The background sampler: refreshes the metrics snapshot on a fixed interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from tools.metrics_monitor import MetricsMonitor, MetricsSnapshot

log = logging.getLogger(__name__)


class Sampler:
    """Awaits `monitor.refresh()` every `interval_s` until stopped; a failed sample is logged.

    After each sample every listener is called with the new snapshot, on the loop (alert
    evaluation): a listener that raises is logged and counted, and the others still run."""

    def __init__(self, monitor: MetricsMonitor, interval_s: float = 0.5) -> None:
        self.monitor = monitor
        self.interval_s = interval_s
        self.failures = 0
        self.listener_failures = 0
        self.listeners: list[Callable[[MetricsSnapshot], object]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.monitor.refresh()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                snapshot = await self.monitor.refresh()
            except Exception:
                self.failures += 1
                log.exception("metrics sample failed")
                continue
            for listener in self.listeners:
                try:
                    listener(snapshot)
                except Exception:
                    self.listener_failures += 1
                    log.exception("metrics listener %r failed", listener)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
