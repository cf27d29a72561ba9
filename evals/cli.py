"""`mec eval`: score the operator agent on the chat suite, or the fast-path router on the routing
suite, and write the report (JSON, Markdown, PNG); `--compare A.json B.json` prints the deltas.

    mec eval --suite chat --model rules [-k 3] [--case ID ...] [--category CAT ...]
    mec eval --suite chat --model openai-compatible --model-url http://127.0.0.1:8081/v1 --model-id smollm2
    mec eval --suite chat --url http://127.0.0.1:8080 [--key KEY]      # a live site's own model
    mec eval --suite routing
    mec eval --compare data/evals/chat-rules.json data/evals/chat-smollm2.json

Without `--url` a site with the embedded defaults is started in this process with the chosen
model (its services are real local processes); with `--url` the live site's agent is evaluated
as it is configured (`--model` then only names the report).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evals import report as reports
from evals.suites import CHAT_CATEGORIES, ChatCase, load_chat_suite, load_routing_suite

DEFAULT_OUT = Path("data/evals")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mec eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=["chat", "routing"])
    parser.add_argument("--model", default="rules", choices=["rules", "openai-compatible", "bedrock"])
    parser.add_argument("-k", type=int, default=1, help="trials per case (pass^1 … pass^k); default 1")
    parser.add_argument("--url", help="evaluate a live site instead of one started in this process")
    parser.add_argument("--key", help="operator key for --url (default: MEC_OPERATOR_KEYS or the site's own)")
    parser.add_argument("--model-url", help="the OpenAI-compatible server's base URL (…/v1)")
    parser.add_argument("--model-id", help="the model id (OpenAI-compatible or Bedrock)")
    parser.add_argument("--model-timeout-s", type=float, help="one model call's limit (MEC_MODEL_TIMEOUT_S)")
    parser.add_argument(
        "--model-max-tokens", type=int, help="one answer's token limit (MEC_MODEL_MAX_TOKENS)"
    )
    parser.add_argument("--case", action="append", default=[], help="only this case id (repeatable)")
    parser.add_argument("--category", action="append", default=[], help="only this category (repeatable)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default {DEFAULT_OUT})"
    )
    parser.add_argument("--name", help="report file stem (default SUITE-MODEL)")
    parser.add_argument("--no-chart", action="store_true", help="write no PNG")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A.json", "B.json"))
    return parser


class _Progress:
    """A tqdm bar on stderr (a line per trial when stderr is not a terminal and tqdm is absent)."""

    def __init__(self, total: int, label: str) -> None:
        self.bar: Any = None
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="turn", file=sys.stderr, dynamic_ncols=True)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            self.bar = None

    def __call__(self, case_id: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(case_id, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _select(cases: Sequence[ChatCase], ids: Sequence[str], categories: Sequence[str]) -> list[ChatCase]:
    unknown = sorted(set(ids) - {case.id for case in cases})
    if unknown:
        raise SystemExit(f"mec eval: unknown case id(s): {', '.join(unknown)}")
    bad = sorted(set(categories) - set(CHAT_CATEGORIES))
    if bad:
        raise SystemExit(
            f"mec eval: unknown categories: {', '.join(bad)} (known: {', '.join(CHAT_CATEGORIES)})"
        )
    return [
        case
        for case in cases
        if (not ids or case.id in ids) and (not categories or case.category in categories)
    ]


def _operator_key(args: argparse.Namespace) -> str:
    if args.key:
        return str(args.key)
    from api.chat_client import default_key
    from config.settings import load_settings

    settings = load_settings(None)
    key = default_key(settings.data_dir, settings.operator_keys)
    if key is None:
        raise SystemExit("mec eval: no operator key for --url: pass --key or set MEC_OPERATOR_KEYS")
    return key


async def _run_chat(args: argparse.Namespace, cases: list[ChatCase]) -> dict[str, Any]:
    from evals.chat_eval import run_chat_suite, runnable
    from evals.metrics import summarize, summarize_by_category
    from evals.sites import InProcessSite, ModelChoice, RemoteSite

    site: InProcessSite | RemoteSite
    if args.url:
        site = RemoteSite(args.url, _operator_key(args))
        where = args.url
    else:
        site = InProcessSite(
            ModelChoice(
                args.model, args.model_url, args.model_id, args.model_timeout_s, args.model_max_tokens
            ),
        )
        where = "an in-process site (embedded defaults, local runtime, in-memory cache)"
    started = time.perf_counter()
    async with site:
        total = sum(runnable(case, site.tools, site.can_set_up) is None for case in cases) * args.k
        progress = _Progress(total, f"chat/{args.model}")
        try:
            run = await run_chat_suite(site, cases, args.k, progress)
        finally:
            progress.close()
    by_case: dict[str, list[Any]] = {}
    for score in run.scores:
        by_case.setdefault(score.case_id, []).append(score)
    model_id = args.model_id or (args.model if args.model != "rules" else "rules-v1")
    return {
        "suite": "chat",
        "suite_version": load_chat_suite().version,
        "model": args.model,
        "model_id": model_id,
        "k": args.k,
        "site": where,
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round(time.perf_counter() - started, 1),
        "summary": summarize(run.scores, args.k),
        "categories": summarize_by_category(run.scores, args.k),
        "strands_evals_overall_score": run.overall_score,
        "skipped": run.skipped,
        "cases": [
            {
                "id": case_id,
                "category": scores[0].category,
                "trials": len(scores),
                "successes": sum(s.success for s in scores),
                "calls": list(scores[0].calls),
                "end_state": list(scores[0].end_state_detail),
                "reply": run.replies.get(case_id, "")[:300],
            }
            for case_id, scores in by_case.items()
        ],
        "trials": [asdict(score) for score in run.scores],
    }


def _run_routing(cases_filter: Sequence[str]) -> dict[str, Any]:
    from evals.routing_eval import run_routing_suite, summarize_routing

    suite = load_routing_suite()
    cases = [case for case in suite.cases if not cases_filter or case.id in cases_filter]
    started = time.perf_counter()
    scores = run_routing_suite(cases)
    categories: dict[str, list[Any]] = {}
    for score in scores:
        categories.setdefault(score.category, []).append(score)
    return {
        "suite": "routing",
        "suite_version": suite.version,
        "model": "rules",
        "model_id": "agent.router.plan",
        "k": 1,
        "site": "hand-built views (agent.view.View) through the real agent.router.plan()",
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round(time.perf_counter() - started, 3),
        "summary": summarize_routing(scores),
        "categories": {name: summarize_routing(group) for name, group in categories.items()},
        "skipped": {},
        "cases": [
            {
                "id": s.case_id,
                "category": s.category,
                "trials": 1,
                "successes": int(s.success),
                "got": s.got,
            }
            for s in scores
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.compare:
        a_path, b_path = args.compare
        a, b = (json.loads(path.read_text(encoding="utf-8")) for path in (a_path, b_path))
        print(reports.compare_text(a, b, str(a_path), str(b_path)))
        return 0
    if args.suite is None:
        print("mec eval: --suite chat|routing (or --compare A.json B.json) is required", file=sys.stderr)
        return 2
    if args.k < 1:
        print("mec eval: -k must be 1 or more", file=sys.stderr)
        return 2
    if args.suite == "routing":
        report = _run_routing(args.case)
    else:
        cases = _select(load_chat_suite().cases, args.case, args.category)
        report = asyncio.run(_run_chat(args, cases))
    stem = args.name or f"{args.suite}-{args.model}"
    paths = reports.write(report, args.out, stem, with_chart=not args.no_chart)
    print(reports.markdown_table(report))
    print("\nwrote " + ", ".join(str(path) for path in paths))
    if args.suite == "routing" and report["summary"]["success_rate"] != 1.0:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
