"""`mec sim` as a user runs it: a subprocess that prints the table and writes JSON and a PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_mec_sim_on_the_heavy_scenario_prints_the_table_and_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "api.cli",
            "sim",
            "--scenario",
            "heavy",
            "--sites",
            "3",
            "--duration",
            "5",
            "--out",
            str(out),
            "--no-progress",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for policy in ("default", "p2c", "least-loaded", "round-robin"):
        assert f"| {policy} |" in done.stdout
    assert "SLA violations" in done.stdout
    png = out / "sim-heavy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "sim-heavy.json").read_text())
    assert report["sites"] == 3
    assert report["policies"]["default"]["requests"] > 0


def test_mec_sim_refuses_an_unknown_policy_with_status_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "sim", "--policies", "fastest", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown policy 'fastest'" in done.stderr
