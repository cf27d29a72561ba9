"""The rules model and the swarm: swarm questions and changes → `swarm_ops` calls → answers.

The parser's table runs through `RulesModel.next_step`; whole turns run through a real strands
`Agent` with the site's real policy hook and the real `swarm_ops` tool over an in-memory swarm
(`tests.support.swarm_backend`, the tool's backend edge).
"""

from __future__ import annotations

from typing import Any

import pytest
from strands import Agent
from strands.types.tools import AgentTool

from agent.models import RulesModel
from agent.models.answers import describe
from agent.models.events import ToolCall
from agent.models.intents import IntentParser, Request
from agent.models.results import Observation
from agent.policy import CALLER_KEY, Caller, ToolPolicy
from tests.support.swarm_backend import MemorySwarm, site
from tests.support.workloads import StaticRuntime
from tools.container_ops import container_ops_tool
from tools.swarm_ops import swarm_ops_tool

SERVICES = ("inference", "sensor", "game-state")
OPERATOR = frozenset({"client", "operator"})
CLIENT = frozenset({"client"})

Calls = list[tuple[str, dict[str, Any]]]

LEADER = ("swarm_ops", {"action": "leader"})
SITES = ("swarm_ops", {"action": "sites"})
PLACEMENTS = ("swarm_ops", {"action": "placements"})
LOAD = ("swarm_ops", {"action": "load"})


def _placements(service: str | None = None, site: str | None = None) -> tuple[str, dict[str, Any]]:
    args = {"service": service, "site": site}
    return ("swarm_ops", {"action": "placements", **{k: v for k, v in args.items() if v}})


def _move(service: str, site: str) -> tuple[str, dict[str, Any]]:
    return ("swarm_ops", {"action": "move", "service": service, "site": site})


def _scale(service: str, replicas: int) -> tuple[str, dict[str, Any]]:
    return ("swarm_ops", {"action": "scale", "service": service, "replicas": replicas})


def _first_calls(text: str) -> Calls:
    step = RulesModel(SERVICES).next_step(text)
    assert step.text == "", step.text
    return [(call.name, call.input) for call in step.calls]


# -- the phrasings: intent → (text, expected first tool calls) -------------------------------------

PHRASINGS: list[tuple[str, str, Calls]] = [
    ("leader", "which site is the leader?", [LEADER]),
    ("leader", "who is the coordinator?", [LEADER]),
    ("leader", "who leads the swarm?", [LEADER]),
    ("leader", "which site coordinates the swarm", [LEADER]),
    ("leader", "who's the swarm leader right now", [LEADER]),
    ("leader", "what raft term are we in?", [LEADER]),
    ("sites", "list the sites", [SITES]),
    ("sites", "show the swarm", [SITES]),
    ("sites", "what sites are in the swarm?", [SITES]),
    ("sites", "are all sites healthy?", [SITES]),
    ("sites", "swarm status", [SITES]),
    ("sites", "show me the peers", [SITES]),
    ("sites", "is site-2 healthy?", [("swarm_ops", {"action": "sites", "site": "site-2"})]),
    ("sites", "is site 3 up?", [("swarm_ops", {"action": "sites", "site": "site-3"})]),
    ("sites", "how's site-2 doing?", [("swarm_ops", {"action": "sites", "site": "site-2"})]),
    ("placements", "where does inference run?", [_placements("inference")]),
    ("placements", "show placements", [PLACEMENTS]),
    ("placements", "where is the sensor service running?", [_placements("sensor")]),
    ("placements", "which sites run game state?", [_placements("game-state")]),
    ("placements", "how are the services placed across the swarm?", [PLACEMENTS]),
    ("placements", "what runs on site 2?", [_placements(site="site-2")]),
    ("placements", "where are the gaming replicas?", [_placements("game-state")]),
    ("placements", "is sensor on site-2?", [_placements("sensor", "site-2")]),
    ("load", "how loaded is the swarm?", [LOAD]),
    ("load", "swarm load", [LOAD]),
    ("load", "which site is the busiest?", [LOAD]),
    ("load", "load across all the sites", [LOAD]),
    ("load", "which site is least loaded", [LOAD]),
    ("load", "how busy is site-2?", [("swarm_ops", {"action": "load", "site": "site-2"})]),
    ("load", "how much memory does site 2 use?", [("swarm_ops", {"action": "load", "site": "site-2"})]),
    ("move", "move inference to site-2", [_move("inference", "site-2")]),
    ("move", "move inference to site 2", [_move("inference", "site-2")]),
    ("move", "migrate the sensors onto site three", [_move("sensor", "site-3")]),
    ("move", "relocate game-state from site-1 to site-4", [_move("game-state", "site-4")]),
    ("move", "put inference on site-2", [_move("inference", "site-2")]),
    ("move", "shift the mobile service over to site 5", [_move("inference", "site-5")]),
    ("scale", "scale inference to 4 across the swarm", [_scale("inference", 4)]),
    ("scale", "run 4 replicas of inference in the swarm", [_scale("inference", 4)]),
    ("scale", "set inference to 4 replicas swarm-wide", [_scale("inference", 4)]),
    ("scale", "scale sensor to two across all sites", [_scale("sensor", 2)]),
    ("scale", "I want 6 inference replicas across the cluster", [_scale("inference", 6)]),
    ("scale", "scale game state to zero across the swarm", [_scale("game-state", 0)]),
    # Without a number, up/down reads the placement first (then scales its total by one).
    ("scale", "scale inference up across the swarm", [_placements("inference")]),
    ("scale", "add 2 more replicas of sensor across the sites", [_placements("sensor")]),
]


@pytest.mark.parametrize(
    ("intent", "text", "expected"), PHRASINGS, ids=[f"{intent}: {text}" for intent, text, _ in PHRASINGS]
)
def test_swarm_phrasing_calls_swarm_ops_with_the_right_input(intent: str, text: str, expected: Calls) -> None:
    assert _first_calls(text) == expected


# Without a word of the swarm, a change is this site's own, as before.
LOCAL: list[tuple[str, Calls]] = [
    ("scale inference to 3", [("container_ops", {"action": "scale", "service": "inference", "replicas": 3})]),
    (
        "scale inference to 3 replicas",
        [("container_ops", {"action": "scale", "service": "inference", "replicas": 3})],
    ),
    ("bump sensor to 3", [("container_ops", {"action": "scale", "service": "sensor", "replicas": 3})]),
    (
        "scale game state to zero",
        [("container_ops", {"action": "scale", "service": "game-state", "replicas": 0})],
    ),
    ("How is the site?", [("container_ops", {"action": "list"}), ("metrics_monitor", {"section": "all"})]),
    ("what's the load like", [("metrics_monitor", {"section": "host"})]),
    (
        "restart mec-site-1-sensor-1",
        [("container_ops", {"action": "restart", "instance_id": "mec-site-1-sensor-1"})],
    ),
    (
        "show latency across all services",
        [("metrics_monitor", {"section": "all"}), ("container_ops", {"action": "list"})],
    ),
    # A cache key or value that reads like a site id is the cache's.
    (
        "set key k to site-2 in the sensor cache",
        [("cache_manager", {"action": "set", "namespace": "sensor", "key": "k", "value": "site-2"})],
    ),
]


@pytest.mark.parametrize(("text", "expected"), LOCAL, ids=[text for text, _ in LOCAL])
def test_without_the_swarm_in_the_words_requests_stay_on_this_site(text: str, expected: Calls) -> None:
    assert _first_calls(text) == expected


SPLITS: list[tuple[str, list[Request]]] = [
    (
        "move inference and sensor to site-2",
        [
            Request("swarm", action="move", service="inference", site="site-2"),
            Request("swarm", action="move", service="sensor", site="site-2"),
        ],
    ),
    (
        "move inference to site-2 and sensor to site-3",
        [
            Request("swarm", action="move", service="inference", site="site-2"),
            Request("swarm", action="move", service="sensor", site="site-3"),
        ],
    ),
    (
        "scale sensor to 3 and inference to 2 across the swarm",
        [
            Request("swarm", action="scale", service="sensor", replicas=3),
            Request("swarm", action="scale", service="inference", replicas=2),
        ],
    ),
    (
        "who is the coordinator and how loaded is the swarm?",
        [Request("swarm", action="leader"), Request("swarm", action="load")],
    ),
    (
        "move inference to site-2 and show its placement",
        [
            Request("swarm", action="move", service="inference", site="site-2"),
            Request("swarm", action="placements", service="inference"),
        ],
    ),
]


@pytest.mark.parametrize(("text", "parts"), SPLITS, ids=[t for t, _ in SPLITS])
def test_compound_swarm_messages_split_into_their_requests(text: str, parts: list[Request]) -> None:
    request = IntentParser(SERVICES).parse(text)
    assert request is not None and request.intent == "compound"
    assert list(request.parts) == parts


ASKS: list[tuple[str, str]] = [
    ("move inference", "To do that I need one site to move it to"),
    ("move inference off site-1", "To do that I need one site to move it to"),
    ("move inference to site-2 or site-3", "To do that I need one site to move it to"),
    ("move to site-2", "To do that I need a service"),
    ("scale inference across the swarm", "To do that I need a replica count"),
    ("scale inference to 2 per site", "To do that I need a total replica count for the swarm"),
    (
        "scale inference to 2 on site-2",
        'I cannot set a count on site-2 alone. Say "move inference to site-2"',
    ),
    ("restart sensor on site-2", "I cannot do that on site-2: ask that site's own agent"),
    ("flush the sensor cache on all sites", "I cannot do that on other sites: ask each site's own agent"),
    ("stop inference across the swarm", "I cannot do that on other sites"),
    # Another site's logs, cache and latency are read by its own agent, not shown as this site's.
    ("show the logs of sensor on site-2", "I cannot do that on site-2"),
    ("latency across the swarm", "I cannot do that on other sites"),
]


@pytest.mark.parametrize(("text", "reply"), ASKS, ids=[t for t, _ in ASKS])
def test_a_swarm_request_it_cannot_act_on_is_answered_in_words(text: str, reply: str) -> None:
    step = RulesModel(SERVICES).next_step(text)
    assert step.calls == ()
    assert reply in step.text


@pytest.mark.parametrize(
    "text",
    [
        "should I move inference to site-2?",
        "don't move inference to site-2",
        "move inference to site-2 if it is slow",
    ],
)
def test_questions_and_negations_about_a_swarm_change_only_read(text: str) -> None:
    assert _first_calls(text) == [_placements("inference", "site-2")]


def test_scale_up_across_the_swarm_adds_one_to_the_placed_total() -> None:
    model = RulesModel(SERVICES)
    text = "scale inference up across the swarm"
    (call,) = model.next_step(text).calls
    placed = {"placements": {"inference": {"site-1": 2, "site-2": 1}}, "replicas": {"inference": 3}}
    result = Observation.of(call, {"status": "success", "content": [{"json": placed}]})
    step = model.next_step(text, [[result]])
    assert [(c.name, c.input) for c in step.calls] == [_scale("inference", 4)]


# -- whole turns through the Agent, the policy and the tool ------------------------------------------


@pytest.fixture
def swarm() -> MemorySwarm:
    return MemorySwarm(
        [
            site("site-1", cpu_percent=55.5, inflight=4),
            site("site-2", cpu_percent=10.0, inflight=1),
            site("site-3", healthy=False),
        ],
        SERVICES,
        leader="site-1",
        term=7,
        placements={"inference": {"site-1": 2, "site-2": 1}, "sensor": {"site-2": 1}},
    )


def _agent(tools: list[AgentTool], per_minute: int = 10) -> Agent:
    return Agent(
        model=RulesModel(SERVICES),
        tools=tools,
        system_prompt="You are the operations agent of one MEC site.",
        callback_handler=None,
        hooks=[ToolPolicy(SERVICES, {"mec-workloads:0.1"}, mutations_per_minute=per_minute)],
    )


async def _ask(agent: Agent, text: str, scopes: frozenset[str] = OPERATOR, confirm: bool = False) -> str:
    caller = Caller("test-session", scopes, confirm=confirm, key_id="key-1")
    result = await agent.invoke_async(text, invocation_state={CALLER_KEY: caller})
    return str(result).strip()


def _tool_uses(agent: Agent) -> Calls:
    return [
        (block["toolUse"]["name"], block["toolUse"]["input"])
        for message in agent.messages
        if message["role"] == "assistant"
        for block in message["content"]
        if "toolUse" in block
    ]


READ_ANSWERS: list[tuple[str, str]] = [
    ("which site is the leader?", "site-1 is the swarm's coordinator (leader), term 7."),
    (
        "list the sites",
        "The swarm has 3 sites, 2 healthy: site-1 (healthy, the coordinator; CPU 55.5%, 4 in flight); "
        "site-2 (healthy; CPU 10.0%, 1 in flight); site-3 (unhealthy; no load reported).",
    ),
    ("is site-3 healthy?", "site-3 is unhealthy: no load reported."),
    ("where does inference run?", "inference runs 3 replicas in the swarm: 2 on site-1 and 1 on site-2."),
    ("where does game-state run?", "game-state runs on no site of the swarm."),
    (
        "show placements",
        "Placements: inference 3 replicas (2 on site-1 and 1 on site-2); sensor 1 replica (1 on site-2).",
    ),
    ("what runs on site-2?", "site-2 runs inference (1 replica) and sensor (1 replica)."),
    (
        "how loaded is the swarm?",
        "Load across 3 sites (2 healthy): site-1 (healthy, the coordinator; CPU 55.5%, 4 in flight); "
        "site-2 (healthy; CPU 10.0%, 1 in flight); site-3 (unhealthy; no load reported). "
        "Busiest: site-1 (CPU 55.5%); least loaded: site-2 (CPU 10.0%).",
    ),
]


@pytest.mark.parametrize(("text", "answer"), READ_ANSWERS, ids=[t for t, _ in READ_ANSWERS])
async def test_swarm_reads_are_answered_from_the_tools_result(
    swarm: MemorySwarm, text: str, answer: str
) -> None:
    agent = _agent([swarm_ops_tool(swarm)])
    assert await _ask(agent, text) == answer
    assert swarm.calls == []


async def test_a_swarm_without_a_coordinator_says_so_and_commits_nothing(swarm: MemorySwarm) -> None:
    swarm.coordinator = None
    agent = _agent([swarm_ops_tool(swarm)])
    reply = await _ask(agent, "who is the coordinator?")
    assert reply.startswith("The swarm has no coordinator right now (term 7)")
    reply = await _ask(agent, "scale inference to 4 across the swarm")
    assert reply.startswith("I could not scale inference to 4 replicas across the swarm:")
    assert "no coordinator is elected" in reply
    assert swarm.placements()["inference"] == {"site-1": 2, "site-2": 1}


async def test_move_commits_the_placement_and_reports_it(swarm: MemorySwarm) -> None:
    agent = _agent([swarm_ops_tool(swarm)])
    reply = await _ask(agent, "move inference to site 2")
    assert _tool_uses(agent) == [_move("inference", "site-2")]
    assert swarm.placements()["inference"] == {"site-2": 3}
    assert reply == (
        "Moved inference to site-2: site-2 now runs all of it (3 replicas); "
        "committed by the coordinator site-1 in term 7."
    )


async def test_a_move_to_a_site_the_swarm_lacks_is_explained(swarm: MemorySwarm) -> None:
    agent = _agent([swarm_ops_tool(swarm)])
    reply = await _ask(agent, "move inference to site-9")
    assert reply == (
        "I could not move inference to site-9: no site 'site-9' in the swarm (sites: site-1, site-2, site-3)."
    )
    assert swarm.calls == []


async def test_scale_across_the_swarm_commits_a_total_the_coordinator_spreads(swarm: MemorySwarm) -> None:
    agent = _agent([swarm_ops_tool(swarm)])
    reply = await _ask(agent, "run 4 replicas of inference in the swarm")
    assert _tool_uses(agent) == [_scale("inference", 4)]
    assert swarm.calls == [("scale", "inference", 4)]
    assert reply == (
        "inference now runs 4 replicas across the swarm: 2 on site-1 and 2 on site-2; "
        "committed by the coordinator site-1 in term 7."
    )


async def test_scale_to_zero_across_the_swarm_asks_for_confirmation_first(swarm: MemorySwarm) -> None:
    agent = _agent([swarm_ops_tool(swarm)])
    reply = await _ask(agent, "scale inference to 0 across the swarm")
    assert reply == (
        "This scales inference to 0 replicas across the swarm (stops it on every site); "
        "reply yes to confirm and go ahead."
    )
    assert swarm.calls == [] and swarm.placements()["inference"] == {"site-1": 2, "site-2": 1}
    reply = await _ask(_agent([swarm_ops_tool(swarm)]), "scale inference to 0 across the swarm", confirm=True)
    assert reply == (
        "inference is scaled to 0 across the swarm: no site runs it now; committed by the coordinator site-1 in term 7."
    )
    assert swarm.placements()["inference"] == {}


@pytest.mark.parametrize(
    "text", ["which site is the leader?", "list the sites", "where does inference run?", "swarm load"]
)
async def test_a_client_key_reads_nothing_of_the_swarm(swarm: MemorySwarm, text: str) -> None:
    agent = _agent([swarm_ops_tool(swarm)])
    reply = await _ask(agent, text, scopes=CLIENT)
    assert reply.startswith("I could not ")
    assert "it was refused (swarm_ops needs an operator key" in reply
    assert "site-1" not in reply and "site-2" not in reply


@pytest.mark.parametrize(
    ("text", "call"),
    [
        ("move inference to site-2", _move("inference", "site-2")),
        ("scale inference to 4 across the swarm", _scale("inference", 4)),
    ],
)
async def test_swarm_changes_need_an_operator_key(
    swarm: MemorySwarm, text: str, call: tuple[str, dict]
) -> None:
    agent = _agent([swarm_ops_tool(swarm)])
    reply = await _ask(agent, text, scopes=CLIENT)
    assert _tool_uses(agent) == [call]
    assert "it was refused (swarm_ops needs an operator key" in reply
    assert swarm.calls == []


async def test_swarm_changes_are_rate_limited_like_other_changes(swarm: MemorySwarm) -> None:
    agent = _agent([swarm_ops_tool(swarm)], per_minute=1)
    await _ask(agent, "move inference to site-2")
    reply = await _ask(agent, "move sensor to site-1")
    assert (
        reply
        == "I could not move sensor to site-1: it was refused (rate limit of 1 changing actions per minute reached)."
    )
    assert swarm.calls == [("move", "inference", "site-2")]


async def test_a_site_without_the_swarm_tool_says_so(swarm: MemorySwarm) -> None:
    agent = _agent([container_ops_tool(StaticRuntime([]))])
    reply = await _ask(agent, "which site is the leader?")
    assert _tool_uses(agent) == []
    assert reply.startswith("I cannot find the swarm's coordinator: this agent has no swarm_ops tool.")


async def test_a_local_scale_is_still_container_ops_on_this_site(swarm: MemorySwarm) -> None:
    agent = _agent([container_ops_tool(StaticRuntime([])), swarm_ops_tool(swarm)])
    await _ask(agent, "scale inference to 3")
    assert _tool_uses(agent) == [
        ("container_ops", {"action": "scale", "service": "inference", "replicas": 3})
    ]
    assert swarm.calls == []


async def test_a_change_then_a_read_run_in_order_and_answer_each(swarm: MemorySwarm) -> None:
    agent = _agent([swarm_ops_tool(swarm)])
    reply = await _ask(agent, "move inference to site-2 and show where it runs")
    assert _tool_uses(agent) == [_move("inference", "site-2"), _placements("inference")]
    moved, placed = reply.split("\n")
    assert moved.startswith("Moved inference to site-2: site-2 now runs all of it (3 replicas)")
    assert placed == "inference runs 3 replicas in the swarm: 3 on site-2."


async def test_the_site_list_says_when_no_coordinator_is_elected(swarm: MemorySwarm) -> None:
    swarm.coordinator = None
    reply = await _ask(_agent([swarm_ops_tool(swarm)]), "list the sites")
    assert reply.endswith("site-3 (unhealthy; no load reported). No coordinator is elected right now.")
    assert "the coordinator;" not in reply


async def test_a_long_site_list_says_how_much_it_shows() -> None:
    many = MemorySwarm([site(f"site-{i}", cpu_percent=float(i)) for i in range(70)], SERVICES)
    reply = await _ask(_agent([swarm_ops_tool(many)]), "list the sites")
    assert reply.startswith("The swarm has 70 sites, 70 healthy: site-0 (healthy; CPU 0.0%)")
    assert "Showing 64 of 70 sites." in reply


DESCRIBED: list[tuple[dict[str, Any], str]] = [
    ({"action": "sites"}, "list the swarm's sites"),
    ({"action": "sites", "site": "site-2"}, "read the state of site-2"),
    ({"action": "leader"}, "find the swarm's coordinator"),
    ({"action": "placements"}, "read the swarm's placements"),
    ({"action": "placements", "service": "sensor"}, "read where sensor runs in the swarm"),
    ({"action": "placements", "site": "site-2"}, "read what runs on site-2"),
    ({"action": "load", "site": "site-2"}, "read the load of site-2"),
    ({"action": "scale", "service": "sensor", "replicas": 1}, "scale sensor to 1 replica across the swarm"),
    ({"action": "move", "service": "sensor", "site": "site-2"}, "move sensor to site-2"),
]


@pytest.mark.parametrize(("tool_input", "phrase"), DESCRIBED, ids=[p for _, p in DESCRIBED])
def test_swarm_calls_are_described_in_plain_words(tool_input: dict[str, Any], phrase: str) -> None:
    assert describe(ToolCall("swarm_ops", tool_input)) == phrase
