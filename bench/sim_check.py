"""The simulator against reality: one real 3-site swarm and `sim` under the same offered load.

Run: `.venv/bin/python bench/sim_check.py [--rates 150,300] [--duration 8]`. Prints, per offered
rate, the SLA-violation rate measured on the real swarm and the one the simulator predicts, and
writes `bench/results/sim-check-latest.json`. Exit 0 (it reports; it does not judge).

Method
------
1. Three `mec serve` processes of this checkout on loopback, peers of each other, with the
   embedded defaults (default balancer, spill share 0.25), `bench/swarm_bench.py`'s `Swarm`.
   `--runtime docker` (the default) runs each `inference` instance as a container limited to
   0.25 CPU per 10 ms period, as swarm_bench does, so each site has a capacity of its own, as
   each simulated site has; `--runtime local` runs plain processes, which share the machine's
   cores (and then the sites are starved together, which the simulator does not model).
   `inference` is scaled to one replica per site.
2. Per rate: an open-loop load of `inference` requests (each a distinct 48-word text, never a
   cache hit), budget 200 ms, sent to site-1 only, evenly spaced (`bench/openloop.py`, through
   `swarm_bench`'s generator processes). Measured: the share of scheduled requests not answered
   200 within the budget from their scheduled instant (answered late, 5xx, or no answer).
3. The simulator is given the same topology and load: 3 sites, one inference instance each,
   every request arriving at site-1, evenly spaced, budget 200 ms; its service time is what the
   real site measured in the same run, two ways, each given its own simulation: (a) site-1's
   inference gate's `service_ms` (`GET /v1/metrics/snapshot` after the run: latency over
   concurrency, the per-request cost the real router predicts with), (b) the CPU time of
   the workloads per request (psutil; local runtime: site-1's processes over what site-1 served
   itself; Docker: all containers over every answer), simulated on instances of the container's
   CPU limit (0.25 core) or of a whole core (local).
   cv 0.3; the RTT and forwarding overhead are the loopback figures (0.5 + 0.5 ms), the front door
   1 ms.
"""

from __future__ import annotations

import argparse
import json
import random
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


def gate_service_ms(swarm: sb.Swarm, sid: str = "site-1") -> float:
    """The service-time estimate of `sid`'s inference gate (ms): the per-request cost the real
    router predicts with there (latency over concurrency, an EWMA)."""
    status, raw = _get(swarm.port(sid), "/v1/metrics/snapshot", swarm.operator_key)
    if status != 200:
        raise RuntimeError(f"GET /v1/metrics/snapshot on {sid}: {status}")
    for iid, gate in json.loads(raw)["admission"]["instances"].items():
        if "inference" in iid and gate.get("service_ms", 0) > 0:
            return float(gate["service_ms"])
    raise RuntimeError(f"{sid}'s inference gate measured no service time")


def cpu_ms_per_request(run: sb.Run, docker: bool) -> float:
    """CPU time per request of the workloads during the run: site-1's processes over the requests
    it served itself (local runtime), or every container over every request answered (Docker:
    the bench sees the containers as one group; site-1's and its peers' instances served them)."""
    cpu = run.cpu
    if docker:
        used_s = cpu["core_pct"].get("containers", 0.0) / 100 * cpu["seconds"]
        served = run.ok
    else:
        used_s = cpu["core_pct"].get("site-1 workloads", 0.0) / 100 * cpu["seconds"]
        served = run.tiers.get("local", 0)
    return 1000 * used_s / served if served else float("nan")


def simulate(
    rate: float, duration_s: float, service_ms: float, speed: float = 1.0, seed: int = 1
) -> dict[str, Any]:
    """The simulator's prediction for `rate` req/s of inference to site-1 of a 3-site swarm whose
    instances serve a request in `service_ms` of CPU at a whole core, at `speed` cores each."""
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
            (InstanceSpec(f"{sid}/inference", "inference", False, speed),),
        )
        for sid in sb.SITE_IDS
    )
    rtt = tuple(tuple(0.0 if i == j else 0.5 for j in range(3)) for i in range(3))
    topology = Topology(sites, rtt, tuple(tuple(j for j in range(3) if j != i) for i in range(3)))
    metrics = Simulation(scenario, "default", topology=topology).run()
    return metrics.summary()


def _peer_pct(summary: dict[str, Any]) -> float:
    """The share of the simulated answers that a peer served, % (as the real row: of the 200s)."""
    answered = summary["requests"] - summary["rejected"]
    return 100 * summary["peer_fraction"] * summary["requests"] / answered if answered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=("docker", "local"), default="docker")
    parser.add_argument(
        "--rates", default=None, help="offered rates to site-1, req/s (default 40,80,120; local: 150,300)"
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per rate")
    args = parser.parse_args()
    default_rates = "40,80,120" if args.runtime == "docker" else "150,300"
    rates = [float(r) for r in (args.rates or default_rates).split(",")]
    random.seed(1)
    report: dict[str, Any] = {
        "rates": [],
        "runtime": args.runtime,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with tempfile.TemporaryDirectory(prefix="sim-check-") as tmp:
        docker = args.runtime == "docker"
        swarm = sb.Swarm(Path(tmp), args.runtime, sb.CAPACITY_CPUS, sb.CPU_PERIOD_MS if docker else None)
        gens: sb.Generators | None = None
        try:
            print(f"starting 3 sites ({args.runtime} runtime) ...", flush=True)
            swarm.start_all()
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
                cpu_ms = cpu_ms_per_request(run, docker)
                predicted = simulate(rate, args.duration, service_ms)
                # The gate's service time is the instance's own (its CPU limit in it); CPU time
                # is at a whole core, and a container has CAPACITY_CPUS of one.
                by_cpu = simulate(rate, args.duration, cpu_ms, sb.CAPACITY_CPUS if docker else 1.0)
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
                        "cpu_ms_per_request": round(cpu_ms, 3),
                        "sim": predicted,
                        "sim_by_cpu": by_cpu,
                    }
                )
        finally:
            if gens is not None:
                gens.stop()
            swarm.stop_all()
    print(
        "| offered (to site-1) | real: SLA violations | sim, gate service time: SLA violations | "
        "sim, CPU time: SLA violations | real peer share | sim peer share (gate / CPU) | "
        "real p50 / p99 ms | sim p50 / p99 ms (gate; CPU) | gate service_ms | CPU ms per request |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in report["rates"]:
        real, sim, cpu = row["real"], row["sim"], row["sim_by_cpu"]
        print(
            f"| {row['rate_rps']:.0f} req/s | {real['sla_violation_rate']:.2%} | {sim['sla_violation_rate']:.2%} | "
            f"{cpu['sla_violation_rate']:.2%} | {real['peer_pct']:.1f} % | {_peer_pct(sim):.1f} % / {_peer_pct(cpu):.1f} % | "
            f"{real['p50_ms']:.1f} / {real['p99_ms']:.1f} | {sim['p50_ms']:.1f} / {sim['p99_ms']:.1f}; "
            f"{cpu['p50_ms']:.1f} / {cpu['p99_ms']:.1f} | {row['gate_service_ms']:.2f} | {row['cpu_ms_per_request']:.2f} |"
        )
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
