"""`mec sim`: run a scenario under each policy, print the table, write JSON and a PNG plot."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pydantic import ValidationError

from sim.engine import Simulation
from sim.metrics import Metrics
from sim.policies import parse_policies
from sim.report import plot, table, write_json
from sim.scenario import Scenario, load_scenario


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", default="heavy", help="a bundled scenario's name or a YAML path")
    parser.add_argument("--sites", type=int, help="override the scenario's number of sites")
    parser.add_argument("--devices", type=int, help="override the scenario's number of devices")
    parser.add_argument("--duration", type=float, help="simulated seconds (override)")
    parser.add_argument("--seed", type=int, help="the seed of every random draw (override)")
    parser.add_argument("--max-peers", type=int, help="each site peers with its nearest N sites (override)")
    parser.add_argument("--policies", help="comma-separated: default,p2c,least-loaded,round-robin (all)")
    parser.add_argument("--out", type=Path, default=Path("sim-out"), help="where the JSON and PNG go")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--jobs", type=int, default=1, help="policies simulated at once, one process each (default 1)"
    )


def _run_one(scenario: Scenario, name: str) -> Metrics:
    return Simulation(scenario, parse_policies(name)[0].balancer).run()


def run_policies(
    scenario: Scenario, names: Sequence[str], progress: bool = False, jobs: int = 1
) -> dict[str, Metrics]:
    """Each policy over the same topology and the same arrivals (same seed): its metrics. With
    `jobs` > 1, that many policies at once in worker processes (the figures are the same)."""
    bar = None
    if progress:
        from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

        total = scenario.duration_s * len(names) if jobs <= 1 else len(names)
        unit = "sim-s" if jobs <= 1 else "policy"
        bar = tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True)
    try:
        if jobs > 1:
            with ProcessPoolExecutor(max_workers=min(jobs, len(names))) as pool:
                futures = {name: pool.submit(_run_one, scenario, name) for name in names}
                results = {}
                for name, future in futures.items():
                    results[name] = future.result()
                    if bar is not None:
                        bar.update(1)
                return results
        results = {}
        for name in names:
            if bar is not None:
                bar.set_description(name)
            sim = Simulation(scenario, parse_policies(name)[0].balancer)
            results[name] = sim.run(None if bar is None else bar.update)
        return results
    finally:
        if bar is not None:
            bar.close()


def main(args: argparse.Namespace) -> int:
    try:
        scenario = load_scenario(args.scenario).with_overrides(
            sites=args.sites,
            devices=args.devices,
            duration_s=args.duration,
            seed=args.seed,
            max_peers=args.max_peers,
        )
        policies = parse_policies(args.policies)
    except (ValidationError, ValueError, OSError) as exc:
        print(f"mec sim: {exc}", file=sys.stderr)
        return 2
    probe = Simulation(scenario, "default")
    print(
        f"scenario {scenario.name}: {scenario.sites} sites, {scenario.devices:,} devices, "
        f"{scenario.duration_s:g} s simulated (first {scenario.warmup_s:g} s not counted), seed {scenario.seed}, "
        f"offered {probe.offered_rps():,.0f} req/s"
    )
    started = time.perf_counter()
    results = run_policies(
        scenario, [p.name for p in policies], progress=not args.no_progress, jobs=max(1, args.jobs)
    )
    wall_s = time.perf_counter() - started
    print(table(results))
    print(f"wall time {wall_s:.1f} s for {len(policies)} policies")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    header = {
        "scenario": scenario.name,
        "sites": scenario.sites,
        "devices": scenario.devices,
        "duration_s": scenario.duration_s,
        "seed": scenario.seed,
        "offered_rps": round(probe.offered_rps(), 1),
        "wall_s": round(wall_s, 2),
    }
    write_json(out / f"sim-{scenario.name}.json", header, results)
    png = out / f"sim-{scenario.name}.png"
    plot(
        png,
        f"{scenario.name}: {scenario.sites} sites, {scenario.devices:,} devices, seed {scenario.seed}",
        results,
    )
    print(f"wrote {out / f'sim-{scenario.name}.json'} and {png}")
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """`python -m sim.cli ...`, the same as `mec sim ...`."""
    parser = argparse.ArgumentParser(prog="mec sim", description=__doc__)
    add_arguments(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(run())
