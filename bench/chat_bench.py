"""Chat latency with the embedded `rules` model, in-process, on a real site.

Builds the site the way `mec serve` does (embedded defaults, local runtime: real workload
processes, in-process cache, real sampler), then runs chat turns through `site.chat` — the same
`ChatService` that `POST /v1/chat` calls, minus HTTP — and reports p50/p95/p99 per message:

- `new session`: every turn starts a session (a new strands Agent and model each time);
- `same session`: turns continue one session (the conversation window grows to its bound).

Target (issue 3): p50 ≤ 50 ms. Run: `.venv/bin/python bench/chat_bench.py [--turns 200]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.scopes import Principal  # noqa: E402
from api.site import Site  # noqa: E402
from config.settings import load_settings  # noqa: E402

MESSAGES = ("cache stats", "what is the status of the site?", "what is the gpu doing?", "show logs of sensor")
OPERATOR = Principal("operator-key-id", frozenset({"client", "operator"}))


def _row(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return f"{name:<44} {len(samples):>5} {statistics.median(samples):>8.2f} {p(0.95):>8.2f} {p(0.99):>8.2f}"


async def run(turns: int) -> int:
    with tempfile.TemporaryDirectory() as data_dir:
        for name in [key for key in os.environ if key.startswith("MEC_")]:
            del os.environ[name]
        settings = load_settings(data_dir=Path(data_dir), port=0)
        site = Site.build(settings)
        await site.start()
        try:
            for message in MESSAGES:  # warm-up: imports, first tool calls
                await site.chat.chat(message, OPERATOR, persist=False)
            print(f"cores: {os.cpu_count()}  python: {sys.version.split()[0]}  turns per row: {turns}")
            print(f"{'message (mode)':<44} {'turns':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
            worst_p50 = 0.0
            for message in MESSAGES:
                fresh = []
                for _ in range(turns):
                    started = time.perf_counter()
                    await site.chat.chat(message, OPERATOR, persist=False)
                    fresh.append((time.perf_counter() - started) * 1000)
                session_id = (await site.chat.chat(message, OPERATOR)).session_id
                same = []
                for _ in range(turns):
                    started = time.perf_counter()
                    await site.chat.chat(message, OPERATOR, session_id=session_id)
                    same.append((time.perf_counter() - started) * 1000)
                print(_row(f"{message!r} (new session)", fresh))
                print(_row(f"{message!r} (same session)", same))
                worst_p50 = max(worst_p50, statistics.median(fresh), statistics.median(same))
            verdict = "PASS" if worst_p50 <= 50 else "FAIL"
            print(f"worst p50 {worst_p50:.2f} ms (target <= 50 ms): {verdict}")
            return 0 if verdict == "PASS" else 1
        finally:
            await site.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description="chat latency with the rules model, in-process")
    parser.add_argument("--turns", type=int, default=200)
    return asyncio.run(run(parser.parse_args().turns))


if __name__ == "__main__":
    raise SystemExit(main())
