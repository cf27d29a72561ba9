from __future__ import annotations

from pathlib import Path

from tools.metrics_monitor import MetricsMonitor, RequestLog, metrics_monitor_tool
from tools.probes import GpuProbe, HostProbe


def test_request_log_reports_rate_percentiles_and_tiers() -> None:
    log = RequestLog(window_s=10)
    for i in range(1, 101):
        log.record("sensor", "local" if i % 4 else "cache", 200 if i <= 98 else 502, float(i))
    [stats] = log.summary()
    assert stats.requests == 100
    assert stats.rate_per_s == 10.0
    assert stats.errors == 2
    assert stats.rejected == 0
    assert stats.p50_ms == 50.0
    assert stats.p99_ms == 99.0
    assert stats.by_tier == {"local": 75, "cache": 25}
    assert log.totals[("sensor", "local", 502)] == 1
    assert log.totals[("sensor", "cache", 502)] == 1
    histogram = log.histograms["sensor"]
    assert histogram.total == 100
    assert histogram.sum_ms == sum(range(1, 101))
    assert sum(histogram.counts) == 100


def test_capacity_rejects_are_counted_apart_from_server_errors() -> None:
    """The dispatcher records a 503 no_capacity reject on tier "reject": it is `rejected`, not an
    error; a 5xx from an instance (or the model) is an error; a 4xx reject is neither."""
    log = RequestLog(window_s=10)
    for _ in range(5):
        log.record("game-state", "local", 200, 2.0)
    for _ in range(12):
        log.record("game-state", "reject", 503, 0.1)
    log.record("game-state", "reject", 403, 0.1)  # client kind not allowed
    for status in (500, 502, 504):
        log.record("game-state", "local", status, 3.0)
    log.record("game-state", "llm", 503, 5.0)  # the model was unavailable: a real failure
    [stats] = log.summary()
    assert stats.requests == 22
    assert stats.rejected == 12
    assert stats.errors == 4
    assert stats.by_tier == {"local": 8, "reject": 13, "llm": 1}


def test_recent_requests_keep_only_the_latest_newest_first() -> None:
    log = RequestLog(recent_size=5)
    for i in range(12):
        log.record("sensor", "local", 200, float(i))
    log.record("game-state", "peer", 502, 99.0, site="site-2")
    recent = log.recent(200)
    assert [r.latency_ms for r in recent] == [99.0, 11.0, 10.0, 9.0, 8.0]
    assert (recent[0].service, recent[0].tier, recent[0].status, recent[0].site) == (
        "game-state",
        "peer",
        502,
        "site-2",
    )
    assert recent[1].site is None  # served here
    assert [r.latency_ms for r in log.recent(2)] == [99.0, 11.0]
    assert recent[0].at >= recent[-1].at


async def test_tool_reports_rejected_next_to_errors(tmp_path: Path) -> None:
    log = RequestLog()
    log.record("sensor", "reject", 503, 0.1)
    monitor = MetricsMonitor(HostProbe(tmp_path), GpuProbe(), log)
    await monitor.refresh()
    [sensor] = metrics_monitor_tool(monitor)(section="requests")["requests"]["services"]
    assert (sensor["errors"], sensor["rejected"]) == (0, 1)


def test_no_gpu_is_a_normal_answer_with_a_reason() -> None:
    probe = GpuProbe()
    if probe.available:  # on a GPU machine the probe must list devices instead
        assert probe.sample()
    else:
        assert probe.sample() == ()
        assert probe.reason


async def test_snapshot_holds_host_figures_and_the_tool_reports_sections(tmp_path: Path) -> None:
    log = RequestLog()
    log.record("inference", "cache", 200, 0.2)
    monitor = MetricsMonitor(HostProbe(tmp_path), GpuProbe(), log)
    snapshot = await monitor.refresh()
    assert snapshot.host is not None
    assert 0 <= snapshot.host.memory_percent <= 100
    assert snapshot.host.memory_total_bytes > 0
    assert snapshot.sample_ms > 0
    tool = metrics_monitor_tool(monitor)
    gpu = tool(section="gpu")
    assert set(gpu) == {"age_s", "gpu"}
    assert gpu["gpu"]["available"] is snapshot.gpu_available
    requests = tool(section="requests")["requests"]["services"]
    assert requests[0]["service"] == "inference"
    assert set(tool()) == {"age_s", "host", "gpu", "instances", "requests"}


def test_host_probe_reports_network_rates_after_two_samples(tmp_path: Path) -> None:
    probe = HostProbe(tmp_path)
    probe.sample()
    second = probe.sample()
    assert second.net_rx_bytes_per_s >= 0 and second.net_tx_bytes_per_s >= 0
    assert second.cpu_count >= 1
    assert 0 <= second.cpu_percent <= 100
