"""The report of one `mec eval` run: JSON (the record), Markdown (the table), PNG (the chart); and
the comparison of two JSON reports."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CHAT_COLUMNS: Sequence[tuple[str, str]] = (
    ("success_rate", "success"),
    ("pass^k", "pass^k"),
    ("tool_selection_accuracy", "tool sel."),
    ("argument_accuracy", "args"),
    ("trajectory_exact_match", "exact"),
    ("trajectory_in_order_match", "in-order"),
    ("irrelevance_accuracy", "irrelevance"),
    ("end_state_success", "end state"),
    ("latency_ms.p50", "p50 ms"),
    ("latency_ms.p95", "p95 ms"),
    ("tokens.mean_total_per_turn", "tokens/turn"),
)
ROUTING_COLUMNS: Sequence[tuple[str, str]] = (
    ("success_rate", "success"),
    ("tier_accuracy", "tier"),
    ("target_class_accuracy", "target class"),
    ("target_accuracy", "target"),
    ("status_accuracy", "status"),
    ("plan_us.p50", "plan p50 µs"),
)


def lookup(metrics: Mapping[str, Any], path: str, k: int = 1) -> Any:
    """A metric by dotted path; `pass^k` is the report's own k."""
    if path == "pass^k":
        return (metrics.get("pass^k") or {}).get(str(k))
    value: Any = metrics
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _cell(value: Any, path: str) -> str:
    if value is None:
        return "–"
    if path.startswith(("latency", "tokens", "plan_us")):
        return f"{value:.1f}" if isinstance(value, float) else str(value)
    return f"{value:.0%}" if isinstance(value, float) else str(value)


def markdown_table(report: Mapping[str, Any]) -> str:
    """The summary and each category as one Markdown table."""
    columns = CHAT_COLUMNS if report["suite"] == "chat" else ROUTING_COLUMNS
    k = int(report.get("k", 1))
    names = [label.replace("pass^k", f"pass^{k}") for _, label in columns]
    lines = [
        "| scope | cases | " + " | ".join(names) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in columns) + " |",
    ]
    rows = [("**all**", report["summary"]), *report["categories"].items()]
    for scope, metrics in rows:
        cells = [_cell(lookup(metrics, path, k), path) for path, _ in columns]
        lines.append(f"| {scope} | {metrics['cases']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(report: Mapping[str, Any]) -> str:
    head = (
        f"### `mec eval --suite {report['suite']} --model {report['model']}"
        + (f" -k {report['k']}" if report.get("k", 1) != 1 else "")
        + "`\n\n"
        f"Suite version {report['suite_version']}, model `{report.get('model_id') or report['model']}`, "
        f"{report['summary']['trials']} trials of {report['summary']['cases']} cases on "
        f"{report['site']}, {report['finished_at']}."
    )
    skipped = report.get("skipped") or {}
    note = f"\n\nSkipped {len(skipped)} case(s): " + ", ".join(f"`{c}` ({why})" for c, why in skipped.items())
    failed = [case for case in report.get("cases", []) if case["successes"] < case["trials"]]
    failures = ""
    if failed:
        failures = "\n\nCases not passed every time:\n\n" + "\n".join(
            f"- `{case['id']}` ({case['category']}): {case['successes']}/{case['trials']}"
            + (f" — made {', '.join(case['calls']) or 'no call'}" if "calls" in case else "")
            + (f" — got {case['got']}" if "got" in case else "")
            for case in failed
        )
    return head + "\n\n" + markdown_table(report) + (note if skipped else "") + failures + "\n"


def chart(report: Mapping[str, Any], path: Path) -> None:
    """A PNG: the suite's metrics overall, and the success rate per category."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency
        raise RuntimeError("the chart needs matplotlib (pip install matplotlib)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = CHAT_COLUMNS if report["suite"] == "chat" else ROUTING_COLUMNS
    k = int(report.get("k", 1))
    rates = [
        (label.replace("pass^k", f"pass^{k}"), lookup(report["summary"], path, k))
        for path, label in columns
        if not path.startswith(("latency", "tokens", "plan_us"))
    ]
    rates = [(label, value) for label, value in rates if value is not None]
    categories = list(report["categories"].items())
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    left.barh([label for label, _ in rates][::-1], [value * 100 for _, value in rates][::-1], color="#3b6ea5")
    left.set_xlim(0, 100)
    left.set_xlabel("%")
    left.set_title("all cases")
    for index, (_, value) in enumerate(rates[::-1]):
        left.text(min(value * 100 + 1, 92), index, f"{value:.0%}", va="center", fontsize=8)
    names = [name for name, _ in categories]
    first = [(metrics.get("success_rate") or 0) * 100 for _, metrics in categories]
    right.barh(names[::-1], first[::-1], color="#6aa56a", label="success (pass^1)")
    if report["suite"] == "chat" and k > 1:
        last = [(lookup(metrics, "pass^k", k) or 0) * 100 for _, metrics in categories]
        right.barh(names[::-1], last[::-1], color="#a5553b", height=0.4, label=f"pass^{k}")
        right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8)
    right.set_xlim(0, 100)
    right.set_xlabel("%")
    right.set_title("success by category")
    figure.suptitle(f"mec eval --suite {report['suite']} --model {report.get('model_id') or report['model']}")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(report: Mapping[str, Any], out_dir: Path, stem: str, with_chart: bool = True) -> list[Path]:
    """`stem`.json, .md and (with `with_chart`) .png in `out_dir`; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    paths[0].write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    paths[1].write_text(markdown(report), encoding="utf-8")
    if with_chart:
        paths.append(out_dir / f"{stem}.png")
        chart(report, paths[-1])
    return paths


def _numbers(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_numbers(value, f"{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, str, float | None, float | None]]:
    """(scope, metric, A, B) for every number in either report's summary and categories."""
    rows: list[tuple[str, str, float | None, float | None]] = []
    scopes = [("all", a["summary"], b["summary"])]
    for category in dict.fromkeys([*a["categories"], *b["categories"]]):
        scopes.append((category, a["categories"].get(category, {}), b["categories"].get(category, {})))
    for scope, left, right in scopes:
        left_numbers, right_numbers = _numbers(left), _numbers(right)
        for metric in dict.fromkeys([*left_numbers, *right_numbers]):
            rows.append((scope, metric, left_numbers.get(metric), right_numbers.get(metric)))
    return rows


def compare_text(a: Mapping[str, Any], b: Mapping[str, Any], a_name: str, b_name: str) -> str:
    """The comparison as a plain table: metric, A, B, B − A."""
    lines = [
        f"A = {a_name} ({a['suite']}, {a.get('model_id') or a['model']})",
        f"B = {b_name} ({b['suite']}, {b.get('model_id') or b['model']})",
        "",
        f"{'scope':<14} {'metric':<32} {'A':>10} {'B':>10} {'B-A':>10}",
    ]

    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    for scope, metric, left, right in compare(a, b):
        delta = None if left is None or right is None else right - left
        sign = "" if delta is None or delta <= 0 else "+"
        lines.append(f"{scope:<14} {metric:<32} {fmt(left):>10} {fmt(right):>10} {sign + fmt(delta):>10}")
    return "\n".join(lines)
