"""One-shot GPU check: NVML through the site's `GpuProbe`, and `inference` on CUDA vs CPU.

Meant for a machine with an NVIDIA GPU, torch and nvidia-ml-py (as the project's lent H200 has);
it needs nothing else of the project's dependencies. It prints a table and writes the figures as
JSON to `$OUT/gpu_check.json` when `OUT` is set (else `bench/results/gpu_check.json`).

    python3 bench/gpu_check.py [--calls 2000] [--requests 300]

Figures:
- NVML: cost of `GpuProbe()` start-up and of one whole snapshot (`GpuProbe.sample()`: utilisation,
  memory, temperature, power per device), plus the two single reads it is made of.
- inference: `InferenceService.invoke` latency per device (`cuda`, `cpu` = torch on the CPU,
  `python` = the pure-Python path), one request at a time after a warm-up, and whether the
  three agree on the label.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.probes import GpuProbe  # noqa: E402
from workloads.inference import InferenceService  # noqa: E402

TEXTS = (
    "navigate to the nearest charging station",
    "what will the weather be like tomorrow morning",
    "play something relaxing by miles davis",
    "send a message to alex saying i am late",
    "translate good evening into japanese",
)


def _timed_us(fn: Callable[[], Any], calls: int) -> dict[str, float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    return {
        "calls": calls,
        "p50_us": round(statistics.median(samples), 2),
        "p99_us": round(samples[int(0.99 * (len(samples) - 1))], 2),
        "mean_us": round(statistics.fmean(samples), 2),
    }


def nvml_figures(calls: int) -> dict[str, Any]:
    started = time.perf_counter_ns()
    probe = GpuProbe()
    init_us = (time.perf_counter_ns() - started) / 1000
    out: dict[str, Any] = {"available": probe.available, "reason": probe.reason, "init_us": round(init_us, 1)}
    if not probe.available:
        return out
    import pynvml

    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    out["devices"] = [gpu.__dict__ for gpu in probe.sample()]
    out["snapshot"] = _timed_us(probe.sample, calls)
    out["utilization_read"] = _timed_us(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle), calls)
    out["memory_read"] = _timed_us(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle), calls)
    return out


def inference_figures(requests: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    labels: dict[str, list[str]] = {}
    for device in ("cuda", "cpu", "python"):
        try:
            service = InferenceService(device=device)
        except Exception as exc:  # no torch, or no CUDA
            results[device] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        for text in TEXTS * 4:  # warm-up: kernels, allocator, caches
            service.invoke({"text": text})
        labels[device] = [service.invoke({"text": text})["label"] for text in TEXTS]
        counter = iter(range(10**9))
        results[device] = {
            **service.info(),
            **_timed_us(
                lambda s=service, c=counter: s.invoke({"text": TEXTS[next(c) % len(TEXTS)]}), requests
            ),
        }
    results["labels"] = labels
    results["labels_agree"] = len({tuple(v) for v in labels.values()}) <= 1
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="NVML calls per figure")
    parser.add_argument("--requests", type=int, default=300, help="inference requests per device")
    args = parser.parse_args()
    report = {
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "nvml": nvml_figures(args.calls),
        "inference": inference_figures(args.requests),
    }
    print(json.dumps(report, indent=2, default=str))
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
