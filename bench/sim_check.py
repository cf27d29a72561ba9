"""The simulator against reality: one real 3-site swarm and `sim` under the same offered load.

Run: `.venv/bin/python bench/sim_check.py [--rates 150,300] [--duration 8]`. Prints, per offered
rate, the SLA-violation rate measured on the real swarm and the one the simulator predicts, and
writes `bench/results/sim-check-latest.json`. Exit 0 (it reports; it does not judge).

Method
------
1. Three `mec serve` processes of this checkout on loopback, peers of each other, with the
   embedded defaults (default balancer, spill share 0.25) and the local runtime
   (`bench/swarm_bench.py`'s `Swarm`: Docker's CPU limit is not needed here, and not every
   machine has Docker). `inference` is scaled to one replica per site.
2. Per rate: an open-loop load of `inference` requests (each a distinct 48-word text, never a
   cache hit), budget 200 ms, sent to site-1 only, evenly spaced (`bench/openloop.py`, through
   `swarm_bench`'s generator processes). Measured: the share of scheduled requests not answered
   200 within the budget from their scheduled instant (answered late, 5xx, or no answer).
3. The simulator is given the same topology and load: 3 sites, one inference instance each,
   every request arriving at site-1, evenly spaced, budget 200 ms; its service time is what the
   real gates measured (`service_ms` of the three instances in `GET /v1/metrics/snapshot` after
   the run, the per-request cost the real router predicts with; averaged, cv 0.3), the RTT and
   forwarding overhead the loopback figures (0.5 + 0.5 ms), the front door 1 ms.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
for folder in (str(REPO_DIR), str(BENCH_DIR)):
    if folder not in sys.path:
        sys.path.insert(0, folder)

import swarm_bench as sb  # noqa: E402
from site_bench import _get  # noqa: E402

from sim.engine import Simulation  # noqa: E402
from sim.scenario import Scenario  # noqa: E402
from sim.topology import InstanceSpec, SiteSpec, Topology  # noqa: E402

RESULTS_FILE = BENCH_DIR / "results" / "sim-check-latest.json"
BUDGET_MS = sb.BUDGET_MS


def gate_service_ms(swarm: sb.Swarm) -> float:
    """The mean of the inference gates' service-time estimates over the three sites (ms)."""
    found = []
    for sid in sb.SITE_IDS:
        status, raw = _get(swarm.port(sid), "/v1/metrics/snapshot", swarm.operator_key)
        if status != 200:
            continue
        for iid, gate in json.loads(raw)["admission"]["instances"].items():
            if "inference" in iid and gate.get("service_ms", 0) > 0:
                found.append(float(gate["service_ms"]))
    if not found:
        raise RuntimeError("no inference gate measured a service time")
    return statistics.fmean(found)


def simulate(rate: float, duration_s: float, service_ms: float, seed: int = 1) -> dict[str, Any]:
    """The simulator's prediction for `rate` req/s of inference to site-1 of a 3-site swarm."""
    scenario = Scenario.model_validate(
        {
            "name": "sim-check",
            "seed": seed,
            "duration_s": duration_s,
            "warmup_s": 0.0,
            "sites": 3,
            "devices": max(1, round(rate)),
            "swarm": {"forward_extra_ms": 0.5, "front_door_ms": 1.0},
            "topology": {"rtt_base_ms": 0.5},
            "services": {"inference": {"budget_ms": BUDGET_MS, "cpu_ms": service_ms, "cv": 0.3}},
            "profiles": {
                "mobile": {
                    "service": "inference",
                    "share": 1,
                    "rate_per_device": rate / max(1, round(rate)),
                    "arrivals": "periodic",
                }
            },
        }
    )
    sites = tuple(
        SiteSpec(
            sid,
            0,
            0,
            False,
            1.0 if sid == "site-1" else 0.0,
            (InstanceSpec(f"{sid}/inference", "inference", False, 1.0),),
        )
        for sid in sb.SITE_IDS
    )
    rtt = tuple(tuple(0.0 if i == j else 0.5 for j in range(3)) for i in range(3))
    topology = Topology(sites, rtt, tuple(tuple(j for j in range(3) if j != i) for i in range(3)))
    metrics = Simulation(scenario, "default", topology=topology).run()
    return metrics.summary()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="150,300", help="offered rates to site-1, req/s")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per rate")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    random.seed(1)
    report: dict[str, Any] = {"rates": [], "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with tempfile.TemporaryDirectory(prefix="sim-check-") as tmp:
        swarm = sb.Swarm(Path(tmp), "local", sb.CAPACITY_CPUS, None)
        gens: sb.Generators | None = None
        try:
            print("starting 3 sites (local runtime) ...", flush=True)
            for sid in sb.SITE_IDS:
                swarm.launch(sid)
            for sid in sb.SITE_IDS:
                swarm.wait_ready(sid)
            swarm.settled()
            sb.place(swarm, sb.CAPACITY_SERVICE, dict.fromkeys(sb.SITE_IDS, 1), [("scale", 3)])
            gens = sb.Generators(1)
            sb.open_run(swarm, gens, "warm-up", "site-1", 50, 2.0, sb.QUICK, measured=False, kind="inference")
            for rate in rates:
                run = sb.open_run(
                    swarm,
                    gens,
                    f"{rate:.0f}/s to site-1",
                    "site-1",
                    rate,
                    args.duration,
                    sb.QUICK,
                    kind="inference",
                )
                measured = 1 - run.within_budget / run.scheduled if run.scheduled else float("nan")
                service_ms = gate_service_ms(swarm)
                predicted = simulate(rate, args.duration, service_ms)
                report["rates"].append(
                    {
                        "rate_rps": rate,
                        "real": {
                            "scheduled": run.scheduled,
                            "sla_violation_rate": round(measured, 4),
                            "status_5xx": run.status_5xx,
                            "peer_pct": run.peer_pct,
                            "p50_ms": run.latency_ms["p50"],
                            "p99_ms": run.latency_ms["p99"],
                            "loadavg_1m": run.loadavg_1m,
                        },
                        "gate_service_ms": round(service_ms, 3),
                        "sim": predicted,
                    }
                )
        finally:
            if gens is not None:
                gens.stop()
            swarm.stop_all()
    print(
        "| offered (to site-1) | real: SLA violations | sim: SLA violations | real peer share of 200s | sim peer share | real p50 / p99 ms | sim p50 / p99 ms | gate service_ms |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in report["rates"]:
        real, sim = row["real"], row["sim"]
        answered = 1 - sim["sla_violation_rate"] + sim["late"] / max(1, sim["requests"])
        print(
            f"| {row['rate_rps']:.0f} req/s | {real['sla_violation_rate']:.2%} | {sim['sla_violation_rate']:.2%} | "
            f"{real['peer_pct']:.1f} % | {100 * sim['peer_fraction'] / max(answered, 1e-9):.1f} % | "
            f"{real['p50_ms']:.1f} / {real['p99_ms']:.1f} | {sim['p50_ms']:.1f} / {sim['p99_ms']:.1f} | {row['gate_service_ms']:.2f} |"
        )
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
