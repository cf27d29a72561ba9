"""The readings alert rules are evaluated on, from one metrics snapshot and the site's live state.

`site_readings` is pure: the site (`api.site.Site.alert_readings`) gathers what only it knows (in
flight per service, budgets, which peers are stale, which dependencies are down) and this turns it,
with the snapshot, into `Reading`s with the subjects `config.settings.AlertMetric` describes.
"""

from __future__ import annotations

from collections.abc import Mapping

from monitoring.alerts import Reading
from tools.metrics_monitor import MetricsSnapshot


def site_readings(
    snapshot: MetricsSnapshot,
    inflight: Mapping[str, int],
    budgets_ms: Mapping[str, float],
    stale_peers: Mapping[str, bool],
    dependencies_down: Mapping[str, bool],
) -> list[Reading]:
    """Every reading of one sample.

    A service with no requests in the window reads 0 for its p99 ratio and error rate (nothing was
    slow, nothing failed), so an alert on it resolves once its traffic stops.
    """
    found: list[Reading] = []
    host = snapshot.host
    if host is not None:
        found.append(Reading("cpu_percent", "host", host.cpu_percent))
        found.append(Reading("memory_percent", "host", host.memory_percent))
    for gpu in snapshot.gpus:
        subject = f"gpu{gpu.index}"
        found.append(Reading("gpu_utilization", subject, gpu.utilization_percent))
        if gpu.memory_total_bytes > 0:
            found.append(
                Reading("gpu_memory_percent", subject, 100.0 * gpu.memory_used_bytes / gpu.memory_total_bytes)
            )
    stats = {s.service: s for s in snapshot.requests}
    for service, budget_ms in budgets_ms.items():
        found.append(Reading("inflight", service, float(inflight.get(service, 0))))
        window = stats.get(service)
        if window is None or window.requests == 0:
            found.append(Reading("p99_budget_ratio", service, 0.0))
            found.append(Reading("error_rate", service, 0.0))
            continue
        found.append(
            Reading("p99_budget_ratio", service, window.p99_ms / budget_ms if budget_ms > 0 else 0.0)
        )
        found.append(Reading("error_rate", service, window.errors / window.requests))
    for peer, stale in stale_peers.items():
        found.append(Reading("peer_unreachable", peer, 1.0 if stale else 0.0))
    for dependency, down in dependencies_down.items():
        found.append(Reading("dependency_down", dependency, 1.0 if down else 0.0))
    return found
