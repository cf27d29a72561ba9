"""The rules model's steps: which tool calls come next, and how a compound request is staged."""

from __future__ import annotations

from typing import Any

import pytest

from agent.models.intents import IntentParser, Request
from agent.models.results import Observation
from agent.models.steps import next_step, stages

SERVICES = ("inference", "sensor", "game-state")


def parse(text: str) -> Request:
    request = IntentParser(SERVICES).parse(text)
    assert request is not None
    return request


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cpu and gpu and restart sensor and status", [[0, 1], [2], [3]]),
        ("cpu, then flush the sensor cache, then gpu", [[0], [1], [2]]),
        ("status", [[0]]),
    ],
)
def test_reads_share_a_stage_and_each_change_has_its_own(text: str, expected: list[list[int]]) -> None:
    assert stages(parse(text)) == expected


def test_parts_of_one_stage_make_an_identical_call_once() -> None:
    # status and latency both list the instances and read all the metrics.
    step = next_step(parse("status and latency"), [], SERVICES)

    assert [(call.name, call.input) for call in step.calls] == [
        ("container_ops", {"action": "list"}),
        ("metrics_monitor", {"section": "all"}),
    ]


def test_a_request_without_a_detail_it_needs_asks_for_it_and_calls_nothing() -> None:
    step = next_step(Request("restart", missing="a service"), [], SERVICES)

    assert step.calls == ()
    assert step.text == "To do that I need a service. Services on this site: inference, sensor, game-state."


def test_a_failed_listing_ends_the_request_with_the_failure() -> None:
    request = parse("restart sensor")
    (listing,) = next_step(request, [], SERVICES).calls
    failed: Any = {"status": "error", "content": [{"text": "Error: runtime unreachable"}]}

    step = next_step(request, [[Observation.of(listing, failed)]], SERVICES)

    assert step.calls == ()
    assert step.text == "I could not list the instances of sensor: runtime unreachable."
