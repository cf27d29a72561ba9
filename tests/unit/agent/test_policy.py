from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
from strands.types.tools import AgentTool

from agent.limits import MutationLimiter
from agent.policy import TOOL_EFFECTS, Caller, ToolPolicy, classify
from agent.scopes import scope_for
from monitoring.alert_desk import LocalAlertDesk
from monitoring.alert_service import AlertService
from monitoring.alerts import AlertEngine
from tests.support.swarm_backend import MemorySwarm, site
from tests.support.workloads import StaticRuntime
from tools import alert_ops, cache_manager, container_ops, swarm_ops
from tools.caches.memory import MemoryCache
from tools.metrics_monitor import MetricsMonitor, RequestLog, metrics_monitor_tool
from tools.probes import GpuProbe, HostProbe

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
        ("swarm_ops", {"action": "sites"}, "read"),
        ("swarm_ops", {"action": "leader"}, "read"),
        ("swarm_ops", {"action": "placements", "service": "sensor"}, "read"),
        ("swarm_ops", {"action": "load"}, "read"),
        ("swarm_ops", {"action": "move", "service": "sensor", "site": "site-2"}, "mutate"),
        ("swarm_ops", {"action": "scale", "service": "sensor", "replicas": 4}, "mutate"),
        ("swarm_ops", {"action": "scale", "service": "sensor", "replicas": 0}, "destructive"),
        ("some_future_tool", {}, "mutate"),
    ],
)
def test_tool_calls_are_classified_by_effect(tool: str, tool_input: dict, effect: str) -> None:
    assert classify(tool, tool_input) == effect


# Each tool's module defines its actions (a Literal) and their effects (three sets). The invariant:
# the three sets partition the Literal (every action in exactly one, none outside it), so an action
# added to the Literal but not classified, or classified twice, fails here.
ACTION_TOOLS: dict[str, tuple[Any, frozenset[str], frozenset[str], frozenset[str]]] = {
    "container_ops": (
        container_ops.ContainerAction,
        container_ops.CONTAINER_READS,
        container_ops.CONTAINER_MUTATIONS,
        container_ops.CONTAINER_DESTRUCTIVE,
    ),
    "cache_manager": (
        cache_manager.CacheAction,
        cache_manager.CACHE_READS,
        cache_manager.CACHE_MUTATIONS,
        cache_manager.CACHE_DESTRUCTIVE,
    ),
    "swarm_ops": (
        swarm_ops.SwarmAction,
        swarm_ops.SWARM_READS,
        swarm_ops.SWARM_MUTATIONS,
        swarm_ops.SWARM_DESTRUCTIVE,
    ),
    "alert_ops": (
        alert_ops.AlertAction,
        alert_ops.ALERT_READS,
        alert_ops.ALERT_MUTATIONS,
        alert_ops.ALERT_DESTRUCTIVE,
    ),
}
ZERO_REPLICAS_DESTRUCTIVE = {
    "container_ops": (
        container_ops.CONTAINER_DESTRUCTIVE_AT_ZERO_REPLICAS,
        container_ops.CONTAINER_MUTATIONS,
    ),
    "swarm_ops": (swarm_ops.SWARM_DESTRUCTIVE_AT_ZERO_REPLICAS, swarm_ops.SWARM_MUTATIONS),
}
EFFECT_OF_SET = ("read", "mutate", "destructive")
EVERY_ACTION = [
    (tool, action, effect)
    for tool, (literal, *sets) in ACTION_TOOLS.items()
    for action in get_args(literal)
    for effect, named in zip(EFFECT_OF_SET, sets, strict=True)
    if action in named
]


def _site_tools(tmp_path: Path) -> dict[str, AgentTool]:
    tools = [
        container_ops.container_ops_tool(StaticRuntime([])),
        cache_manager.cache_manager_tool(cache_manager.CacheManager(MemoryCache(10))),
        metrics_monitor_tool(MetricsMonitor(HostProbe(tmp_path), GpuProbe(), RequestLog())),
        swarm_ops.swarm_ops_tool(MemorySwarm([site("site-1")], ["sensor"])),
        alert_ops.alert_ops_tool(LocalAlertDesk(AlertService(AlertEngine([])), "site-1"), lambda _: ""),
    ]
    return {t.tool_name: t for t in tools}


@pytest.mark.parametrize("tool", sorted(ACTION_TOOLS))
def test_each_action_of_a_tool_has_exactly_one_effect_in_its_own_module(tool: str) -> None:
    literal, *sets = ACTION_TOOLS[tool]
    actions = set(get_args(literal))
    for action in sorted(actions):
        named_by = [effect for effect, named in zip(EFFECT_OF_SET, sets, strict=True) if action in named]
        assert len(named_by) == 1, f"{tool} {action!r} is classified as {named_by or 'nothing'}"
    strays = set().union(*sets) - actions
    assert not strays, f"{tool} classifies actions it does not have: {sorted(strays)}"


@pytest.mark.parametrize("tool", sorted(ZERO_REPLICAS_DESTRUCTIVE))
def test_scaling_to_zero_is_the_one_conditional_effect_and_only_of_mutations(tool: str) -> None:
    # A read listed here would never reach the replicas check (reads are answered first).
    at_zero, mutations = ZERO_REPLICAS_DESTRUCTIVE[tool]
    assert at_zero == {"scale"}
    assert at_zero <= mutations
    assert TOOL_EFFECTS[tool].destructive_at_zero_replicas == at_zero


def test_the_tools_take_exactly_the_actions_their_module_defines(tmp_path: Path) -> None:
    tools = _site_tools(tmp_path)
    assert set(TOOL_EFFECTS) == set(tools)  # the policy knows every tool the site gives its agent
    for name, (literal, *_) in ACTION_TOOLS.items():
        schema = tools[name].tool_spec["inputSchema"]["json"]["properties"]["action"]
        assert set(schema["enum"]) == set(get_args(literal)), name
    assert container_ops.CONTAINER_ACTIONS == set(get_args(container_ops.ContainerAction))
    assert cache_manager.CACHE_ACTIONS == set(get_args(cache_manager.CacheAction))
    assert swarm_ops.SWARM_ACTIONS == set(get_args(swarm_ops.SwarmAction))
    assert alert_ops.ALERT_ACTIONS == set(get_args(alert_ops.AlertAction))
    assert container_ops.CONTAINER_SERVICE_ACTIONS <= container_ops.CONTAINER_ACTIONS
    # metrics_monitor has no actions to classify: every call of it reads.
    assert "action" not in tools["metrics_monitor"].tool_spec["inputSchema"]["json"]["properties"]


@pytest.mark.parametrize(("tool", "action", "effect"), EVERY_ACTION)
def test_classify_agrees_with_the_tools_own_sets(tool: str, action: str, effect: str) -> None:
    assert classify(tool, {"action": action}) == effect
    if tool in ZERO_REPLICAS_DESTRUCTIVE and action in ZERO_REPLICAS_DESTRUCTIVE[tool][0]:
        assert classify(tool, {"action": action, "service": "sensor", "replicas": 0}) == "destructive"
        assert classify(tool, {"action": action, "service": "sensor", "replicas": 1}) == effect


@pytest.mark.parametrize("tool_input", [{}, {"section": "all"}, {"section": "no-such-section"}])
def test_every_metrics_monitor_call_reads(tool_input: dict) -> None:
    assert classify("metrics_monitor", tool_input) == "read"


@pytest.mark.parametrize("tool", sorted(ACTION_TOOLS))
def test_an_action_a_tool_does_not_define_counts_as_a_mutation(tool: str) -> None:
    assert classify(tool, {"action": "no-such-action"}) == "mutate"
    assert classify(tool, {}) == "mutate"


def test_a_malformed_action_is_judged_without_failing() -> None:
    # Input the tool's model rejects reaches the policy raw; the tool then refuses it itself.
    caller = Caller("s", OPERATOR)
    assert _policy().refusal(caller, "container_ops", {"action": ["start"], "service": "miner"}) is None


@pytest.mark.parametrize(
    ("tool", "tool_input"),
    [
        ("metrics_monitor", {"section": "host"}),
        ("container_ops", {"action": "list"}),
        ("container_ops", {"action": "logs", "instance_id": "sensor-1"}),
        ("cache_manager", {"action": "stats"}),
        ("cache_manager", {"action": "get", "namespace": "inference", "key": "k"}),
        ("swarm_ops", {"action": "sites"}),
        ("swarm_ops", {"action": "leader"}),
        ("swarm_ops", {"action": "placements"}),
        ("swarm_ops", {"action": "load"}),
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


def test_the_swarm_tool_and_the_sites_route_need_the_operator_scope() -> None:
    # GET /v1/sites ("sites.list") shows what swarm_ops "sites" shows: one scope for both.
    assert scope_for("swarm_ops") == scope_for("sites.list") == "operator"


@pytest.mark.parametrize(
    "tool_input",
    [
        {"action": "move", "service": "sensor", "site": "site-2"},
        {"action": "scale", "service": "sensor", "replicas": 4},
    ],
)
def test_swarm_changes_need_an_operator_and_are_not_confirmed_but_rate_limited(tool_input: dict) -> None:
    policy = _policy(per_minute=1)
    assert "operator key" in (policy.refusal(Caller("s", CLIENT), "swarm_ops", tool_input) or "")
    assert "may only read" in (
        policy.refusal(Caller("s", OPERATOR, read_only=True), "swarm_ops", tool_input) or ""
    )
    assert policy.refusal(Caller("s", OPERATOR), "swarm_ops", tool_input) is None
    assert "rate limit" in (policy.refusal(Caller("s", OPERATOR), "swarm_ops", tool_input) or "")


def test_scaling_a_service_to_zero_across_the_swarm_needs_confirmation() -> None:
    policy = _policy()
    to_zero = {"action": "scale", "service": "sensor", "replicas": 0}
    assert "needs confirmation" in (policy.refusal(Caller("s", OPERATOR), "swarm_ops", to_zero) or "")
    assert policy.refusal(Caller("s", OPERATOR, confirm=True), "swarm_ops", to_zero) is None
