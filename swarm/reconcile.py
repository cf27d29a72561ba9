"""The per-site reconciler: brings the site's own instances to the swarm's committed placement.

After each log entry the state applies and after each restore of a snapshot (it subscribes to
both) and every `interval_s` in any case (to
repair drift: an instance stopped by hand, a start that failed), it compares, for every service,
the instances the runtime has with the replicas the placement gives this site, and calls
`runtime.scale(service, replicas)` where they differ. A service the swarm has not decided (no
placement entry) keeps the site's configured `replicas`.

Reconciles run one at a time; entries applied during one wake the loop for another right after
(many entries, one extra pass). Nothing raises out of the loop: a failed scale is logged,
counted (`errors`), kept in `last_error` and tried again on the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from config.settings import ServiceSettings
from swarm.commands import Command, Note
from swarm.state import SwarmState
from tools.runtimes.base import Runtime

log = logging.getLogger(__name__)

MAX_INTERVAL_S = 3600.0
"""The longest a reconciler may wait between passes."""


class Reconciler:
    """Keeps `runtime`'s instances at this site's share of the committed placement.

    `services` are the site's configured services (`Settings.services`): their `replicas` for
    services the swarm has not decided, and their `max_replicas` as a ceiling on what the log
    may ask of this site (a larger number is clamped, logged and shown in `clamped`).
    """

    def __init__(
        self,
        site_id: str,
        runtime: Runtime,
        state: SwarmState,
        services: Mapping[str, ServiceSettings],
        interval_s: float = 5.0,
    ) -> None:
        if not 0 < interval_s <= MAX_INTERVAL_S:
            raise ValueError(f"interval_s must be in (0, {MAX_INTERVAL_S:g}], not {interval_s}")
        self.site_id = site_id
        self.runtime = runtime
        self.state = state
        self.services = dict(services)
        self.interval_s = interval_s
        self.passes = 0
        """Reconcile passes run."""
        self.scale_calls = 0
        """`runtime.scale` calls made (failed ones included)."""
        self.errors = 0
        """Failed `runtime.scale` calls (and passes that failed before scaling)."""
        self.last_error: str | None = None
        """What went wrong in the last pass that had a failure; None once a pass succeeds."""
        self.clamped: dict[str, int] = {}
        """Services whose placement asks this site for more than its `max_replicas`: what it asked."""
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._unsubscribe_restore: Callable[[], None] | None = None

    # -- what this site should run ---------------------------------------------------------

    def targets(self) -> dict[str, int]:
        """Replicas this site should run of each service the swarm has decided: its share of the
        placement. Services the swarm has not decided are left as they are (the site started them
        with its configured replicas, and an operator may scale them on this site alone)."""
        wanted: dict[str, int] = {}
        clamped: dict[str, int] = {}
        for service, replicas in self.state.site_placement(self.site_id).items():
            configured = self.services.get(service)
            if configured is not None and replicas > configured.max_replicas:
                clamped[service] = replicas
                replicas = configured.max_replicas
            wanted[service] = replicas
        for service, replicas in clamped.items():
            if self.clamped.get(service) != replicas:
                log.warning(
                    "the placement asks %s for %d replicas of %s, more than its max_replicas %d",
                    self.site_id,
                    replicas,
                    service,
                    self.services[service].max_replicas,
                )
        self.clamped = clamped
        return wanted

    # -- one pass ------------------------------------------------------------------------

    async def reconcile(self) -> bool:
        """One pass (after any pass in progress): scale every service whose instance count
        differs from its target. True when every service is at its target; never raises
        (except when cancelled)."""
        async with self._lock:
            self.passes += 1
            failures: list[str] = []
            try:
                for service, wanted in self.targets().items():
                    if len(self.runtime.instances(service)) == wanted:
                        continue
                    self.scale_calls += 1
                    try:
                        await self.runtime.scale(service, wanted)
                    except Exception as exc:
                        self.errors += 1
                        failures.append(f"scaling {service} to {wanted} failed: {type(exc).__name__}: {exc}")
                        log.warning("reconcile on %s: %s", self.site_id, failures[-1])
            except Exception as exc:  # a bug above must not end the loop either
                self.errors += 1
                failures.append(f"reconcile failed: {type(exc).__name__}: {exc}")
                log.exception("reconcile on %s failed", self.site_id)
            self.last_error = "; ".join(failures) if failures else None
            return not failures

    # -- the loop ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the loop is running."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Subscribe to the state and start the loop (its first pass runs at once). Idempotent."""
        if self.running:
            return
        self._loop = asyncio.get_running_loop()
        self._unsubscribe = self.state.subscribe(self._on_apply)
        self._unsubscribe_restore = self.state.subscribe_restore(self._on_restore)
        self._wake.set()
        self._task = self._loop.create_task(self._run(), name=f"reconcile-{self.site_id}")

    async def stop(self) -> None:
        """Unsubscribe and stop the loop (cancelling a pass in progress). Idempotent."""
        for unsubscribe in (self._unsubscribe, self._unsubscribe_restore):
            if unsubscribe is not None:
                unsubscribe()
        self._unsubscribe = self._unsubscribe_restore = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _on_apply(self, index: int, command: Command) -> None:
        if isinstance(command, Note) or self._loop is None:
            return
        # The applier runs on the event loop; call_soon_threadsafe is right from any thread.
        self._loop.call_soon_threadsafe(self._wake.set)

    def _on_restore(self, applied_index: int) -> None:
        if self._loop is not None:  # the whole placement may have changed
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            except TimeoutError:
                pass
            self._wake.clear()  # entries applied from here on wake the next pass
            await self.reconcile()

    def status(self) -> dict[str, Any]:
        """The reconciler's counters and last error, as plain data."""
        return {
            "running": self.running,
            "interval_s": self.interval_s,
            "passes": self.passes,
            "scale_calls": self.scale_calls,
            "errors": self.errors,
            "last_error": self.last_error,
            "clamped": dict(self.clamped),
        }
