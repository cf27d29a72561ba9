"""The cloud tier against a real HTTP endpoint in its own process (`tests.support.cloud_endpoint`):
answers as tier `cloud` with their time measured, the remaining budget as the time limit, and a
breaker that opens on a dead endpoint (fast 503s with Retry-After) and closes once it is back.

The breakers run on a clock the tests move forward (`ShiftedClock`), so open times are waited
out by moving it, not by sleeping; the budgets run on the real clock."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

from agent.cloud_forwarding import CloudForwarder, cloud_unavailable_error
from agent.dispatch import ClientCall, Outcome, canonical_json
from agent.upstream import UpstreamPool
from swarm.cloud import CLOUD_OVERHEAD_MS, CloudChoice, CloudCompute
from tests.support.cloud_endpoint import CloudEndpoint, digest
from tests.support.polling import eventually

SITE = "site-edge-1"
FAILURES = 3
OPEN_S = 30.0


class ShiftedClock:
    """`time.monotonic()` plus however far a test has moved it."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.shift

    def advance(self, seconds: float) -> None:
        self.shift += seconds


def _call(payload: dict[str, object] | None = None) -> ClientCall:
    payload = {"sensor_id": "turbine-7", "value": 21.5} if payload is None else payload
    return ClientCall(
        service="sensor",
        payload=payload,
        payload_json=canonical_json(payload),
        client_kind="iot",
        client_id="dev-42",
    )


TRANSPORTS: list[str] = []
"""The transport of this test (set by `transport`): httpx, or the site's own pool for http://."""


@pytest.fixture(autouse=True, params=["httpx", "site-pool"])
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs over both transports of the forwarder."""
    TRANSPORTS.append(request.param)
    try:
        yield request.param
    finally:
        TRANSPORTS.pop()


class Cloud:
    """A `CloudCompute` over one endpoint for `sensor`, its forwarder and its breaker's clock."""

    def __init__(self, endpoint: CloudEndpoint, token: str | None, assumed_rtt_ms: float) -> None:
        self.endpoint = endpoint
        self.clock = ShiftedClock()
        self.compute = CloudCompute(
            {"sensor": endpoint.url("/v1/sensor")},
            token=token,
            assumed_rtt_ms=assumed_rtt_ms,
            breaker_failures=FAILURES,
            breaker_open_s=OPEN_S,
            breaker_max_open_s=4 * OPEN_S,
            clock=self.clock,
        )
        self.pool = UpstreamPool() if TRANSPORTS[-1] == "site-pool" else None
        self.forwarder = CloudForwarder(self.compute, SITE, max_connections=8, pool=self.pool)
        self.target = self.compute.targets["sensor"]
        self.breaker = self.target.breaker

    async def send(self, budget_ms: float = 5000, payload: dict[str, object] | None = None) -> Outcome:
        """Plan the cloud for one request (as the router will), then forward it."""
        choice = self.compute.choice("sensor", budget_ms)
        assert choice is not None, f"the cloud was not chosen for a {budget_ms} ms budget"
        return await self.forward(choice, budget_ms, payload)

    async def forward(
        self, choice: CloudChoice, budget_ms: float, payload: dict[str, object] | None = None
    ) -> Outcome:
        return await self.forwarder.forward(_call(payload), choice, time.perf_counter() + budget_ms / 1000)


@asynccontextmanager
async def cloud_over(
    endpoint: CloudEndpoint, token: str | None = None, assumed_rtt_ms: float = 5.0
) -> AsyncIterator[Cloud]:
    cloud = Cloud(endpoint, token, assumed_rtt_ms)
    await cloud.forwarder.start()
    try:
        yield cloud
    finally:
        await cloud.forwarder.close()
        if cloud.pool is not None:
            await cloud.pool.close()


def _result(outcome: Outcome) -> dict[str, object]:
    assert outcome.result_json is not None
    return dict(json.loads(outcome.result_json))


async def test_an_answer_is_tier_cloud_from_the_endpoint_host_and_its_time_is_measured(
    cloud_endpoint: CloudEndpoint,
) -> None:
    async with cloud_over(cloud_endpoint, assumed_rtt_ms=50) as cloud:
        assert (
            cloud.compute.choice("sensor", 50 + CLOUD_OVERHEAD_MS - 1) is None
        )  # the assumed RTT does not fit
        choice = cloud.compute.choice("sensor", 1000)
        assert choice is not None and choice.predicted_ms == 50 + CLOUD_OVERHEAD_MS
        assert cloud.target.rtt_ms is None

        outcome = await cloud.forward(choice, 1000)

        assert (outcome.status, outcome.tier, outcome.target) == (
            200,
            "cloud",
            f"127.0.0.1:{cloud_endpoint.port}",
        )
        payload = {"sensor_id": "turbine-7", "value": 21.5}
        result = _result(outcome)
        assert result["service"] == "sensor" and result["payload"] == payload
        assert result["digest"] == digest(payload)
        assert cloud.target.rtt_ms is not None and cloud.target.rtt_ms > 0
        snapshot = cloud.compute.snapshot()["sensor"]
        assert snapshot["state"] == "closed" and snapshot["answered"] == 1
        assert snapshot["rtt_ms"] == round(cloud.target.rtt_ms, 3)
        last = cloud_endpoint.stats()["last"]
        assert last["path"] == "/v1/sensor" and last["site"] == SITE
        assert last["authorization"] is None
        assert last["envelope"]["client"] == {"kind": "iot", "id": "dev-42"}
        assert set(last["envelope"]) == {"service", "client", "payload", "latency_budget_ms"}


async def test_the_measured_time_replaces_the_assumed_one_in_the_choice(
    cloud_endpoint: CloudEndpoint,
) -> None:
    async with cloud_over(cloud_endpoint, assumed_rtt_ms=30_000) as cloud:
        assert cloud.compute.choice("sensor", 10_000) is None
        outcome = await cloud.send(budget_ms=40_000)
        assert outcome.status == 200
        measured = cloud.target.rtt_ms
        assert measured is not None and measured < 30_000
        choice = cloud.compute.choice("sensor", 10_000)
        assert choice is not None and choice.predicted_ms == measured + CLOUD_OVERHEAD_MS


async def test_the_bearer_token_is_sent_and_a_refused_token_is_a_502_that_trips_nothing() -> None:
    with CloudEndpoint(token="cloud-token-0123456789").start() as endpoint:
        async with cloud_over(endpoint, token="cloud-token-0123456789") as cloud:
            assert (await cloud.send()).status == 200
            assert endpoint.stats()["last"]["authorization"] == "Bearer cloud-token-0123456789"
        async with cloud_over(endpoint, token="not-the-token-0000000") as cloud:
            for _ in range(FAILURES + 1):
                outcome = await cloud.send()
                assert outcome.error is not None
                assert (outcome.status, outcome.error.code) == (502, "cloud_auth_failed")
            assert cloud.breaker.state == "closed" and cloud.breaker.failures == 0


async def test_the_remaining_budget_is_sent_and_is_the_time_limit(cloud_endpoint: CloudEndpoint) -> None:
    cloud_endpoint.control(latency_ms=50_000)  # far past the budget; a control change wakes it
    async with cloud_over(cloud_endpoint) as cloud:
        outcome = await cloud.send(budget_ms=300)

        assert outcome.error is not None
        assert (outcome.status, outcome.error.code, outcome.tier) == (504, "budget_exceeded", "cloud")
        stats = cloud_endpoint.stats()
        assert (stats["requests"], stats["completed"]) == (1, 0)  # the endpoint still holds it
        assert 1 <= stats["last"]["envelope"]["latency_budget_ms"] <= 300
        assert cloud.target.timed_out == 1
    cloud_endpoint.control(latency_ms=0)


async def test_an_answer_slower_than_the_budget_is_a_504_and_a_breaker_failure(
    cloud_endpoint: CloudEndpoint,
) -> None:
    async with cloud_over(cloud_endpoint) as cloud:
        assert (await cloud.send()).status == 200  # measured: a few ms on loopback
        cloud_endpoint.control(latency_ms=50_000)
        outcome = await cloud.send(budget_ms=400)
        assert outcome.status == 504
        assert cloud.breaker.failures == 1 and cloud.target.failed == 1
        assert cloud.breaker.state == "closed"
    cloud_endpoint.control(latency_ms=0)


async def test_a_budget_too_tight_to_tell_times_out_without_a_breaker_failure(
    cloud_endpoint: CloudEndpoint,
) -> None:
    # Chosen on an expected 500 ms, given 600: a time-out says more about the budget than the
    # endpoint until it has waited twice what it was expected to take.
    cloud_endpoint.control(latency_ms=50_000)
    async with cloud_over(cloud_endpoint, assumed_rtt_ms=500) as cloud:
        outcome = await cloud.send(budget_ms=600)
        assert outcome.status == 504
        assert cloud.target.timed_out == 1
        assert cloud.breaker.failures == 0 and cloud.target.failed == 0
    cloud_endpoint.control(latency_ms=0)


async def test_a_stopped_endpoint_opens_the_breaker_and_then_requests_fail_fast_with_retry_after(
    cloud_endpoint: CloudEndpoint,
) -> None:
    async with cloud_over(cloud_endpoint) as cloud:
        assert (await cloud.send()).status == 200
        cloud_endpoint.stop()
        for attempt in range(FAILURES):
            assert cloud.breaker.state == "closed", f"open after {attempt} failures"
            outcome = await cloud.send()
            assert outcome.error is not None
            assert (outcome.status, outcome.error.code, outcome.tier) == (502, "cloud_failed", "cloud")
        assert cloud.breaker.state == "open"

        assert cloud.compute.choice("sensor", 60_000) is None
        blocked = cloud.compute.blocked("sensor")
        assert blocked is not None and blocked.state == "open"
        assert 1 <= blocked.retry_after_s <= OPEN_S
        error = cloud_unavailable_error(blocked)
        assert (error.status, error.code, error.retry_after_s) == (
            503,
            "cloud_unavailable",
            blocked.retry_after_s,
        )
        assert error.response_headers() == {"Retry-After": str(blocked.retry_after_s)}

        # A forward planned before it opened is refused at once, without a call.
        sent = cloud.target.sent
        choice = CloudChoice("sensor", cloud.target.url, cloud.target.target, 1.0)
        refused = await cloud.forward(choice, 5000)
        assert refused.error is not None
        assert (refused.status, refused.error.code) == (503, "cloud_unavailable")
        assert refused.retry_after_s is not None and refused.retry_after_s >= 1
        assert cloud.target.sent == sent
        snapshot = cloud.compute.snapshot()["sensor"]
        assert (snapshot["state"], snapshot["opened"], snapshot["rejected"]) == ("open", 1, 1)


async def test_an_endpoint_back_up_is_probed_after_the_open_time_and_closes_the_breaker(
    cloud_endpoint: CloudEndpoint,
) -> None:
    async with cloud_over(cloud_endpoint) as cloud:
        cloud_endpoint.stop()
        for _ in range(FAILURES):
            assert (await cloud.send()).status == 502
        cloud_endpoint.restart()
        assert cloud.breaker.state == "open"
        assert cloud.compute.choice("sensor", 5000) is None  # back, but not tried before its time
        assert cloud_endpoint.stats()["requests"] == 0

        cloud.clock.advance(OPEN_S)
        assert cloud.breaker.state == "half_open" and cloud.compute.blocked("sensor") is None
        outcome = await cloud.send()

        assert (outcome.status, outcome.tier) == (200, "cloud")
        assert cloud.breaker.state == "closed"
        assert cloud_endpoint.stats()["requests"] == 1


async def test_a_failed_probe_reopens_the_breaker_for_twice_as_long(cloud_endpoint: CloudEndpoint) -> None:
    async with cloud_over(cloud_endpoint) as cloud:
        cloud_endpoint.control(fail="500")
        for _ in range(FAILURES):
            assert (await cloud.send()).status == 502
        cloud.clock.advance(OPEN_S)
        assert (await cloud.send()).status == 502  # the probe
        assert cloud.breaker.state == "open" and cloud.breaker.open_for_s == 2 * OPEN_S
        cloud.clock.advance(OPEN_S)
        assert cloud.compute.choice("sensor", 5000) is None
        cloud_endpoint.control(fail="none")
        cloud.clock.advance(OPEN_S)
        assert (await cloud.send()).status == 200
        assert cloud.breaker.state == "closed" and cloud.breaker.open_for_s == OPEN_S


@pytest.mark.parametrize("fail", ["500", "503", "close", "not_json"])
async def test_server_errors_dropped_connections_and_broken_answers_open_the_breaker(
    cloud_endpoint: CloudEndpoint, fail: str
) -> None:
    cloud_endpoint.control(fail=fail)
    async with cloud_over(cloud_endpoint) as cloud:
        for _ in range(FAILURES):
            outcome = await cloud.send()
            assert outcome.error is not None
            assert (outcome.status, outcome.error.code) == (502, "cloud_failed")
        assert cloud.breaker.state == "open"
        assert cloud_endpoint.stats()["requests"] == FAILURES


async def test_a_refused_payload_is_passed_on_and_does_not_trip_the_breaker(
    cloud_endpoint: CloudEndpoint,
) -> None:
    async with cloud_over(cloud_endpoint) as cloud:
        for _ in range(FAILURES + 2):
            outcome = await cloud.send(payload={"reject": True})
            assert outcome.error is not None
            assert (outcome.status, outcome.error.code, outcome.tier) == (422, "cloud_refused", "cloud")
            assert outcome.error.field == "payload.reject"
        cloud_endpoint.control(fail="404")
        assert (await cloud.send()).status == 404
        assert cloud.breaker.state == "closed" and cloud.breaker.failures == 0
        assert cloud.target.refused == FAILURES + 3


async def test_a_throttling_endpoint_is_a_503_with_its_retry_after(
    cloud_endpoint: CloudEndpoint, transport: str
) -> None:
    cloud_endpoint.control(fail="429")
    # the site's pool reads no headers: its 429 waits the default second
    wanted = 2 if transport == "httpx" else 1
    async with cloud_over(cloud_endpoint) as cloud:
        for _ in range(FAILURES + 1):
            outcome = await cloud.send()
            assert outcome.error is not None
            assert (outcome.status, outcome.error.code, outcome.retry_after_s) == (503, "cloud_busy", wanted)
        assert cloud.breaker.state == "closed" and cloud.breaker.failures == 0


async def test_half_open_lets_one_probe_through_and_refuses_the_rest_until_it_ends(
    cloud_endpoint: CloudEndpoint,
) -> None:
    async with cloud_over(cloud_endpoint) as cloud:
        cloud_endpoint.control(fail="500")
        for _ in range(FAILURES):
            await cloud.send()
        cloud_endpoint.control(fail="none", latency_ms=50_000, reset=True)
        cloud.clock.advance(OPEN_S)
        probe = asyncio.create_task(cloud.send(budget_ms=20_000))
        await eventually(lambda: cloud.target.sent == FAILURES + 1, "the probe is sent")
        assert cloud.compute.choice("sensor", 20_000) is None
        other = await cloud.forward(CloudChoice("sensor", cloud.target.url, cloud.target.target, 1.0), 5000)
        assert other.error is not None and other.error.code == "cloud_unavailable"

        await eventually(lambda: cloud_endpoint.stats()["requests"] == 1, "the endpoint holds the probe")
        cloud_endpoint.control(latency_ms=0)  # wakes the probe's request: it is answered now
        assert (await probe).status == 200
        assert cloud.breaker.state == "closed"


async def test_a_request_past_its_deadline_is_not_sent(cloud_endpoint: CloudEndpoint) -> None:
    async with cloud_over(cloud_endpoint) as cloud:
        choice = cloud.compute.choice("sensor", 5000)
        assert choice is not None
        outcome = await cloud.forwarder.forward(_call(), choice, time.perf_counter() - 0.001)
        assert outcome.status == 504
        assert cloud_endpoint.stats()["requests"] == 0 and cloud.target.sent == 0
