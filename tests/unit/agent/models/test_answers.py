"""The rules model's English: how calls and failures are put into words, and the latency diagnosis.

Whole answers over real tool results are checked through the model in `test_rules_model.py` and
`test_rules_paraphrases.py`; these pin the pieces they are made of.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.models.answers import describe, diagnose, failure_sentences
from agent.models.events import ToolCall
from agent.models.results import Observation

DESCRIBED: list[tuple[str, dict[str, Any], str]] = [
    ("container_ops", {"action": "list"}, "list the instances"),
    ("container_ops", {"action": "list", "service": "sensor"}, "list the instances of sensor"),
    ("container_ops", {"action": "start", "service": "sensor"}, "start an instance of sensor"),
    ("container_ops", {"action": "scale", "service": "sensor", "replicas": 1}, "scale sensor to 1 replica"),
    (
        "container_ops",
        {"action": "scale", "service": "sensor", "replicas": "x"},
        "scale sensor to 0 replicas",
    ),
    ("container_ops", {"action": "logs", "instance_id": "sensor-1"}, "read the logs of sensor-1"),
    ("container_ops", {"action": "inspect"}, "inspect the site"),
    ("container_ops", {"action": "restart", "instance_id": "sensor-1"}, "restart sensor-1"),
    ("cache_manager", {"action": "stats"}, "read the cache stats"),
    ("cache_manager", {"action": "flush", "namespace": "sensor"}, "flush the sensor cache"),
    (
        "cache_manager",
        {"action": "get", "namespace": "sensor", "key": "k"},
        "read key k from the sensor cache",
    ),
    (
        "cache_manager",
        {"action": "set", "namespace": "sensor", "key": "k"},
        "store key k in the sensor cache",
    ),
    (
        "cache_manager",
        {"action": "delete", "namespace": "sensor", "key": "k"},
        "delete key k from the sensor cache",
    ),
    ("cache_manager", {"action": "evict"}, "evict the cache"),
    ("metrics_monitor", {"section": "gpu"}, "read the gpu metrics"),
    ("metrics_monitor", {}, "read the all metrics"),
    ("alerts", {}, "call alerts"),
]


@pytest.mark.parametrize(("tool", "args", "phrase"), DESCRIBED, ids=[phrase for _, _, phrase in DESCRIBED])
def test_a_call_is_described_as_a_verb_phrase(tool: str, args: dict[str, Any], phrase: str) -> None:
    assert describe(ToolCall(tool, args)) == phrase


def _failed(tool: str, args: dict[str, Any], error: str) -> Observation:
    return Observation.of(ToolCall(tool, args), {"status": "error", "content": [{"text": f"Error: {error}"}]})


def test_held_calls_come_first_as_one_question_then_refusals_then_errors() -> None:
    observations = [
        _failed("container_ops", {"action": "logs", "instance_id": "sensor-9"}, "no such instance sensor-9."),
        _failed(
            "container_ops",
            {"action": "start", "service": "x"},
            "refused: image not in this site's allowlist",
        ),
        _failed("container_ops", {"action": "stop", "instance_id": "game-state-1"}, "confirmation required"),
        _failed("cache_manager", {"action": "flush", "namespace": "sensor"}, "confirmation required"),
        Observation.of(ToolCall("metrics_monitor", {"section": "gpu"}), {"status": "success", "content": []}),
    ]

    assert failure_sentences(observations, ("sensor", "game-state")) == [
        "This stops 1 instance of game-state (game-state-1) and flushes the sensor cache; "
        "reply yes to confirm and go ahead.",
        "I could not start an instance of x: it was refused (image not in this site's allowlist).",
        "I could not read the logs of sensor-9: no such instance sensor-9.",
    ]


def test_capacity_rejects_do_not_read_as_a_long_tail() -> None:
    """Instant 503 rejects pull the p50 down; the p99/p50 ratio is then no sign of a long tail."""
    stats = {"requests": 40, "errors": 0, "rejected": 30, "p50_ms": 0.1, "p99_ms": 9.0}
    findings = diagnose(stats, [], [], None, "sensor", listed=False)
    assert findings == [
        "30 requests were turned away for lack of capacity (503): no instance was free to take them; "
        "scaling out should help."
    ]
    assert any("long tail" in f for f in diagnose({**stats, "rejected": 0}, [], [], None, "sensor", False))
