"""A front-door worker's site, in process: the real app over a `RemoteRuntime` connected to a
`RuntimeServer` whose runtime's instance is a real in-test HTTP workload."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from agent.inflight import LocalLoadCounters
from api.app import create_app
from api.site import Site
from config.settings import ServiceSettings, load_settings
from tests.support.polling import eventually
from tests.support.workloads import ScriptedWorkload, StaticRuntime, instance_for
from tools.runtimes.base import Instance
from tools.runtimes.remote import RemoteRuntime, RuntimeServer

CLIENT = "client-key-0123456789"
OPERATOR = "operator-key-0123456789"
TOKEN = "token-0123456789"


class ScaleRecorder(StaticRuntime):
    def __init__(self, instances: list[Instance]) -> None:
        super().__init__(instances)
        self.scaled: list[tuple[str, int]] = []

    async def scale(self, service: str, replicas: int) -> list[Instance]:
        self.scaled.append((service, replicas))
        return self.instances(service)


async def test_a_worker_site_serves_from_the_supervisors_runtime_and_starts_nothing(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path, client_keys=[CLIENT], operator_keys=[OPERATOR])
    settings.services = {"svc": ServiceSettings(module="x", image="img", client_kinds=["mobile"])}
    async with ScriptedWorkload("svc-1") as workload:
        owner = ScaleRecorder([instance_for(workload, "svc", "svc-1")])
        server = RuntimeServer(owner, tmp_path / "rt.sock", TOKEN)
        await server.start()
        remote = RemoteRuntime({}, set(), "t", tmp_path / "rt.sock", TOKEN)
        counters = LocalLoadCounters()
        site = Site.build(settings, runtime=remote, counters=counters, worker=(1, 3))
        app = create_app(settings, site)
        try:
            await site.start()
            assert owner.scaled == []  # the supervisor started the services, not the worker
            assert site.admission.counters is counters and site.unready_services() == []
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://site") as http:
                body = {"service": "svc", "payload": {"x": 1}, "client": {"kind": "mobile", "id": "c"}}
                served = await http.post(
                    "/v1/requests", json=body, headers={"Authorization": f"Bearer {CLIENT}"}
                )
                assert served.status_code == 200, served.text
                assert served.json()["route"] == {"tier": "local", "site": "site-1", "target": "svc-1"}
                snapshot = (
                    await http.get("/v1/metrics/snapshot", headers={"Authorization": f"Bearer {OPERATOR}"})
                ).json()
                assert snapshot["worker"] == {"index": 1, "pid": os.getpid(), "count": 3}
                assert snapshot["runtime"]["name"] == "static"
        finally:
            await site.stop()
            await eventually(lambda: server.peers == 0, "the server saw the worker go")
            await server.close()
        assert not remote.connected
        assert [i.id for i in owner.instances()] == ["svc-1"]  # stopping the worker stopped nothing
