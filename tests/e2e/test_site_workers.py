"""`mec serve --workers N`: one supervisor owns the workloads, N front-door workers share the port."""

from __future__ import annotations

import http.client
import json
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil

from tests.conftest import CLIENT_KEY, OPERATOR_KEY, SiteProcess
from tests.support.polling import alive, until

ONLY_SENSOR = {"MEC_SERVICES__INFERENCE__REPLICAS": "0", "MEC_SERVICES__GAME-STATE__REPLICAS": "0"}
TWO = ["--workers", "2"]
SENSOR_CALL = {
    "service": "sensor",
    "payload": {"sensor_id": "a", "value": 1},
    "client": {"kind": "iot", "id": "p"},
}
SiteFactory = Callable[..., SiteProcess]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def fresh_snapshot(site: SiteProcess) -> dict[str, Any]:
    """The metrics snapshot over a new connection (so over whichever worker accepts it)."""
    response = httpx.get(f"{site.url}/v1/metrics/snapshot", headers=_auth(OPERATOR_KEY), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def workers_seen(site: SiteProcess, count: int = 2) -> dict[int, int]:
    """Worker index → pid, asking over fresh connections until every index has answered."""
    seen: dict[int, int] = {}

    def all_seen() -> bool:
        worker = fresh_snapshot(site)["worker"]
        assert worker["count"] == count
        seen[worker["index"]] = worker["pid"]
        return len(seen) == count

    until(all_seen, f"all {count} workers answered (saw {seen})")
    return seen


def serve_sensor(site: SiteProcess, times: int = 6) -> None:
    for _ in range(times):
        response = httpx.post(
            f"{site.url}/v1/requests", json=SENSOR_CALL, headers=_auth(CLIENT_KEY), timeout=10
        )
        assert response.status_code == 200, response.text
        assert response.json()["route"]["tier"] == "local"


def test_one_worker_is_the_single_process_site(site_factory: SiteFactory) -> None:
    site = site_factory(env=ONLY_SENSOR, args=["--workers", "1"])
    assert site.proc is not None
    snapshot = fresh_snapshot(site)
    assert snapshot["worker"] == {"index": 0, "pid": site.proc.pid, "count": 1}
    [sensor] = snapshot["runtime"]["instances"]
    assert psutil.Process(sensor["pid"]).ppid() == site.proc.pid


def test_workers_share_the_port_and_the_supervisor_owns_the_workloads(site_factory: SiteFactory) -> None:
    site = site_factory(env=ONLY_SENSOR, args=TWO)
    assert site.proc is not None and site.url.rsplit(":", 1)[1] != "0"
    supervisor = site.proc.pid
    workers = workers_seen(site)
    assert sorted(workers) == [0, 1]
    for pid in workers.values():
        assert pid != supervisor and psutil.Process(pid).ppid() == supervisor
    serve_sensor(site)
    [sensor] = fresh_snapshot(site)["runtime"]["instances"]
    assert sensor["state"] == "running"
    assert psutil.Process(sensor["pid"]).ppid() == supervisor  # not a worker's child
    assert json.loads((site.data_dir / "site.json").read_text())["pid"] == supervisor


def test_a_killed_worker_is_started_again_and_the_site_keeps_answering(site_factory: SiteFactory) -> None:
    site = site_factory(env=ONLY_SENSOR, args=TWO)
    workers = workers_seen(site)
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    until(lambda: not alive(victim), "the killed worker is gone")
    serve_sensor(site)  # the other worker answers meanwhile
    until(
        lambda: (w := workers_seen(site)) and w[0] != victim and alive(w[0]) and w[1] == workers[1],
        "worker 0 runs again with a new pid",
    )
    serve_sensor(site)
    log = (site.data_dir / "site.log").read_text()
    assert f"worker 0 (pid {victim}) exited" in log and "starting it again" in log


def _shared_memory_of(pid: int) -> list[Path]:
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return sorted({Path(line.split()[-1]) for line in maps if "/dev/shm/" in line})


def test_sigterm_to_the_supervisor_leaves_no_process_behind(site_factory: SiteFactory) -> None:
    site = site_factory(env=ONLY_SENSOR, args=TWO)
    assert site.proc is not None
    workers = workers_seen(site)
    descendants = [p.pid for p in psutil.Process(site.proc.pid).children(recursive=True)]
    workload_pids = [i["pid"] for i in fresh_snapshot(site)["runtime"]["instances"]]
    assert set(workers.values()) | set(workload_pids) <= set(descendants)
    blocks = _shared_memory_of(workers[0])
    assert blocks and all(block.exists() for block in blocks)
    assert list(site.data_dir.glob("runtime-*.sock"))

    site.proc.send_signal(signal.SIGTERM)
    assert site.proc.wait(30) == 0
    until(lambda: not any(alive(pid) for pid in descendants), "every worker and workload exited", 20)
    assert not any(block.exists() for block in blocks)
    assert not list(site.data_dir.glob("runtime-*.sock"))
    assert not (site.data_dir / "site.json").exists()


SLOW = {
    "MEC_SERVICES__INFERENCE__REPLICAS": "0",
    "MEC_SERVICES__GAME-STATE__REPLICAS": "0",
    "MEC_SERVICES__SENSOR__REPLICAS": "0",
    "MEC_SERVICES__SLOW__MODULE": "tests.support.slow_workload",
    "MEC_SERVICES__SLOW__IMAGE": "mec-workloads:0.1",
    "MEC_SERVICES__SLOW__DEFAULT_BUDGET_MS": "60000",
    "MEC_KEEPALIVE_TIMEOUT_S": "120",
}


@contextmanager
def connections(site: SiteProcess) -> Iterator[list[http.client.HTTPConnection]]:
    opened: list[http.client.HTTPConnection] = []
    try:
        yield opened
    finally:
        for conn in opened:
            conn.close()


def _ask(conn: http.client.HTTPConnection, method: str, path: str, key: str, body: Any = None) -> Any:
    headers = {**_auth(key), "content-type": "application/json"}
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = conn.getresponse()
    data = json.loads(response.read())
    assert response.status == 200, data
    return data


def test_workers_see_each_others_inflight_counts(site_factory: SiteFactory) -> None:
    """K slow requests through one worker show as K in flight in the other worker's snapshot.

    The watcher has never sent anything to the instance: what it shows comes from the shared
    counters alone.
    """
    held = 3
    site = site_factory(env=SLOW, args=TWO)
    address = urlsplit(site.url)
    with connections(site) as opened:
        by_worker: dict[int, list[http.client.HTTPConnection]] = {0: [], 1: []}

        def enough() -> bool:
            conn = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
            opened.append(conn)
            index = _ask(conn, "GET", "/v1/metrics/snapshot", OPERATOR_KEY)["worker"]["index"]
            by_worker[index].append(conn)
            return any(len(by_worker[i]) >= held and by_worker[1 - i] for i in (0, 1))

        until(enough, f"{held} connections on one worker and one on the other")
        busy = 0 if len(by_worker[0]) >= held else 1
        senders, watcher = by_worker[busy][:held], by_worker[1 - busy][0]
        [slow] = _ask(watcher, "GET", "/v1/metrics/snapshot", OPERATOR_KEY)["runtime"]["instances"]
        call = {"service": "slow", "payload": {"ms": 30000}, "client": {"kind": "iot", "id": "p"}}

        with ThreadPoolExecutor(held) as pool:
            answers = [pool.submit(_ask, conn, "POST", "/v1/requests", CLIENT_KEY, call) for conn in senders]
            try:
                seen: dict[str, Any] = {}

                def counted() -> bool:
                    seen.update(_ask(watcher, "GET", "/v1/metrics/snapshot", OPERATOR_KEY))
                    load = seen["admission"]["instances"].get(slow["id"], {})
                    return load.get("inflight") == held

                until(counted, f"worker {1 - busy} sees {held} in flight at {slow['id']}", 20)
                assert seen["worker"]["index"] == 1 - busy
            finally:
                httpx.post(f"{slow['url']}/release", timeout=10)
            for answer in answers:
                result = answer.result(timeout=60)
                assert result["route"]["tier"] == "local" and result["result"]["released"] is True


ALWAYS_BUSY = {
    **ONLY_SENSOR,
    "MEC_ALERT_RULES": json.dumps(
        [{"name": "always_busy", "metric": "cpu_percent", "high": -1, "for_s": 0, "clear_s": 0}]
    ),
    "MEC_SAMPLE_INTERVAL_S": "0.2",
}
"""A rule every sample breaches: it fires on the first worker a moment after start."""


def _on_each_worker(site: SiteProcess, opened: list[http.client.HTTPConnection]) -> dict[int, Any]:
    """One kept-alive connection per worker (index → connection), opened until both turned up."""
    found: dict[int, http.client.HTTPConnection] = {}
    host, port = urlsplit(site.url).hostname, urlsplit(site.url).port

    def both() -> bool:
        conn = http.client.HTTPConnection(host or "127.0.0.1", port, timeout=10)
        opened.append(conn)
        index = _ask(conn, "GET", "/v1/metrics/snapshot", OPERATOR_KEY)["worker"]["index"]
        found.setdefault(index, conn)
        return len(found) == 2

    until(both, "a connection on each worker")
    return found


def test_every_worker_lists_acks_and_streams_the_first_workers_alerts(site_factory: SiteFactory) -> None:
    site = site_factory(env=ALWAYS_BUSY, args=TWO)
    with connections(site) as opened:
        on = _on_each_worker(site, opened)

        def firing_on_the_other_worker() -> list[dict[str, Any]]:
            return _ask(on[1], "GET", "/v1/alerts?state=active", OPERATOR_KEY)["active"]

        until(firing_on_the_other_worker, "worker 1 lists the alert worker 0 raised")
        [alert] = firing_on_the_other_worker()
        assert alert["rule"] == "always_busy" and alert["acknowledged_at"] is None

        acked = _ask(on[1], "POST", f"/v1/alerts/{alert['id']}/ack", OPERATOR_KEY)
        assert acked["id"] == alert["id"] and acked["acknowledged_by"]
        [seen_by_owner] = _ask(on[0], "GET", "/v1/alerts?state=active", OPERATOR_KEY)["active"]
        assert seen_by_owner["acknowledged_by"] == acked["acknowledged_by"]  # one alert, not a copy

        reply = _ask(on[1], "POST", "/v1/chat", OPERATOR_KEY, {"message": "any alerts?"})
        assert alert["id"] in reply["reply"], reply

        on[1].request("GET", "/v1/alerts/stream", headers=_auth(OPERATOR_KEY))
        stream = on[1].getresponse()
        assert stream.status == 200
        lines: list[bytes] = []
        while not lines or lines[-1] != b"\n":  # the first event ends with a blank line
            lines.append(stream.fp.readline())
        event = b"".join(lines).decode()
        assert "event: snapshot" in event and alert["id"] in event


def test_a_client_key_gets_403_for_alerts_on_every_worker(site_factory: SiteFactory) -> None:
    site = site_factory(env=ALWAYS_BUSY, args=TWO)
    with connections(site) as opened:
        for conn in _on_each_worker(site, opened).values():
            conn.request("GET", "/v1/alerts", headers=_auth(CLIENT_KEY))
            response = conn.getresponse()
            body = json.loads(response.read())
            assert response.status == 403, body
