"""A real 3-site swarm: three `mec serve` processes on loopback, each with its own ports, data
dir and embedded Raft, that elect a coordinator, agree on placements, send each other what they
cannot serve, and survive losing any one of them. Every test that kills or stops a site has its
own swarm."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.launcher import SiteProcess
from tests.conftest import CLIENT_KEY, OPERATOR_KEY, ROOT, TEST_SITE_ENV
from tools.runtimes.base import free_port

PEER_SECRET = "test-peer-secret-0123456789"
OPERATOR = {"Authorization": f"Bearer {OPERATOR_KEY}"}
CLIENT = {"Authorization": f"Bearer {CLIENT_KEY}"}

pytestmark = pytest.mark.timeout(300)


def eventually(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """The first truthy value of `predicate()`, polled every 0.2 s (a site that is restarting or
    stopped counts as "not yet"); AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            value, last = None, exc
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s:g} s: {what} (last error: {last!r})")


@dataclass
class Swarm:
    sites: dict[str, SiteProcess]

    def url(self, site_id: str) -> str:
        return self.sites[site_id].url

    def get(self, site_id: str, path: str, headers: dict[str, str] = OPERATOR) -> httpx.Response:
        return httpx.get(f"{self.url(site_id)}{path}", headers=headers, timeout=10)

    def post(self, site_id: str, path: str, body: Any, headers: dict[str, str] = OPERATOR) -> httpx.Response:
        return httpx.post(f"{self.url(site_id)}{path}", json=body, headers=headers, timeout=20)

    def view(self, site_id: str) -> dict[str, Any]:
        response = self.get(site_id, "/v1/sites")
        assert response.status_code == 200, response.text
        return response.json()

    def alive(self) -> list[str]:
        return [sid for sid, site in self.sites.items() if site.proc is not None and site.proc.running]

    def leader(self, among: list[str] | None = None) -> str:
        """The leader every live site (or `among`) agrees on, once they do."""
        ids = among or self.alive()

        def agreed() -> str | None:
            leaders = {self.view(sid)["leader"] for sid in ids}
            leader = leaders.pop() if len(leaders) == 1 else None
            return leader if leader in ids else None

        leader: str = eventually(agreed, 30, f"one leader agreed on by {ids}")
        return leader

    def signal(self, site_id: str, sig: signal.Signals) -> None:
        proc = self.sites[site_id].proc
        assert proc is not None and proc.pid is not None
        os.kill(proc.pid, sig)


def _swarm_sites(base: Path, count: int = 3) -> dict[str, SiteProcess]:
    ids = [f"site-{i}" for i in range(1, count + 1)]
    api = {sid: free_port() for sid in ids}
    raft = {sid: free_port() for sid in ids}
    sites = {}
    for sid in ids:
        peers = ",".join(
            f"{other}=http://127.0.0.1:{api[other]}@127.0.0.1:{raft[other]}" for other in ids if other != sid
        )
        sites[sid] = SiteProcess(
            base / sid,
            client_key=CLIENT_KEY,
            operator_key=OPERATOR_KEY,
            env={**TEST_SITE_ENV, "MEC_PEER_SECRET": PEER_SECRET},
            args=["--site-id", sid, "--peers", peers, "--raft-port", str(raft[sid])],
            port=api[sid],
            cwd=ROOT,
            name=sid,
        )
    return sites


@pytest.fixture
def swarm_factory(tmp_path: Path) -> Iterator[Callable[[], Swarm]]:
    started: list[SiteProcess] = []

    def start() -> Swarm:
        sites = _swarm_sites(tmp_path / f"swarm{len(started)}")
        for site in sites.values():
            started.append(site)
            site.launch()
        for site in sites.values():
            site.wait_ready(90)
        return Swarm(sites)

    try:
        yield start
    finally:
        for site in started:
            if site.proc is not None and site.proc.pid is not None and site.proc.running:
                os.kill(site.proc.pid, signal.SIGCONT)
            site.stop()


def _members(swarm: Swarm, site_id: str) -> set[str]:
    return {s["site_id"] for s in swarm.view(site_id)["sites"] if s.get("member")}


def _placements(swarm: Swarm, site_id: str) -> dict[str, dict[str, int]]:
    return swarm.view(site_id)["placements"]


def _instances(swarm: Swarm, site_id: str, service: str) -> int:
    services = swarm.get(site_id, "/v1/services", CLIENT).json()["services"]
    return next(s["instances_ready"] for s in services if s["name"] == service)


def _request(service: str, payload: dict[str, Any], kind: str) -> dict[str, Any]:
    return {
        "service": service,
        "payload": payload,
        "client": {"kind": kind, "id": "t"},
        "latency_budget_ms": 2000,
    }


def test_three_sites_elect_one_leader_and_apply_a_committed_placement_everywhere(
    swarm_factory: Callable[[], Swarm],
) -> None:
    swarm = swarm_factory()
    leader = swarm.leader()
    everyone = set(swarm.sites)
    eventually(lambda: all(_members(swarm, sid) == everyone for sid in swarm.sites), 30, "all joined")
    follower = next(sid for sid in swarm.sites if sid != leader)
    answer = swarm.post(follower, "/v1/services/sensor/scale", {"replicas": 2})
    assert answer.status_code == 200, answer.text
    assert answer.json()["decided_by"] == leader
    committed = answer.json()["placement"]
    assert sum(committed.values()) == 2
    eventually(
        lambda: all(_placements(swarm, sid).get("sensor") == committed for sid in swarm.sites),
        30,
        "the placement on every site",
    )
    for sid in swarm.sites:  # each site reconciles its own instances to its share
        eventually(
            lambda sid=sid: _instances(swarm, sid, "sensor") == committed.get(sid, 0),
            60,
            f"{sid} runs its share of sensor",
        )


def test_a_request_no_local_instance_can_serve_goes_to_a_peer_once_with_the_same_answer(
    swarm_factory: Callable[[], Swarm],
) -> None:
    swarm = swarm_factory()
    swarm.leader()
    moved = swarm.post("site-1", "/v1/services/inference/move", {"site": "site-2"})
    assert moved.status_code == 200, moved.text
    eventually(lambda: _instances(swarm, "site-1", "inference") == 0, 60, "site-1 stopped inference")
    eventually(lambda: _instances(swarm, "site-2", "inference") >= 1, 60, "site-2 runs inference")
    body = _request("inference", {"text": "navigate to the nearest charging station"}, "mobile")

    def forwarded() -> httpx.Response | None:
        response = swarm.post("site-1", "/v1/requests", body, CLIENT)
        return response if response.status_code == 200 else None

    via_peer = eventually(forwarded, 30, "site-1 forwards inference to its peer").json()
    direct = swarm.post("site-2", "/v1/requests", body, CLIENT).json()
    assert via_peer["route"]["tier"] == "peer" and via_peer["route"]["site"] == "site-2"
    assert direct["route"]["tier"] in ("local", "cache") and direct["route"]["site"] == "site-2"
    assert via_peer["result"] == direct["result"]
    # site-3 has inference too? Not after the move: a forwarded request is never sent on again.
    assert _instances(swarm, "site-3", "inference") == 0
    refused = swarm.post("site-3", "/v1/requests", {**body, "payload": {"text": "a new question"}}, CLIENT)
    assert refused.json()["route"]["tier"] in ("peer", "reject")


def test_peer_endpoints_refuse_unsigned_calls_and_every_bearer_key(
    swarm_factory: Callable[[], Swarm],
) -> None:
    swarm = swarm_factory()
    body = _request("sensor", {"sensor_id": "s", "value": 1}, "iot")
    for headers in ({}, CLIENT, OPERATOR):
        refused = swarm.post("site-1", "/v1/peer/requests", body, headers)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.json()["error"]["code"] in ("invalid_peer_signature", "bearer_on_peer_route")
    assert swarm.post("site-1", "/v1/peer/load", {}, {}).status_code == 401


def test_killing_the_leader_elects_another_and_a_restarted_site_catches_up(
    swarm_factory: Callable[[], Swarm],
) -> None:
    swarm = swarm_factory()
    leader = swarm.leader()
    first = swarm.post(leader, "/v1/services/sensor/scale", {"replicas": 2})
    assert first.status_code == 200, first.text
    swarm.signal(leader, signal.SIGKILL)
    survivors = [sid for sid in swarm.sites if sid != leader]
    new_leader = swarm.leader(survivors)
    assert new_leader != leader
    for sid in survivors:  # nothing acknowledged is lost
        assert _placements(swarm, sid).get("sensor") == first.json()["placement"]
    second = swarm.post(survivors[0], "/v1/services/game-state/scale", {"replicas": 2})
    assert second.status_code == 200, second.text
    swarm.sites[leader].launch()
    swarm.sites[leader].wait_ready(90)
    expected = {"sensor": first.json()["placement"], "game-state": second.json()["placement"]}
    eventually(
        lambda: {k: v for k, v in _placements(swarm, leader).items() if k in expected} == expected,
        60,
        "the restarted site caught up",
    )


def test_a_stopped_minority_cannot_commit_and_converges_when_it_comes_back(
    swarm_factory: Callable[[], Swarm],
) -> None:
    swarm = swarm_factory()
    leader = swarm.leader()
    swarm.signal(leader, signal.SIGSTOP)  # the old leader is a partition of one
    majority = [sid for sid in swarm.sites if sid != leader]
    new_leader = swarm.leader(majority)
    assert new_leader != leader
    committed = swarm.post(majority[0], "/v1/services/sensor/scale", {"replicas": 2})
    assert committed.status_code == 200, committed.text
    swarm.signal(leader, signal.SIGCONT)
    eventually(
        lambda: _placements(swarm, leader).get("sensor") == committed.json()["placement"],
        60,
        "the healed site converged",
    )
    assert swarm.leader() == new_leader or swarm.leader() in majority
