from __future__ import annotations

import pytest

from agent.limits import MutationLimiter
from agent.policy import Caller, ToolPolicy, classify

OPERATOR = frozenset({"client", "operator"})
CLIENT = frozenset({"client"})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _policy(clock: Clock | None = None, per_minute: int = 3) -> ToolPolicy:
    return ToolPolicy(["inference", "sensor"], ["mec-workloads:0.1"], per_minute, clock or Clock())


@pytest.mark.parametrize(
    ("tool", "tool_input", "effect"),
    [
        ("metrics_monitor", {"section": "gpu"}, "read"),
        ("container_ops", {"action": "list"}, "read"),
        ("container_ops", {"action": "logs", "instance_id": "sensor-1"}, "read"),
        ("container_ops", {"action": "scale", "service": "sensor", "replicas": 2}, "mutate"),
        ("container_ops", {"action": "scale", "service": "sensor", "replicas": 0}, "destructive"),
        ("container_ops", {"action": "stop", "instance_id": "sensor-1"}, "destructive"),
        ("container_ops", {"action": "restart", "instance_id": "sensor-1"}, "mutate"),
        ("cache_manager", {"action": "stats"}, "read"),
        ("cache_manager", {"action": "set", "namespace": "n", "key": "k"}, "mutate"),
        ("cache_manager", {"action": "flush", "namespace": "n"}, "destructive"),
        ("some_future_tool", {}, "mutate"),
    ],
)
def test_tool_calls_are_classified_by_effect(tool: str, tool_input: dict, effect: str) -> None:
    assert classify(tool, tool_input) == effect


@pytest.mark.parametrize(
    ("tool", "tool_input"),
    [
        ("metrics_monitor", {"section": "host"}),
        ("container_ops", {"action": "list"}),
        ("container_ops", {"action": "logs", "instance_id": "sensor-1"}),
        ("cache_manager", {"action": "stats"}),
        ("cache_manager", {"action": "get", "namespace": "inference", "key": "k"}),
    ],
)
def test_client_scope_reads_no_operator_data(tool: str, tool_input: dict) -> None:
    reason = _policy().refusal(Caller("s", CLIENT), tool, tool_input)
    assert reason is not None and "operator key" in reason


def test_operator_reads_need_no_confirmation() -> None:
    assert _policy().refusal(Caller("s", OPERATOR), "container_ops", {"action": "list"}) is None


def test_read_only_turn_refuses_changes_even_for_an_operator() -> None:
    caller = Caller("s", OPERATOR, read_only=True)
    assert _policy().refusal(caller, "container_ops", {"action": "list"}) is None
    reason = _policy().refusal(caller, "container_ops", {"action": "restart", "instance_id": "sensor-1"})
    assert reason is not None and "may only read" in reason


def test_mutation_rate_is_per_key_across_sessions() -> None:
    limiter = MutationLimiter(2, Clock())
    first = ToolPolicy(["sensor"], [], 2, limiter=limiter)
    second = ToolPolicy(["sensor"], [], 2, limiter=limiter)
    restart = {"action": "restart", "instance_id": "sensor-1"}
    assert first.refusal(Caller("s1", OPERATOR, key_id="k"), "container_ops", restart) is None
    assert first.refusal(Caller("s1", OPERATOR, key_id="k"), "container_ops", restart) is None
    # A new session of the same key does not get a fresh allowance; another key does.
    assert "rate limit" in (
        second.refusal(Caller("s2", OPERATOR, key_id="k"), "container_ops", restart) or ""
    )
    assert second.refusal(Caller("s3", OPERATOR, key_id="other"), "container_ops", restart) is None


def test_mutation_without_operator_scope_is_refused() -> None:
    reason = _policy().refusal(
        Caller("s", CLIENT), "container_ops", {"action": "scale", "service": "sensor", "replicas": 2}
    )
    assert reason is not None and "operator key" in reason


def test_destructive_action_needs_confirmation() -> None:
    policy = _policy()
    flush = {"action": "flush", "namespace": "sensor"}
    assert "needs confirmation" in (policy.refusal(Caller("s", OPERATOR), "cache_manager", flush) or "")
    assert policy.refusal(Caller("s", OPERATOR, confirm=True), "cache_manager", flush) is None


def test_start_of_unlisted_service_or_image_is_refused() -> None:
    policy = _policy()
    caller = Caller("s", OPERATOR)
    assert "allowlist" in (
        policy.refusal(caller, "container_ops", {"action": "start", "service": "miner"}) or ""
    )
    refusal = policy.refusal(
        caller, "container_ops", {"action": "start", "service": "sensor", "image": "evil:1"}
    )
    assert refusal is not None and "evil:1" in refusal


def test_mutations_are_rate_limited_per_minute() -> None:
    clock = Clock()
    policy = _policy(clock, per_minute=2)
    caller = Caller("s", OPERATOR)
    restart = {"action": "restart", "instance_id": "sensor-1"}
    assert policy.refusal(caller, "container_ops", restart) is None
    assert policy.refusal(caller, "container_ops", restart) is None
    assert "rate limit" in (policy.refusal(caller, "container_ops", restart) or "")
    clock.now += 61
    assert policy.refusal(caller, "container_ops", restart) is None
