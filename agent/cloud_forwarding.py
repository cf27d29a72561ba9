"""Send a request to its service's cloud endpoint, once, and take the answer as this site's.

The router plans tier `cloud` with a `swarm.cloud.CloudChoice` when no local instance and no
peer can answer within the budget and the endpoint is expected to (`CloudCompute.choice`).
`CloudForwarder.forward` then takes a slot from the endpoint's breaker, POSTs the envelope of
the cloud endpoint contract (`swarm.cloud`) with what is left of the budget as its
`latency_budget_ms` and as the one time limit of the whole exchange, and turns the answer into
an `Outcome`; every call it sends ends in one verdict for the breaker.

Why httpx here, not `agent.upstream`: cloud endpoints are HTTPS with certificate checks, and
this is the overflow tier, not the path every request takes (httpx costs 0.4–1.5 ms of CPU per
request on this kind of machine; see `agent.upstream`). One `AsyncClient` serves every target:
HTTP/1.1, a bounded pool, TLS verification on, no redirects, no proxy or CA settings taken from
the environment (`trust_env=False`: configuration comes from `Settings`). Answers are read up to
`max_response_bytes`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

from agent.dispatch import ClientCall, Outcome
from agent.errors import SiteError
from agent.upstream import UpstreamError, UpstreamPool, UpstreamTimeout
from swarm.cloud import CloudBlocked, CloudChoice, CloudCompute, CloudTarget

SITE_HEADER = "X-Mec-Site"
"""Tells the endpoint which site sent the request."""
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
KEEPALIVE_EXPIRY_S = 30.0
MAX_RETRY_AFTER_S = 60
AUTH_REFUSALS = frozenset({401, 403, 407})


def cloud_request_body(call: ClientCall, budget_ms: int) -> bytes:
    """The envelope of the cloud endpoint contract, the payload as the bytes it arrived as."""
    head = {
        "service": call.service,
        "client": {"kind": call.client_kind, "id": call.client_id},
        "latency_budget_ms": budget_ms,
    }
    prefix = json.dumps(head, separators=(",", ":"), ensure_ascii=False)[:-1].encode()
    return b"".join((prefix, b',"payload":', call.payload_json, b"}"))


def cloud_unavailable_error(blocked: CloudBlocked) -> SiteError:
    """The 503 for a request whose cloud endpoint's breaker refuses calls, with its Retry-After."""
    return SiteError(
        503,
        "cloud_unavailable",
        f"the cloud endpoint of {blocked.service} ({blocked.target}) is failing: its circuit breaker "
        f"is {blocked.state.replace('_', '-')}; try again in {blocked.retry_after_s} s",
        retry_after_s=blocked.retry_after_s,
    )


class _TooLarge(Exception):
    pass


class CloudForwarder:
    """Sends requests to the cloud endpoints of `compute` over one pooled HTTP client.

    `start()` (or the first `forward`) opens the client; `close()` closes it."""

    def __init__(
        self,
        compute: CloudCompute,
        site_id: str,
        *,
        max_connections: int = 64,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        pool: UpstreamPool | None = None,
    ) -> None:
        self.compute = compute
        self.pool = pool
        """The site's own HTTP/1.1 pool: used for plain `http://` endpoints (a gateway on the
        site's network, the stand-in of the tests), at a fraction of httpx's CPU per request;
        `https://` endpoints always go through httpx, which checks their certificates."""
        self._plain: dict[str, tuple[str, int, str]] = {}
        self.site_id = site_id
        self.max_connections = max_connections
        self.max_response_bytes = max_response_bytes
        self._client: httpx.AsyncClient | None = None
        self._headers = {
            "content-type": "application/json",
            "accept": "application/json",
            SITE_HEADER: site_id,
        }
        if compute.token is not None:
            self._headers["authorization"] = f"Bearer {compute.token}"

    async def start(self) -> None:
        if self._client is None:
            limits = httpx.Limits(
                max_connections=self.max_connections,
                max_keepalive_connections=self.max_connections,
                keepalive_expiry=KEEPALIVE_EXPIRY_S,
            )
            self._client = httpx.AsyncClient(
                http1=True,
                http2=False,
                verify=True,
                trust_env=False,
                follow_redirects=False,
                limits=limits,
                headers=self._headers,
            )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def forward(self, call: ClientCall, choice: CloudChoice, deadline: float) -> Outcome:
        """The endpoint's answer as this site's outcome: 200 with its result; 504 past `deadline`
        (`time.perf_counter()`); 502 when it fails; its 4xx passed on; 503 when its breaker
        refuses (another request took the last probe slot since the plan)."""
        service = call.service
        target = self.compute.targets.get(choice.service)
        if target is None:
            error = SiteError(503, "cloud_unavailable", f"no cloud endpoint is configured for {service}")
            return Outcome.failed(error, service)
        left_s = deadline - time.perf_counter()
        if left_s <= 0:
            return _timeout(target)
        breaker = target.breaker
        if not breaker.allow():
            blocked = CloudBlocked(service, target.target, breaker.state, breaker.retry_after_s)
            return Outcome.failed(cloud_unavailable_error(blocked), service, "reject", target.target)
        generation = breaker.generation
        verdict: Callable[[int | None], None] = breaker.release
        if self._client is None:
            await self.start()
        assert self._client is not None
        body = cloud_request_body(call, max(1, math.floor(left_s * 1000)))
        target.sent += 1
        sent = time.perf_counter()
        try:
            try:
                async with asyncio.timeout(left_s):
                    plain = self._plain_address(target.url)
                    if plain is not None and self.pool is not None:
                        status, content, retry_after = await self._post_plain(self.pool, plain, body, left_s)
                    else:
                        status, content, retry_after = await self._post(
                            self._client, target.url, body, left_s
                        )
            except httpx.PoolTimeout:
                target.timed_out += 1  # every connection busy: this site's limit, not the endpoint's fault
                return _timeout(target)
            except (TimeoutError, httpx.TimeoutException):
                target.timed_out += 1
                if target.slow((time.perf_counter() - sent) * 1000):
                    target.failed += 1
                    verdict = breaker.record_failure
                return _timeout(target)
            except (httpx.HTTPError, _TooLarge) as exc:
                target.failed += 1
                verdict = breaker.record_failure
                why = "its answer is too large" if isinstance(exc, _TooLarge) else type(exc).__name__
                return _failed(target, why)
            elapsed_ms = (time.perf_counter() - sent) * 1000
            outcome, verdict = self._judge(target, status, content, retry_after, elapsed_ms)
            return outcome
        finally:
            verdict(generation)

    def _plain_address(self, url: str) -> tuple[str, int, str] | None:
        """(host, port, path) of a plain `http://` endpoint; None for `https://`."""
        found = self._plain.get(url)
        if found is None and url.startswith("http://"):
            parts = urlsplit(url)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            found = self._plain[url] = (parts.hostname or "127.0.0.1", parts.port or 80, path)
        return found

    async def _post_plain(
        self, pool: UpstreamPool, address: tuple[str, int, str], body: bytes, left_s: float
    ) -> tuple[int, bytes, str | None]:
        """One exchange over the site's own pool, its failures as the httpx path's (so one set of
        verdicts applies): a timeout as `TimeoutError`, anything else as `httpx.TransportError`.
        It reports no `Retry-After` (a 429 then waits the default)."""
        host, port, path = address
        extra = {name: value for name, value in self._headers.items() if name != "content-type"}
        try:
            response = await pool.request(host, port, path, body, left_s, headers=extra)
        except UpstreamTimeout as exc:
            raise TimeoutError from exc
        except UpstreamError as exc:
            raise httpx.TransportError(type(exc).__name__) from exc
        if len(response.body) > self.max_response_bytes:
            raise _TooLarge
        return response.status, response.body, None

    async def _post(
        self, client: httpx.AsyncClient, url: str, body: bytes, left_s: float
    ) -> tuple[int, bytes, str | None]:
        """One exchange: status, body (at most `max_response_bytes`), Retry-After."""
        limit = self.max_response_bytes
        async with client.stream("POST", url, content=body, timeout=httpx.Timeout(left_s)) as response:
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise _TooLarge
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise _TooLarge
                chunks.append(chunk)
            return response.status_code, b"".join(chunks), response.headers.get("retry-after")

    def _judge(
        self, target: CloudTarget, status: int, content: bytes, retry_after: str | None, elapsed_ms: float
    ) -> tuple[Outcome, Callable[[int | None], None]]:
        """The outcome of an answer, and the breaker's verdict on it: a 200 with a result and a
        4xx are the endpoint answering (a success, for a probe too); a 429 says nothing either
        way; anything else is a failure."""
        breaker = target.breaker
        result = _result(content) if status == 200 else None
        if result is not None:
            target.answered_in(elapsed_ms)
            return Outcome(
                200, target.service, "cloud", target.target, result_json=result
            ), breaker.record_success
        if not 400 <= status < 500:
            target.failed += 1
            why = (
                'it answered 200 without a JSON {"result": ...}' if status == 200 else f"it answered {status}"
            )
            return _failed(target, why), breaker.record_failure
        target.refused += 1
        if status == 429:
            wait = _retry_after(retry_after)
            message = f"the cloud endpoint {target.target} is throttling requests; try again in {wait} s"
            busy = SiteError(503, "cloud_busy", message, retry_after_s=wait)
            return Outcome.failed(busy, target.service, "cloud", target.target), breaker.release
        if status in AUTH_REFUSALS:
            message = f"the cloud endpoint {target.target} refused this site's token ({status})"
            error = SiteError(502, "cloud_auth_failed", message)
        else:
            error = _refusal(target, status, content)
        return Outcome.failed(error, target.service, "cloud", target.target), breaker.record_success


def _result(content: bytes) -> bytes | None:
    """The compact JSON of the `result` of a 200's body; None when the body is not `{"result": ...}`."""
    try:
        answer = json.loads(content)
    except ValueError:
        return None
    if not isinstance(answer, dict) or "result" not in answer:
        return None
    return json.dumps(answer["result"], separators=(",", ":"), ensure_ascii=False).encode()


def _refusal(target: CloudTarget, status: int, content: bytes) -> SiteError:
    """The endpoint's 4xx, passed on: its message and its field (under `payload`) when it gave them."""
    message, field = f"answered {status}", None
    try:
        raw = json.loads(content).get("error")
        if isinstance(raw, dict):
            message = str(raw.get("message") or message)
            if raw.get("field"):
                field = str(raw["field"])
                field = field if field.startswith("payload") else f"payload.{field}"
    except (ValueError, AttributeError):
        pass
    return SiteError(
        status, "cloud_refused", f"the cloud endpoint {target.target} refused it: {message}", field
    )


def _retry_after(header: str | None) -> int:
    """A Retry-After in whole seconds, 1 to `MAX_RETRY_AFTER_S` (1 when absent or a date)."""
    if header is None or not header.strip().isdigit():
        return 1
    return max(1, min(MAX_RETRY_AFTER_S, int(header.strip())))


def _timeout(target: CloudTarget) -> Outcome:
    error = SiteError(
        504,
        "budget_exceeded",
        f"the latency budget ran out before the cloud endpoint {target.target} answered",
    )
    return Outcome.failed(error, target.service, "cloud", target.target)


def _failed(target: CloudTarget, why: str) -> Outcome:
    error = SiteError(502, "cloud_failed", f"the cloud endpoint {target.target} failed: {why}")
    return Outcome.failed(error, target.service, "cloud", target.target)
