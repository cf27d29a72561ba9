"""Latency of the sample workloads: each service's ``invoke()`` in-process, and ``POST /invoke`` over HTTP.

Run: ``.venv/bin/python bench/workload_bench.py [--calls N] [--http-calls N] [--device python|auto|cpu|cuda]``.

1. In-process: each service is built in this process and ``invoke()`` is called ``--calls`` times
   (after a warm-up), each call timed on its own with ``perf_counter_ns``.
2. Over HTTP: each workload runs as its own process (``python -m workloads.NAME --port P``, as
   a site starts it) and one keep-alive ``http.client`` connection sends ``--http-calls``
   requests one after the other, each timed from the request to the end of the reply's body.

The payloads vary from call to call (sensor readings of 64 sensors, single and in batches of
100; game-state moves of 8 players in 16 sessions; inference over the shipped example phrases).
It prints p50, p99, mean and max per row, next to the reference figures the unit tests used to
assert (they are timing, so they live here now), and always exits 0: these are figures to
read, not a gate. On a busy machine the tails grow; the machine's load is printed first.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))  # run as a script: this checkout's packages come first

from api.launcher import ChildProcess, http_ready  # noqa: E402
from tools.runtimes.base import free_port  # noqa: E402
from workloads.game_state import GameStateService  # noqa: E402
from workloads.inference import DEVICE_CHOICES, INTENT_EXAMPLES, InferenceService  # noqa: E402
from workloads.sensor import SensorService  # noqa: E402
from workloads.server import Workload  # noqa: E402

HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
WARMUP_CALLS = 50

REFERENCE_MS: dict[tuple[str, str], float] = {
    ("in-process", "inference"): 2.0,
    ("http", "sensor"): 20.0,
}
"""p50 bounds the unit tests used to assert: pure-Python inference under 2 ms per call, and a
sensor reply over keep-alive HTTP under 20 ms (a reply written in two pieces would wait for
the client's delayed ACK, about 40 ms)."""


@dataclass(frozen=True)
class Case:
    """One row: a workload module, how to build its service, and an endless payload stream."""

    label: str
    module: str
    build: Callable[[str], Workload]
    payloads: Callable[[], Iterator[dict[str, Any]]]


def _sensor_single() -> Iterator[dict[str, Any]]:
    for i in itertools.count():
        yield {"sensor_id": f"bench-{i % 64}", "value": 20.0 + (i % 17) * 0.25}


def _sensor_batch() -> Iterator[dict[str, Any]]:
    for i in itertools.count():
        yield {"sensor_id": f"bench-{i % 64}", "values": [20.0 + ((i + k) % 17) * 0.25 for k in range(100)]}


def _game_moves() -> Iterator[dict[str, Any]]:
    for i in itertools.count(1):  # seq grows for every player, so every update is accepted
        yield {
            "session_id": f"match-{i % 16}",
            "player_id": f"player-{i % 8}",
            "seq": i,
            "state": {"x": float(i % 1000), "y": float((i * 7) % 1000), "hp": 100 - i % 50, "score": i},
        }


def _inference_texts() -> Iterator[dict[str, Any]]:
    texts = [text for phrases in INTENT_EXAMPLES.values() for text in phrases]
    for text in itertools.cycle(texts):
        yield {"text": text}


CASES: tuple[Case, ...] = (
    Case("sensor", "sensor", lambda _device: SensorService(), _sensor_single),
    Case("sensor (batch of 100)", "sensor", lambda _device: SensorService(), _sensor_batch),
    Case("game_state", "game_state", lambda _device: GameStateService(), _game_moves),
    Case("inference", "inference", InferenceService, _inference_texts),
)


@dataclass(frozen=True)
class Figures:
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    @classmethod
    def of(cls, durations_ns: Sequence[int]) -> Figures:
        ms = [value / 1e6 for value in durations_ns]
        p99 = statistics.quantiles(ms, n=100, method="inclusive")[98] if len(ms) > 1 else ms[0]
        return cls(statistics.median(ms), p99, statistics.fmean(ms), max(ms))


def measure_in_process(case: Case, device: str, calls: int) -> Figures:
    service = case.build(device)
    payloads = case.payloads()
    for _ in range(WARMUP_CALLS):
        service.invoke(next(payloads))
    durations: list[int] = []
    for _ in range(calls):
        payload = next(payloads)
        started = time.perf_counter_ns()
        service.invoke(payload)
        durations.append(time.perf_counter_ns() - started)
    return Figures.of(durations)


def start_workload(module: str, device: str = "cpu") -> tuple[ChildProcess, int]:
    """``python -m workloads.MODULE`` on a free port, once its /healthz answers 200."""
    port = free_port(HOST)
    process = ChildProcess(
        [sys.executable, "-m", f"workloads.{module}", "--host", HOST, "--port", str(port)],
        name=f"workloads.{module}",
        cwd=REPO_DIR,
        env={**os.environ, "MEC_WORKLOAD_DEVICE": device},
    ).start()
    process.wait_ready(lambda: http_ready(f"http://{HOST}:{port}/healthz", 5.0), START_TIMEOUT_S)
    return process, port


def stop_workload(process: ChildProcess) -> None:
    """SIGTERM by pid, SIGKILL if it lingers."""
    process.stop(STOP_TIMEOUT_S)


def measure_http(case: Case, device: str, calls: int) -> Figures:
    process, port = start_workload(case.module, device)
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    headers = {"Content-Type": "application/json"}
    try:
        payloads = case.payloads()
        bodies = [json.dumps(next(payloads)).encode() for _ in range(WARMUP_CALLS + calls)]
        durations: list[int] = []
        for index, body in enumerate(bodies):
            started = time.perf_counter_ns()
            conn.request("POST", "/invoke", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter_ns() - started
            if response.status != 200:
                raise RuntimeError(f"{case.label}: POST /invoke answered {response.status}")
            if index >= WARMUP_CALLS:
                durations.append(elapsed)
        return Figures.of(durations)
    finally:
        conn.close()
        stop_workload(process)


def _row(kind: str, case: Case, figures: Figures) -> str:
    reference = REFERENCE_MS.get((kind, case.label))
    note = ""
    if reference is not None:
        verdict = "within" if figures.p50_ms < reference else "ABOVE"
        note = f"p50 {verdict} the reference of {reference:g} ms"
    return (
        f"{kind:<11} {case.label:<22} {figures.p50_ms:>9.3f} {figures.p99_ms:>9.3f} "
        f"{figures.mean_ms:>9.3f} {figures.max_ms:>9.3f}  {note}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000, help="timed in-process calls per row")
    parser.add_argument("--http-calls", type=int, default=500, help="timed HTTP requests per row")
    parser.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="python",
        help="inference engine (MEC_WORKLOAD_DEVICE); default python, the engine the tests use",
    )
    args = parser.parse_args(argv)
    if args.calls < 1 or args.http_calls < 1:
        parser.error("--calls and --http-calls must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load}; inference device {args.device}"
    )
    print(f"{args.calls} in-process calls and {args.http_calls} keep-alive HTTP requests per row")
    print(f"\n{'':<11} {'workload':<22} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9} {'max ms':>9}")
    for case in CASES:
        print(_row("in-process", case, measure_in_process(case, args.device, args.calls)), flush=True)
    for case in CASES:
        print(_row("http", case, measure_http(case, args.device, args.http_calls)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
