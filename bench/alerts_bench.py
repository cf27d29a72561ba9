"""What alerting costs a site: the rules and the overload state machine, per sample and at 2 samples/s.

Run: `.venv/bin/python bench/alerts_bench.py [--samples N]`.

Method: the embedded default rules (`config/default.yaml`, 9 rules) over the readings of one sample
of a busy site (`monitoring.readings.site_readings` from a metrics snapshot with host figures, one
GPU, three services with traffic, two peers, three dependencies: 18 readings), with values that
move so that rules pend, fire and resolve; each sample is built, evaluated by `AlertEngine` and
fed to `OverloadMachine`, as `api.site.Site.evaluate_alerts` does. CPU time (`time.process_time`)
over N samples gives the cost of one, and at the site's 2 samples/s the share of one core. Then
the same on a real site: `mec serve` on embedded defaults for a few seconds, reading its own
`alerts.evaluate_s` counter (`GET /v1/metrics/snapshot`) against the wall time. Target: <= 1 % of
one core at 2 samples/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

import httpx  # noqa: E402

from api.launcher import SiteProcess, generated_key  # noqa: E402
from config.settings import load_settings  # noqa: E402
from monitoring.alerts import AlertEngine  # noqa: E402
from monitoring.overload import OverloadMachine  # noqa: E402
from monitoring.readings import site_readings  # noqa: E402
from tools.metrics_monitor import EMPTY_SNAPSHOT, ServiceRequestStats  # noqa: E402
from tools.probes import GpuMetrics, HostMetrics  # noqa: E402
from tools.runtimes.base import free_port  # noqa: E402

TARGET_PCT = 1.0
SAMPLES_PER_S = 2.0


def _snapshot(n: int):  # type: ignore[no-untyped-def]
    swing = (n // 40) % 2  # 20 s busy, 20 s calm at 2 samples/s
    host = HostMetrics(60 + 35 * swing, 8, 3.0, 70.0, 6 << 30, 8 << 30, 40.0, 1 << 30, 1e5, 1e5)
    gpu = GpuMetrics(0, "gpu", 50.0 + 48 * swing, 10 << 30, 80 << 30, 60.0, 200.0)
    services = tuple(
        ServiceRequestStats(name, 500, 50.0, 2 * swing, 0, 5.0, 20.0, 80.0 + 150 * swing, {"local": 500})
        for name in ("inference", "sensor", "game-state")
    )
    return replace(EMPTY_SNAPSHOT, host=host, gpus=(gpu,), requests=services, taken_at=float(n))


def micro(samples: int) -> dict[str, float]:
    rules = load_settings(None).alert_rules
    engine, machine = AlertEngine(rules), OverloadMachine()
    budgets = {"inference": 200.0, "sensor": 100.0, "game-state": 50.0}
    metrics = {"cpu_percent", "inflight", "p99_budget_ratio", "gpu_utilization"}
    events = 0
    started = time.process_time()
    for n in range(samples):
        now = n / SAMPLES_PER_S
        readings = site_readings(
            _snapshot(n),
            {"inference": 3 + 60 * ((n // 40) % 2), "sensor": 2, "game-state": 1},
            budgets,
            {"site-2": False, "site-3": n % 50 == 0},
            {"redis": False, "docker": False, "consensus": False},
        )
        events += len(engine.evaluate(readings, now))
        hot = any(a.metric in metrics for a in engine.firing())
        machine.step(hot, True, now)
    cpu_s = time.process_time() - started
    per_sample_us = cpu_s / samples * 1e6
    return {
        "samples": samples,
        "readings_per_sample": len(readings),
        "rules": len(rules),
        "events": events,
        "overload_transitions": machine.transitions,
        "cpu_us_per_sample": round(per_sample_us, 1),
        "core_pct_at_2_per_s": round(per_sample_us * SAMPLES_PER_S / 1e4, 4),
    }


def on_a_site(seconds: float) -> dict[str, float]:
    operator = generated_key("operator")
    with tempfile.TemporaryDirectory(prefix="mec-alerts-bench-") as tmp:
        site = SiteProcess(
            Path(tmp),
            client_key=generated_key("client"),
            operator_key=operator,
            port=free_port(),
            embedded_defaults=True,
            cwd=REPO_DIR,
            name="site",
        )
        site.launch()
        try:
            site.wait_ready(90)
            headers = {"Authorization": f"Bearer {operator}"}
            first = httpx.get(f"{site.url}/v1/metrics/snapshot", headers=headers).json()["alerts"]
            t0 = time.monotonic()
            time.sleep(seconds)
            last = httpx.get(f"{site.url}/v1/metrics/snapshot", headers=headers).json()["alerts"]
            wall = time.monotonic() - t0
        finally:
            site.stop()
    evaluations = last["evaluations"] - first["evaluations"]
    spent = last["evaluate_s"] - first["evaluate_s"]
    return {
        "seconds": round(wall, 1),
        "evaluations": evaluations,
        "per_s": round(evaluations / wall, 2),
        "us_per_evaluation": round(spent / max(1, evaluations) * 1e6, 1),
        "core_pct": round(100 * spent / wall, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="What the alert rules and the overload machine cost.")
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--site-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    found = {"micro": micro(args.samples), "site": on_a_site(args.site_seconds)}
    print(json.dumps(found, indent=2))
    worst = max(found["micro"]["core_pct_at_2_per_s"], found["site"]["core_pct"])
    verdict = "PASS" if worst <= TARGET_PCT else "FAIL"
    print(f"alerting at 2 samples/s: {worst:.3f} % of one core (target <= {TARGET_PCT:g} %): {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
