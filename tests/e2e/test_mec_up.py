"""`mec up --sites 3`: three site processes on consecutive loopback ports that form one swarm,
with keys generated once in the data dir, and all stopped by one SIGTERM."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import httpx
import pytest

from api.launcher import ChildProcess
from tests.conftest import ROOT
from tests.support.polling import until

pytestmark = pytest.mark.timeout(300)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_base(count: int) -> int:
    """A base port whose `count` API ports and their Raft ports (+1000) are all free."""
    for base in range(21000, 29000, 37):
        if all(_free(base + i) and _free(base + 1000 + i) for i in range(count)):
            return base
    raise RuntimeError("no free port range")


def _answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=1)
    except httpx.HTTPError:
        return False
    return True


def test_mec_up_starts_a_swarm_of_three_and_one_sigterm_stops_them_all(tmp_path: Path) -> None:
    base = _free_base(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEC_")}
    env["MEC_DATA_DIR"] = str(tmp_path)
    up = ChildProcess(
        [sys.executable, "-m", "api.cli", "up", "--sites", "3", "--base-port", str(base)],
        name="mec-up",
        env=env,
        cwd=ROOT,
    ).start()
    try:
        ready = [up.wait_line((f"site-{i} ready on ",), 120) for i in (1, 2, 3)]
        urls = [line.split("ready on ", 1)[1].strip() for line in ready]
        assert urls == [f"http://127.0.0.1:{base + i}" for i in range(3)]
        keys = json.loads((tmp_path / "swarm-keys.json").read_text())
        assert (tmp_path / "swarm-keys.json").stat().st_mode & 0o777 == 0o600
        operator = {"Authorization": f"Bearer {keys['operator']}"}

        def agreed() -> list[dict] | None:
            views = [httpx.get(f"{url}/v1/sites", headers=operator, timeout=5).json() for url in urls]
            return views if views[0]["leader"] and len({v["leader"] for v in views}) == 1 else None

        views = until(agreed, "one leader on every site", 60, 0.2, (httpx.HTTPError,))
        assert views[0]["leader"] in ("site-1", "site-2", "site-3")
        assert sorted(s["site_id"] for s in views[0]["sites"]) == ["site-1", "site-2", "site-3"]
        for i in (1, 2, 3):
            assert (tmp_path / f"site-{i}" / "site.log").exists()
        up.send_signal(15)
        up.wait(60)
        until(lambda: not any(_answers(url) for url in urls), "every site stopped", 30, 0.2)
    finally:
        up.stop(grace_s=30)
