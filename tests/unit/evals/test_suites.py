"""The bundled suites load and validate, cover what the issue asks, and the routing suite passes
through the real `agent.router.plan()`."""

from __future__ import annotations

import pytest
import yaml

from evals.routing_eval import run_routing_suite
from evals.suites import CHAT_CATEGORIES, ChatSuite, RoutingSuite, load_chat_suite, load_routing_suite


def test_chat_suite_has_sixty_cases_or_more_in_every_category() -> None:
    suite = load_chat_suite()
    assert len(suite.cases) >= 60
    assert {case.category for case in suite.cases} == set(CHAT_CATEGORIES)


def test_chat_suite_names_only_tools_and_actions_the_site_has() -> None:
    from tools.alert_ops import ALERT_ACTIONS
    from tools.cache_manager import CACHE_ACTIONS
    from tools.container_ops import CONTAINER_ACTIONS
    from tools.swarm_ops import SWARM_ACTIONS

    actions: dict[str, frozenset[str]] = {
        "container_ops": CONTAINER_ACTIONS,
        "cache_manager": CACHE_ACTIONS,
        "swarm_ops": SWARM_ACTIONS,
        "alert_ops": ALERT_ACTIONS,
    }
    for case in load_chat_suite().cases:
        for call in case.expect.calls:
            assert call.tool in {*actions, "metrics_monitor"}, case.id
            action = call.args.get("action")
            if action is not None and action.equals is not None:
                assert action.equals in actions[call.tool], case.id


def test_a_case_with_two_kinds_of_expectation_is_refused() -> None:
    case = {
        "id": "x",
        "category": "status",
        "message": "status",
        "expect": {"no_tool": True, "calls": [{"tool": "metrics_monitor"}]},
    }
    with pytest.raises(ValueError):
        ChatSuite.model_validate({"suite": "chat", "version": 1, "cases": [case]})
    with pytest.raises(ValueError):
        ChatSuite.model_validate(
            {"suite": "chat", "version": 1, "cases": [{**case, "expect": {"no_tool": True}, "colour": 1}]}
        )


def test_duplicate_case_ids_are_refused() -> None:
    case = {"id": "x", "category": "status", "message": "status", "expect": {"no_tool": True}}
    with pytest.raises(ValueError, match="duplicate"):
        ChatSuite.model_validate({"suite": "chat", "version": 1, "cases": [case, case]})


def test_routing_suite_scores_every_case_through_the_real_plan() -> None:
    suite = load_routing_suite()
    assert len(suite.cases) >= 25
    assert {case.expect.tier for case in suite.cases} == {"cache", "local", "peer", "cloud", "reject"}
    failures = [(s.case_id, s.got) for s in run_routing_suite(suite.cases) if not s.success]
    assert failures == []


def test_a_wrong_routing_expectation_is_scored_as_a_failure() -> None:
    suite = load_routing_suite()
    case = next(c for c in suite.cases if c.id == "full-goes-to-peer")
    raw = yaml.safe_load(case.model_dump_json())
    raw["expect"]["tier"] = "cloud"
    wrong = RoutingSuite.model_validate({"suite": "routing", "version": 1, "cases": [raw]})
    (score,) = run_routing_suite(wrong.cases)
    assert not score.success and score.got.startswith("peer/peer/site-2")
