"""Run the chat suite: each case k times against a site, each trial one fresh chat session.

The trials are `strands_evals.Case`s run by a `strands_evals.Experiment` (one at a time: they
share one site), whose task sets the site up, sends the message and reads the end state, and
whose evaluator (`ChatCaseEvaluator`) scores the trial with `evals.metrics.score_trial`. The
summary metrics (pass^k, argument accuracy, …) are ours (`evals.metrics`): strands-evals'
deterministic evaluators check one tool name or one state value per case, not these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from strands_evals import Case, Experiment
from strands_evals.evaluators import Evaluator
from strands_evals.types import EvaluationData, EvaluationOutput
from strands_evals.types.evaluation import EnvironmentState

from agent.policy import classify
from evals.metrics import ActualCall, TrialScore, score_trial
from evals.sites import SiteUnderTest, Turn
from evals.suites import ChatCase


def changes_site(call: ActualCall) -> bool:
    """Whether a call changes the site (the policy's own classification)."""
    return classify(call.tool, call.args) != "read"


def runnable(case: ChatCase, tools: frozenset[str], can_set_up: bool) -> str | None:
    """Why a case cannot run against this site (None: it can)."""
    missing = [tool for tool in case.requires if tool not in tools]
    if missing:
        return f"needs {', '.join(missing)}"
    present = [tool for tool in case.without if tool in tools]
    if present:
        return f"only for a site without {', '.join(present)}"
    if not can_set_up and (case.setup.scale or case.setup.cache):
        return "needs a setup this site cannot be given"
    return None


@dataclass
class _TrialRecord:
    case: ChatCase
    trial: int
    turn: Turn
    end_state: list[tuple[str, bool]]


class ChatCaseEvaluator(Evaluator[str, str]):
    """Scores one trial against its case; keeps every `TrialScore` in `scores`."""

    def __init__(self, records: dict[str, _TrialRecord]) -> None:
        super().__init__(name="chat_case")
        self.records = records
        self.scores: list[TrialScore] = []

    def evaluate(self, evaluation_case: EvaluationData[str, str]) -> list[EvaluationOutput]:
        record = self.records[str(evaluation_case.name)]
        turn = record.turn
        score = score_trial(
            case_id=record.case.id,
            category=record.case.category,
            trial=record.trial,
            expectation=record.case.expect,
            actual=[ActualCall.of(call) for call in turn.tool_calls],
            reply=turn.reply,
            end_state=record.end_state,
            latency_ms=turn.latency_ms,
            usage=turn.usage,
            changes=changes_site,
            error=turn.error,
        )
        self.scores.append(score)
        reason = "; ".join([*score.calls, *score.end_state_detail]) or "no tool calls"
        if score.error:
            reason = f"{score.error}; {reason}"
        return [EvaluationOutput(score=1.0 if score.success else 0.0, test_pass=score.success, reason=reason)]

    async def evaluate_async(self, evaluation_case: EvaluationData[str, str]) -> list[EvaluationOutput]:
        return self.evaluate(evaluation_case)


@dataclass
class ChatRun:
    scores: list[TrialScore]
    skipped: dict[str, str]
    replies: dict[str, str] = field(default_factory=dict)
    """The first trial's reply per case (for the report)."""
    overall_score: float | None = None
    """strands-evals' `EvaluationReport.overall_score` (the mean trial success)."""


async def run_chat_suite(
    site: SiteUnderTest,
    cases: Sequence[ChatCase],
    k: int,
    progress: Callable[[str], None] | None = None,
) -> ChatRun:
    """Run every runnable case `k` times on `site`; the others are listed in `skipped`."""
    skipped: dict[str, str] = {}
    runnable_cases: dict[str, ChatCase] = {}
    for case in cases:
        why = runnable(case, site.tools, site.can_set_up)
        if why is None:
            runnable_cases[case.id] = case
        else:
            skipped[case.id] = why
    trials = [
        Case[str, str](
            name=f"{case.id}#{trial}",
            input=case.message,
            expected_trajectory=[call.model_dump() for call in case.expect.calls],
            metadata={"case_id": case.id, "trial": trial, "category": case.category},
        )
        for trial in range(1, k + 1)
        for case in runnable_cases.values()
    ]
    records: dict[str, _TrialRecord] = {}

    async def task(trial_case: Case[str, str]) -> dict[str, Any]:
        meta = trial_case.metadata or {}
        case = runnable_cases[meta["case_id"]]
        await site.prepare(case.setup)
        turn = await site.turn(case.message, case.confirm)
        checked = await site.check(case.end_state)
        end_state = [(what, held) for what, held in checked if held is not None]
        records[str(trial_case.name)] = _TrialRecord(case, int(meta["trial"]), turn, end_state)
        if progress is not None:
            progress(case.id)
        return {
            "output": turn.reply,
            "trajectory": [call.get("name") for call in turn.tool_calls],
            "environment_state": [EnvironmentState(name="end_state", state=end_state)],
        }

    evaluator = ChatCaseEvaluator(records)
    experiment = Experiment[str, str](cases=trials, evaluators=[evaluator])
    report = await experiment.run_evaluations_async(task, max_workers=1)
    replies = {
        record.case.id: record.turn.reply or (record.turn.error or "")
        for record in records.values()
        if record.trial == 1
    }
    ordered = sorted(evaluator.scores, key=lambda s: (s.trial, list(runnable_cases).index(s.case_id)))
    return ChatRun(ordered, skipped, replies, report.overall_score)
