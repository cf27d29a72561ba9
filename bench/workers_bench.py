"""Cache-hit throughput of `mec serve` with one process and with N workers, the two ways the
workers can share the port: `SO_REUSEPORT` (each worker its own socket) and one shared socket
(the supervisor's, inherited with `pass_fds`).

Run: `.venv/bin/python bench/workers_bench.py [--workers 2] [--rounds 3] [--seconds 10]`.

Each configuration is a real `mec serve` (embedded defaults, generated keys, a temporary data
dir), started from this checkout (`python -c` in the repository root, which sets
`api.workers.LISTEN_MODE` before serving). The load is `site_bench.py`'s closed loop (wrk, one
thread, 32 connections, or its Python generator without wrk) of one cached inference payload,
after a warm-up, in interleaved rounds. Besides req/s and latency it reports how the workers'
CPU time was split during each round, which shows how evenly the port spread the connections.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
from site_bench import (
    FULL,
    Children,
    ClosedRunner,
    CpuMeter,
    Job,
    LoadResult,
    Server,
    _cpu_s,
    _prime,
    _use_wrk,
    spawn_site,
    table,
    wait_site,
)

LAUNCH = (
    "import sys; import api.workers as w; w.LISTEN_MODE = sys.argv[1]; "
    "from api.cli import main; sys.exit(main(sys.argv[2:]))"
)


@dataclass(frozen=True)
class Config:
    name: str
    workers: int
    mode: str


def spawn(children: Children, config: Config, workdir: Path) -> Server:
    workdir.mkdir()
    command = [sys.executable, "-c", LAUNCH, config.mode, "serve", "--host", "127.0.0.1", "--port", "0"]
    site = spawn_site(children, workdir, {"MEC_WORKERS": str(config.workers)}, command)
    site.name = config.name
    wait_site(site)
    children.adopt(psutil.Process(site.pid).children(recursive=True))
    _prime(site)
    return site


def front_doors(site: Server) -> list[psutil.Process]:
    """The processes that serve HTTP: the workers, or the site process itself."""
    workers = [p for p in psutil.Process(site.pid).children() if "api.worker" in " ".join(p.cmdline())]
    return workers or [psutil.Process(site.pid)]


def measure(runner: ClosedRunner, site: Server) -> tuple[LoadResult, list[float]]:
    doors = front_doors(site)
    before = [_cpu_s(p) for p in doors]
    job = Job(site.name, site, "hit", "cache")
    runner.run(job, runner.profile.warmup_s)
    meter = CpuMeter(site.pid, runner.children.resident())
    result = meter.stop(runner.run(job, runner.profile.closed_s, meter))
    used = [_cpu_s(p) - b for p, b in zip(doors, before, strict=True)]
    total = sum(used) or 1.0
    return result, [round(100 * u / total) for u in used]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    args = parser.parse_args(argv)
    configs = [
        Config("1 process", 1, "reuseport"),
        Config(f"{args.workers} workers, SO_REUSEPORT", args.workers, "reuseport"),
        Config(f"{args.workers} workers, shared socket", args.workers, "shared"),
    ]
    profile = replace(FULL, closed_s=args.seconds)
    children = Children()
    rows: list[list[str]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="mec-workers-bench-") as tmp:
            runner = ClosedRunner(children, profile, Path(tmp), _use_wrk(args.generator))
            sites = [spawn(children, c, Path(tmp) / f"site{n}") for n, c in enumerate(configs)]
            results: dict[str, list[tuple[LoadResult, list[float]]]] = {c.name: [] for c in configs}
            for n in range(args.rounds):
                for site in sites:
                    print(f"round {n + 1}/{args.rounds}: {site.name} ...", flush=True)
                    results[site.name].append(measure(runner, site))
    finally:
        children.stop_all()
    for name, rounds in results.items():
        for n, (result, split) in enumerate(rounds):
            errors = sum(result.errors.values()) + result.wrong_tier
            rows.append(
                [
                    name if n == 0 else "",
                    f"{result.throughput_rps:,.0f}",
                    f"{result.latency_ms['p50']:.2f}",
                    f"{result.latency_ms['p99']:.2f}",
                    "/".join(f"{s:.0f}" for s in split),
                    f"{result.machine_busy_pct}",
                    f"{result.other_busy_pct}",
                    str(errors),
                ]
            )
    print(
        table(
            ["config", "req/s", "p50 ms", "p99 ms", "worker CPU split %", "machine %", "others %", "errors"],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
