"""What one simulated run measured, and the figures the report shows."""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import Any, Literal

from config.settings import OverloadState
from tools.metrics_monitor import nearest_rank

Outcome = Literal["local", "peer", "cloud", "reject"]

OVERLOAD_STATES: tuple[OverloadState, ...] = ("normal", "shedding", "cloud")


@dataclass(slots=True)
class Metrics:
    """Counts of every counted request by where it was served, and the latencies of the answered."""

    requests: int = 0
    local: int = 0
    peer: int = 0
    cloud: int = 0
    rejected: int = 0
    """Not answered: a 503 from plan(), a gate's refusal with nowhere else to go, a queue time-out."""
    late: int = 0
    """Answered after the request's budget."""
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    state_s: dict[OverloadState, float] = field(default_factory=lambda: dict.fromkeys(OVERLOAD_STATES, 0.0))
    """Site-seconds spent in each overload state (summed over sites, after the warm-up)."""
    transitions: int = 0
    """Overload state changes of all sites over the whole run (the flapping figure)."""

    def record(self, outcome: Outcome, latency_ms: float, budget_ms: float) -> None:
        self.requests += 1
        if outcome == "reject":
            self.rejected += 1
            return
        if outcome == "local":
            self.local += 1
        elif outcome == "peer":
            self.peer += 1
        else:
            self.cloud += 1
        self.latencies_ms.append(latency_ms)
        if latency_ms > budget_ms:
            self.late += 1

    def _share(self, count: int) -> float:
        return count / self.requests if self.requests else 0.0

    @property
    def violation_rate(self) -> float:
        """SLA violations (answered past budget, or not answered) over all counted requests."""
        return self._share(self.late + self.rejected)

    @property
    def cloud_fraction(self) -> float:
        return self._share(self.cloud)

    @property
    def peer_fraction(self) -> float:
        return self._share(self.peer)

    def state_share(self, state: OverloadState) -> float:
        """The share of site-time (after the warm-up) spent in `state`."""
        total = sum(self.state_s.values())
        return self.state_s[state] / total if total else 0.0

    def percentile_ms(self, pct: float) -> float:
        """Nearest-rank percentile of the answered requests' latency (NaN with none)."""
        values = sorted(self.latencies_ms)
        return nearest_rank(values, pct / 100) if values else math.nan

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "sla_violation_rate": round(self.violation_rate, 6),
            "p50_ms": round(self.percentile_ms(50), 3),
            "p99_ms": round(self.percentile_ms(99), 3),
            "cloud_fraction": round(self.cloud_fraction, 6),
            "peer_fraction": round(self.peer_fraction, 6),
            "rejected": self.rejected,
            "late": self.late,
            "overload_site_time": {state: round(self.state_share(state), 6) for state in OVERLOAD_STATES},
            "overload_transitions": self.transitions,
        }
