"""Cloud targets as the router reads them: which service has one, what it is expected to take,
when the choice is refused, and what the dashboard sees. Pure: no endpoint is called here
(tests/integration/test_cloud_compute.py calls a real one)."""

from __future__ import annotations

import pytest

from config.settings import load_settings
from swarm.cloud import CLOUD_OVERHEAD_MS, RTT_EWMA_ALPHA, CloudCompute, endpoint_host


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def _compute(clock: FakeClock | None = None) -> CloudCompute:
    return CloudCompute(
        {"sensor": "https://abc.lambda-url.eu-west-3.on.aws/"},
        assumed_rtt_ms=40.0,
        breaker_failures=2,
        breaker_open_s=4.0,
        clock=clock or FakeClock(),
    )


def test_only_services_with_a_cloud_url_get_a_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEC_CONFIG", raising=False)
    assert CloudCompute.of(load_settings()) is None
    monkeypatch.setenv("MEC_SERVICES__SENSOR__CLOUD_URL", "https://cloud.example.com:8443/sensor")
    monkeypatch.setenv("MEC_CLOUD_BREAKER_FAILURES", "7")
    monkeypatch.setenv("MEC_CLOUD_TOKEN", "tok-0123456789")
    compute = CloudCompute.of(load_settings())
    assert compute is not None and set(compute.targets) == {"sensor"}
    assert compute.token == "tok-0123456789"
    target = compute.targets["sensor"]
    assert target.target == "cloud.example.com:8443"
    assert target.breaker.failure_threshold == 7
    assert compute.choice("inference", 10_000) is None


def test_the_choice_fits_the_expected_answer_in_the_budget() -> None:
    compute = _compute()
    assert compute.choice("sensor", 40.0 + CLOUD_OVERHEAD_MS - 0.5) is None
    choice = compute.choice("sensor", 40.0 + CLOUD_OVERHEAD_MS)
    assert choice is not None
    assert (choice.service, choice.target, choice.predicted_ms) == (
        "sensor",
        "abc.lambda-url.eu-west-3.on.aws",
        40.0 + CLOUD_OVERHEAD_MS,
    )
    assert compute.choice("unknown", 10_000) is None


def test_the_expected_answer_is_an_ewma_of_the_measured_ones() -> None:
    target = _compute().targets["sensor"]
    assert target.expected_ms == 40.0
    target.answered_in(10.0)
    assert target.expected_ms == 10.0
    target.answered_in(20.0)
    assert target.expected_ms == pytest.approx(10.0 + 10.0 * RTT_EWMA_ALPHA)
    target.answered_in(30.0)
    assert target.snapshot()["answer_p50_ms"] == 20.0


def test_an_open_breaker_blocks_the_choice_until_its_time_is_up() -> None:
    clock = FakeClock()
    compute = _compute(clock)
    breaker = compute.targets["sensor"].breaker
    assert compute.blocked("sensor") is None
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert compute.choice("sensor", 10_000) is None
    blocked = compute.blocked("sensor")
    assert blocked is not None
    assert (blocked.service, blocked.state, blocked.retry_after_s) == ("sensor", "open", 4)
    clock.now += 4.0
    assert compute.blocked("sensor") is None
    assert compute.choice("sensor", 10_000) is not None
    assert breaker.allow()  # the probe: the choice itself took no slot
    assert compute.choice("sensor", 10_000) is None
    blocked = compute.blocked("sensor")
    assert blocked is not None and blocked.state == "half_open"


def test_the_snapshot_shows_state_time_and_counters_without_the_url() -> None:
    compute = _compute()
    snapshot = compute.snapshot()["sensor"]
    assert snapshot["state"] == "closed" and snapshot["rtt_ms"] is None
    assert snapshot["expected_ms"] == 40.0
    assert (snapshot["failures"], snapshot["opened"], snapshot["sent"]) == (0, 0, 0)
    assert "url" not in snapshot


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://cloud.example.com/x?y=1", "cloud.example.com"),
        ("http://127.0.0.1:8123/v1/sensor", "127.0.0.1:8123"),
        ("https://[2001:db8::1]:443/", "[2001:db8::1]:443"),
    ],
)
def test_the_target_is_the_endpoint_host_and_port(url: str, host: str) -> None:
    assert endpoint_host(url) == host
