"""The circuit breaker on a fake clock: when it opens, what it refuses, how its probes go."""

from __future__ import annotations

import pytest

from swarm.breaker import CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _breaker(clock: FakeClock, open_s: float = 2.0, half_open_probes: int = 1) -> CircuitBreaker:
    return CircuitBreaker(3, open_s, half_open_probes=half_open_probes, max_open_s=10.0, clock=clock)


def _fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        assert breaker.allow()
        breaker.record_failure()


def _reopen_after_failed_probe(breaker: CircuitBreaker, clock: FakeClock) -> None:
    clock.advance(breaker.open_for_s)
    assert breaker.allow()
    breaker.record_failure()


def test_opens_after_the_threshold_of_consecutive_failures(clock: FakeClock) -> None:
    breaker = _breaker(clock)
    _fail(breaker, 2)
    assert breaker.state == "closed"
    assert breaker.failures == 2
    _fail(breaker, 1)
    assert breaker.state == "open"
    assert breaker.opened == 1


def test_a_success_between_failures_starts_the_count_again(clock: FakeClock) -> None:
    breaker = _breaker(clock)
    _fail(breaker, 2)
    assert breaker.allow()
    breaker.record_success()
    _fail(breaker, 2)
    assert breaker.state == "closed"
    _fail(breaker, 1)
    assert breaker.state == "open"


def test_open_refuses_and_counts_each_refusal(clock: FakeClock) -> None:
    breaker = _breaker(clock)
    _fail(breaker, 3)
    assert [breaker.allow() for _ in range(4)] == [False] * 4
    assert breaker.rejected == 4
    assert not breaker.available()
    clock.advance(1.99)
    assert not breaker.allow()
    assert breaker.rejected == 5


def test_retry_after_is_the_whole_seconds_left_and_at_least_one(clock: FakeClock) -> None:
    breaker = _breaker(clock, open_s=3.0)
    assert breaker.retry_after_s == 1
    _fail(breaker, 3)
    assert breaker.retry_after_s == 3
    clock.advance(0.5)
    assert breaker.retry_after_s == 3  # 2.5 s left, rounded up
    clock.advance(2.4)
    assert breaker.retry_after_s == 1
    clock.advance(1.0)
    assert breaker.state == "half_open"
    assert breaker.retry_after_s == 1


def test_half_open_admits_exactly_its_probes(clock: FakeClock) -> None:
    breaker = _breaker(clock, half_open_probes=2)
    _fail(breaker, 3)
    clock.advance(2.0)
    assert breaker.state == "half_open"
    assert breaker.available()
    assert [breaker.allow() for _ in range(4)] == [True, True, False, False]
    assert breaker.rejected == 2
    assert not breaker.available()


def test_a_released_probe_slot_admits_the_next_probe(clock: FakeClock) -> None:
    breaker = _breaker(clock)
    _fail(breaker, 3)
    clock.advance(2.0)
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release()
    assert breaker.state == "half_open"
    assert breaker.allow()


def test_a_probe_success_closes_it_and_resets_the_open_time(clock: FakeClock) -> None:
    breaker = _breaker(clock)
    _fail(breaker, 3)
    _reopen_after_failed_probe(breaker, clock)
    assert breaker.open_for_s == 4.0
    clock.advance(4.0)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.allow() and breaker.allow()
    _fail(breaker, 3)
    assert breaker.open_for_s == 2.0
    assert breaker.retry_after_s == 2


def test_a_probe_failure_reopens_it_for_double_the_time_up_to_the_cap(clock: FakeClock) -> None:
    breaker = _breaker(clock)
    _fail(breaker, 3)
    seen = [breaker.open_for_s]
    for _ in range(4):
        _reopen_after_failed_probe(breaker, clock)
        assert breaker.state == "open"
        seen.append(breaker.open_for_s)
    assert seen == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert breaker.opened == 5
    clock.advance(9.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()


def test_a_verdict_from_before_it_opened_is_dropped(clock: FakeClock) -> None:
    breaker = _breaker(clock)
    assert breaker.allow()
    sent_while_closed = breaker.generation
    _fail(breaker, 3)
    clock.advance(2.0)
    assert breaker.allow()  # the probe
    breaker.record_success(sent_while_closed)  # the late answer of the first call
    assert breaker.state == "half_open"
    assert not breaker.allow()  # the probe's slot is still taken
    breaker.record_failure(breaker.generation)  # the probe's own verdict
    assert breaker.state == "open"


def test_failures_while_open_do_not_extend_it(clock: FakeClock) -> None:
    breaker = _breaker(clock)
    _fail(breaker, 3)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.opened == 1
    clock.advance(2.0)
    assert breaker.state == "half_open"


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(open_s=0)
    with pytest.raises(ValueError):
        CircuitBreaker(open_s=5, max_open_s=1)
    with pytest.raises(ValueError):
        CircuitBreaker(half_open_probes=0)
