"""A saturated 3-site swarm (three `mec serve` processes and a stand-in cloud endpoint, all real):
the hot site's alert fires once, it sheds to its peers, and when they are hot too its excess goes
to the cloud, with cloud mode committed through consensus; when the load stops every site comes
back to normal without flapping."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.cloud_endpoint import CloudEndpoint
from tests.support.swarm import CLIENT, Swarm, eventually, running_swarms

pytestmark = pytest.mark.timeout(300)

SITES = ("site-1", "site-2", "site-3")
WORDS = "route the charging station weather music call office table river morning".split()
RULE = {"name": "inference_busy", "metric": "inflight", "high": 2, "low": 1, "for_s": 0.5, "clear_s": 1}


@pytest.fixture
def swarm_factory(tmp_path: Path) -> Iterator[Callable[..., Swarm]]:
    with running_swarms(tmp_path) as start:
        yield start


def _env(cloud_url: str) -> dict[str, str]:
    return {
        "MEC_SERVICES__SENSOR__REPLICAS": "0",
        "MEC_SERVICES__GAME-STATE__REPLICAS": "0",
        "MEC_SERVICES__INFERENCE__CLOUD_URL": cloud_url,
        "MEC_ALERT_RULES": json.dumps([{**RULE, "subject": "inference"}]),
        "MEC_OVERLOAD_ALERT_METRICS": '["inflight"]',
        "MEC_SAMPLE_INTERVAL_S": "0.1",
        "MEC_OVERLOAD_CLOUD_AFTER_S": "1",
        "MEC_OVERLOAD_CALM_S": "3",
        "MEC_OVERLOAD_MIN_DWELL_S": "1",
    }


def _body(n: int) -> dict[str, object]:
    """An inference request no cache has seen, long enough (about 15 ms of CPU) to load its instance."""
    text = f"q{n} " + " ".join(WORDS[(n + i) % len(WORDS)] + str(i) for i in range(400))
    return {
        "service": "inference",
        "payload": {"text": text},
        "client": {"kind": "mobile", "id": "load"},
        "latency_budget_ms": 2000,
    }


def _overload(swarm: Swarm, site_id: str) -> dict[str, object]:
    report: dict[str, object] = swarm.get(site_id, "/v1/metrics/snapshot").json()["overload"]
    return report


def test_a_saturated_swarm_sheds_to_peers_then_to_the_cloud_and_comes_back_without_flapping(
    swarm_factory: Callable[..., Swarm], cloud_endpoint: CloudEndpoint
) -> None:
    cloud_endpoint.control(latency_ms=5)
    swarm = swarm_factory(env=_env(cloud_endpoint.url()))
    swarm.leader()
    eventually(
        lambda: all(all(s["healthy"] for s in swarm.view(sid)["sites"]) for sid in SITES),
        30,
        "every site hears its peers",
    )

    # Most of the load at site-1, some at the others: site-1 sheds to its peers until they are
    # hot as well, then to the cloud.
    stop = threading.Event()
    counter = itertools.count()
    answers: list[tuple[int, str, str]] = []
    seen_fallback: set[str] = set()

    def client(site_id: str) -> None:
        with httpx.Client(base_url=swarm.url(site_id), headers=CLIENT, timeout=10) as http:
            while not stop.is_set():
                try:
                    reply = http.post("/v1/requests", json=_body(next(counter)))
                    route = reply.json()["route"]
                    answers.append((reply.status_code, route["tier"], route["site"]))
                except httpx.HTTPError as exc:
                    answers.append((0, type(exc).__name__, site_id))

    targets = ["site-1"] * 12 + ["site-2"] * 3 + ["site-3"] * 3
    with ThreadPoolExecutor(len(targets)) as pool:
        for site_id in targets:
            pool.submit(client, site_id)
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                seen_fallback.update(swarm.view("site-2")["cloud_fallback"])
                tiers = Counter(tier for status, tier, _ in answers if status == 200)
                if "site-1" in seen_fallback and tiers["cloud"] >= 20 and tiers["peer"] >= 5:
                    break
                time.sleep(0.2)
        finally:
            stop.set()

    statuses = Counter(status for status, _, _ in answers)
    tiers = Counter(tier for status, tier, _ in answers if status == 200)
    assert "site-1" in seen_fallback, (statuses, tiers)  # committed, as site-2 sees it
    assert tiers["peer"] >= 5 and tiers["cloud"] >= 20, (statuses, tiers)
    assert statuses[200] >= 0.95 * len(answers), statuses
    assert cloud_endpoint.stats()["requests"] >= tiers["cloud"]

    # The load is gone: every site back to normal, no site left in cloud mode on any view.
    eventually(lambda: all(_overload(swarm, sid)["state"] == "normal" for sid in SITES), 90, "all normal")
    eventually(lambda: all(swarm.view(sid)["cloud_fallback"] == [] for sid in SITES), 30, "no cloud mode")
    level = {"normal": 0, "shedding": 1, "cloud": 2}
    for site_id in SITES:
        report = _overload(swarm, site_id)
        path = ["normal"] + [change["to"] for change in report["history"]]  # type: ignore[union-attr]
        # No flapping: up one step at a time, then down, never up again (so at most 4 changes).
        levels = [level[state] for state in path]
        peak = levels.index(max(levels))
        rising, falling = levels[: peak + 1], levels[peak:]
        assert rising == sorted(rising) and falling == sorted(falling, reverse=True), (site_id, path)
        assert path[-1] == "normal" and len(path) <= 5, (site_id, path)
        alerts = swarm.get(site_id, "/v1/alerts").json()
        ids = {a["id"] for a in alerts["active"] + alerts["resolved"] if a["rule"] == "inference_busy"}
        assert len(ids) <= 1, (site_id, alerts)  # one breach, one alert (repeats fold into it)
    site_1 = _overload(swarm, "site-1")["history"]
    assert [c["to"] for c in site_1][:2] == ["shedding", "cloud"]  # type: ignore[index]
