"""The metric definitions of `mec eval`, pinned on examples computed by hand."""

from __future__ import annotations

import math

import pytest

from evals.metrics import (
    ActualCall,
    argument_counts,
    call_matches,
    constraint_holds,
    exact_match,
    in_order_match,
    pass_hat_k,
    percentile,
    score_trial,
    summarize,
    tool_selection_correct,
)
from evals.suites import ArgConstraint, ChatExpectation, ExpectedCall


def expected(tool: str, **args: object) -> ExpectedCall:
    return ExpectedCall.model_validate({"tool": tool, "args": args})


def called(tool: str, status: str = "success", **args: object) -> ActualCall:
    return ActualCall(tool, args, status)


def changes(call: ActualCall) -> bool:
    return call.args.get("action") in ("scale", "stop", "restart", "start", "set", "delete", "flush")


LIST = expected("container_ops", action="list")
SCALE = expected("container_ops", action="scale", service="sensor", replicas=2)


def test_pass_hat_k_is_the_mean_over_cases_of_c_choose_k_over_n_choose_k() -> None:
    # Case A: 3 of 4 trials passed; case B: 4 of 4; case C: 1 of 4.
    counts = [(4, 3), (4, 4), (4, 1)]
    # k=1: (3/4 + 4/4 + 1/4) / 3 = 2/3
    assert pass_hat_k(counts, 1) == pytest.approx(2 / 3)
    # k=2: C(3,2)/C(4,2) = 3/6, C(4,2)/C(4,2) = 1, C(1,2) = 0 → (0.5 + 1 + 0) / 3 = 0.5
    assert pass_hat_k(counts, 2) == pytest.approx(0.5)
    # k=3: 1/4, 1, 0 → 1.25 / 3
    assert pass_hat_k(counts, 3) == pytest.approx(1.25 / 3)
    # k=4: only case B passes all → 1/3
    assert pass_hat_k(counts, 4) == pytest.approx(1 / 3)


def test_pass_hat_k_leaves_out_cases_with_fewer_trials_than_k() -> None:
    assert pass_hat_k([(1, 1), (3, 2)], 2) == pytest.approx(math.comb(2, 2) / math.comb(3, 2))
    assert pass_hat_k([(1, 1)], 2) is None
    with pytest.raises(ValueError):
        pass_hat_k([(1, 1)], 0)


def test_exact_match_needs_the_same_calls_in_the_same_order_and_nothing_else() -> None:
    calls = [
        called("container_ops", action="list"),
        called("container_ops", action="scale", service="sensor", replicas=2),
    ]
    assert exact_match([LIST, SCALE], calls)
    assert not exact_match([SCALE, LIST], calls)
    assert not exact_match([SCALE], calls)
    assert not exact_match([LIST, SCALE], [*calls, called("metrics_monitor", section="all")])


def test_in_order_match_accepts_extra_calls_around_and_between_but_not_a_swap() -> None:
    metrics = called("metrics_monitor", section="all")
    listing = called("container_ops", action="list")
    scaling = called("container_ops", action="scale", service="sensor", replicas=2)
    assert in_order_match([LIST, SCALE], [metrics, listing, metrics, scaling, metrics])
    assert in_order_match([SCALE], [listing, scaling])
    assert not in_order_match([LIST, SCALE], [scaling, listing])
    assert not in_order_match([LIST, LIST], [listing])
    assert in_order_match([], [listing])


def test_a_call_matches_only_when_every_argument_constraint_holds() -> None:
    assert call_matches(
        SCALE, called("container_ops", action="scale", service="sensor", replicas=2, image=None)
    )
    assert not call_matches(SCALE, called("container_ops", action="scale", service="sensor", replicas=3))
    assert not call_matches(SCALE, called("cache_manager", action="scale", service="sensor", replicas=2))


def test_argument_constraints_equals_contains_one_of_and_absent() -> None:
    def holds(constraint: object, **args: object) -> bool:
        return constraint_holds(ArgConstraint.model_validate(constraint), args, "x")

    assert holds(2, x=2) and not holds(2, x="2") and not holds(2)
    assert holds({"contains": "Sensor"}, x="mec-site-1-sensor-1") and not holds({"contains": "gpu"}, x="host")
    assert holds({"contains": "b"}, x=["a", "b"]) and not holds({"contains": "c"}, x=["a", "b"])
    assert holds({"one_of": ["host", "all"]}, x="all") and not holds({"one_of": ["host", "all"]}, x="gpu")
    assert holds({"one_of": ["host", None]}) and not holds({"one_of": ["host"]})
    assert holds({"absent": True}) and holds({"absent": True}, x=None) and not holds({"absent": True}, x="a")
    assert holds({"absent": False}, x="a")
    with pytest.raises(ValueError):
        ArgConstraint.model_validate({"equals": 1, "contains": 1})


def test_argument_counts_credit_any_call_of_the_tool_and_skip_tools_never_called() -> None:
    logs = expected("container_ops", action="logs", instance_id="sensor-1")
    stats = expected("cache_manager", action="stats")
    calls = [
        called("container_ops", action="list"),
        called("container_ops", action="logs", instance_id="sensor-1"),
    ]
    # logs: satisfied by the second container_ops call; stats: cache_manager never called.
    assert argument_counts([logs, stats], calls) == (1, 1)
    assert argument_counts(
        [SCALE], [called("container_ops", action="scale", service="sensor", replicas=5)]
    ) == (0, 1)


def test_tool_selection_allows_extra_reads_but_not_an_extra_change() -> None:
    listing = called("container_ops", action="list")
    assert tool_selection_correct([LIST], [listing, called("metrics_monitor", section="all")], changes)
    assert not tool_selection_correct([LIST], [called("metrics_monitor", section="all")], changes)
    assert not tool_selection_correct(
        [expected("metrics_monitor")],
        [called("metrics_monitor"), called("cache_manager", action="flush")],
        changes,
    )


def trial(expectation: dict[str, object], calls: list[ActualCall], **extra: object) -> dict[str, object]:
    defaults: dict[str, object] = {
        "case_id": "c",
        "category": "cat",
        "trial": 1,
        "expectation": ChatExpectation.model_validate(expectation),
        "actual": calls,
        "reply": "",
        "end_state": [],
        "latency_ms": 1.0,
        "usage": {},
        "changes": changes,
    }
    return {**defaults, **extra}


def test_no_tool_passes_only_without_any_call() -> None:
    quiet = score_trial(**trial({"no_tool": True}, []))  # type: ignore[arg-type]
    noisy = score_trial(**trial({"no_tool": True}, [called("metrics_monitor")]))  # type: ignore[arg-type]
    assert quiet.success and quiet.irrelevance and quiet.tool_selection
    assert not noisy.success and noisy.irrelevance is False and noisy.tool_selection is False


def test_ask_back_allows_reads_and_refused_changes_but_not_a_change_that_ran() -> None:
    refused = [called("container_ops", "refused", action="stop", instance_id="sensor-1")]
    ran = [called("container_ops", "success", action="stop", instance_id="sensor-1")]
    reads = [called("container_ops", action="list")]
    for calls, ok in ((refused, True), (reads, True), ([], True), (ran, False)):
        assert score_trial(**trial({"ask_back": True}, calls)).success is ok  # type: ignore[arg-type]
    needs_word = {"ask_back": True, "reply_contains": ["confirm"]}
    assert not score_trial(**trial(needs_word, refused, reply="done")).success  # type: ignore[arg-type]
    assert score_trial(**trial(needs_word, refused, reply="Please CONFIRM")).success  # type: ignore[arg-type]


def test_a_trial_fails_on_a_failed_end_state_or_an_error_even_when_the_calls_match() -> None:
    calls = [called("container_ops", action="scale", service="sensor", replicas=2)]
    spec = {"calls": [SCALE.model_dump()]}
    assert score_trial(**trial(spec, calls, end_state=[("sensor runs 2", True)])).success  # type: ignore[arg-type]
    failed = score_trial(**trial(spec, calls, end_state=[("sensor runs 2", False)]))  # type: ignore[arg-type]
    assert not failed.success and failed.end_state is False and failed.in_order
    assert not score_trial(**trial(spec, calls, error="HTTP 503")).success  # type: ignore[arg-type]
    # An exact case fails with an extra call that an in-order case accepts.
    extra = [called("container_ops", action="list"), *calls]
    assert score_trial(**trial(spec, extra)).success  # type: ignore[arg-type]
    assert not score_trial(**trial({**spec, "match": "exact"}, extra)).success  # type: ignore[arg-type]


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert percentile(values, 0.5) == 10.0  # rank ceil(10) = 10
    assert percentile(values, 0.95) == 19.0  # rank ceil(19) = 19
    assert percentile([5.0, 1.0, 3.0, 2.0], 0.5) == 2.0  # sorted 1,2,3,5; rank 2
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([], 0.5) is None


def test_summary_micro_averages_arguments_and_sums_tokens() -> None:
    scale = {"calls": [SCALE.model_dump(), expected("container_ops", action="list").model_dump()]}
    good = score_trial(  # type: ignore[arg-type]
        **trial(
            scale,
            [
                called("container_ops", action="scale", service="sensor", replicas=2),
                called("container_ops", action="list"),
            ],
            usage={"input_tokens": 10, "output_tokens": 2, "total_tokens": 12},
            latency_ms=10.0,
        )
    )
    bad = score_trial(  # type: ignore[arg-type]
        **trial(
            scale,
            [called("container_ops", action="scale", service="sensor", replicas=9)],
            case_id="d",
            usage={"input_tokens": 4, "output_tokens": 4, "total_tokens": 8},
            latency_ms=30.0,
        )
    )
    summary = summarize([good, bad], k=1)
    # good: 2 of 2 expected calls satisfied; bad: 0 of 2 (container_ops was called for both).
    assert summary["argument_accuracy"] == pytest.approx(2 / 4)
    assert summary["trajectory_in_order_match"] == 0.5
    assert summary["pass^k"] == {"1": 0.5}
    assert summary["tokens"] == {"input": 14, "output": 6, "total": 20, "mean_total_per_turn": 10.0}
    assert summary["latency_ms"] == {"p50": 10.0, "p95": 30.0}
    assert summary["irrelevance_accuracy"] is None and summary["end_state_success"] is None


def test_a_failed_turn_fails_every_check_that_applies_even_without_calls() -> None:
    quiet = score_trial(**trial({"no_tool": True}, [], error="HTTP 502: model_output_truncated"))  # type: ignore[arg-type]
    assert not quiet.success and quiet.irrelevance is False and quiet.tool_selection is False
    assert quiet.exact is None and quiet.in_order is None
    spec = {"calls": [SCALE.model_dump()]}
    failed = score_trial(**trial(spec, [], error="HTTP 504", end_state=[("sensor runs 1", True)]))  # type: ignore[arg-type]
    assert failed.exact is False and failed.in_order is False and failed.tool_selection is False
    assert failed.irrelevance is None and failed.end_state is True
