"""This site's part of the swarm, wired from its settings: consensus, replicated state, the
coordinator, the reconciler, the load table and its gossip, the balancer and the forwarder.

Consensus carries the control plane only (membership, placement, cloud-fallback mode); the
fast path reads the load table, never the log. A site joins by proposing `JoinSite` once there
is a leader (retried with the same id until it commits), and from then on reconciles its own
instances to the committed placement.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from agent.admission import Admission
from agent.errors import SiteError
from agent.forwarding import PeerForwarder
from agent.upstream import UpstreamError, UpstreamPool
from agent.view import PeerChoice
from config.settings import OverloadState, Settings, usable_cores
from swarm.balancer import RoundRobinState, choose_peer
from swarm.commands import JoinSite, SetCloudFallback
from swarm.consensus.base import Consensus, ConsensusError, NotLeaderError
from swarm.coordinator import Coordinator, PlacementError
from swarm.gossip import Gossip
from swarm.load_table import LoadTable, ServiceLoad, SiteLoad
from swarm.peers import PeerAddress, PeerSigner, parse_peers
from swarm.reconcile import Reconciler
from swarm.state import StateSnapshotter, SwarmState
from tools.metrics_monitor import MetricsMonitor
from tools.runtimes.base import Runtime

log = logging.getLogger(__name__)

CHANGE_TIMEOUT_S = 10.0
"""Longest a placement change waits to commit."""


def placement_error(exc: Exception) -> SiteError:
    """A placement change that did not commit, as the API's error."""
    if isinstance(exc, NotLeaderError):
        return SiteError(409, "not_leader", f"this site is not the coordinator; the leader is {exc.leader}")
    if isinstance(exc, PlacementError):
        return SiteError(422, "placement_failed", str(exc))
    if isinstance(exc, ConsensusError):
        return SiteError(503, "consensus_unavailable", str(exc), retry_after_s=1)
    return SiteError(404, "not_found", str(exc))


JOIN_RETRY_S = 0.5
RECONCILE_INTERVAL_S = 2.0


def build_consensus(settings: Settings, peers: dict[str, PeerAddress], state: SwarmState) -> Consensus:
    """The configured backend: the embedded Raft (default) or an etcd cluster, applying to
    `state` and compacting its log behind snapshots of it (`consensus_max_entries`)."""
    snapshotter = StateSnapshotter(state)
    if settings.consensus == "etcd":
        from swarm.consensus.etcd import EtcdConsensus

        if not settings.etcd_endpoints:
            raise ValueError("consensus=etcd needs etcd_endpoints (MEC_ETCD_ENDPOINTS)")
        return EtcdConsensus(
            settings.site_id,
            settings.etcd_endpoints,
            state.apply,
            snapshotter=snapshotter,
            max_entries=settings.consensus_max_entries,
        )
    from swarm.consensus.embedded import EmbeddedConsensus

    assert settings.peer_secret is not None  # Settings refuses peers without a secret
    partners = {site_id: f"{addr.raft_host}:{addr.raft_port}" for site_id, addr in peers.items()}
    return EmbeddedConsensus(
        settings.site_id,
        settings.raft_address,
        partners,
        settings.data_dir / "raft",
        settings.peer_secret,
        state.apply,
        snapshotter=snapshotter,
        max_entries=settings.consensus_max_entries,
    )


class SwarmNode:
    """Everything this site runs to be one of the swarm."""

    def __init__(
        self,
        settings: Settings,
        runtime: Runtime,
        upstream: UpstreamPool,
        admission: Admission,
        monitor: MetricsMonitor,
        gpus: int = 0,
    ) -> None:
        assert settings.peer_secret is not None
        self.settings = settings
        self.site_id = settings.site_id
        self.url = f"http://{settings.host}:{settings.port}"
        self.runtime = runtime
        self.admission = admission
        self.monitor = monitor
        self.gpus = gpus
        self.peers = parse_peers(settings.peers, self_id=settings.site_id)
        self.signer = PeerSigner(self.site_id, settings.peer_secret, peers=list(self.peers))
        self.state = SwarmState()
        self.consensus = build_consensus(settings, self.peers, self.state)
        self.coordinator = Coordinator(self.site_id, self.consensus, self.state, settings.services)
        self.reconciler = Reconciler(
            self.site_id, runtime, self.state, settings.services, interval_s=RECONCILE_INTERVAL_S
        )
        self.table = LoadTable(self.site_id, self.peers, settings.load_stale_s)
        self.gossip = Gossip(
            self.site_id,
            self.peers,
            self.signer,
            self.local_load,
            self.table,
            settings.gossip_interval_s,
            upstream,
        )
        self.upstream = upstream
        self.forwarder = PeerForwarder(self.site_id, self.signer, upstream, track=self.table.forward_started)
        self._rng = random.Random()
        self._rr = RoundRobinState()
        self._join_task: asyncio.Task[None] | None = None
        self.joined = False
        self.overload_state: Callable[[], OverloadState] = lambda: "normal"
        """This site's overload state for its load reports (the site sets it)."""
        self._fallback_task: asyncio.Task[None] | None = None

    def capabilities(self) -> dict[str, Any]:
        """What this site can run, for the coordinator's placement."""
        return {"gpus": self.gpus, "cpus": usable_cores(), "services": sorted(self.settings.services)}

    def local_load(self) -> SiteLoad:
        """This site's load report for its peers: per service, ready instances and their gates."""
        percentiles = {row.service: row.p99_ms for row in self.monitor.requests.summary()}
        services = {}
        for name in self.settings.services:
            ready = self.runtime.ready_instances(name)
            services[name] = ServiceLoad.of(ready, self.admission.loads(ready), percentiles.get(name))
        snapshot = self.monitor.snapshot
        host = snapshot.host
        return SiteLoad(
            site_id=self.site_id,
            url=self.url,
            sent_at=time.time(),
            services=services,
            cpu_percent=min(100.0, max(0.0, host.cpu_percent)) if host is not None else 0.0,
            gpu_util=snapshot.gpu_max_utilization,
            overload=self.overload_state(),
        )

    def choose(self, service: str, budget_ms: float) -> PeerChoice | None:
        """The balancer over the fresh part of the load table (the router's `View.choose_peer`)."""
        entries = self.table.fresh()
        if not entries:
            return None
        choice = choose_peer(service, budget_ms, entries, self.settings.balancer, self._rng, self._rr)
        if choice is None:
            return None
        address = self.peers[choice.site_id]
        return PeerChoice(choice.site_id, address.host, address.port, choice.score_ms, choice.reason)

    async def start(self) -> None:
        await self.consensus.start()
        await self.reconciler.start()
        self.gossip.start()
        self._join_task = asyncio.get_running_loop().create_task(self._join(), name="swarm-join")

    async def _join(self) -> None:
        """Propose this site's membership until it commits (the same id every try)."""
        command = JoinSite(self.site_id, self.url, self.capabilities())
        while True:
            try:
                await self.consensus.wait_leader(5.0)
                await self.consensus.propose(command, 5.0)
                self.joined = True
                return
            except ConsensusError as exc:
                log.info("joining the swarm: %s; retrying", exc)
                await asyncio.sleep(JOIN_RETRY_S)

    async def stop(self) -> None:
        if self._fallback_task is not None:
            self._fallback_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fallback_task
        if self._join_task is not None:
            self._join_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._join_task
        await self.gossip.stop()
        await self.reconciler.stop()
        await self.consensus.stop()

    async def change(self, action: str, service: str, argument: int | str) -> dict[str, int]:
        """Scale (`argument`: replicas across the swarm) or move (`argument`: the site) a service:
        decided here when this site leads, else by the leader over the signed peer API. The
        committed placement of the service; `SiteError` when it did not commit."""
        if self.coordinator.is_coordinator():
            return await self.decide(action, service, argument)
        if service not in self.settings.services:
            raise SiteError(404, "unknown_service", f"unknown service {service!r}", "service")
        leader = self.consensus.leader()
        address = None if leader is None else self.peers.get(leader)
        if leader is None or address is None:
            raise SiteError(503, "no_leader", "the swarm has no leader now; retry shortly", retry_after_s=1)
        path = f"/v1/peer/{action}/{service}"
        body = json.dumps({"replicas": argument} if action == "scale" else {"site": argument}).encode()
        headers = self.signer.sign("POST", path, body, time.time(), to=leader)
        try:
            response = await self.upstream.request(
                address.host, address.port, path, body, CHANGE_TIMEOUT_S + 5, headers=headers
            )
        except UpstreamError as exc:
            raise SiteError(
                503,
                "leader_unreachable",
                f"the leader {leader} did not answer: {type(exc).__name__}",
                retry_after_s=1,
            ) from None
        answer = json.loads(response.body)
        if response.status != 200:
            error = answer.get("error", {})
            raise SiteError(
                response.status, str(error.get("code", "failed")), f"leader {leader}: {error.get('message')}"
            )
        return {str(site): int(n) for site, n in answer["placement"].items()}

    async def decide(self, action: str, service: str, argument: int | str) -> dict[str, int]:
        """`change` as the coordinator: decided and committed here (409 `not_leader` otherwise)."""
        if service not in self.settings.services:
            raise SiteError(404, "unknown_service", f"unknown service {service!r}", "service")
        try:
            if action == "scale":
                command = await self.coordinator.scale(service, int(argument), CHANGE_TIMEOUT_S)
            else:
                command = await self.coordinator.move(service, str(argument), CHANGE_TIMEOUT_S)
        except (ConsensusError, PlacementError, ValueError) as exc:
            raise placement_error(exc) from None
        return dict(command.replicas)

    def leader_url(self) -> str | None:
        leader = self.consensus.leader()
        if leader is None:
            return None
        if leader == self.site_id:
            return self.url
        address = self.peers.get(leader)
        return address.url if address is not None else None

    def peers_have_room(self) -> bool:
        """Whether some fresh peer reports itself normal (not shedding, not offloading)."""
        return any(entry.load.overload == "normal" for entry in self.table.fresh())

    def set_cloud_fallback(self, enabled: bool) -> None:
        """Commit this site's cloud-fallback mode, so every site agrees who offloads: in the
        background, one command retried by id until it commits, after the change before it (never
        cancelled half way: a proposal sent may still commit, so changes commit in their order)."""
        command = SetCloudFallback(self.site_id, enabled)
        self._fallback_task = asyncio.get_running_loop().create_task(
            self._propose_after(self._fallback_task, command), name="swarm-cloud-fallback"
        )

    async def _propose_after(self, previous: asyncio.Task[None] | None, command: SetCloudFallback) -> None:
        if previous is not None:
            await previous
        while True:
            try:
                await self.consensus.propose(command, 5.0)
                return
            except ConsensusError as exc:
                log.info("cloud fallback of %s not committed yet: %s; retrying", self.site_id, exc)
                await asyncio.sleep(JOIN_RETRY_S)

    def stale_peers(self) -> dict[str, bool]:
        """Each peer: True while the load table has no fresh report of it (an alert reads it)."""
        fresh = {entry.site_id for entry in self.table.fresh()}
        return {site_id: site_id not in fresh for site_id in self.peers}

    @property
    def consensus_healthy(self) -> bool:
        return self.consensus.status().healthy

    def report(self) -> dict[str, Any]:
        """`GET /v1/sites`: the leader, the term, every site with its health and load, placements."""
        status = self.consensus.status()
        fresh = {entry.site_id: entry for entry in self.table.fresh()}
        members = self.state.members
        sites: list[dict[str, Any]] = [
            {
                "site_id": self.site_id,
                "url": self.url,
                "healthy": True,
                "member": self.site_id in members,
                "load": self.local_load().model_dump(mode="json"),
            }
        ]
        for site_id, address in self.peers.items():
            entry = fresh.get(site_id)
            sites.append(
                {
                    "site_id": site_id,
                    "url": address.url,
                    "healthy": entry is not None,
                    "member": site_id in members,
                    "rtt_ms": None if entry is None else entry.rtt_ms,
                    "load": None if entry is None else entry.load.model_dump(mode="json"),
                }
            )
        return {
            "site": self.site_id,
            "leader": status.leader,
            "term": status.term,
            "commit_index": status.commit_index,
            "applied_index": self.state.applied_index,
            "consensus": {"backend": self.settings.consensus, "healthy": status.healthy},
            "sites": sites,
            "placements": self.state.placements,
            "cloud_fallback": sorted(self.state.cloud_fallback),
        }


class SiteSwarmBackend:
    """The `swarm_ops` tool's backend (`tools.swarm_ops.SwarmBackend`) over this site's node."""

    def __init__(self, node: SwarmNode) -> None:
        self.node = node

    async def sites(self) -> list[dict[str, Any]]:
        sites: list[dict[str, Any]] = self.node.report()["sites"]
        return sites

    def leader(self) -> str | None:
        return self.node.consensus.leader()

    def term(self) -> int:
        return self.node.consensus.status().term

    def placements(self) -> dict[str, dict[str, int]]:
        return self.node.state.placements

    async def scale(self, service: str, replicas: int) -> dict[str, int]:
        return await self._change("scale", service, replicas)

    async def move(self, service: str, site_id: str) -> dict[str, int]:
        return await self._change("move", service, site_id)

    async def _change(self, action: str, service: str, argument: int | str) -> dict[str, int]:
        try:
            return await self.node.change(action, service, argument)
        except SiteError as exc:
            if exc.status in (404, 422):  # the caller's mistake: the tool reports it as such
                raise ValueError(exc.message) from None
            raise
