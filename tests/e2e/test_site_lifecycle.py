"""Starting and restarting `mec serve` as an operator does: honest start-up, keys that survive a
restart, and `mec chat` finding the site by itself."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import SiteProcess

ROOT = Path(__file__).resolve().parents[2]
ONLY_SENSOR = {"MEC_SERVICES__INFERENCE__REPLICAS": "0", "MEC_SERVICES__GAME-STATE__REPLICAS": "0"}
NO_KEYS = {"MEC_CLIENT_KEYS": "", "MEC_OPERATOR_KEYS": ""}


def _serve(
    data_dir: Path, env: dict[str, str], *args: str, timeout_s: float = 90
) -> subprocess.CompletedProcess[str]:
    """`mec serve` that is expected to give up at start-up (a started site would run forever)."""
    return subprocess.run(
        [sys.executable, "-m", "api.cli", "serve", "--port", "0", *args],
        env={**os.environ, "MEC_DATA_DIR": str(data_dir), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


BROKEN = {
    **ONLY_SENSOR,
    "MEC_SERVICES__BROKEN__MODULE": "workloads.no_such_workload",
    "MEC_SERVICES__BROKEN__IMAGE": "x",
}


def test_a_service_that_cannot_start_stops_mec_serve_with_the_reason(tmp_path: Path) -> None:
    done = _serve(tmp_path, {**NO_KEYS, **BROKEN})
    assert done.returncode == 1
    assert "ready on" not in done.stdout
    assert "service broken has no ready instance" in done.stderr
    assert "no_such_workload" in done.stderr


def test_allow_degraded_starts_and_says_degraded(tmp_path: Path) -> None:
    site = SiteProcess(tmp_path, BROKEN, args=["--allow-degraded"])
    site.start(ready_prefix="degraded on ")
    try:
        ready = httpx.get(f"{site.url}/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["service:broken"]["status"] == "not_ready"
        assert any(line.startswith("degraded: broken:") for line in site.output)
    finally:
        site.stop()


def test_docker_runtime_without_an_engine_is_a_clear_error_at_once(tmp_path: Path) -> None:
    done = _serve(
        tmp_path,
        {**ONLY_SENSOR, "MEC_RUNTIME": "docker", "MEC_DOCKER_URL": f"unix://{tmp_path}/no-docker.sock"},
        timeout_s=60,
    )
    assert done.returncode == 1
    assert "Docker engine" in done.stderr and "unreachable" in done.stderr


def test_generated_keys_are_kept_in_the_data_dir_and_reused_after_a_restart(tmp_path: Path) -> None:
    first = SiteProcess(tmp_path, {**NO_KEYS, **ONLY_SENSOR})
    first.start()
    try:
        keys = json.loads((tmp_path / "api-keys.json").read_text())
        assert f"client key:   {keys['client']}" in first.output
    finally:
        first.stop()
    (tmp_path / "api-keys.json").chmod(0o644)  # someone loosened it
    second = SiteProcess(tmp_path, {**NO_KEYS, **ONLY_SENSOR})
    second.start()
    try:
        assert f"client key:   {keys['client']}" in second.output
        assert stat.S_IMODE((tmp_path / "api-keys.json").stat().st_mode) == 0o600
        response = httpx.get(
            f"{second.url}/v1/services", headers={"Authorization": f"Bearer {keys['client']}"}
        )
        assert response.status_code == 200
    finally:
        second.stop()


def test_mec_chat_finds_the_site_the_last_serve_wrote_or_asks_for_a_url(tmp_path: Path) -> None:
    env = {**os.environ, "MEC_DATA_DIR": str(tmp_path), **NO_KEYS, **ONLY_SENSOR}
    chat = [sys.executable, "-m", "api.cli", "chat", "status"]
    missing = subprocess.run(chat, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "--url" in missing.stderr
    site = SiteProcess(tmp_path, {**NO_KEYS, **ONLY_SENSOR})
    site.start()
    try:
        found = subprocess.run(chat, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert found.returncode == 0, found.stdout + found.stderr
        assert "sensor-1 (running)" in found.stdout
    finally:
        site.stop()
    gone = subprocess.run(chat, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert gone.returncode == 2 and "--url" in gone.stderr
