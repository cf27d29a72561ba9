"""`mec eval` as a user runs it: a real subprocess, a real in-process site, the report on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import OPERATOR_KEY

ROOT = Path(__file__).resolve().parents[2]


def mec_eval(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.cli", "eval", *args], capture_output=True, text=True, timeout=150, cwd=cwd
    )


def test_chat_eval_with_the_rules_model_scores_cases_on_the_real_site_and_writes_the_report(
    tmp_path: Path,
) -> None:
    done = mec_eval(
        "--suite", "chat", "--model", "rules", "-k", "2",
        "--case", "scale-sensor-to-2", "--case", "stop-unconfirmed", "--case", "cache-set",
        "--category", "scale", "--category", "restart", "--category", "cache",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| **all** | 3 |" in done.stdout  # the table at the end
    report = json.loads((tmp_path / "chat-rules.json").read_text())
    assert (
        (tmp_path / "chat-rules.md").read_text().startswith("### `mec eval --suite chat --model rules -k 2`")
    )
    assert (tmp_path / "chat-rules.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["suite"] == "chat" and report["k"] == 2
    summary = report["summary"]
    assert summary["cases"] == 3 and summary["trials"] == 6
    assert set(summary["pass^k"]) == {"1", "2"}
    assert set(report["categories"]) == {"scale", "restart", "cache"}
    for metric in (
        "tool_selection_accuracy",
        "argument_accuracy",
        "trajectory_exact_match",
        "end_state_success",
    ):
        assert 0.0 <= summary[metric] <= 1.0
    cases = {case["id"]: case for case in report["cases"]}
    # The same service is checked at 2 running instances after the scale and at 1 after the refused
    # stop: both hold only if the check reads the site as each turn left it.
    assert cases["scale-sensor-to-2"]["end_state"] == ["ok: sensor runs 2 instance(s)"]
    assert cases["scale-sensor-to-2"]["calls"] == ["container_ops(scale)"]
    assert cases["stop-unconfirmed"]["end_state"] == ["ok: sensor runs 1 instance(s)"]
    assert cases["stop-unconfirmed"]["successes"] == 2
    assert cases["cache-set"]["end_state"] == ["ok: cache sensor/k1 present"]
    trials = [t for t in report["trials"] if t["case_id"] == "scale-sensor-to-2"]
    assert [t["trial"] for t in trials] == [1, 2] and all(t["end_state"] for t in trials)


def test_routing_eval_is_all_correct_and_compare_prints_the_deltas(tmp_path: Path) -> None:
    done = mec_eval("--suite", "routing", "--out", str(tmp_path), "--no-chart")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "routing-rules.json").read_text())
    assert report["summary"]["success_rate"] == 1.0
    assert not (tmp_path / "routing-rules.png").exists()
    baseline = ROOT / "evals" / "baselines" / "chat-rules.json"
    compared = mec_eval("--compare", str(baseline), str(baseline))
    assert compared.returncode == 0, compared.stderr
    assert "success_rate" in compared.stdout and "B-A" in compared.stdout


def test_chat_eval_against_a_live_site_checks_instances_over_rest_and_skips_setups(
    site_factory, tmp_path: Path
) -> None:
    site = site_factory({"MEC_SERVICES__INFERENCE__REPLICAS": "0"})
    done = mec_eval(
        "--suite", "chat", "--url", site.url, "--key", OPERATOR_KEY,
        "--case", "scale-sensor-to-2", "--case", "cache-get", "--case", "irrelevant-hello",
        "--out", str(tmp_path), "--no-chart",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "chat-rules.json").read_text())
    assert report["site"] == site.url
    assert report["skipped"] == {"cache-get": "needs a setup this site cannot be given"}
    cases = {case["id"]: case for case in report["cases"]}
    assert cases["scale-sensor-to-2"]["end_state"] == ["ok: sensor runs 2 instance(s)"]
    assert cases["scale-sensor-to-2"]["successes"] == 1
    assert cases["irrelevant-hello"]["successes"] == 1
