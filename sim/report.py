"""The simulator's output: a table per policy, a JSON file and a PNG bar chart."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sim.metrics import Metrics


def table(results: Mapping[str, Metrics]) -> str:
    """A Markdown table, one row per policy."""
    lines = [
        "| policy | requests | SLA violations | p50 ms | p99 ms | cloud offload | peer forwards |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in results.items():
        lines.append(
            f"| {name} | {m.requests:,} | {m.violation_rate:.2%} | {_ms(m.percentile_ms(50))} | "
            f"{_ms(m.percentile_ms(99))} | {m.cloud_fraction:.2%} | {m.peer_fraction:.2%} |"
        )
    return "\n".join(lines)


def _ms(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.1f}"


def write_json(path: Path, header: Mapping[str, Any], results: Mapping[str, Metrics]) -> None:
    data = {**header, "policies": {name: m.summary() for name, m in results.items()}}
    path.write_text(json.dumps(data, indent=2) + "\n")


def plot(path: Path, title: str, results: Mapping[str, Metrics]) -> None:
    """Three panels: SLA-violation rate, p50/p99 latency, cloud and peer shares, per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: Sequence[str] = list(results)
    ms = [results[n] for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].bar(names, [100 * m.violation_rate for m in ms], color="#c0392b")
    axes[0].set_title("SLA violations (%)")
    x = range(len(names))
    axes[1].bar([i - 0.2 for i in x], [m.percentile_ms(50) for m in ms], width=0.4, label="p50")
    axes[1].bar([i + 0.2 for i in x], [m.percentile_ms(99) for m in ms], width=0.4, label="p99")
    axes[1].set_xticks(list(x), names)
    axes[1].set_title("latency of answers (ms)")
    axes[1].legend()
    axes[2].bar([i - 0.2 for i in x], [100 * m.cloud_fraction for m in ms], width=0.4, label="cloud")
    axes[2].bar([i + 0.2 for i in x], [100 * m.peer_fraction for m in ms], width=0.4, label="peer")
    axes[2].set_xticks(list(x), names)
    axes[2].set_title("served by the cloud / a peer (%)")
    axes[2].legend()
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
