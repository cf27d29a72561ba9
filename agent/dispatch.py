"""Carry out a plan: one cache read, one pure `plan()`, at most one upstream exchange.

The budget runs from the request's arrival at the site (`ClientCall.arrived`), so whatever the site
spent before the dispatcher saw it counts. Admission is decided before anything is queued or sent:
`plan()` refuses (503) what no instance is predicted to answer in time, and the instance's gate
(`agent.admission`) holds a request in a short, bounded queue only while its budget still covers
the instance's latency. The upstream exchange is one call with one hard limit; the caller waits
for it no longer than its own deadline, and an answer that comes later is never sent as a 200 (it
is a 504) — though a cacheable one is still stored for the next caller, and the exchange's real
latency still teaches the instance's gate.

The result travels as the raw JSON bytes the workload (or the cache) produced; nothing is parsed
and re-serialised on the way through.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol

from agent.admission import Admission, InstanceGate
from agent.errors import SiteError
from agent.hedging import HedgeBudget
from agent.request_trace import RequestTracer
from agent.router import Plan, PlanRequest, Tier, plan
from agent.scopes import Principal
from agent.upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)
from agent.view import PeerChoice, ServiceView, View
from swarm.cloud import CloudChoice
from tools.cache_manager import CacheManager
from tools.metrics_monitor import RequestLog
from tools.runtimes.base import Runtime


@dataclass(frozen=True, slots=True)
class ClientCall:
    """A validated client request, as the dispatcher needs it."""

    service: str
    payload: Mapping[str, Any]
    payload_json: bytes
    client_kind: str
    client_id: str
    latency_budget_ms: int | None = None
    cache_key: str | None = None
    cache_ttl_s: float | None = None
    tenant: str = ""
    """The caller's own space (`Principal.tenant`): where a client-named `cache_key` lives."""
    arrived: float | None = None
    """When the request reached the site (`time.perf_counter()`); its budget runs from here.
    None: from when the dispatcher sees it."""
    caller: Principal | None = None
    """Who asks (travels with a request forwarded to a peer, so its scopes and tenant hold there)."""
    forwarded: bool = False
    """A peer forwarded this request here: it is served here or refused, never forwarded again."""


@dataclass(slots=True)
class Outcome:
    """What happened to one request; the API turns it into a response."""

    status: int
    service: str
    tier: Tier
    target: str
    result_json: bytes | None = None
    cached: bool = False
    error: SiteError | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    site: str | None = None
    """The site that served it when not this one (a peer)."""

    @classmethod
    def failed(cls, error: SiteError, service: str, tier: Tier = "reject", target: str = "") -> Outcome:
        """A request that ended in `error`, answered with its status."""
        return cls(error.status, service, tier, target, error=error)

    @property
    def retry_after_s(self) -> int | None:
        return None if self.error is None else self.error.retry_after_s


SUSPECT_MIN_WAIT_MS = 20.0
SUSPECT_SLOWDOWN = 8.0
"""A call that timed out after waiting at least this many times the service's usual upstream time
(and at least `SUSPECT_MIN_WAIT_MS`) counts against its instance."""
TYPICAL_EWMA_ALPHA = 0.1


class CloudSender(Protocol):
    """Sends a request to its service's cloud endpoint (`agent.cloud_forwarding.CloudForwarder`)."""

    async def forward(self, call: ClientCall, choice: CloudChoice, deadline: float) -> Outcome:
        """The endpoint's answer; 502/503/504 when it fails, refuses or runs past `deadline`."""
        ...


class BedrockSender(Protocol):
    """Answers an `llm` service's request through Bedrock (`agent.bedrock_fallback.BedrockFallback`)."""

    async def answer(self, call: ClientCall, deadline: float) -> Outcome:
        """Bedrock's answer; 422/502/503/504 when the payload is bad, it fails, refuses or runs late."""
        ...


class Forwarder(Protocol):
    """Sends a request to a peer site and turns its answer into this site's `Outcome`
    (`agent.forwarding.PeerForwarder`)."""

    async def forward(self, call: ClientCall, peer: PeerChoice, deadline: float) -> Outcome:
        """The peer's answer, or a 502/504 when it fails or runs past `deadline`."""
        ...


UNKNOWN_SERVICE = "(unknown)"
"""The name requests for services the site does not know are counted under (bounds label sets)."""


def payload_digest(payload_json: bytes) -> str:
    """A digest of a payload's canonical JSON: equal digests mean equal payload bytes."""
    return hashlib.blake2b(payload_json, digest_size=16).hexdigest()


def derive_cache_key(payload_json: bytes) -> str:
    """The shared cache key of a payload when the client names none.

    The answer depends only on the payload, so every caller of that payload shares the entry.
    """
    return f"p:{payload_digest(payload_json)}"


def tenant_cache_key(tenant: str, cache_key: str) -> str:
    """Where a client-named `cache_key` is stored: in the caller's own space, never a shared one."""
    return f"k:{tenant}:{cache_key}"


def _ms(since: float, until: float) -> float:
    return round((until - since) * 1000, 3)


@dataclass(slots=True)
class _Sent:
    """Where and when the latest exchange of one call went (for telling a hung instance)."""

    instance_id: str = ""
    at: float = 0.0


@dataclass(slots=True)
class _Job:
    """One request on its way to an instance: what was asked, where it was planned, its deadline.

    `request` and `plan` change when a refused connection sends it to another instance."""

    call: ClientCall
    service: ServiceView
    request: PlanRequest
    plan: Plan
    view: View
    deadline: float
    timings: dict[str, float]
    sent: _Sent = field(default_factory=_Sent)


@dataclass(slots=True)
class _SharedCall:
    """One upstream call that concurrent misses of the same cache key all wait for."""

    task: asyncio.Task[Outcome]
    sent: _Sent


def _workload_error(response: UpstreamResponse) -> SiteError:
    """The workload's own JSON error (a 413 stays one, any other 4xx is a 422), with its field
    placed under `payload`."""
    status = 413 if response.status == 413 else 422
    try:
        error = json.loads(response.body)["error"]
        field_name = error.get("field")
        if field_name and not str(field_name).startswith("payload"):
            field_name = f"payload.{field_name}"
        return SiteError(status, str(error.get("code", "invalid_payload")), str(error["message"]), field_name)
    except (ValueError, KeyError, TypeError):
        return SiteError(status, "invalid_payload", f"the service rejected the payload ({response.status})")


class Dispatcher:
    """Serves client calls on the fast path: cache → plan → one instance, within the budget."""

    def __init__(
        self,
        view_for: Callable[[str], View],
        cache: CacheManager,
        runtime: Runtime,
        requests: RequestLog,
        upstream: UpstreamPool,
        admission: Admission,
        upstream_timeout_s: float = 5.0,
        forwarder: Forwarder | None = None,
        cloud: CloudSender | None = None,
        bedrock: BedrockSender | None = None,
    ) -> None:
        self._view_for = view_for
        self.cache = cache
        self.runtime = runtime
        self.requests = requests
        self.upstream = upstream
        self.admission = admission
        self.upstream_timeout_s = upstream_timeout_s
        """Hard limit of one exchange, whoever still waits for it (a hung instance's calls end)."""
        self.forwarder = forwarder
        self.cloud = cloud
        """How requests reach peer sites; None: a site on its own."""
        self.tracer: RequestTracer | None = None
        """One span per finished request when tracing is on (set by the site); None: no tracing,
        and the fast path pays one test of this attribute."""
        self.bedrock = bedrock
        """How `llm` services' requests reach Bedrock; None: no Bedrock fallback."""
        self._shared: dict[tuple[str, str, str], _SharedCall] = {}
        self._typical_ms: dict[str, float] = {}
        self.late = 0
        self.hedges = HedgeBudget()
        self.hedged = 0
        """Local calls also sent to a peer because they were slow (`_hedged`)."""
        self.hedges_won = 0
        """Of those, the ones the peer answered first."""
        """Answers that were ready after their budget (sent as 504, never as 200)."""

    async def serve(self, call: ClientCall) -> Outcome:
        entered = time.perf_counter()
        arrived = entered if call.arrived is None else min(call.arrived, entered)
        timings: dict[str, float] = {}
        if call.arrived is not None:
            timings["wait"] = _ms(arrived, entered)
        view = self._view_for(call.service)
        service = view.services.get(call.service)
        if service is None:
            error = SiteError(
                404,
                "unknown_service",
                f"unknown service {call.service!r}; known: {sorted(view.services)}",
                "service",
            )
            return self._finish(call, arrived, math.inf, timings, Outcome.failed(error, UNKNOWN_SERVICE))
        if call.client_kind not in service.client_kinds:
            error = SiteError(
                403,
                "client_kind_not_allowed",
                f"service {service.name!r} serves {sorted(service.client_kinds)} clients, not {call.client_kind!r}",
                "client.kind",
            )
            return self._finish(call, arrived, math.inf, timings, Outcome.failed(error, call.service))
        if call.cache_ttl_s is not None and call.cache_ttl_s > service.max_cache_ttl_s:
            error = SiteError(
                422,
                "invalid_field",
                f"cache_ttl_s: at most {service.max_cache_ttl_s:g} s for service {service.name!r}",
                "cache_ttl_s",
            )
            return self._finish(call, arrived, math.inf, timings, Outcome.failed(error, call.service))

        budget_ms = call.latency_budget_ms or service.default_budget_ms
        # The request may have waited unseen in socket buffers before the loop read it, about as
        # long as the loop runs late: that much of the budget is already gone.
        deadline = arrived + (budget_ms - self.admission.lag_ms) / 1000
        if entered >= deadline:
            error = SiteError(
                504,
                "budget_exceeded",
                f"the {budget_ms} ms budget was gone before the dispatcher started: the request waited "
                f"{_ms(arrived, entered)} ms at the site, whose event loop runs {self.admission.lag_ms:.1f} ms late",
            )
            return self._finish(
                call, arrived, deadline, timings, Outcome.failed(error, service.name), budget_ms
            )
        cache_key = self._cache_key(call, service)
        cached: bytes | None = None
        if cache_key is not None:
            cached = await self.cache.get(service.name, cache_key)
        after_cache = time.perf_counter()

        affinity = call.payload.get(service.affinity_key) if service.affinity_key else None
        request = PlanRequest(
            service=service.name,
            cached=cached is not None,
            affinity=None if affinity is None else str(affinity),
            budget_ms=(deadline - after_cache) * 1000,
            forwarded=call.forwarded,
        )
        decision = plan(request, view)
        after_plan = time.perf_counter()
        timings["cache"] = _ms(entered, after_cache)
        timings["plan"] = _ms(after_cache, after_plan)

        if decision.tier == "cache":
            outcome = Outcome(200, service.name, "cache", "cache", result_json=cached, cached=True)
        elif decision.tier == "local":
            job = _Job(call, service, request, decision, view, deadline, timings)
            if cache_key is not None and view.hedge_share is not None and not call.forwarded:
                hedge_at = arrived + view.hedge_share * budget_ms / 1000
                outcome = await self._hedged(job, cache_key, hedge_at)
            else:
                outcome = await self._serve_local(job, cache_key)
            if outcome.tier == "reject" and outcome.status == 503 and not call.forwarded:
                # The instance's gate refused it before anything was sent (its queue was full, or
                # standing): a peer with room may still answer within what is left.
                peer = self._peer_for(view, service.name, deadline)
                bedrock = None if peer is not None else self._bedrock_for(view, service.name, deadline)
                cloud = (
                    None
                    if peer is not None or bedrock is not None
                    else self._cloud_for(view, service.name, deadline)
                )
                if peer is not None:
                    outcome = await self._forward(call, peer, deadline, timings)
                elif bedrock is not None:
                    outcome = await self._ask_bedrock(call, deadline, timings, cache_key, service)
                elif cloud is not None:
                    outcome = await self._to_cloud(call, cloud, deadline, timings)
            elif outcome.tier == "local" and outcome.status == 502 and not call.forwarded:
                # The local model failed before answering (its server is down, or it broke off):
                # an `llm` service's question can still go to Bedrock within what is left.
                if self._bedrock_for(view, service.name, deadline) is not None:
                    outcome = await self._ask_bedrock(call, deadline, timings, cache_key, service)
        elif decision.tier == "cloud" and decision.bedrock is not None and self.bedrock is not None:
            outcome = await self._ask_bedrock(call, deadline, timings, cache_key, service)
        elif decision.tier == "cloud" and decision.cloud is not None and self.cloud is not None:
            outcome = await self._to_cloud(call, decision.cloud, deadline, timings)
            if (
                decision.instance is not None
                and outcome.status in (502, 503)
                and time.perf_counter() < deadline
            ):
                # A spill to the cloud (cloud mode) the endpoint could not take: the local instance can.
                local = replace(decision, tier="local", cloud=None)
                outcome = await self._serve_local(
                    _Job(call, service, request, local, view, deadline, timings), cache_key
                )
        elif decision.tier == "peer" and decision.peer is not None:
            first = decision.peer
            if cache_key is not None and view.hedge_share is not None and not call.forwarded:
                hedge_at = arrived + view.hedge_share * budget_ms / 1000
                outcome = await self._race(
                    self._forward(call, first, deadline, timings),
                    lambda: self._other_peer(view, service.name, deadline, first.site_id, call, timings),
                    hedge_at,
                )
            else:
                outcome = await self._forward(call, first, deadline, timings)
            if (
                decision.instance is not None
                and outcome.status in (502, 503)
                and time.perf_counter() < deadline
            ):
                # A spill (`router._spill`) the peer could not take: the local instance still can.
                local = replace(decision, tier="local", peer=None)
                job = _Job(call, service, request, local, view, deadline, timings)
                outcome = await self._serve_local(job, cache_key)
        else:
            outcome = self._reject(service.name, decision)
        return self._finish(
            call, arrived, deadline, timings, outcome, budget_ms, cacheable=cache_key is not None
        )

    async def _serve_local(self, job: _Job, cache_key: str | None) -> Outcome:
        """Call the planned local instance; concurrent misses of one cache key share the call."""
        if cache_key is not None:
            return await self._call_once_per_key(job, cache_key)
        return await self._call_instance(job)

    async def _hedged(self, job: _Job, cache_key: str, hedge_at: float) -> Outcome:
        """A cacheable request's local call, hedged: if it has not answered by `hedge_at`, the same
        request also goes to a peer that can answer in what is left (in cloud mode, to the cloud
        endpoint first: every peer is busy then), and the first 200 wins.

        After "The Tail at Scale" (Dean and Barroso, 2013): a request still unanswered well past
        its expected time is the tail, and a second copy elsewhere cuts it for a few percent more
        load. Only cacheable services are hedged: their answer depends only on the payload, so
        computing it twice is harmless. The local call is not cancelled when the peer wins: it is
        the shared call of its cache key, and its answer fills the cache when it comes. Hedges are
        paid from `self.hedges` (at most a tenth of the hedgeable requests, over time).
        """

        def elsewhere() -> Coroutine[Any, Any, Outcome] | None:
            if job.view.cloud_spill:  # cloud mode: the swarm is saturated, so the cloud is the spare
                cloud = self._cloud_for(job.view, job.service.name, job.deadline)
                if cloud is not None:
                    return self._to_cloud(job.call, cloud, job.deadline, job.timings)
            peer = self._peer_for(job.view, job.service.name, job.deadline)
            return None if peer is None else self._forward(job.call, peer, job.deadline, job.timings)

        return await self._race(self._call_once_per_key(job, cache_key), elsewhere, hedge_at)

    async def _to_cloud(
        self, call: ClientCall, choice: CloudChoice, deadline: float, timings: dict[str, float]
    ) -> Outcome:
        assert self.cloud is not None  # `_cloud_for` offers a choice only with a forwarder
        sent = time.perf_counter()
        outcome = await self.cloud.forward(call, choice, deadline)
        timings["cloud"] = _ms(sent, time.perf_counter())
        return outcome

    async def _race(
        self,
        first: Coroutine[Any, Any, Outcome],
        second: Callable[[], Coroutine[Any, Any, Outcome] | None],
        hedge_at: float,
    ) -> Outcome:
        """`first`, and from `hedge_at`, if it has not answered, also `second()` (None: nowhere to
        hedge to, or no hedge left in the budget): the first 200 wins, else `first`'s outcome."""
        self.hedges.deposit()
        primary: asyncio.Future[Outcome] = asyncio.ensure_future(first)
        done, _ = await asyncio.wait((primary,), timeout=max(0.0, hedge_at - time.perf_counter()))
        if done:
            return primary.result()
        if not self.hedges.withdraw():
            return await primary
        hedge = second()
        if hedge is None:  # nowhere to send it: the token goes back
            self.hedges.refund()
            return await primary
        self.hedged += 1
        backup: asyncio.Future[Outcome] = asyncio.ensure_future(hedge)
        pending: set[asyncio.Future[Outcome]] = {primary, backup}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                if finished.result().status == 200:
                    if finished is backup:
                        self.hedges_won += 1
                    for loser in pending:  # it ends by its own deadline; nobody waits for it
                        loser.add_done_callback(_discard)
                    return finished.result()
        return primary.result()  # neither answered: the first call's error says what went wrong

    def _other_peer(
        self,
        view: View,
        service: str,
        deadline: float,
        first: str,
        call: ClientCall,
        timings: dict[str, float],
    ) -> Coroutine[Any, Any, Outcome] | None:
        """A hedge for a slow forward: another peer that can answer in what is left (None if the
        balancer offers only the one already asked)."""
        peer = self._peer_for(view, service, deadline)
        if peer is None or peer.site_id == first:
            return None
        return self._forward(call, peer, deadline, timings)

    def _peer_for(self, view: View, service: str, deadline: float) -> PeerChoice | None:
        """A peer for a request the local instances refused, if the swarm has one in time."""
        if self.forwarder is None or view.choose_peer is None:
            return None
        left_ms = (deadline - time.perf_counter()) * 1000
        return view.choose_peer(service, left_ms) if left_ms > 0 else None

    def _cloud_for(self, view: View, service: str, deadline: float) -> CloudChoice | None:
        """The service's cloud endpoint for a request no local instance or peer took, if in time."""
        if self.cloud is None or view.cloud is None:
            return None
        left_ms = (deadline - time.perf_counter()) * 1000
        return view.cloud.choice(service, left_ms) if left_ms > 0 else None

    def _bedrock_for(self, view: View, service: str, deadline: float) -> CloudChoice | None:
        """Bedrock for an `llm` request no local instance answered, if it is expected in time."""
        if self.bedrock is None or view.bedrock is None:
            return None
        left_ms = (deadline - time.perf_counter()) * 1000
        return view.bedrock.choice(service, left_ms) if left_ms > 0 else None

    async def _ask_bedrock(
        self,
        call: ClientCall,
        deadline: float,
        timings: dict[str, float],
        cache_key: str | None,
        service: ServiceView,
    ) -> Outcome:
        """Bedrock's answer; a cacheable service's answer is stored like a local one."""
        assert self.bedrock is not None
        sent = time.perf_counter()
        outcome = await self.bedrock.answer(call, deadline)
        timings["bedrock"] = _ms(sent, time.perf_counter())
        if outcome.status == 200 and outcome.result_json is not None and cache_key is not None:
            ttl = call.cache_ttl_s or service.cache_ttl_s
            await self.cache.set(service.name, cache_key, outcome.result_json, ttl)
        return outcome

    async def _forward(
        self, call: ClientCall, peer: PeerChoice, deadline: float, timings: dict[str, float]
    ) -> Outcome:
        if self.forwarder is None:
            error = SiteError(503, "no_capacity", "no peer is configured", retry_after_s=1)
            return Outcome.failed(error, call.service)
        sent = time.perf_counter()
        outcome = await self.forwarder.forward(call, peer, deadline)
        timings["peer"] = _ms(sent, time.perf_counter())
        return outcome

    async def _call_once_per_key(self, job: _Job, cache_key: str) -> Outcome:
        """A cacheable miss: concurrent misses of one key share one upstream call (no stampede).

        The call runs on its own: each caller (the first included) waits for it within its own
        budget, and its answer is cached when it comes, even after every caller has given up.
        """
        # Only requests with the same payload bytes share a call. A derived key already is the
        # payload's digest; under a client-named key two callers may ask different things.
        call, service = job.call, job.service
        asked = "" if call.cache_key is None else payload_digest(call.payload_json)
        slot = (service.name, cache_key, asked)
        shared = self._shared.get(slot)
        follower = shared is not None
        if shared is None:
            task = asyncio.get_running_loop().create_task(self._fill(job, cache_key))
            shared = self._shared[slot] = _SharedCall(task, job.sent)
            task.add_done_callback(lambda _: self._shared.pop(slot, None))
        waited = time.perf_counter()
        if not shared.task.done():
            done, _ = await asyncio.wait((shared.task,), timeout=max(0.0, job.deadline - waited))
            if not done:
                self._judge_hung(service.name, shared.sent)
                return self._timeout(service.name, shared.sent.instance_id)
        if shared.task.cancelled():
            error = SiteError(502, "upstream_failed", "the shared upstream call was cancelled")
            return Outcome.failed(error, service.name, "local")
        result = shared.task.result()
        if follower:
            job.timings["coalesced"] = _ms(waited, time.perf_counter())
        return Outcome(
            result.status, result.service, result.tier, result.target, result.result_json, error=result.error
        )

    async def _fill(self, job: _Job, cache_key: str) -> Outcome:
        """The shared call of `_call_once_per_key`: to the end of the exchange, then into the cache."""
        outcome = await self._call_instance(job, wait_until=math.inf)
        if outcome.status == 200 and outcome.result_json is not None:
            ttl = job.call.cache_ttl_s or job.service.cache_ttl_s
            await self.cache.set(job.service.name, cache_key, outcome.result_json, ttl)
        return outcome

    @staticmethod
    def _cache_key(call: ClientCall, service: ServiceView) -> str | None:
        """The stored name of this request's answer: the caller's own key, else the payload's."""
        if not service.cacheable:
            return None
        if call.cache_key is not None:
            return tenant_cache_key(call.tenant, call.cache_key)
        return derive_cache_key(call.payload_json)

    async def _call_instance(self, job: _Job, wait_until: float | None = None) -> Outcome:
        """Send the payload to the planned instance once a slot is free; on a refused connection,
        re-plan once. The caller waits until `wait_until` (default: the deadline)."""
        service, view, deadline, timings, sent = job.service, job.view, job.deadline, job.timings, job.sent
        wait_until = deadline if wait_until is None else wait_until
        for attempt in range(2):
            instance = job.plan.instance
            assert instance is not None
            gate = self.admission.gate(instance)
            if not gate.try_acquire():
                if gate.queue_full:
                    return self._no_slot(service.name, instance.id, view.retry_after_s)
                queued = time.perf_counter()
                granted = await gate.acquire(deadline)
                now = time.perf_counter()
                waited = timings["queue"] = _ms(queued, now)
                if not granted and now >= deadline:
                    return self._queued_out(service.name, instance.id, waited)
                if not granted:  # refused early: behind a standing queue, or too little budget left
                    return self._no_slot(service.name, instance.id, view.retry_after_s, waited)
            now = time.perf_counter()
            if now >= deadline:
                gate.release(None, 0)
                return self._timeout(service.name, instance.id)
            sent.instance_id, sent.at = instance.id, now
            exchange = self.upstream.request(
                instance.host, instance.port, "/invoke", job.call.payload_json, self.upstream_timeout_s
            )
            exchange.add_done_callback(partial(self._settle, gate, service.name, now, gate.inflight))
            if not exchange.done():
                timeout = None if math.isinf(wait_until) else max(0.0, wait_until - now)
                done, _ = await asyncio.wait((exchange,), timeout=timeout)
                if not done:
                    timings["upstream"] = _ms(now, time.perf_counter())
                    self._judge_hung(service.name, sent)
                    return self._timeout(service.name, instance.id)
            timings["upstream"] = _ms(now, time.perf_counter())
            try:
                response = exchange.result()
            except UpstreamConnectError as exc:
                self.runtime.report_failure(instance.id)
                retry = PlanRequest(
                    service=job.request.service,
                    affinity=job.request.affinity,
                    exclude=job.request.exclude | {instance.id},
                    budget_ms=(deadline - time.perf_counter()) * 1000,
                )
                next_plan = plan(retry, view)
                if attempt == 0 and next_plan.tier == "local":
                    job.plan, job.request = next_plan, retry
                    continue
                return self._upstream_failed(service.name, instance.id, exc)
            except UpstreamTimeout:
                self.runtime.report_failure(instance.id)
                return self._timeout(service.name, instance.id)
            except UpstreamError as exc:
                self.runtime.report_failure(instance.id)
                return self._upstream_failed(service.name, instance.id, exc)
            return self._from_response(service.name, instance.id, response)
        raise AssertionError("unreachable")  # pragma: no cover

    def _settle(
        self,
        gate: InstanceGate,
        service: str,
        sent: float,
        concurrency: int,
        exchange: asyncio.Future[UpstreamResponse],
    ) -> None:
        """An exchange ended (whether or not anyone still waited): free its slot, learn from it."""
        elapsed_ms = (time.perf_counter() - sent) * 1000
        latency_ms: float | None = None
        if not exchange.cancelled():
            error = exchange.exception()  # retrieved here, so an abandoned failure is not "never retrieved"
            if isinstance(error, UpstreamTimeout):
                latency_ms = elapsed_ms  # a lower bound: it still moves the estimates the right way
            elif error is None:
                latency_ms = elapsed_ms
                if exchange.result().status < 500:
                    # Warms up from zero: a slow first call (cold caches) must not hide a hung instance.
                    typical = self._typical_ms.get(service, 0.0)
                    self._typical_ms[service] = typical + (elapsed_ms - typical) * TYPICAL_EWMA_ALPHA
        gate.release(latency_ms, concurrency)

    def _judge_hung(self, service: str, sent: _Sent) -> None:
        """A caller gave up on an exchange: if it has waited many times what the service usually
        takes, the instance is taken out of the router's view now (its health checks decide
        whether it comes back or is restarted)."""
        if sent.instance_id and self._hung(service, (time.perf_counter() - sent.at) * 1000):
            self.runtime.report_failure(sent.instance_id)

    def _from_response(self, service: str, target: str, response: UpstreamResponse) -> Outcome:
        if response.status == 200:
            return Outcome(200, service, "local", target, result_json=response.body)
        if 400 <= response.status < 500:
            return Outcome.failed(_workload_error(response), service, "local", target)
        self.runtime.report_failure(target)
        error = SiteError(502, "upstream_failed", f"instance {target} answered {response.status}")
        return Outcome.failed(error, service, "local", target)

    @staticmethod
    def _upstream_failed(service: str, target: str, exc: UpstreamError) -> Outcome:
        error = SiteError(502, "upstream_failed", f"instance {target} failed: {type(exc).__name__}")
        return Outcome.failed(error, service, "local", target)

    def _hung(self, service: str, waited_ms: float) -> bool:
        """Whether a timed-out call says more about the instance than about a tight budget.

        It does when the call waited many times what the service usually takes (and at least
        `SUSPECT_MIN_WAIT_MS`): a client's 1 ms budget must not take a healthy instance out.
        """
        typical = self._typical_ms.get(service, 0.0)
        return waited_ms >= max(SUSPECT_MIN_WAIT_MS, SUSPECT_SLOWDOWN * typical)

    @staticmethod
    def _timeout(service: str, target: str) -> Outcome:
        error = SiteError(504, "budget_exceeded", "the latency budget ran out before the service answered")
        return Outcome.failed(error, service, "local", target)

    @staticmethod
    def _no_slot(service: str, target: str, retry_after_s: int, waited_ms: float | None = None) -> Outcome:
        why = (
            "is full and so is its queue"
            if waited_ms is None
            else f"gave no slot in time ({waited_ms} ms in its queue)"
        )
        error = SiteError(
            503, "no_capacity", f"instance {target} of {service} {why}; not sent", retry_after_s=retry_after_s
        )
        return Outcome.failed(error, service)

    @staticmethod
    def _queued_out(service: str, target: str, waited_ms: float) -> Outcome:
        """A request whose budget ran out while it waited for a slot: never sent."""
        error = SiteError(
            504,
            "budget_exceeded",
            f"the budget ran out after {waited_ms} ms waiting for a slot of {target}; not sent",
        )
        return Outcome.failed(error, service)

    @staticmethod
    def _reject(service: str, decision: Plan) -> Outcome:
        code = decision.code or ("no_capacity" if decision.status == 503 else "rejected")
        error = SiteError(decision.status, code, decision.reason, retry_after_s=decision.retry_after_s)
        return Outcome.failed(error, service)

    def _finish(
        self,
        call: ClientCall,
        arrived: float,
        deadline: float,
        timings: dict[str, float],
        outcome: Outcome,
        budget_ms: int | None = None,
        cacheable: bool = False,
    ) -> Outcome:
        """The last word on an outcome, just before it is rendered: a 200 past the budget is a 504."""
        now = time.perf_counter()
        if outcome.status == 200 and now > deadline:
            self.late += 1
            stored = " (it is cached for the next request)" if cacheable and outcome.tier == "local" else ""
            error = SiteError(
                504,
                "budget_exceeded",
                f"the answer was ready {_ms(deadline, now)} ms after the latency budget ran out{stored}",
            )
            outcome = Outcome.failed(error, outcome.service, outcome.tier, outcome.target)
        timings["total"] = _ms(arrived, now)
        outcome.timings_ms = timings
        self.requests.record(
            outcome.service,
            outcome.tier,
            outcome.status,
            timings["total"],
            call.client_kind,
            site=outcome.site,
        )
        if self.tracer is not None:
            self.tracer.finished(call, outcome, arrived, now, budget_ms or call.latency_budget_ms)
        return outcome


def _discard(future: asyncio.Future[Outcome]) -> None:
    """Retrieve the result of a call nobody waits for any more."""
    if not future.cancelled():
        future.exception()


def canonical_json(payload: Mapping[str, Any]) -> bytes:
    """The payload as compact JSON with sorted keys: what workloads receive and keys derive from."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
