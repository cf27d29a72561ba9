"""The discrete-event loop (SimPy): sites, their instances and gates, gossip, requests.

Each simulated site holds what a real one holds, built from the project's own classes on the
simulation's clock (`env.now`, seconds):

* one `agent.admission.InstanceGate` per instance (its adaptive limit, its service-time estimate,
  `predicted_ms` / `has_room` / `outstanding`, fed by `release(latency, concurrency)` as the
  dispatcher feeds it), over a `LocalLoadCounters`;
* a `swarm.load_table.LoadTable` of its peers' reports, updated by simulated gossip every
  `gossip_interval_s` (a peer's report is as old as its last round: the staleness the policies
  are compared under), with RTT samples, and its own forwards counted (`forward_started`/`done`);
* `swarm.cloud.CloudCompute` for the services' cloud endpoints (its EWMA of answer times);
* a `monitoring.overload.OverloadMachine` (normal → shedding → cloud), stepped every
  `sample_interval_s` as `api.site.Site.step_overload` steps it: hot is
  `monitoring.overload.handoff_hot` over the site's own request log of the last
  `request_window_s` (requests finished here by tier, forwarded ones included, handed = tier
  `peer` or `cloud`, or refused for capacity: tier `reject`), peers have room when a fresh peer in its load table reports `normal`
  (`SwarmNode.peers_have_room`); its state goes out in its load reports, as the real gossip's.

Per request the site builds an `agent.view.View` as `Site.view_for` does (its instances, their
gates as loads, the balancer over its load table as `choose_peer`, the spill share of its
overload state, `cloud_spill` in cloud mode) and calls `agent.router.plan()`; the plan is carried
out as `agent.dispatch` does: local through the gate (slot now, else the site's queue with the
request's deadline; refused → a peer the balancer picks, else the cloud, else a reject), peer
(one forward; the peer plans it with `forwarded=True`, which in the peer's cloud mode may send it
to the peer's cloud endpoint; refused there → the local instance the plan named, if any), cloud
(a cloud spill that fails → the local instance the plan named, if time is left), or reject.

What is modelled more simply than the site: an instance is one FIFO worker whose time per request
is the request's CPU time over its CPU share; the site's wait queue is FIFO, newest-first once
standing (`standing_after_ms`), with a joiner of a standing queue waiting at most
`queue_target_ms` (the gate's rules, re-stated here because the gate's own queue is asyncio);
no hedging, no GPU-busy signal, no cache hits; the overload alerts (AlertEngine over in-flight
and p99 readings) are not evaluated, so a site turns hot by its hand-off share only; the cloud
endpoint has unbounded capacity and fails only by answering past the request's deadline.
"""

from __future__ import annotations

import math
import random
import zlib
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal

import simpy

from agent.admission import AdmissionSettings, InstanceGate
from agent.inflight import LocalLoadCounters
from agent.router import PlanRequest, plan
from agent.view import PeerChoice, ServiceView, View
from monitoring.overload import OverloadMachine, handoff_hot
from sim.metrics import Metrics, Outcome
from sim.scenario import Scenario
from sim.topology import InstanceSpec, SiteSpec, Topology, build_topology
from sim.workload import Stream, arrivals, devices_per_site
from swarm.balancer import Policy, RoundRobinState, choose_peer
from swarm.cloud import CloudCompute
from swarm.load_table import LoadTable, ServiceLoad, SiteLoad
from tools.runtimes.base import Instance

Process = Generator[simpy.Event, Any, Any]

SERVED, REFUSED, EXPIRED = "served", "refused", "expired"

LogTier = Literal["local", "peer", "cloud", "reject"]
"""The tier a site's request log records a finished request under (`route.tier`)."""


def _seed(*parts: object) -> int:
    """A stable seed for one named random stream (the same across runs and Python processes)."""
    return zlib.crc32("\x00".join(map(str, parts)).encode())


def _lognormal(rng: random.Random, mean: float, cv: float) -> float:
    if cv <= 0:
        return mean
    sigma2 = math.log(1 + cv * cv)
    return rng.lognormvariate(math.log(mean) - sigma2 / 2, math.sqrt(sigma2))


@dataclass(slots=True)
class _Waiter:
    event: simpy.Event
    deadline: float


@dataclass(slots=True)
class _Worker:
    """One instance's worker: when it is free next, and the site queue in front of its gate."""

    spec: InstanceSpec
    instance: Instance
    gate: InstanceGate
    free_at: float = 0.0
    waiters: deque[_Waiter] = field(default_factory=deque)
    last_empty: float = 0.0


class SimSite:
    """One site of the simulation: the project's gates, load table and cloud targets on `clock`."""

    def __init__(
        self,
        sim: Simulation,
        index: int,
        spec: SiteSpec,
        peer_ids: dict[str, str],
        policy: Policy,
    ) -> None:
        scenario = sim.scenario
        swarm = scenario.swarm
        self.sim = sim
        self.index = index
        self.id = spec.id
        clock = sim.clock
        self.counters = LocalLoadCounters()
        self.admission = AdmissionSettings(
            max_limit=swarm.instance_capacity,
            initial_limit=min(8, swarm.instance_capacity),
            max_queue=swarm.instance_queue,
        )
        self.workers: dict[str, _Worker] = {}
        self.instances: dict[str, list[Instance]] = {name: [] for name in scenario.services}
        for inst in spec.instances:
            instance = Instance(inst.id, inst.service, "sim", 0, "sim", inst.gpu, state="running")
            gate = InstanceGate(inst.id, self.counters, self.admission, clock)
            self.workers[inst.id] = _Worker(inst, instance, gate)
            self.instances[inst.service].append(instance)
        self.loads = {wid: w.gate for wid, w in self.workers.items()}
        self.table = LoadTable(self.id, peer_ids, swarm.load_stale_s, clock)
        self.policy = policy
        self.balancer_rng = random.Random(_seed(scenario.seed, "balancer", self.id))
        self.service_rng = random.Random(_seed(scenario.seed, "service", self.id))
        self.rr = RoundRobinState()
        cloud_urls = {
            name: f"https://cloud.invalid/{name}"
            for name, svc in scenario.services.items()
            if svc.cloud and scenario.cloud.enabled
        }
        self.cloud = (
            CloudCompute(cloud_urls, assumed_rtt_ms=scenario.cloud.answer_ms, clock=clock)
            if cloud_urls
            else None
        )
        self.overload = OverloadMachine(
            cloud_after_s=swarm.overload_cloud_after_s,
            calm_s=swarm.overload_calm_s,
            min_dwell_s=swarm.overload_min_dwell_s,
        )
        self.log: deque[list[int]] = deque(maxlen=int(swarm.request_window_s) + 2)
        """The request log's window: [second, requests, handed] per simulated second."""

    # The request log and the overload state (as `api.site.Site.step_overload`).

    def logged(self, tier: LogTier) -> None:
        """One request finished here under `tier` (the request log's `record`)."""
        second = int(self.sim.env.now)
        if not self.log or self.log[-1][0] != second:
            self.log.append([second, 0, 0])
        bucket = self.log[-1]
        bucket[1] += 1
        if tier in ("peer", "cloud", "reject"):  # not served here (a simulated reject is for capacity)
            bucket[2] += 1

    def step_overload(self, now: float) -> None:
        """One metrics sample: hot by the hand-off share of the window, room if a peer is normal."""
        swarm = self.sim.scenario.swarm
        horizon = int(now) - int(swarm.request_window_s)
        requests = handed = 0
        for second, count, away in self.log:
            if second > horizon:
                requests += count
                handed += away
        hot = handoff_hot(
            False,
            requests,
            handed,
            self.overload.state,
            swarm.overload_handoff_share,
            swarm.overload_release_share,
        )
        self.overload.step(hot, self.peers_have_room(), now)

    def peers_have_room(self) -> bool:
        """Whether some fresh peer reports itself normal (`api.swarm_node.SwarmNode.peers_have_room`)."""
        return any(entry.load.overload == "normal" for entry in self.table.fresh())

    # What the router reads.

    def choose(self, service: str, budget_ms: float) -> PeerChoice | None:
        """The balancer over the fresh part of the load table (as `api.swarm_node.SwarmNode.choose`)."""
        entries = self.table.fresh()
        if not entries:
            return None
        pick = choose_peer(service, budget_ms, entries, self.policy, self.balancer_rng, self.rr)
        if pick is None:
            return None
        return PeerChoice(pick.site_id, "sim", 0, pick.score_ms, pick.reason)

    def view(self, service: str) -> View:
        """The router's view for one request (as `api.site.Site.view_for` builds it)."""
        swarm, state = self.sim.scenario.swarm, self.overload.state
        return View(
            site_id=self.id,
            services=self.sim.service_views,
            instances={service: self.instances.get(service, [])},
            loads=self.loads,
            gpu_busy=False,
            retry_after_s=1,
            choose_peer=self.choose if self.table.peer_ids else None,
            spill_share=swarm.peer_spill_share if state == "normal" else swarm.overload_spill_share,
            cloud_spill=state == "cloud",
            cloud=self.cloud,
        )

    def report(self, now: float) -> SiteLoad:
        """This site's load report, as its gossip sends it."""
        return SiteLoad(
            site_id=self.id,
            url=f"http://{self.id}.sim",
            sent_at=now,
            services={
                name: ServiceLoad.of(insts, self.loads) for name, insts in self.instances.items() if insts
            },
            cpu_percent=0.0,
            overload=self.overload.state,
        )

    # Serving through a gate.

    def serve(self, instance: Instance, deadline: float) -> Process:
        """One request through the instance's gate and worker: SERVED, REFUSED (before anything was
        sent: queue full, refused when its turn came, or behind a standing queue) or EXPIRED."""
        env = self.sim.env
        worker = self.workers[instance.id]
        gate = worker.gate
        if not (not worker.waiters and gate.try_acquire()):
            if len(worker.waiters) >= self.admission.max_queue:
                return REFUSED
            now = env.now
            if not worker.waiters:
                worker.last_empty = now
            wait_until = deadline
            if self._standing(worker, now):
                wait_until = min(deadline, now + self.admission.queue_target_ms / 1000)
            waiter = _Waiter(env.event(), deadline)
            worker.waiters.append(waiter)
            self.counters.add_queued(gate.slot, 1)
            yield waiter.event | env.timeout(max(0.0, wait_until - now))
            if not waiter.event.triggered:
                worker.waiters.remove(waiter)
                self.counters.add_queued(gate.slot, -1)
                if not worker.waiters:
                    worker.last_empty = env.now
                return EXPIRED if env.now >= deadline else REFUSED
            if not waiter.event.value:
                return REFUSED
        concurrency = gate.inflight
        sent = env.now
        cpu_ms = _lognormal(
            self.service_rng, self.sim.cpu_ms[instance.service], self.sim.cv[instance.service]
        )
        worker.free_at = max(worker.free_at, sent) + cpu_ms / worker.spec.speed / 1000
        yield env.timeout(worker.free_at - sent)
        gate.release((env.now - sent) * 1000, concurrency)
        self._wake(worker)
        return SERVED

    def _standing(self, worker: _Worker, now: float) -> bool:
        return bool(worker.waiters) and (now - worker.last_empty) * 1000 > self.admission.standing_after_ms

    def _wake(self, worker: _Worker) -> None:
        """Hand free slots to waiters (FIFO, newest first behind a standing queue), as the gate does."""
        gate, waiters, now = worker.gate, worker.waiters, self.sim.env.now
        while waiters and gate.inflight < gate.limit:
            waiter = waiters.pop() if self._standing(worker, now) else waiters.popleft()
            self.counters.add_queued(gate.slot, -1)
            if (waiter.deadline - now) * 1000 < (gate.inflight + 1) * gate.service_ms:
                waiter.event.succeed(False)
                continue
            gate.try_acquire()
            waiter.event.succeed(True)
        if not waiters:
            worker.last_empty = now


class Simulation:
    """One run of a scenario under one policy. `run()` returns its metrics."""

    def __init__(self, scenario: Scenario, policy: Policy, topology: Topology | None = None) -> None:
        self.scenario = scenario
        self.env = simpy.Environment()
        self.clock: Callable[[], float] = lambda: float(self.env.now)
        self.topology = topology or build_topology(scenario, random.Random(_seed(scenario.seed, "topology")))
        self.service_views = {
            name: ServiceView(
                name=name,
                gpu=svc.gpu,
                cacheable=False,
                cache_ttl_s=0.0,
                default_budget_ms=int(svc.budget_ms),
                affinity_key="key" if svc.affinity else None,
                client_kinds=frozenset(),
            )
            for name, svc in scenario.services.items()
        }
        self.cpu_ms = {name: svc.cpu_ms for name, svc in scenario.services.items()}
        self.cv = {name: svc.cv for name, svc in scenario.services.items()}
        sites = self.topology.sites
        self.sites = [
            SimSite(
                self,
                i,
                spec,
                {sites[j].id: f"http://{sites[j].id}.sim" for j in self.topology.peers[i]},
                policy,
            )
            for i, spec in enumerate(sites)
        ]
        self.by_id = {site.id: site for site in self.sites}
        self.metrics = Metrics()
        self.by_site = [Metrics() for _ in self.sites]
        self.net_rng = random.Random(_seed(scenario.seed, "network"))
        self.cloud_rng = random.Random(_seed(scenario.seed, "cloud"))
        self.streams = self._streams()

    def _streams(self) -> list[Stream]:
        scenario = self.scenario
        counts = devices_per_site(scenario.devices, [s.weight for s in self.topology.sites])
        streams = []
        for i, devices in enumerate(counts):
            for kind, profile in scenario.profiles.items():
                n = round(devices * profile.share)
                budget = profile.budget_ms or scenario.services[profile.service].budget_ms
                streams.append(
                    Stream(i, kind, profile.service, budget, n, n * profile.rate_per_device, profile)
                )
        return streams

    def offered_rps(self) -> float:
        return sum(s.rate for s in self.streams)

    # Time and network.

    def _rtt_ms(self, i: int, j: int) -> float:
        jitter = self.scenario.topology.rtt_sample_jitter
        return self.topology.rtt_ms[i][j] * self.net_rng.uniform(1 - jitter, 1 + jitter)

    def _gossip(self, site: SimSite) -> Process:
        """Every gossip interval, `site` posts its report to each peer that has it as a peer; the
        round trip of each post is a sample of the peer's RTT average."""
        interval = self.scenario.swarm.gossip_interval_s
        yield self.env.timeout(self.net_rng.uniform(0, interval))
        receivers = [other for other in self.sites if other is not site and site.id in other.table.peer_ids]
        while True:
            report = site.report(self.env.now)
            for other in receivers:
                other.table.update(report, rtt_ms=self._rtt_ms(site.index, other.index))
            yield self.env.timeout(interval)

    def _arrivals(self, stream: Stream) -> Process:
        rng = random.Random(_seed(self.scenario.seed, "arrivals", stream.site, stream.kind))
        key_rng = random.Random(_seed(self.scenario.seed, "keys", stream.site, stream.kind))
        affinity = self.scenario.services[stream.service].affinity
        env = self.env
        stop_s = stream.profile.stop_s
        until_s = self.scenario.duration_s if stop_s is None else min(stop_s, self.scenario.duration_s)
        for at in arrivals(stream, rng, until_s):
            yield env.timeout(at - env.now)
            key = f"d{key_rng.randrange(max(1, stream.devices))}" if affinity else None
            env.process(self._request(self.sites[stream.site], stream.service, stream.budget_ms, key))

    # One request.

    def _request(self, site: SimSite, service: str, budget_ms: float, key: str | None) -> Process:
        env = self.env
        start = env.now
        door_s = self.scenario.swarm.front_door_ms / 1000
        deadline = start + budget_ms / 1000
        view = site.view(service)
        decision = plan(PlanRequest(service=service, affinity=key, budget_ms=budget_ms - door_s * 1000), view)
        outcome: Outcome = "reject"
        tier: LogTier = "reject"
        if decision.tier == "local":
            assert decision.instance is not None
            result = yield from site.serve(decision.instance, deadline)
            tier = "local" if result != REFUSED else "reject"
            if result == SERVED:
                outcome = "local"
            elif result == REFUSED:
                # The gate refused it before anything was sent: a peer, else the cloud, in what is left.
                left_ms = (deadline - env.now) * 1000
                peer = view.choose_peer(service, left_ms) if view.choose_peer and left_ms > 0 else None
                cloud = (
                    None
                    if peer is not None or site.cloud is None or left_ms <= 0
                    else site.cloud.choice(service, left_ms)
                )
                if peer is not None:
                    outcome, tier = (yield from self._forward(site, peer, service, deadline)), "peer"
                elif cloud is not None:
                    outcome, tier = (yield from self._cloud(site, service, deadline)), "cloud"
        elif decision.tier in ("peer", "cloud"):
            if decision.tier == "peer":
                assert decision.peer is not None
                outcome = yield from self._forward(site, decision.peer, service, deadline)
            else:
                outcome = yield from self._cloud(site, service, deadline)
            tier = decision.tier
            if outcome == "reject" and decision.instance is not None and env.now < deadline:
                # A spill the peer or the cloud could not take: the local instance still can.
                result = yield from site.serve(decision.instance, deadline)
                outcome = "local" if result == SERVED else "reject"
                tier = "local" if result != REFUSED else "reject"
        site.logged(tier)
        if start >= self.scenario.warmup_s:
            latency_ms = (env.now - start) * 1000 + self.scenario.swarm.front_door_ms
            self.metrics.record(outcome, latency_ms, budget_ms)
            self.by_site[site.index].record(outcome, latency_ms, budget_ms)

    def _forward(self, site: SimSite, peer: PeerChoice, service: str, deadline: float) -> Process:
        """One forward: half the RTT there, the peer's own plan (forwarded: served there, sent to
        its cloud endpoint in its cloud mode, or refused), back."""
        env = self.env
        target = self.by_id[peer.site_id]
        forward = site.table.forward_started(peer.site_id, service)
        rtt_s = self._rtt_ms(site.index, target.index) / 1000
        extra_s = self.scenario.swarm.forward_extra_ms / 1000
        yield env.timeout(rtt_s / 2 + extra_s / 2)
        back_deadline = deadline - rtt_s / 2 - extra_s / 2
        left_ms = (back_deadline - env.now) * 1000
        decision = plan(PlanRequest(service=service, budget_ms=left_ms, forwarded=True), target.view(service))
        outcome: Outcome = "reject"
        tier: LogTier = "reject"
        if decision.tier == "local" and decision.instance is not None:
            result = yield from target.serve(decision.instance, deadline)
            outcome = "peer" if result == SERVED else "reject"
            tier = "local" if result != REFUSED else "reject"
        elif decision.tier == "cloud" and target.cloud is not None:
            outcome, tier = (yield from self._cloud(target, service, back_deadline)), "cloud"
        target.logged(tier)
        yield env.timeout(rtt_s / 2 + extra_s / 2)
        forward.done()
        return outcome

    def _cloud(self, site: SimSite, service: str, deadline: float) -> Process:
        """The service's cloud endpoint: "cloud", or "reject" when its answer would come after
        `deadline` (the forwarder gives up then, with a 504)."""
        assert site.cloud is not None
        target = site.cloud.targets[service]
        target.sent += 1
        answer_ms = _lognormal(self.cloud_rng, self.scenario.cloud.answer_ms, self.scenario.cloud.cv)
        left_s = deadline - self.env.now
        if answer_ms / 1000 > left_s:
            yield self.env.timeout(max(0.0, left_s))
            return "reject"
        yield self.env.timeout(answer_ms / 1000)
        target.answered_in(answer_ms)
        return "cloud"

    def _sample(self) -> Process:
        """Every `sample_interval_s`, each site steps its overload state; the site-time in each
        state (after the warm-up, within the duration) and the changes go to the metrics."""
        interval = self.scenario.swarm.sample_interval_s
        warmup, duration = self.scenario.warmup_s, self.scenario.duration_s
        while self.env.now + interval <= duration:
            yield self.env.timeout(interval)
            now = float(self.env.now)
            counted = min(interval, max(0.0, now - warmup))
            for site in self.sites:
                if counted > 0:
                    self.metrics.state_s[site.overload.state] += counted
                site.step_overload(now)
        self.metrics.transitions = sum(site.overload.transitions for site in self.sites)

    # The run.

    def run(self, progress: Callable[[float], None] | None = None) -> Metrics:
        """Simulate `duration_s` (plus the time to drain what is in flight); `progress` is called
        with the simulated seconds done, once per simulated second."""
        env = self.env
        for site in self.sites:
            if site.table.peer_ids or any(site.id in o.table.peer_ids for o in self.sites):
                env.process(self._gossip(site))
        for stream in self.streams:
            env.process(self._arrivals(stream))
        env.process(self._sample())
        duration = self.scenario.duration_s
        if progress is not None:

            def ticks() -> Process:
                done = 0.0
                while done < duration:
                    step = min(1.0, duration - done)
                    yield env.timeout(step)
                    done += step
                    progress(step)

            env.process(ticks())
        longest_budget_s = max(s.budget_ms for s in self.streams) / 1000 if self.streams else 0.0
        env.run(until=duration + 2 * longest_budget_s + 1.0)
        return self.metrics
