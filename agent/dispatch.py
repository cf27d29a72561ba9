"""Carry out a plan: one cache read, one pure `plan()`, at most one awaited HTTP call.

The result travels as the raw JSON bytes the workload (or the cache) produced; nothing is parsed
and re-serialised on the way through.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from agent.router import Plan, PlanRequest, plan
from agent.view import ServiceView, View
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


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    code: str
    message: str
    field: str | None = None


@dataclass(slots=True)
class Outcome:
    """What happened to one request; the API turns it into a response."""

    status: int
    service: str
    tier: str
    target: str
    result_json: bytes | None = None
    cached: bool = False
    error: ErrorInfo | None = None
    retry_after_s: int | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


SUSPECT_MIN_WAIT_MS = 20.0
SUSPECT_SLOWDOWN = 8.0
"""A call that timed out after waiting at least this many times the service's usual upstream time
(and at least `SUSPECT_MIN_WAIT_MS`) counts against its instance."""
TYPICAL_EWMA_ALPHA = 0.1

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


def _workload_error(response: httpx.Response) -> ErrorInfo:
    """The workload's own JSON error, with its field placed under `payload`."""
    try:
        error = response.json()["error"]
        field_name = error.get("field")
        if field_name and not str(field_name).startswith("payload"):
            field_name = f"payload.{field_name}"
        return ErrorInfo(str(error.get("code", "invalid_payload")), str(error["message"]), field_name)
    except (ValueError, KeyError, TypeError):
        return ErrorInfo("invalid_payload", f"the service rejected the payload ({response.status_code})")


class Dispatcher:
    """Serves client calls on the fast path: cache → plan → one instance."""

    def __init__(
        self,
        view_for: Callable[[str], View],
        cache: CacheManager,
        runtime: Runtime,
        requests: RequestLog,
        client: httpx.AsyncClient,
    ) -> None:
        self._view_for = view_for
        self.cache = cache
        self.runtime = runtime
        self.requests = requests
        self.client = client
        self.outstanding: dict[str, int] = {}
        self._inflight: dict[tuple[str, str, str], asyncio.Future[Outcome]] = {}
        self._typical_ms: dict[str, float] = {}

    async def serve(self, call: ClientCall) -> Outcome:
        started = time.perf_counter()
        view = self._view_for(call.service)
        service = view.services.get(call.service)
        if service is None:
            return self._finish(
                started,
                Outcome(
                    404,
                    UNKNOWN_SERVICE,
                    "reject",
                    "",
                    error=ErrorInfo(
                        "unknown_service",
                        f"unknown service {call.service!r}; known: {sorted(view.services)}",
                        "service",
                    ),
                ),
            )
        if call.client_kind not in service.client_kinds:
            return self._finish(
                started,
                Outcome(
                    403,
                    call.service,
                    "reject",
                    "",
                    error=ErrorInfo(
                        "client_kind_not_allowed",
                        f"service {service.name!r} serves {sorted(service.client_kinds)} clients, "
                        f"not {call.client_kind!r}",
                        "client.kind",
                    ),
                ),
            )

        if call.cache_ttl_s is not None and call.cache_ttl_s > service.max_cache_ttl_s:
            return self._finish(
                started,
                Outcome(
                    422,
                    call.service,
                    "reject",
                    "",
                    error=ErrorInfo(
                        "invalid_field",
                        f"cache_ttl_s: at most {service.max_cache_ttl_s:g} s for service {service.name!r}",
                        "cache_ttl_s",
                    ),
                ),
            )

        budget_ms = call.latency_budget_ms or service.default_budget_ms
        deadline = started + budget_ms / 1000
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
        )
        decision = plan(request, view)
        after_plan = time.perf_counter()
        timings = {"cache": _ms(started, after_cache), "plan": _ms(after_cache, after_plan)}

        if decision.tier == "cache":
            outcome = Outcome(200, service.name, "cache", "cache", result_json=cached, cached=True)
        elif decision.tier == "local" and cache_key is not None:
            outcome = await self._call_once_per_key(
                call, service, request, decision, view, deadline, timings, cache_key
            )
        elif decision.tier == "local":
            outcome = await self._call_instance(call, service, request, decision, view, deadline, timings)
        else:
            outcome = self._reject(service.name, decision)
        outcome.timings_ms = timings
        return self._finish(started, outcome)

    async def _call_once_per_key(
        self,
        call: ClientCall,
        service: ServiceView,
        request: PlanRequest,
        decision: Plan,
        view: View,
        deadline: float,
        timings: dict[str, float],
        cache_key: str,
    ) -> Outcome:
        """A cacheable miss: concurrent misses of one key share one upstream call (no stampede).

        Followers wait for the leader's answer within their own budget; the answer is cached.
        """
        # Only requests with the same payload bytes share a call. A derived key already is the
        # payload's digest; under a client-named key two callers may ask different things.
        asked = "" if call.cache_key is None else payload_digest(call.payload_json)
        slot = (service.name, cache_key, asked)
        leader = self._inflight.get(slot)
        if leader is not None:
            waited = time.perf_counter()
            try:
                shared = await asyncio.wait_for(asyncio.shield(leader), max(0.0, deadline - waited))
            except TimeoutError:
                return self._timeout(service.name, "")
            except asyncio.CancelledError:
                if not leader.cancelled():
                    raise
                error = ErrorInfo("upstream_failed", "the shared upstream call was cancelled")
                return Outcome(502, service.name, "local", "", error=error)
            timings["coalesced"] = _ms(waited, time.perf_counter())
            return Outcome(
                shared.status,
                shared.service,
                shared.tier,
                shared.target,
                shared.result_json,
                error=shared.error,
            )
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._inflight[slot] = future
        try:
            outcome = await self._call_instance(call, service, request, decision, view, deadline, timings)
            if outcome.status == 200 and outcome.result_json is not None:
                ttl = call.cache_ttl_s or service.cache_ttl_s
                await self.cache.set(service.name, cache_key, outcome.result_json, ttl)
            future.set_result(outcome)
            return outcome
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # followers see it; mark it retrieved for the leader
            raise
        finally:
            del self._inflight[slot]

    @staticmethod
    def _cache_key(call: ClientCall, service: ServiceView) -> str | None:
        """The stored name of this request's answer: the caller's own key, else the payload's."""
        if not service.cacheable:
            return None
        if call.cache_key is not None:
            return tenant_cache_key(call.tenant, call.cache_key)
        return derive_cache_key(call.payload_json)

    async def _call_instance(
        self,
        call: ClientCall,
        service: ServiceView,
        request: PlanRequest,
        decision: Plan,
        view: View,
        deadline: float,
        timings: dict[str, float],
    ) -> Outcome:
        """POST the payload to the planned instance; on a refused connection, re-plan once."""
        for attempt in range(2):
            instance = decision.instance
            assert instance is not None
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return self._timeout(service.name, instance.id)
            self.outstanding[instance.id] = self.outstanding.get(instance.id, 0) + 1
            sent = time.perf_counter()
            try:
                response = await self.client.post(
                    f"{instance.url}/invoke",
                    content=call.payload_json,
                    headers={"content-type": "application/json"},
                    timeout=remaining,
                )
            except httpx.TimeoutException:
                waited = timings["upstream"] = _ms(sent, time.perf_counter())
                if self._hung(service.name, waited):
                    # The router stops sending to it now; the runtime's health checks decide
                    # whether it comes back or is restarted.
                    self.runtime.report_failure(instance.id)
                return self._timeout(service.name, instance.id)
            except httpx.TransportError as exc:
                timings["upstream"] = _ms(sent, time.perf_counter())
                self.runtime.report_failure(instance.id)
                retry = PlanRequest(
                    service=request.service,
                    affinity=request.affinity,
                    exclude=request.exclude | {instance.id},
                )
                next_decision = plan(retry, view)
                if attempt == 0 and isinstance(exc, httpx.ConnectError) and next_decision.tier == "local":
                    decision, request = next_decision, retry
                    continue
                return Outcome(
                    502,
                    service.name,
                    "local",
                    instance.id,
                    error=ErrorInfo(
                        "upstream_failed", f"instance {instance.id} failed: {type(exc).__name__}"
                    ),
                )
            finally:
                self.outstanding[instance.id] -= 1
            upstream = timings["upstream"] = _ms(sent, time.perf_counter())
            if response.status_code < 500:
                # Warms up from zero: a slow first call (cold caches) must not hide a hung instance.
                typical = self._typical_ms.get(service.name, 0.0)
                self._typical_ms[service.name] = typical + (upstream - typical) * TYPICAL_EWMA_ALPHA
            return self._from_response(service.name, instance.id, response)
        raise AssertionError("unreachable")  # pragma: no cover

    def _from_response(self, service: str, target: str, response: httpx.Response) -> Outcome:
        if response.status_code == 200:
            return Outcome(200, service, "local", target, result_json=response.content)
        if 400 <= response.status_code < 500:
            status = 413 if response.status_code == 413 else 422
            return Outcome(status, service, "local", target, error=_workload_error(response))
        self.runtime.report_failure(target)
        return Outcome(
            502,
            service,
            "local",
            target,
            error=ErrorInfo("upstream_failed", f"instance {target} answered {response.status_code}"),
        )

    def _hung(self, service: str, waited_ms: float) -> bool:
        """Whether a timed-out call says more about the instance than about a tight budget.

        It does when the call waited many times what the service usually takes (and at least
        `SUSPECT_MIN_WAIT_MS`): a client's 1 ms budget must not take a healthy instance out.
        """
        typical = self._typical_ms.get(service, 0.0)
        return waited_ms >= max(SUSPECT_MIN_WAIT_MS, SUSPECT_SLOWDOWN * typical)

    @staticmethod
    def _timeout(service: str, target: str) -> Outcome:
        return Outcome(
            504,
            service,
            "local",
            target,
            error=ErrorInfo("budget_exceeded", "the latency budget ran out before the service answered"),
        )

    @staticmethod
    def _reject(service: str, decision: Plan) -> Outcome:
        code = "no_capacity" if decision.status == 503 else "rejected"
        return Outcome(
            decision.status,
            service,
            "reject",
            "",
            error=ErrorInfo(code, decision.reason),
            retry_after_s=decision.retry_after_s,
        )

    def _finish(self, started: float, outcome: Outcome) -> Outcome:
        total = _ms(started, time.perf_counter())
        outcome.timings_ms["total"] = total
        self.requests.record(outcome.service, outcome.tier, outcome.status, total)
        return outcome


def canonical_json(payload: Mapping[str, Any]) -> bytes:
    """The payload as compact JSON with sorted keys: what workloads receive and keys derive from."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
