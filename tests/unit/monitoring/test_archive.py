"""The archive to a local directory: what each round writes (decisions committed to a real
`SwarmState`, alerts a real `AlertEngine` resolved, a roll-up of a real request log and host
samples), where (the key layout), only what is new, the size bound, and failures kept for later."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config.settings import AlertRule, load_settings
from monitoring.alerts import AlertEngine, Reading
from monitoring.archive import Archiver, LocalArchiveStore, S3ArchiveStore, archive_store
from swarm.commands import JoinSite, Note
from swarm.state import SwarmState
from tools.metrics_monitor import EMPTY_SNAPSHOT, RequestLog, ServiceRequestStats
from tools.probes import HostMetrics

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC).timestamp()
CPU = AlertRule(name="cpu_high", metric="cpu_percent", high=90, low=75, for_s=0, clear_s=0)


class Clock:
    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def host(cpu: float, memory: float) -> HostMetrics:
    return HostMetrics(cpu, 2, 0.5, memory, 1, 2, 10.0, 1, 0.0, 0.0)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_round_writes_new_decisions_resolved_alerts_and_a_metrics_rollup_under_dated_keys(
    tmp_path: Path,
) -> None:
    state, engine, requests, clock = SwarmState(), AlertEngine([CPU]), RequestLog(), Clock(NOW)
    archiver = Archiver(
        LocalArchiveStore(tmp_path),
        "site-1",
        decisions=state.history,
        resolved_alerts=lambda: [a.to_dict() for a in engine.resolved()],
        request_totals=lambda: requests.totals,
        clock=clock,
    )
    state.apply(1, JoinSite("site-1", "http://127.0.0.1:1"))
    state.apply(2, Note("hello"))
    for offset, cpu in ((-10, 95), (-9, 95), (-5, 10), (-4, 10)):  # pending, fired, clearing, resolved
        engine.evaluate([Reading("cpu_percent", "host", cpu)], NOW + offset)
    for status in (200, 200, 502):
        requests.record("sensor", "local", status, 4.0)
    requests.record("sensor", "reject", 503, 0.1)
    archiver.observe(EMPTY_SNAPSHOT.__class__(**{**EMPTY_SNAPSHOT.__dict__, "host": host(40, 60)}))
    stats = ServiceRequestStats("sensor", 4, 0.4, 1, 1, 4.0, 4.0, 9.5, {"local": 3, "reject": 1})
    archiver.observe(
        EMPTY_SNAPSHOT.__class__(**{**EMPTY_SNAPSHOT.__dict__, "host": host(60, 70), "requests": (stats,)})
    )

    written = archiver.collect()

    name = "site-1-20260304T050607000Z.jsonl"
    assert [p.key for p in written] == [
        f"{kind}/2026/03/04/{name}" for kind in ("decisions", "alerts", "metrics")
    ]
    for pending in written:
        archiver.store.put(pending.key, pending.body)
    decisions = read_jsonl(tmp_path / "decisions/2026/03/04" / name)
    assert [(d["index"], d["type"], d["site"]) for d in decisions] == [
        (1, "join_site", "site-1"),
        (2, "note", "site-1"),
    ]
    [alert] = read_jsonl(tmp_path / "alerts/2026/03/04" / name)
    assert (alert["rule"], alert["state"], alert["site"]) == ("cpu_high", "resolved", "site-1")
    [rollup] = read_jsonl(tmp_path / "metrics/2026/03/04" / name)
    assert rollup["services"]["sensor"] == {
        "requests": 4,
        "errors": 1,
        "rejected": 1,
        "p50_ms": 4.0,
        "p99_ms": 9.5,
        "p99_max_ms": 9.5,
    }
    assert rollup["host"] == {"cpu_percent_avg": 50.0, "memory_percent_avg": 65.0, "samples": 2}


async def test_each_round_archives_only_what_is_new_since_the_last(tmp_path: Path) -> None:
    state, requests, clock = SwarmState(), RequestLog(), Clock(NOW)
    store = LocalArchiveStore(tmp_path)
    archiver = Archiver(
        store, "site-1", decisions=state.history, request_totals=lambda: requests.totals, clock=clock
    )
    state.apply(1, Note("one"))
    requests.record("sensor", "local", 200, 1.0)
    await archiver.run_once()
    clock.at += 60
    state.apply(2, Note("two"))
    requests.record("sensor", "local", 200, 1.0)
    requests.record("sensor", "local", 200, 1.0)
    await archiver.run_once()
    clock.at += 60
    await archiver.run_once()  # nothing happened: a roll-up only

    decisions = sorted((tmp_path / "decisions").rglob("*.jsonl"))
    assert [[d["index"] for d in read_jsonl(p)] for p in decisions] == [[1], [2]]
    rollups = [read_jsonl(p)[0] for p in sorted((tmp_path / "metrics").rglob("*.jsonl"))]
    assert [r["services"].get("sensor", {}).get("requests", 0) for r in rollups] == [1, 2, 0]
    assert not (tmp_path / "alerts").exists()
    assert archiver.report()["written"] == 5 and archiver.backlog == 0


async def test_the_local_archive_stays_under_its_size_bound_by_removing_the_oldest(tmp_path: Path) -> None:
    store = LocalArchiveStore(tmp_path, max_bytes=2048)
    for n in range(12):
        store.put(f"metrics/2026/03/{n + 1:02d}/site-1-{n:02d}.jsonl", b"x" * 500 + b"\n")
    files = store.files()
    assert sum(p.stat().st_size for p in files) <= 2048
    assert [p.name for p in files] == [f"site-1-{n:02d}.jsonl" for n in range(8, 12)]  # the newest kept
    assert store.removed == 8
    assert not (tmp_path / "metrics/2026/03/01").exists()  # emptied day folders go too


class FailingStore:
    """A store whose writes fail until `up` (a real disk error: the path is a file, not a folder)."""

    def __init__(self, root: Path) -> None:
        self.inner = LocalArchiveStore(root)
        self.up = False

    def put(self, key: str, body: bytes) -> None:
        if not self.up:
            raise OSError("disk unavailable")
        self.inner.put(key, body)


async def test_a_failed_round_is_kept_and_written_first_the_next_round_and_the_backlog_is_bounded(
    tmp_path: Path,
) -> None:
    state, clock = SwarmState(), Clock(NOW)
    store = FailingStore(tmp_path)
    archiver = Archiver(store, "site-1", decisions=state.history, clock=clock, max_backlog=4)
    state.apply(1, Note("kept"))
    await archiver.run_once()  # never raises
    assert (archiver.failures, archiver.backlog) == (1, 2)
    for _ in range(3):  # a roll-up each
        clock.at += 60
        await archiver.run_once()
    assert archiver.backlog == 4 and archiver.dropped == 1  # the oldest (the decisions) went first

    store.up = True
    clock.at += 60
    await archiver.run_once()
    assert archiver.backlog == 0
    assert len(list((tmp_path / "metrics").rglob("*.jsonl"))) == 5
    assert not (tmp_path / "decisions").exists()


def test_settings_choose_the_store(tmp_path: Path) -> None:
    local = archive_store(load_settings(None, data_dir=tmp_path))
    assert isinstance(local, LocalArchiveStore) and local.root == tmp_path / "archive"
    s3 = archive_store(
        load_settings(
            None,
            data_dir=tmp_path,
            archive_s3_bucket="mec-archive",
            archive_s3_prefix="edge/",
            archive_s3_endpoint_url="http://127.0.0.1:9000",
        )
    )
    assert isinstance(s3, S3ArchiveStore)
    assert (s3.bucket, s3.key("metrics/x.jsonl"), s3.endpoint_url) == (
        "mec-archive",
        "edge/metrics/x.jsonl",
        "http://127.0.0.1:9000",
    )
