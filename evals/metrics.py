"""The metric definitions of `mec eval`: one trial scored against its case, and trials summed up.

Definitions (each pinned by `tests/unit/evals/test_metrics.py` on hand-computed examples):

* A tool call *matches* an expected call when the tool names are equal and every argument
  constraint holds (`constraint_holds`).
* **trajectory exact match** (cases that expect calls): the calls made match the expected ones
  one to one, in order, and nothing else was called.
* **trajectory in-order match** (cases that expect calls): the expected calls are a subsequence of
  the calls made (other calls may come before, between and after them).
* **tool-selection accuracy** (cases that expect calls or no tool): every expected tool was
  called, and every call of a tool that was not expected only reads (an extra look at the
  metrics is a fine choice, an unasked change is not); for `no_tool`: nothing was called.
* **argument accuracy** (micro-averaged over expected calls whose tool was called at all): the
  share of those expected calls that at least one call of that tool satisfies every constraint of.
* **irrelevance accuracy** (cases that expect no tool or a question back): `no_tool` passes when
  nothing was called; `ask_back` passes when no call that changes the site *ran* (reads, and
  calls the policy refused, are allowed) — plus the reply words, when the case names some.
* **end-state success** (cases with end-state checks): every check held on the real site.
* A turn that failed (the site answered an error: model timeout, truncated output, …) fails every
  per-trial check that applies to its case: it neither matched, nor chose tools, nor stayed
  quiet on purpose. Its end state is still read (it is the site's real state).
* A trial *succeeds* when its expectation holds (exact or in-order match as the case says, or the
  irrelevance condition), its reply words are there, its end state holds, and the turn answered.
* **pass^k** (τ-bench): for each case with n ≥ k trials of which c succeeded, C(c, k) / C(n, k)
  — the chance that k trials drawn without replacement all succeed; the metric is the mean over
  cases. pass^1 is the plain success rate.
* **latency p50/p95**: nearest-rank percentiles of the turns' wall times (the p-th percentile of n
  sorted values is the value at rank ⌈p·n⌉).
* **tokens**: input, output and total tokens summed over turns, and the mean total per turn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from evals.suites import ArgConstraint, ChatExpectation, ExpectedCall
from tools.metrics_monitor import nearest_rank

ExpectKind = Literal["calls", "no_tool", "ask_back"]


@dataclass(frozen=True)
class ActualCall:
    """One tool call the agent made, as the chat API reports it."""

    tool: str
    args: Mapping[str, Any]
    status: str = "success"
    """`success`, `error`, `refused` (by the policy) or `running`."""

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> ActualCall:
        return cls(
            str(record.get("name", "")), dict(record.get("input") or {}), str(record.get("status", ""))
        )


def constraint_holds(constraint: ArgConstraint, args: Mapping[str, Any], name: str) -> bool:
    """Whether the argument `name` of `args` satisfies `constraint`."""
    value = args.get(name)
    if constraint.absent is not None:
        return (value is None) == constraint.absent
    if value is None:
        return constraint.one_of is not None and None in constraint.one_of
    if constraint.equals is not None:
        return bool(value == constraint.equals)
    if constraint.one_of is not None:
        return value in constraint.one_of
    wanted = constraint.contains
    if isinstance(value, str):
        return str(wanted).lower() in value.lower()
    if isinstance(value, list | tuple | set | frozenset):
        return wanted in value
    if isinstance(value, dict):
        return wanted in value
    return False


def call_matches(expected: ExpectedCall, actual: ActualCall) -> bool:
    """Same tool, and every argument constraint holds."""
    return expected.tool == actual.tool and all(
        constraint_holds(constraint, actual.args, name) for name, constraint in expected.args.items()
    )


def exact_match(expected: Sequence[ExpectedCall], actual: Sequence[ActualCall]) -> bool:
    """The calls match the expected ones one to one, in order, with nothing else."""
    return len(expected) == len(actual) and all(
        call_matches(e, a) for e, a in zip(expected, actual, strict=True)
    )


def in_order_match(expected: Sequence[ExpectedCall], actual: Sequence[ActualCall]) -> bool:
    """The expected calls are a subsequence of the calls made (greedy earliest match is optimal
    for subsequence tests)."""
    position = 0
    for want in expected:
        while position < len(actual) and not call_matches(want, actual[position]):
            position += 1
        if position == len(actual):
            return False
        position += 1
    return True


def tool_selection_correct(
    expected: Sequence[ExpectedCall], actual: Sequence[ActualCall], changes: Callable[[ActualCall], bool]
) -> bool:
    """Every expected tool was called; calls of other tools only read (`changes` says which
    calls change the site)."""
    wanted = {call.tool for call in expected}
    called = {call.tool for call in actual}
    return wanted <= called and not any(call.tool not in wanted and changes(call) for call in actual)


def argument_counts(expected: Sequence[ExpectedCall], actual: Sequence[ActualCall]) -> tuple[int, int]:
    """(expected calls satisfied by some call of their tool, expected calls whose tool was called)."""
    called = satisfied = 0
    for want in expected:
        same_tool = [call for call in actual if call.tool == want.tool]
        if not same_tool:
            continue
        called += 1
        if any(call_matches(want, call) for call in same_tool):
            satisfied += 1
    return satisfied, called


def reply_ok(expectation: ChatExpectation, reply: str) -> bool:
    """The reply holds one of the expected words (always true when the case names none)."""
    if not expectation.reply_contains:
        return True
    low = reply.lower()
    return any(word.lower() in low for word in expectation.reply_contains)


def irrelevance_ok(
    expectation: ChatExpectation, actual: Sequence[ActualCall], changes: Callable[[ActualCall], bool]
) -> bool | None:
    """`no_tool`: nothing called; `ask_back`: no changing call ran (`changes` says which calls
    change the site); None for a case that expects calls."""
    if expectation.kind == "no_tool":
        return not actual
    if expectation.kind == "ask_back":
        return not any(call.status in ("success", "error") and changes(call) for call in actual)
    return None


@dataclass(frozen=True)
class TrialScore:
    """One trial of one case, scored. Fields that do not apply to the case's kind are None."""

    case_id: str
    category: str
    trial: int
    kind: ExpectKind
    success: bool
    tool_selection: bool | None
    args_satisfied: int
    args_called: int
    exact: bool | None
    in_order: bool | None
    irrelevance: bool | None
    end_state: bool | None
    latency_ms: float
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    error: str | None = None
    calls: tuple[str, ...] = ()
    """The calls made, as `tool(action)` strings (for the report)."""
    end_state_detail: tuple[str, ...] = field(default=())


def score_trial(
    *,
    case_id: str,
    category: str,
    trial: int,
    expectation: ChatExpectation,
    actual: Sequence[ActualCall],
    reply: str,
    end_state: Sequence[tuple[str, bool]],
    latency_ms: float,
    usage: Mapping[str, int],
    changes: Callable[[ActualCall], bool],
    error: str | None = None,
) -> TrialScore:
    """Score one trial. `end_state` holds (description, held) for each check of the case."""
    kind = expectation.kind
    expected = expectation.calls
    exact = in_order = selection = None
    if kind == "calls":
        exact = exact_match(expected, actual)
        in_order = in_order_match(expected, actual)
        selection = tool_selection_correct(expected, actual, changes)
    elif kind == "no_tool":
        selection = not actual
    satisfied, called = argument_counts(expected, actual)
    irrelevance = irrelevance_ok(expectation, actual, changes)
    if error is not None:
        exact = False if exact is not None else None
        in_order = False if in_order is not None else None
        selection = False if selection is not None else None
        irrelevance = False if irrelevance is not None else None
    state_ok = all(held for _, held in end_state) if end_state else None
    if kind == "calls":
        met = bool(exact if expectation.match == "exact" else in_order)
    else:
        met = bool(irrelevance)
    success = error is None and met and reply_ok(expectation, reply) and state_ok is not False
    return TrialScore(
        case_id=case_id,
        category=category,
        trial=trial,
        kind=kind,
        success=success,
        tool_selection=selection,
        args_satisfied=satisfied,
        args_called=called,
        exact=exact,
        in_order=in_order,
        irrelevance=irrelevance,
        end_state=state_ok,
        latency_ms=latency_ms,
        input_tokens=int(usage.get("input_tokens", 0)),
        output_tokens=int(usage.get("output_tokens", 0)),
        total_tokens=int(usage.get("total_tokens", 0)),
        error=error,
        calls=tuple(
            f"{call.tool}({call.args.get('action') or call.args.get('section') or ''})" for call in actual
        ),
        end_state_detail=tuple(f"{'ok' if held else 'FAILED'}: {what}" for what, held in end_state),
    )


# -- summaries ------------------------------------------------------------------------------------


def pass_hat_k(successes_per_case: Iterable[tuple[int, int]], k: int) -> float | None:
    """τ-bench's pass^k: the mean over cases of C(c, k) / C(n, k), for (n trials, c successes);
    cases with fewer than k trials are left out; None when none is left."""
    if k < 1:
        raise ValueError("k must be at least 1")
    values = [math.comb(c, k) / math.comb(n, k) for n, c in successes_per_case if n >= k]
    return sum(values) / len(values) if values else None


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest rank: the value at rank ⌈fraction·n⌉ of the sorted values (None when empty)."""
    return nearest_rank(sorted(values), fraction) if values else None


def _rate(flags: Iterable[bool | None]) -> float | None:
    counted = [flag for flag in flags if flag is not None]
    return sum(counted) / len(counted) if counted else None


def summarize(trials: Sequence[TrialScore], k: int) -> dict[str, Any]:
    """Every metric over `trials` (see the module docstring); pass^1 … pass^k."""
    per_case: dict[str, list[TrialScore]] = {}
    for trial in trials:
        per_case.setdefault(trial.case_id, []).append(trial)
    counts = [(len(ts), sum(t.success for t in ts)) for ts in per_case.values()]
    called = sum(t.args_called for t in trials)
    latencies = [t.latency_ms for t in trials]
    total_tokens = sum(t.total_tokens for t in trials)
    return {
        "cases": len(per_case),
        "trials": len(trials),
        "success_rate": _rate(t.success for t in trials),
        "tool_selection_accuracy": _rate(t.tool_selection for t in trials),
        "argument_accuracy": sum(t.args_satisfied for t in trials) / called if called else None,
        "trajectory_exact_match": _rate(t.exact for t in trials),
        "trajectory_in_order_match": _rate(t.in_order for t in trials),
        "irrelevance_accuracy": _rate(t.irrelevance for t in trials),
        "end_state_success": _rate(t.end_state for t in trials),
        "pass^k": {str(j): pass_hat_k(counts, j) for j in range(1, k + 1)},
        "latency_ms": {"p50": percentile(latencies, 0.50), "p95": percentile(latencies, 0.95)},
        "tokens": {
            "input": sum(t.input_tokens for t in trials),
            "output": sum(t.output_tokens for t in trials),
            "total": total_tokens,
            "mean_total_per_turn": total_tokens / len(trials) if trials else None,
        },
        "errors": sum(t.error is not None for t in trials),
    }


def summarize_by_category(trials: Sequence[TrialScore], k: int) -> dict[str, dict[str, Any]]:
    """`summarize` for each category, in the order categories first appear."""
    groups: dict[str, list[TrialScore]] = {}
    for trial in trials:
        groups.setdefault(trial.category, []).append(trial)
    return {category: summarize(group, k) for category, group in groups.items()}
