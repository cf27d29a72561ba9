"""A 3-site swarm whose consensus is a real 3-member etcd cluster (`MEC_CONSENSUS=etcd`): the same
agreements as the embedded Raft's swarm, with the sites as etcd clients."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.integration.etcd_cluster import running_etcd_cluster
from tests.support.swarm import running_swarms

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_sites_on_etcd_agree_on_a_leader_and_placements_and_survive_a_killed_leader(tmp_path: Path) -> None:
    with running_etcd_cluster(tmp_path / "etcd") as etcd, running_swarms(tmp_path) as start:
        swarm = start(
            env={"MEC_CONSENSUS": "etcd", "MEC_ETCD_ENDPOINTS": ",".join(etcd.endpoints)},
        )
        leader = swarm.leader()
        answer = swarm.post(leader, "/v1/services/sensor/scale", {"replicas": 2})
        assert answer.status_code == 200, answer.text
        placement = answer.json()["placement"]
        assert sum(placement.values()) == 2
        assert all(swarm.view(sid)["consensus"]["backend"] == "etcd" for sid in swarm.sites)
        swarm.signal(leader, signal.SIGKILL)
        survivors = [sid for sid in swarm.sites if sid != leader]
        new_leader = swarm.leader(survivors)  # once the killed site's lease expires
        assert new_leader != leader
        for sid in survivors:
            assert swarm.view(sid)["placements"]["sensor"] == placement
        again = swarm.post(survivors[0], "/v1/services/game-state/scale", {"replicas": 2})
        assert again.status_code == 200, again.text
