"""`mec chat` as an operator uses it: a terminal client against a real `mec serve`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import OPERATOR_KEY

ROOT = Path(__file__).resolve().parents[2]


def test_mec_chat_runs_status_scale_and_cache_operations_on_real_workloads(site_factory) -> None:
    site = site_factory({"MEC_SERVICES__INFERENCE__REPLICAS": "0"})
    lines = "\n".join(
        [
            "what is running?",
            "scale sensor to 2 replicas",
            'set key greeting to "hello" in the sensor cache',
            "flush the sensor cache",
            "yes",
            "exit",
        ]
    )
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "chat", "--url", site.url, "--key", OPERATOR_KEY],
        input=lines.encode(),
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert "sensor-1 (running)" in out
    assert "sensor now runs 2 replicas" in out
    assert "Stored greeting in the sensor cache" in out
    assert "(type 'yes' to confirm)" in out
    assert "Flushed the sensor cache: 1 entry removed." in out
    snapshot = httpx.get(f"{site.url}/v1/metrics/snapshot", headers=site.headers(OPERATOR_KEY)).json()
    assert len([i for i in snapshot["runtime"]["instances"] if i["service"] == "sensor"]) == 2


def test_mec_chat_one_shot_message_with_a_wrong_key_reports_the_error(site_factory) -> None:
    site = site_factory({"MEC_SERVICES__INFERENCE__REPLICAS": "0"})
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "api.cli",
            "chat",
            "--url",
            site.url,
            "--key",
            "wrong-key-000000000",
            "status",
        ],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    assert "error 401: unknown API key" in done.stdout.decode()
    assert done.returncode == 1
