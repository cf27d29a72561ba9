"""The simulator's output: a table per policy, a JSON file and a PNG bar chart."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sim.metrics import OVERLOAD_STATES, Metrics


def table(results: Mapping[str, Metrics]) -> str:
    """A Markdown table, one row per policy; "site-time" is the share of site-seconds (after the
    warm-up) each overload state held, "state changes" the changes of all sites over the run."""
    lines = [
        "| policy | requests | SLA violations | p50 ms | p99 ms | cloud offload | peer forwards "
        "| site-time normal / shedding / cloud | state changes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in results.items():
        states = " / ".join(f"{m.state_share(state):.0%}" for state in OVERLOAD_STATES)
        lines.append(
            f"| {name} | {m.requests:,} | {m.violation_rate:.2%} | {_ms(m.percentile_ms(50))} | "
            f"{_ms(m.percentile_ms(99))} | {m.cloud_fraction:.2%} | {m.peer_fraction:.2%} "
            f"| {states} | {m.transitions} |"
        )
    return "\n".join(lines)


def _ms(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.1f}"


def write_json(path: Path, header: Mapping[str, Any], results: Mapping[str, Metrics]) -> None:
    data = {**header, "policies": {name: m.summary() for name, m in results.items()}}
    path.write_text(json.dumps(data, indent=2) + "\n")


def plot(path: Path, title: str, results: Mapping[str, Metrics]) -> None:
    """Four panels per policy: SLA-violation rate, p50/p99 latency, cloud and peer shares, and
    the site-time in each overload state."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: Sequence[str] = list(results)
    ms = [results[n] for n in names]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    axes[0].bar(names, [100 * m.violation_rate for m in ms], color="#c0392b")
    axes[0].set_title("SLA violations (%)")
    x = range(len(names))
    axes[1].bar([i - 0.2 for i in x], [m.percentile_ms(50) for m in ms], width=0.4, label="p50")
    axes[1].bar([i + 0.2 for i in x], [m.percentile_ms(99) for m in ms], width=0.4, label="p99")
    axes[1].set_xticks(list(x), names)
    axes[1].set_title("latency of answers (ms)")
    axes[1].set_ylim(0, 1.25 * max([m.percentile_ms(99) for m in ms] + [1.0]))
    axes[1].legend(loc="upper center", ncol=2, fontsize="small")
    axes[2].bar([i - 0.2 for i in x], [100 * m.cloud_fraction for m in ms], width=0.4, label="cloud")
    axes[2].bar([i + 0.2 for i in x], [100 * m.peer_fraction for m in ms], width=0.4, label="peer")
    axes[2].set_xticks(list(x), names)
    axes[2].set_title("served by the cloud / a peer (%)")
    axes[2].set_ylim(0, 1.25 * max([100 * max(m.cloud_fraction, m.peer_fraction) for m in ms] + [1.0]))
    axes[2].legend(loc="upper center", ncol=2, fontsize="small")
    bottom = [0.0] * len(names)
    colours = {"normal": "#27ae60", "shedding": "#f39c12", "cloud": "#8e44ad"}
    for state in OVERLOAD_STATES:
        shares = [100 * m.state_share(state) for m in ms]
        axes[3].bar(names, shares, bottom=bottom, label=state, color=colours[state])
        bottom = [b + v for b, v in zip(bottom, shares, strict=True)]
    axes[3].set_title("site-time by overload state (%)")
    axes[3].set_ylim(0, 118)
    axes[3].legend(loc="upper center", ncol=3, fontsize="small")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
