"""A real swarm of `mec serve` processes on loopback for tests: each site with its own API and
Raft ports, data dir and log; started together, stopped (by pid) together."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from api.launcher import SiteProcess
from tests.conftest import CLIENT_KEY, OPERATOR_KEY, ROOT, TEST_SITE_ENV
from tests.support.polling import until
from tools.runtimes.base import free_port

PEER_SECRET = "test-peer-secret-0123456789"
OPERATOR = {"Authorization": f"Bearer {OPERATOR_KEY}"}
CLIENT = {"Authorization": f"Bearer {CLIENT_KEY}"}


def eventually(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """`until` over HTTP: polled every 0.2 s, a site that is restarting or stopped counts as
    "not yet"."""
    return until(predicate, what, timeout_s, 0.2, (httpx.HTTPError, KeyError, ValueError))


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


def swarm_sites(
    base: Path,
    count: int = 3,
    env: Mapping[str, str] | None = None,
    site_env: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, SiteProcess]:
    """`count` sites that know each other as peers, on free loopback ports, not started; each gets
    `env`, then what `site_env` has for its id on top."""
    ids = [f"site-{i}" for i in range(1, count + 1)]
    ports: list[int] = []
    while len(ports) < 2 * count:  # distinct: a port just freed can be handed out again
        port = free_port()
        if port not in ports:
            ports.append(port)
    api = dict(zip(ids, ports[:count], strict=True))
    raft = dict(zip(ids, ports[count:], strict=True))
    sites = {}
    for sid in ids:
        peers = ",".join(
            f"{other}=http://127.0.0.1:{api[other]}@127.0.0.1:{raft[other]}" for other in ids if other != sid
        )
        sites[sid] = SiteProcess(
            base / sid,
            client_key=CLIENT_KEY,
            operator_key=OPERATOR_KEY,
            env={
                **TEST_SITE_ENV,
                "MEC_PEER_SECRET": PEER_SECRET,
                **(env or {}),
                **(site_env or {}).get(sid, {}),
            },
            args=["--site-id", sid, "--peers", peers, "--raft-port", str(raft[sid])],
            port=api[sid],
            cwd=ROOT,
            name=sid,
        )
    return sites


@contextmanager
def running_swarms(base: Path) -> Iterator[Callable[..., Swarm]]:
    """Starts swarms (`start(count=3, env=None, site_env=None)`), each in a dir of its own; stops
    every site at the end, a stopped (SIGSTOP) one included."""
    started: list[SiteProcess] = []

    def start(
        count: int = 3,
        env: Mapping[str, str] | None = None,
        site_env: Mapping[str, Mapping[str, str]] | None = None,
    ) -> Swarm:
        sites = swarm_sites(base / f"swarm{len(started)}", count, env, site_env)
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
