"""The dispatcher over real sockets: cache tenancy, coalescing, retry-once, the status mapping,
deadlines from arrival and admission before anything is sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from agent.admission import Admission, AdmissionSettings
from agent.dispatch import ClientCall, Dispatcher, Outcome, canonical_json, derive_cache_key
from agent.errors import SiteError
from agent.hedging import HedgeBudget
from agent.inflight import LocalLoadCounters
from agent.upstream import UpstreamPool
from agent.view import PeerChoice, ServiceView, View
from swarm.cloud import CloudChoice, CloudCompute
from tests.support.workloads import ScriptedWorkload, StaticRuntime, instance_for
from tools.cache_manager import CacheManager
from tools.caches.memory import MemoryCache
from tools.metrics_monitor import RequestLog
from tools.runtimes.base import free_port

SERVICES = {
    "svc": ServiceView("svc", False, True, 60.0, 2000, None, frozenset({"mobile"}), max_cache_ttl_s=600.0),
    "plain": ServiceView("plain", False, False, 60.0, 2000, None, frozenset({"mobile"})),
}


@dataclass
class Rig:
    dispatcher: Dispatcher
    runtime: StaticRuntime
    cache: CacheManager
    workloads: list[ScriptedWorkload]

    async def serve(self, payload: dict, service: str = "svc", tenant: str = "tenant-a", **extra) -> Outcome:
        return await self.dispatcher.serve(
            ClientCall(
                service=service,
                payload=payload,
                payload_json=canonical_json(payload),
                client_kind="mobile",
                client_id="c",
                tenant=tenant,
                **extra,
            )
        )


class PeerSite:
    """The swarm as the dispatcher sees it, at its edge: a balancer that always offers `site-p`,
    and a peer that answers every forwarded call (the peer itself is another process in a swarm:
    tests/e2e/test_swarm.py)."""

    def __init__(self, fails: bool = False) -> None:
        self.fails = fails
        self.asked: list[tuple[str, float]] = []
        self.forwarded: list[ClientCall] = []

    def __call__(self, service: str, budget_ms: float) -> PeerChoice | None:
        self.asked.append((service, budget_ms))
        return PeerChoice("site-p", "127.0.0.1", 1, predicted_ms=1.0, reason="test peer")

    async def forward(self, call: ClientCall, peer: PeerChoice, deadline: float) -> Outcome:
        self.forwarded.append(call)
        if self.fails:
            return Outcome.failed(SiteError(502, "peer_failed", "peer site-p failed"), call.service, "peer")
        return Outcome(200, call.service, "peer", "p-1", result_json=b'{"from":"peer"}', site=peer.site_id)


class CloudSite:
    """The cloud tier at the dispatcher's edge: the real `CloudCompute` choice over one endpoint,
    and a forwarder that answers every call (the HTTP exchange itself is tested against a real
    endpoint in tests/integration/test_cloud_compute.py)."""

    def __init__(self) -> None:
        self.endpoints = CloudCompute({"svc": "http://127.0.0.1:9/svc"}, assumed_rtt_ms=1.0)
        self.forwarded: list[ClientCall] = []

    async def forward(self, call: ClientCall, choice: CloudChoice, deadline: float) -> Outcome:
        self.forwarded.append(call)
        return Outcome(200, call.service, "cloud", choice.target, result_json=b'{"from":"cloud"}')


@pytest.fixture
async def make_rig() -> AsyncIterator[Callable[..., asyncio.Future[Rig]]]:
    opened: list[ScriptedWorkload] = []
    pools: list[UpstreamPool] = []

    async def make(
        healthy: int = 1,
        dead_first: bool = False,
        service: str = "svc",
        limit: int = 8,
        queue: int = 8,
        peer: PeerSite | None = None,
        spill_share: float = 1.0,
        hedge_share: float | None = None,
        cloud: CloudSite | None = None,
        cloud_mode: bool = False,
    ) -> Rig:
        instances = []
        workloads = []
        if dead_first:
            instances.append(instance_for(free_port(), service, f"{service}-0"))
        for index in range(healthy):
            workload = await ScriptedWorkload(f"{service}-{index + 1}").__aenter__()
            opened.append(workload)
            workloads.append(workload)
            instances.append(instance_for(workload, service, workload.name))
        runtime = StaticRuntime(instances)
        cache = CacheManager(MemoryCache(1000))
        pool = UpstreamPool()
        pools.append(pool)
        admission = Admission(
            LocalLoadCounters(), AdmissionSettings(max_limit=limit, initial_limit=limit, max_queue=queue)
        )

        def view_for(name: str) -> View:
            ready = runtime.ready_instances(name)
            loads = admission.loads(ready)
            return View(
                "site-t",
                SERVICES,
                {name: ready},
                loads,
                False,
                1,
                choose_peer=peer,
                spill_share=spill_share,
                hedge_share=hedge_share,
                cloud=None if cloud is None else cloud.endpoints,
                cloud_spill=cloud_mode,
            )

        dispatcher = Dispatcher(
            view_for, cache, runtime, RequestLog(), pool, admission, forwarder=peer, cloud=cloud
        )
        return Rig(dispatcher, runtime, cache, workloads)

    try:
        yield make  # type: ignore[misc]
    finally:
        for workload in opened:
            await workload.__aexit__()
        for pool in pools:
            await pool.close()


async def test_a_miss_is_served_then_cached_for_the_same_payload(make_rig) -> None:
    rig = await make_rig()
    first = await rig.serve({"q": 1})
    second = await rig.serve({"q": 1}, tenant="tenant-b")
    assert (first.status, first.tier, first.cached) == (200, "local", False)
    assert (second.tier, second.cached, second.result_json) == ("cache", True, first.result_json)
    assert rig.workloads[0].calls == 1


async def test_a_client_named_key_cannot_poison_the_shared_entry_of_a_payload(make_rig) -> None:
    rig = await make_rig()
    victim = {"q": "what is the weather"}
    digest = derive_cache_key(canonical_json(victim))
    for name in (digest, digest.removeprefix("p:")):
        attack = await rig.serve({"q": "evil"}, tenant="attacker", cache_key=name, cache_ttl_s=600)
        assert attack.status == 200
    answer = await rig.serve(victim, tenant="victim")
    assert answer.cached is False
    assert b"evil" not in (answer.result_json or b"")


async def test_a_client_named_key_lives_in_the_callers_own_space(make_rig) -> None:
    rig = await make_rig()
    mine = await rig.serve({"q": "mine"}, tenant="a", cache_key="home")
    theirs = await rig.serve({"q": "theirs"}, tenant="b", cache_key="home")
    again = await rig.serve({"q": "anything"}, tenant="a", cache_key="home")
    assert theirs.cached is False and b"theirs" in (theirs.result_json or b"")
    assert again.cached is True and again.result_json == mine.result_json
    stored = rig.cache.memory.namespaces()
    assert stored == {"svc": 2}


async def test_concurrent_misses_of_one_payload_share_one_upstream_call(make_rig) -> None:
    rig = await make_rig()
    payload = {"mode": "hold", "q": 1}
    calls = [asyncio.create_task(rig.serve(payload, tenant=f"t{i}")) for i in range(5)]
    await _until(lambda: rig.workloads[0].calls == 1)
    rig.workloads[0].release.set()
    outcomes = await asyncio.gather(*calls)
    assert {o.status for o in outcomes} == {200}
    assert len({o.result_json for o in outcomes}) == 1
    assert sum("coalesced" in o.timings_ms for o in outcomes) == 4
    assert rig.workloads[0].calls == 1


async def test_concurrent_misses_under_one_client_key_with_different_payloads_are_not_joined(
    make_rig,
) -> None:
    rig = await make_rig()
    first = asyncio.create_task(rig.serve({"mode": "hold", "q": "one"}, cache_key="k"))
    await _until(lambda: rig.workloads[0].calls == 1)
    second = asyncio.create_task(rig.serve({"mode": "hold", "q": "two"}, cache_key="k"))
    await _until(lambda: rig.workloads[0].calls == 2)
    rig.workloads[0].release.set()
    one, two = await asyncio.gather(first, second)
    assert b'"one"' in (one.result_json or b"") and b'"two"' in (two.result_json or b"")


async def test_cache_ttl_over_the_services_maximum_is_422_naming_it(make_rig) -> None:
    rig = await make_rig()
    outcome = await rig.serve({"q": 1}, cache_key="k", cache_ttl_s=7 * 24 * 3600)
    assert outcome.status == 422 and outcome.error is not None
    assert (outcome.error.code, outcome.error.field) == ("invalid_field", "cache_ttl_s")
    assert rig.workloads[0].calls == 0


async def test_a_refused_connection_is_retried_once_on_another_instance(make_rig) -> None:
    rig = await make_rig(healthy=1, dead_first=True, service="plain")
    outcome = await rig.serve({"q": 1}, service="plain")
    assert (outcome.status, outcome.target) == (200, "plain-1")
    assert rig.runtime.reported == ["plain-0"]


async def test_a_refused_connection_with_no_other_instance_is_502(make_rig) -> None:
    rig = await make_rig(healthy=0, dead_first=True, service="plain")
    outcome = await rig.serve({"q": 1}, service="plain")
    assert outcome.status == 502 and outcome.error is not None and outcome.error.code == "upstream_failed"


async def test_an_instance_error_is_502_and_counts_against_the_instance(make_rig) -> None:
    rig = await make_rig(service="plain")
    outcome = await rig.serve({"mode": "fail"}, service="plain")
    assert outcome.status == 502
    assert rig.runtime.reported == ["plain-1"]


async def test_a_rejected_payload_is_422_and_never_counts_against_the_instance(make_rig) -> None:
    rig = await make_rig(service="plain")
    outcome = await rig.serve({"mode": "reject"}, service="plain")
    assert outcome.status == 422 and outcome.error is not None
    assert outcome.error.field == "payload.value"
    assert rig.runtime.reported == []


async def test_no_ready_instance_is_503_with_retry_after(make_rig) -> None:
    rig = await make_rig(healthy=0, service="plain")
    outcome = await rig.serve({"q": 1}, service="plain")
    assert (outcome.status, outcome.tier, outcome.retry_after_s) == (503, "reject", 1)


async def test_a_hung_instance_is_504_and_taken_out_after_one_request(make_rig) -> None:
    rig = await make_rig(service="plain")
    outcome = await rig.serve({"mode": "hold"}, service="plain", latency_budget_ms=200)
    assert outcome.status == 504 and outcome.error is not None and outcome.error.code == "budget_exceeded"
    assert rig.runtime.reported == ["plain-1"]
    after = await rig.serve({"q": 1}, service="plain")
    assert after.status == 503  # not sent to the hung instance again


async def test_a_budget_too_tight_for_a_healthy_instance_does_not_take_it_out(make_rig) -> None:
    rig = await make_rig(service="plain")
    for _ in range(3):
        assert (await rig.serve({"q": 1}, service="plain")).status == 200
    outcome = await rig.serve({"mode": "wait", "ms": 100}, service="plain", latency_budget_ms=10)
    assert outcome.status == 504
    assert rig.runtime.reported == []
    assert (await rig.serve({"q": 2}, service="plain")).status == 200


async def test_an_answer_that_comes_after_the_deadline_is_504_never_200(make_rig) -> None:
    rig = await make_rig(service="plain")
    outcome = await rig.serve({"mode": "wait", "ms": 300}, service="plain", latency_budget_ms=150)
    assert outcome.status == 504 and outcome.error is not None
    assert outcome.error.code == "budget_exceeded"
    assert outcome.timings_ms["total"] >= 150


async def test_a_cacheable_answer_that_comes_too_late_is_504_but_cached_for_the_next_caller(make_rig) -> None:
    rig = await make_rig()
    payload = {"mode": "wait", "ms": 300, "q": "slow"}
    late = await rig.serve(payload, latency_budget_ms=150)
    assert late.status == 504
    await _until(lambda: rig.cache.memory.namespaces().get("svc", 0) == 1)
    again = await rig.serve(payload, latency_budget_ms=150)
    assert (again.status, again.tier, again.cached) == (200, "cache", True)
    assert rig.workloads[0].calls == 1


async def test_the_budget_runs_from_arrival_so_time_spent_before_the_dispatcher_counts(make_rig) -> None:
    rig = await make_rig(service="plain")
    waited = await rig.serve(
        {"q": 1}, service="plain", latency_budget_ms=50, arrived=time.perf_counter() - 0.2
    )
    assert waited.status == 504
    assert waited.timings_ms["wait"] >= 200
    assert rig.workloads[0].calls == 0


async def test_a_lagging_event_loop_counts_against_the_budget(make_rig) -> None:
    rig = await make_rig(service="plain")
    rig.dispatcher.admission.lag.lag_ms = 30.0  # requests waited about that long unread
    outcome = await rig.serve({"q": 1}, service="plain", latency_budget_ms=20)
    assert (
        outcome.status == 504 and outcome.error is not None and "runs 30.0 ms late" in outcome.error.message
    )
    assert rig.workloads[0].calls == 0
    assert (await rig.serve({"q": 1}, service="plain", latency_budget_ms=100)).status == 200


async def test_a_request_predicted_to_miss_its_budget_is_503_without_reaching_the_workload(make_rig) -> None:
    rig = await make_rig(service="plain")
    for _ in range(2):  # the instance shows it takes about 150 ms per request
        assert (await rig.serve({"mode": "wait", "ms": 150}, service="plain")).status == 200
    calls = rig.workloads[0].calls
    refused = await rig.serve({"q": 1}, service="plain", latency_budget_ms=50)
    assert (refused.status, refused.retry_after_s) == (503, 1)
    assert refused.error is not None and refused.error.code == "no_capacity"
    assert "within the" in refused.error.message
    assert rig.workloads[0].calls == calls


async def test_a_request_queued_behind_a_busy_instance_is_504_unsent_when_no_slot_comes_in_time(
    make_rig,
) -> None:
    rig = await make_rig(service="plain", limit=1)
    held = asyncio.create_task(rig.serve({"mode": "hold"}, service="plain"))
    await _until(lambda: rig.workloads[0].calls == 1)
    queued = await rig.serve({"q": 1}, service="plain", latency_budget_ms=100)
    assert queued.status == 504 and queued.error is not None and "not sent" in queued.error.message
    assert queued.timings_ms["queue"] > 0
    assert rig.workloads[0].calls == 1
    rig.workloads[0].release.set()
    assert (await held).status == 200


async def test_a_request_for_an_instance_whose_queue_is_full_is_503_at_once(make_rig) -> None:
    rig = await make_rig(service="plain", limit=1, queue=1)
    held = asyncio.create_task(rig.serve({"mode": "hold"}, service="plain"))
    await _until(lambda: rig.workloads[0].calls == 1)
    waiting = asyncio.create_task(rig.serve({"q": 1}, service="plain"))
    await _until(lambda: rig.dispatcher.admission.gates["plain-1"].queued == 1)
    refused = await rig.serve({"q": 2}, service="plain")
    assert (refused.status, refused.retry_after_s) == (503, 1)
    assert refused.error is not None and "capacity" in refused.error.message
    assert "queue" not in refused.timings_ms and rig.workloads[0].calls == 1
    rig.workloads[0].release.set()
    assert [o.status for o in await asyncio.gather(held, waiting)] == [200, 200]


async def test_a_queued_request_is_sent_when_the_slot_frees_in_time(make_rig) -> None:
    rig = await make_rig(service="plain", limit=1)
    held = asyncio.create_task(rig.serve({"mode": "hold"}, service="plain"))
    await _until(lambda: rig.workloads[0].calls == 1)
    queued = asyncio.create_task(rig.serve({"q": 1}, service="plain"))
    await _until(lambda: rig.dispatcher.admission.gates["plain-1"].queued == 1)
    rig.workloads[0].release.set()
    assert (await held).status == 200
    outcome = await queued
    assert outcome.status == 200 and "queue" in outcome.timings_ms


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_a_request_no_local_instance_has_room_for_goes_to_the_peer_the_balancer_offers(
    make_rig,
) -> None:
    peer = PeerSite()
    rig = await make_rig(service="plain", limit=1, queue=0, peer=peer)
    held = asyncio.create_task(rig.serve({"mode": "hold"}, service="plain"))
    await _until(lambda: rig.workloads[0].calls == 1)
    served = await rig.serve({"q": 1}, service="plain")
    assert (served.status, served.tier, served.site, served.result_json) == (
        200,
        "peer",
        "site-p",
        b'{"from":"peer"}',
    )
    assert "peer" in served.timings_ms and rig.workloads[0].calls == 1
    assert [call.payload for call in peer.forwarded] == [{"q": 1}]
    assert peer.asked and peer.asked[0][0] == "plain" and 0 < peer.asked[0][1] <= 2000
    rig.workloads[0].release.set()
    assert (await held).tier == "local"


async def test_a_request_a_peer_forwarded_here_is_refused_never_forwarded_again(make_rig) -> None:
    peer = PeerSite()
    rig = await make_rig(service="plain", limit=1, queue=0, peer=peer)
    held = asyncio.create_task(rig.serve({"mode": "hold"}, service="plain"))
    await _until(lambda: rig.workloads[0].calls == 1)
    refused = await rig.serve({"q": 1}, service="plain", forwarded=True)
    assert (refused.status, refused.tier) == (503, "reject")
    assert refused.error is not None and "not forwarded again" in refused.error.message
    assert peer.forwarded == [] and peer.asked == []
    rig.workloads[0].release.set()
    await held


async def test_once_the_local_instance_is_predicted_past_the_spill_share_a_sooner_peer_serves(
    make_rig,
) -> None:
    peer = PeerSite()
    rig = await make_rig(service="plain", peer=peer, spill_share=1e-6)
    first = await rig.serve({"q": 1}, service="plain")  # an idle, untried instance predicts 0 ms
    second = await rig.serve({"q": 2}, service="plain")  # now it predicts its measured cost
    assert first.tier == "local"
    assert (second.status, second.tier, second.site) == (200, "peer", "site-p")
    assert [call.payload for call in peer.forwarded] == [{"q": 2}] and rig.workloads[0].calls == 1


async def test_a_spill_the_peer_cannot_take_is_served_by_the_local_instance(make_rig) -> None:
    peer = PeerSite(fails=True)
    rig = await make_rig(service="plain", peer=peer, spill_share=1e-6)
    await rig.serve({"q": 1}, service="plain")
    second = await rig.serve({"q": 2}, service="plain")
    assert (second.status, second.tier) == (200, "local")
    assert [call.payload for call in peer.forwarded] == [{"q": 2}] and rig.workloads[0].calls == 2


async def test_a_cacheable_call_still_unanswered_at_the_hedge_point_is_answered_by_a_peer(make_rig) -> None:
    peer = PeerSite()
    rig = await make_rig(peer=peer, hedge_share=0.01)  # 20 ms of the 2 s budget
    hedged = await rig.serve({"mode": "hold"})
    assert (hedged.status, hedged.tier, hedged.site) == (200, "peer", "site-p")
    assert [call.payload for call in peer.forwarded] == [{"mode": "hold"}]
    assert (rig.dispatcher.hedged, rig.dispatcher.hedges_won) == (1, 1)
    rig.workloads[0].release.set()  # the local call was left running: its answer fills the cache
    deadline = asyncio.get_running_loop().time() + 10
    while (again := await rig.serve({"mode": "hold"})).tier != "cache":
        assert asyncio.get_running_loop().time() < deadline, "the local answer never reached the cache"
        await asyncio.sleep(0.01)
    assert b"served_by" in (again.result_json or b"") and rig.workloads[0].calls == 1


async def test_a_call_answered_before_the_hedge_point_is_not_sent_to_a_peer(make_rig) -> None:
    peer = PeerSite()
    rig = await make_rig(peer=peer, hedge_share=0.9)
    served = await rig.serve({"q": 1})
    assert (served.status, served.tier) == (200, "local")
    assert peer.asked == [] and peer.forwarded == [] and rig.dispatcher.hedged == 0


async def test_a_call_to_an_uncacheable_service_is_never_hedged(make_rig) -> None:
    peer = PeerSite()
    rig = await make_rig(service="plain", peer=peer, hedge_share=0.01)
    late = await rig.serve({"mode": "hold"}, service="plain", latency_budget_ms=100)
    assert (late.status, late.tier) == (504, "local")
    assert peer.forwarded == [] and rig.dispatcher.hedged == 0
    rig.workloads[0].release.set()


async def test_a_slow_call_waits_for_its_instance_once_the_hedge_budget_is_spent(make_rig) -> None:
    peer = PeerSite()
    rig = await make_rig(peer=peer, hedge_share=0.01)
    rig.dispatcher.hedges = HedgeBudget(ratio=0.1, burst=1, tokens=0)
    waiting = asyncio.create_task(rig.serve({"mode": "hold"}))
    await _until(lambda: rig.dispatcher.hedges.refused == 1)
    assert not waiting.done() and peer.forwarded == []
    rig.workloads[0].release.set()
    assert (await waiting).tier == "local"


async def test_in_cloud_mode_a_slow_call_is_hedged_to_the_cloud_not_to_a_busy_peer(make_rig) -> None:
    peer, cloud = PeerSite(), CloudSite()
    rig = await make_rig(peer=peer, hedge_share=0.01, cloud=cloud, cloud_mode=True)
    hedged = await rig.serve({"mode": "hold"})
    assert (hedged.status, hedged.tier) == (200, "cloud")
    assert [call.payload for call in cloud.forwarded] == [{"mode": "hold"}] and peer.forwarded == []
    assert (rig.dispatcher.hedged, rig.dispatcher.hedges_won) == (1, 1)
    rig.workloads[0].release.set()


async def test_out_of_cloud_mode_a_slow_call_is_hedged_to_a_peer(make_rig) -> None:
    peer, cloud = PeerSite(), CloudSite()
    rig = await make_rig(peer=peer, hedge_share=0.01, cloud=cloud, cloud_mode=False)
    hedged = await rig.serve({"mode": "hold"})
    assert (hedged.status, hedged.tier) == (200, "peer") and cloud.forwarded == []
    rig.workloads[0].release.set()


class TwoPeers(PeerSite):
    """The balancer offers site-a, then site-b; site-a holds every request until its deadline."""

    def __call__(self, service: str, budget_ms: float) -> PeerChoice | None:
        self.asked.append((service, budget_ms))
        site = "site-a" if len(self.asked) == 1 else "site-b"
        return PeerChoice(site, "127.0.0.1", 1, predicted_ms=1.0, reason="test peer")

    async def forward(self, call: ClientCall, peer: PeerChoice, deadline: float) -> Outcome:
        self.forwarded.append(call)
        if peer.site_id == "site-a":
            await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
            error = SiteError(
                504, "budget_exceeded", "the latency budget ran out before peer site-a answered"
            )
            return Outcome.failed(error, call.service, "peer", "site-a")
        return Outcome(200, call.service, "peer", "b-1", result_json=b'{"from":"site-b"}', site="site-b")


async def test_a_forward_still_unanswered_at_the_hedge_point_is_also_sent_to_another_peer(make_rig) -> None:
    peer = TwoPeers()
    rig = await make_rig(healthy=0, peer=peer, hedge_share=0.01)  # no local instance: peers only
    served = await rig.serve({"q": "slow peer"}, latency_budget_ms=1000)
    assert (served.status, served.tier, served.site, served.result_json) == (
        200,
        "peer",
        "site-b",
        b'{"from":"site-b"}',
    )
    assert len(peer.forwarded) == 2 and (rig.dispatcher.hedged, rig.dispatcher.hedges_won) == (1, 1)
