"""A real 3-site swarm: three `mec serve` processes on loopback, each with its own ports, data
dir and embedded Raft, that elect a coordinator, agree on placements, send each other what they
cannot serve, and survive losing any one of them. Every test that kills or stops a site has its
own swarm."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.prometheus import sample_value
from tests.support.swarm import CLIENT, OPERATOR, Swarm, eventually, running_swarms

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def swarm_factory(tmp_path: Path) -> Iterator[Callable[..., Swarm]]:
    with running_swarms(tmp_path) as start:
        yield start


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
    swarm_factory: Callable[..., Swarm],
) -> None:
    swarm = swarm_factory()
    leader = swarm.leader()
    everyone = set(swarm.sites)
    eventually(lambda: all(_members(swarm, sid) == everyone for sid in swarm.sites), 30, "all joined")
    follower = next(sid for sid in swarm.sites if sid != leader)
    asked = swarm.post(follower, "/v1/chat", {"message": "which site is the leader?"})
    assert asked.status_code == 200, asked.text
    assert [call["name"] for call in asked.json()["tool_calls"]] == ["swarm_ops"]
    assert leader in asked.json()["reply"]
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
    for sid in swarm.sites:  # each site's /metrics names the same leader, and itself only if it is it
        text = swarm.get(sid, "/metrics").text
        assert sample_value(text, "mec_consensus_is_leader", site=sid) == (1 if sid == leader else 0)
        assert sample_value(text, "mec_consensus_leader", site=sid, site_id=leader) == 1
        others = [s for s in swarm.sites if s != leader]
        assert [sample_value(text, "mec_consensus_leader", site=sid, site_id=o) for o in others] == [0, 0]
        assert (sample_value(text, "mec_consensus_term", site=sid) or 0) >= 1
        applied = sample_value(text, "mec_consensus_applied_index", site=sid) or 0
        assert applied >= 1  # the joins and the placement were applied here
        assert (sample_value(text, "mec_consensus_commit_index", site=sid) or 0) >= applied


def test_a_request_no_local_instance_can_serve_goes_to_a_peer_once_with_the_same_answer(
    swarm_factory: Callable[..., Swarm],
) -> None:
    swarm = swarm_factory()
    swarm.leader()
    # One replica (a 2-core site has room for one next to the other services), then all on site-2.
    assert swarm.post("site-3", "/v1/services/inference/scale", {"replicas": 1}).status_code == 200
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
    swarm_factory: Callable[..., Swarm],
) -> None:
    swarm = swarm_factory()
    body = _request("sensor", {"sensor_id": "s", "value": 1}, "iot")
    for headers in ({}, CLIENT, OPERATOR):
        refused = swarm.post("site-1", "/v1/peer/requests", body, headers)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.json()["error"]["code"] in ("invalid_peer_signature", "bearer_on_peer_route")
    assert swarm.post("site-1", "/v1/peer/load", {}, {}).status_code == 401


def test_killing_the_leader_elects_another_and_a_restarted_site_catches_up(
    swarm_factory: Callable[..., Swarm],
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
    swarm_factory: Callable[..., Swarm],
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


def test_an_overloaded_site_sends_its_excess_to_peers_and_answers_every_request(
    swarm_factory: Callable[..., Swarm],
) -> None:
    # Each instance takes one request at a time and none may queue: a burst at site-1 is more
    # than its own sensor instance can take, and what it cannot take goes to its peers.
    swarm = swarm_factory(env={"MEC_INSTANCE_CAPACITY": "1", "MEC_INSTANCE_QUEUE": "0"})
    swarm.leader()
    eventually(lambda: all(s["healthy"] for s in swarm.view("site-1")["sites"]), 30, "site-1 hears its peers")
    bodies = [_request("sensor", {"sensor_id": f"s{i}", "value": i}, "iot") for i in range(40)]
    with httpx.Client(base_url=swarm.url("site-1"), headers=CLIENT, timeout=20) as http:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda body: http.post("/v1/requests", json=body), bodies))
    routes = [(a.status_code, a.json()["route"]["tier"], a.json()["route"]["site"]) for a in answers]
    assert {status for status, _, _ in routes} <= {200, 503}, routes
    served = [(tier, site) for status, tier, site in routes if status == 200]
    assert any(tier == "peer" and site in ("site-2", "site-3") for tier, site in served), routes
    assert all(site == "site-1" for tier, site in served if tier == "local"), routes

    # The peers served what they got on their own instances or refused it: nothing went a second hop.
    def forwarded_by(sid: str) -> float:
        text = swarm.get(sid, "/metrics").text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "mec_requests_total"
            and sample.labels.get("tier") == "peer"
            and sample.labels.get("status") == "200"
        )

    assert forwarded_by("site-1") == sum(1 for tier, _ in served if tier == "peer")
    assert forwarded_by("site-2") == forwarded_by("site-3") == 0
