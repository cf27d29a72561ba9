"""The site's archive: every `interval_s`, what happened since the last round, as JSON lines.

Three kinds, one object (file) each per round when there is something to write:

* `decisions`: the swarm log entries committed since the last round (`SwarmState.history()`:
  entries with an `index` above the last one archived);
* `alerts`: alerts resolved since the last round (`AlertEngine.resolved()` as dicts: those whose
  `ended_at` is past the last one archived);
* `metrics`: a roll-up of the interval: per service the requests, errors (5xx served) and
  rejects counted since the last round (from the request log's running totals) with the latest
  window's p50/p99 and the highest p99 seen; the host's CPU and memory averaged over the samples
  of the interval (the sampler's listener `observe`).

Each object's key is `<kind>/<yyyy>/<mm>/<dd>/<site>-<UTC timestamp>.jsonl`, under a store:
`LocalArchiveStore` (a directory, by default `data_dir/archive`, bounded in total size: the
oldest files go first) or `S3ArchiveStore` (a bucket and key prefix, through boto3, on AWS or an
S3-compatible server at `endpoint_url`). Writes run off the event loop. A round that fails to
write keeps its objects in a bounded backlog, retried first the next round (the oldest are
dropped past `max_backlog`, counted); a failure is logged, never raised into the site.

The archiver takes plain callables, so it knows nothing of the API or the swarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from config.settings import Settings
from tools.metrics_monitor import MetricsSnapshot

log = logging.getLogger(__name__)

KINDS = ("decisions", "alerts", "metrics")
MAX_BACKLOG = 64
"""Objects kept for a retry at most (about 20 rounds of the three kinds)."""


class ArchiveStore(Protocol):
    """Where archive objects go; `put` blocks (the archiver calls it off the loop)."""

    def put(self, key: str, body: bytes) -> None:
        """Store `body` under `key` (`kind/yyyy/mm/dd/site-timestamp.jsonl`); raise on failure."""
        ...


class LocalArchiveStore:
    """Archive objects as files under `root`, at most `max_bytes` in all (oldest removed first)."""

    def __init__(self, root: Path, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.removed = 0
        """Files removed to keep the archive under `max_bytes`."""

    def put(self, key: str, body: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        with open(partial, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
        self._bound(keep=path)

    def files(self) -> list[Path]:
        """The archive's files, oldest first (by modification time, then path)."""
        found = [p for p in self.root.rglob("*.jsonl") if p.is_file()]
        return sorted(found, key=lambda p: (p.stat().st_mtime_ns, str(p)))

    def _bound(self, keep: Path) -> None:
        files = self.files()
        total = sum(p.stat().st_size for p in files)
        for old in files:
            if total <= self.max_bytes:
                break
            if old == keep:
                continue
            size = old.stat().st_size
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
                self.removed += 1
                total -= size
                self._prune_empty(old.parent)

    def _prune_empty(self, directory: Path) -> None:
        while directory != self.root and directory.is_relative_to(self.root):
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent


class S3ArchiveStore:
    """Archive objects in an S3 bucket under `prefix` (AWS, or an S3-compatible `endpoint_url`)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "mec-archive",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        timeout_s: float = 10.0,
        session: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.timeout_s = timeout_s
        self._session = session
        self._client: Any = None

    def client(self) -> Any:
        """The S3 client, made on first use (blocking: the credential chain is resolved)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            session = self._session or boto3.Session(region_name=self.region)
            config = Config(
                connect_timeout=min(self.timeout_s, 5.0),
                read_timeout=self.timeout_s,
                retries={"total_max_attempts": 2, "mode": "standard"},
            )
            self._client = session.client(
                "s3", region_name=self.region, endpoint_url=self.endpoint_url, config=config
            )
        return self._client

    def key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, body: bytes) -> None:
        self.client().put_object(
            Bucket=self.bucket, Key=self.key(key), Body=body, ContentType="application/x-ndjson"
        )


def archive_store(settings: Settings) -> LocalArchiveStore | S3ArchiveStore:
    """The configured store: S3 with `archive_s3_bucket`, else `archive_dir` (default `data_dir/archive`)."""
    if settings.archive_s3_bucket:
        return S3ArchiveStore(
            settings.archive_s3_bucket,
            settings.archive_s3_prefix,
            endpoint_url=settings.archive_s3_endpoint_url,
            region=settings.archive_s3_region,
        )
    return LocalArchiveStore(
        settings.archive_dir or settings.data_dir / "archive", settings.archive_max_bytes
    )


@dataclass(slots=True)
class _Interval:
    """What the sampler showed since the last round."""

    samples: int = 0
    cpu_sum: float = 0.0
    memory_sum: float = 0.0
    p99_max: dict[str, float] = field(default_factory=dict)
    latest: MetricsSnapshot | None = None


@dataclass(frozen=True, slots=True)
class _Pending:
    key: str
    body: bytes


def _jsonl(records: Iterable[Mapping[str, Any]]) -> bytes:
    lines = [
        json.dumps(r, separators=(",", ":"), ensure_ascii=False, default=str, sort_keys=True) for r in records
    ]
    return ("\n".join(lines) + "\n").encode() if lines else b""


class Archiver:
    """Every `interval_s`, archives decisions, resolved alerts and a metrics roll-up to `store`.

    Inputs are plain callables: `decisions()` the swarm's latest log entries (dicts with an
    `index`), `resolved_alerts()` recently resolved alerts (dicts with `id` and `ended_at`),
    `request_totals()` the request log's running totals by `(service, tier, status)`. `observe`
    is the sampler's listener (host averages, p99 peaks); `run_once()` is one round.
    """

    def __init__(
        self,
        store: ArchiveStore,
        site_id: str,
        *,
        decisions: Callable[[], Iterable[Mapping[str, Any]]] = list,
        resolved_alerts: Callable[[], Iterable[Mapping[str, Any]]] = list,
        request_totals: Callable[[], Mapping[tuple[str, str, int], int]] = dict,
        interval_s: float = 60.0,
        max_backlog: int = MAX_BACKLOG,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.site_id = site_id
        self.decisions = decisions
        self.resolved_alerts = resolved_alerts
        self.request_totals = request_totals
        self.interval_s = interval_s
        self.clock = clock
        self._backlog: deque[_Pending] = deque()
        self.max_backlog = max_backlog
        self._last_index = -1
        self._last_ended = float("-inf")
        self._last_totals: dict[tuple[str, str, int], int] = dict(request_totals())
        self._interval = _Interval()
        self._since = clock()
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0
        self.written = 0
        """Objects stored."""
        self.failures = 0
        """Store calls that failed (their objects went to the backlog)."""
        self.dropped = 0
        """Objects dropped from a full backlog."""

    # inputs --------------------------------------------------------------------------------------

    def observe(self, snapshot: MetricsSnapshot) -> None:
        """The sampler's listener: adds one sample to the interval's roll-up (microseconds)."""
        interval = self._interval
        interval.latest = snapshot
        if snapshot.host is not None:
            interval.samples += 1
            interval.cpu_sum += snapshot.host.cpu_percent
            interval.memory_sum += snapshot.host.memory_percent
        for stats in snapshot.requests:
            if stats.p99_ms > interval.p99_max.get(stats.service, 0.0):
                interval.p99_max[stats.service] = stats.p99_ms

    # a round -------------------------------------------------------------------------------------

    def collect(self) -> list[_Pending]:
        """This round's objects (at most one per kind), and the cursors moved past them."""
        now = self.clock()
        stamp = datetime.fromtimestamp(now, UTC)
        folder = stamp.strftime("%Y/%m/%d")
        name = f"{self.site_id}-{stamp.strftime('%Y%m%dT%H%M%S')}{stamp.microsecond // 1000:03d}Z.jsonl"
        out: list[_Pending] = []

        entries = [dict(e) for e in self.decisions() if int(e.get("index", -1)) > self._last_index]
        if entries:
            self._last_index = max(int(e["index"]) for e in entries)
            out.append(
                _Pending(f"decisions/{folder}/{name}", _jsonl({"site": self.site_id, **e} for e in entries))
            )

        alerts = [
            dict(a)
            for a in self.resolved_alerts()
            if a.get("ended_at") is not None and a["ended_at"] > self._last_ended
        ]
        if alerts:
            self._last_ended = max(float(a["ended_at"]) for a in alerts)
            alerts.sort(key=lambda a: (a["ended_at"], str(a.get("id"))))
            out.append(
                _Pending(f"alerts/{folder}/{name}", _jsonl({"site": self.site_id, **a} for a in alerts))
            )

        out.append(_Pending(f"metrics/{folder}/{name}", _jsonl(self._rollup(now))))
        return out

    def _rollup(self, now: float) -> list[dict[str, Any]]:
        totals = dict(self.request_totals())
        interval, self._interval = self._interval, _Interval()
        since, self._since = self._since, now
        services: dict[str, dict[str, Any]] = {}
        for (service, tier, status), count in totals.items():
            delta = count - self._last_totals.get((service, tier, status), 0)
            if delta <= 0:
                continue
            figures = services.setdefault(service, {"requests": 0, "errors": 0, "rejected": 0})
            figures["requests"] += delta
            if status >= 500:
                figures["rejected" if tier == "reject" else "errors"] += delta
        self._last_totals = totals
        latest = {s.service: s for s in interval.latest.requests} if interval.latest is not None else {}
        for service, figures in services.items():
            window = latest.get(service)
            figures["p50_ms"] = None if window is None else window.p50_ms
            figures["p99_ms"] = None if window is None else window.p99_ms
            figures["p99_max_ms"] = interval.p99_max.get(service)
        host = None
        if interval.samples:
            host = {
                "cpu_percent_avg": round(interval.cpu_sum / interval.samples, 3),
                "memory_percent_avg": round(interval.memory_sum / interval.samples, 3),
                "samples": interval.samples,
            }
        return [
            {
                "site": self.site_id,
                "from": round(since, 3),
                "to": round(now, 3),
                "services": dict(sorted(services.items())),
                "host": host,
            }
        ]

    async def run_once(self) -> None:
        """One round: collect, then write the backlog and this round's objects in order, off the
        loop. A failed write keeps it and what follows for the next round; never raises."""
        self.rounds += 1
        try:
            self._backlog.extend(self.collect())
        except Exception:
            log.exception("archive: collecting round %d failed", self.rounds)
        while self._backlog:
            pending = self._backlog[0]
            try:
                await asyncio.to_thread(self.store.put, pending.key, pending.body)
            except Exception as exc:
                self.failures += 1
                while len(self._backlog) > self.max_backlog:  # kept for later: the oldest go first
                    self._backlog.popleft()
                    self.dropped += 1
                log.warning(
                    "archive: writing %s failed (%d kept for the next round): %s",
                    pending.key,
                    len(self._backlog),
                    exc,
                )
                return
            self._backlog.popleft()
            self.written += 1

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    # the loop ------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.run_once()

    async def stop(self, flush_s: float = 5.0) -> None:
        """Stop the rounds, then one last round that is waited for `flush_s` at most (0: none)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if flush_s > 0:
            try:
                await asyncio.wait_for(self.run_once(), flush_s)
            except TimeoutError:
                log.warning("archive: the last round did not finish within %g s", flush_s)

    def report(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "written": self.written,
            "failures": self.failures,
            "backlog": len(self._backlog),
            "dropped": self.dropped,
        }
