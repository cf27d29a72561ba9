"""Overload benchmark of one MEC site's fast path: open-loop load up to 4x capacity, per budget.

Run: `.venv/bin/python bench/overload_bench.py [--quick] [--workers N] [--workers-compare]`.
Prints markdown tables, writes `bench/results/overload.json` and `bench/results/overload.png`;
exits 0 when every target passes, 1 otherwise, 130 when interrupted.

Method
------
1. The site (`python -m api.cli serve`, so the code of this checkout runs) starts on its
   embedded defaults, with generated keys in a temporary MEC_DATA_DIR and every other MEC_*
   variable removed, as in `site_bench.py`; `--workers N` is passed through. Each workload
   instance's URL comes from `GET /v1/metrics/snapshot` (operator key). Everything is measured
   over the HTTP API only, so the bench runs against any version of the site.
2. Load comes from `bench/openloop.py`, two processes started once and fed one command per run
   over stdin (so no generator shares the driver's event loop or pays its start-up per run).
3. Closed loops (32 connections split over the two processes, a warm-up, then a few seconds):
   each workload's `POST /invoke` called directly with the bare payloads, the same payloads
   through the site (`latency_budget_ms` 100), and cache hits (loadgen's `hit` payload). The
   site's CPU per request comes from psutil's cpu_times of the site process and every
   descendant that is not a workload (with `--workers`: the supervisor and every worker); the
   workloads' CPU is counted apart.
4. Capacity of a service = its closed-loop goodput through the site (200s per second).
5. Open loop, per service, budget (20, 50, 100 ms) and level (0.5, 1, 2, 4 x capacity): requests
   scheduled at `start + i / rate` whatever the answers do; a request whose instant finds no idle
   connection gets a new one (at most 1,024 per process, past that it waits and counts as
   `saturated`); above `ONE_PROC_MAX_RATE` two processes share the schedule (interleaved). Each
   request may take budget + 2 s; later ones count as unanswered. A 200 is late when its
   latency from the write exceeds the budget (also reported from the scheduled instant and by
   the site's own `timings.total`); goodput counts the 200s within budget per second of
   schedule. After each cell the bench waits (bounded) until the site's CPU falls idle, so that
   one cell's backlog does not land in the next.
6. With `--workers-compare`, cache hits are measured on a fresh site with `--workers 1` and
   again with `--workers 2` (skipped with a message when `mec serve` has no `--workers`).

Every process the bench starts is stopped by its pid in a `finally`, also on Ctrl-C/SIGTERM.
The generator shares the machine with the site: its CPU and its send lag are reported per cell.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import psutil
from loadgen import request_body
from openloop import Command, body
from progress import Progress
from site_bench import (
    BENCH_DIR,
    HOST,
    REPO_DIR,
    STOP_TIMEOUT_S,
    Children,
    Server,
    _get,
    _post,
    _raise_interrupt,
    busy_shares,
    machine_load,
    percentile,
    spawn_site,
    wait_site,
)

from api.launcher import ChildProcess

RESULTS_FILE = BENCH_DIR / "results" / "overload.json"
PLOT_FILE = BENCH_DIR / "results" / "overload.png"
SERVICES = ("sensor", "game-state")
LEVELS = (0.5, 1.0, 2.0, 4.0)
BUDGETS_MS = (20, 50, 100)
CLOSED_BUDGET_MS = 100
"""Budget of the closed-loop requests through the site (room for 32 requests in flight)."""
CLOSED_CONNECTIONS = 32
GENERATOR_PROCS = 2
ONE_PROC_MAX_RATE = 2500.0
"""Above this many requests per second the schedule is split over two generator processes."""
MAX_CONNECTIONS_PER_PROC = 1024
WARM_CONNECTIONS_PER_PROC = 16
CLIENT_TIMEOUT_EXTRA_S = 2.0
START_DELAY_S = 0.5
"""From sending a command to the generators to its first instant (prebuilding requests)."""
PREBUILD_S_PER_REQUEST = 20e-6
IDLE_CORE_SHARE = 0.15
"""The site counts as idle again once its front door uses less than this share of one core."""
NOISY_PCT = 10.0
"""Share of the machine used outside the bench above which a run is flagged as disturbed."""
TARGET_503_P99_MS = 10.0
TARGET_WORKERS_RATIO = 1.6


@dataclass(frozen=True)
class Profile:
    """How long each phase runs."""

    warmup_s: float
    closed_s: float
    cell_s: float
    cooldown_max_s: float


FULL = Profile(warmup_s=1.0, closed_s=4.0, cell_s=5.0, cooldown_max_s=6.0)
QUICK = Profile(warmup_s=0.5, closed_s=2.0, cell_s=1.5, cooldown_max_s=2.5)


def _ms(values_us: Sequence[int], pct: float) -> float:
    return round(percentile(sorted(values_us), pct) / 1000, 2)


def _spread_ms(values_us: Sequence[int]) -> dict[str, float]:
    return {"count": len(values_us), "p50": _ms(values_us, 50), "p99": _ms(values_us, 99)}


# --- site ----------------------------------------------------------------------------------------


@dataclass
class Site:
    """A running `mec serve`: its process, its workloads' URLs and pids."""

    server: Server
    urls: dict[str, str]
    workload_pids: set[int]
    workers: int | None
    ready_s: float

    def processes(self) -> tuple[list[psutil.Process], list[psutil.Process]]:
        """The site process with every descendant that is not a workload (with `--workers`: the
        supervisor, its workers and their helpers), and the workloads."""
        try:
            root = psutil.Process(self.server.pid)
            descendants = root.children(recursive=True)
        except psutil.Error:
            return [], []
        front: list[psutil.Process] = [root]
        workloads: list[psutil.Process] = []
        for child in descendants:
            (workloads if child.pid in self.workload_pids or _is_workload(child) else front).append(child)
        return front, workloads


def _is_workload(proc: psutil.Process) -> bool:
    try:
        return any(arg.startswith("workloads.") for arg in proc.cmdline())
    except psutil.Error:
        return False


def site_command(extra: Sequence[str] = ()) -> list[str]:
    """`mec serve` as a module of this checkout (the `mec` script may import another copy)."""
    return [sys.executable, "-m", "api.cli", "serve", "--host", HOST, "--port", "0", *extra]


def accepts_workers() -> bool:
    """Whether this checkout's `mec serve` has a `--workers` option."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MEC_")}
    probe = subprocess.run(
        [*site_command()[:4], "--help"], cwd=REPO_DIR, env=env, capture_output=True, timeout=60, check=False
    )
    return b"--workers" in probe.stdout


def start_site(children: Children, workdir: Path, workers: int | None) -> Site:
    workdir.mkdir(parents=True, exist_ok=True)
    extra = ["--workers", str(workers)] if workers is not None else []
    server = spawn_site(children, workdir, command=site_command(extra))
    ready_s = wait_site(server)
    status, raw = _get(server.port, "/v1/metrics/snapshot", server.operator_key)
    if status != 200:
        raise RuntimeError(f"GET /v1/metrics/snapshot answered {status}: {raw[:300]!r}")
    instances = json.loads(raw)["runtime"]["instances"]
    urls: dict[str, str] = {}
    for instance in instances:
        if instance.get("state") == "running":
            urls.setdefault(instance["service"], instance["url"])
    site = Site(server, urls, {i["pid"] for i in instances if i.get("pid")}, workers, round(ready_s, 2))
    children.adopt(psutil.Process(server.pid).children(recursive=True))
    missing = [name for name in SERVICES if name not in urls]
    if missing:
        raise RuntimeError(f"no running instance of {missing} in the metrics snapshot")
    return site


def stop_site(site: Site) -> None:
    """Stop one site by its pid; its leftover descendants are killed by `Children.stop_all`."""
    site.server.proc.stop(STOP_TIMEOUT_S)


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def prime(site: Site) -> None:
    """One request of each kind, direct and through the site: a 422 here means a bad payload."""
    server = site.server
    checks: list[tuple[str, int, str, bytes, str]] = [
        ("hit", server.port, server.path, request_body("hit", 0, "prime"), server.key),
        ("hit", server.port, server.path, request_body("hit", 0, "prime"), server.key),
    ]
    for service in SERVICES:
        site_cmd = Command(mode="closed", port=server.port, kind=service, budget_ms=CLOSED_BUDGET_MS)
        direct = replace(site_cmd, direct=True, seq_base=time.time_ns() // 1000)
        checks.append((service, server.port, server.path, _body(site_cmd), server.key))
        checks.append((f"{service} direct", _port_of(site.urls[service]), "/invoke", _body(direct), ""))
    for name, port, path, data, key in checks:
        status, answer = _post(port, path, data, key)
        if status != 200:
            raise RuntimeError(f"priming request ({name}) answered {status}: {answer[:300]!r}")


def _body(command: Command) -> bytes:
    return body(replace(command, seq_base=command.seq_base or time.time_ns() // 1000), 0)


# --- CPU -------------------------------------------------------------------------------------------


def _cpu_by_pid(procs: Iterable[psutil.Process]) -> dict[int, float]:
    seen = {}
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        seen[proc.pid] = times.user + times.system
    return seen


@dataclass(frozen=True)
class CpuUse:
    """CPU over one run: the site's (all its processes but the workloads) and the workloads' per
    request, the generators' in % of one core, how busy the machine was and its share outside
    the bench, in % of all cores."""

    site_us_per_request: float
    workload_us_per_request: float
    generator_pct: float
    machine_busy_pct: float
    others_pct: float
    site_processes: int


class CpuWindow:
    """CPU seconds of the site's front door and of its workloads between `start` and `stop`, how
    busy the machine was, and the share of it outside the bench (site, workloads, generators and
    this process). Keyed by pid, so a worker that starts inside the window counts from zero.
    """

    def __init__(self, site: Site, bench: Sequence[psutil.Process]) -> None:
        self.site = site
        self.bench = [*bench, psutil.Process()]

    def _sample(self) -> tuple[dict[int, float], dict[int, float], dict[int, float]]:
        front, workloads = self.site.processes()
        return _cpu_by_pid(front), _cpu_by_pid(workloads), _cpu_by_pid(self.bench)

    def start(self) -> None:
        self.before = self._sample()
        self.machine0 = psutil.cpu_times()

    def stop(self, requests: int, generator_cpu_s: float, seconds: float) -> CpuUse:
        """What the window saw, per request of the run (`requests`) that took `seconds`."""
        after = self._sample()
        site_s, workload_s, ours_s = (
            sum(s - was.get(pid, 0.0) for pid, s in now.items())
            for was, now in zip(self.before, after, strict=True)
        )
        busy, others = busy_shares(self.machine0, site_s + workload_s + ours_s)
        per_request = 1e6 / requests if requests else 0.0
        return CpuUse(
            site_us_per_request=round(site_s * per_request, 1),
            workload_us_per_request=round(workload_s * per_request, 1),
            generator_pct=round(100 * generator_cpu_s / seconds, 1),
            machine_busy_pct=busy,
            others_pct=others,
            site_processes=len(after[0]),
        )


def cooldown(site: Site, max_s: float) -> float:
    """Wait until the site's front door is idle (its backlog is done), at most `max_s`."""
    started = time.monotonic()
    while time.monotonic() - started < max_s:
        front, _ = site.processes()
        before = sum(_cpu_by_pid(front).values())
        time.sleep(0.25)
        if sum(_cpu_by_pid(front).values()) - before < 0.25 * IDLE_CORE_SHARE:
            break
    return round(time.monotonic() - started, 2)


# --- generators ------------------------------------------------------------------------------------


def _pump_lines(stream: Any, lines: queue.Queue[str]) -> None:
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode(errors="replace").rstrip())


class Generators:
    """`openloop.py serve` processes, started once; each takes one command at a time."""

    def __init__(self, children: Children, count: int) -> None:
        self.procs: list[ChildProcess] = []
        self.lines: list[queue.Queue[str]] = []
        for n in range(count):
            proc = children.spawn(
                f"openloop-{n}",
                [sys.executable, str(BENCH_DIR / "openloop.py"), "serve"],
                cwd=REPO_DIR,
                stdin=True,
                pipe_stdout=True,
                new_session=True,
            )
            lines: queue.Queue[str] = queue.Queue()
            threading.Thread(target=_pump_lines, args=(proc.stdout, lines), daemon=True).start()
            self.procs.append(proc)
            self.lines.append(lines)

    def processes(self) -> list[psutil.Process]:
        return [psutil.Process(proc.pid) for proc in self.procs if proc.running]

    def submit(self, commands: Sequence[Command]) -> None:
        for proc, command in zip(self.procs, commands, strict=False):
            proc.stdin.write(json.dumps(asdict(command)).encode() + b"\n")
            proc.stdin.flush()

    def collect(self, count: int, timeout_s: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        results = []
        for n in range(count):
            result = json.loads(self._line(n, deadline, timeout_s))
            if "error" in result:
                raise RuntimeError(f"generator {n}: {result['error']}")
            results.append(result)
        return results

    def _line(self, n: int, deadline: float, timeout_s: float) -> str:
        """Generator `n`'s next result line; fails at once when the process has died."""
        while True:
            try:
                return self.lines[n].get(timeout=0.5)
            except queue.Empty:
                if self.procs[n].returncode is not None:
                    raise RuntimeError(f"generator {n} exited ({self.procs[n].returncode})") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"generator {n} gave no result within {timeout_s:.0f} s") from None


def _sleep_until(wall: float) -> None:
    time.sleep(max(0.0, wall - time.time()))


# --- closed loop ---------------------------------------------------------------------------------


@dataclass
class ClosedResult:
    phase: str
    target: str
    kind: str
    connections: int
    duration_s: float
    sent: int
    ok: int
    errors: dict[str, int]
    throughput_rps: float
    latency_ms: dict[str, float]
    cpu: CpuUse


def closed_loop(gens: Generators, site: Site, phase: str, command: Command, profile: Profile) -> ClosedResult:
    """A warm-up, then `profile.closed_s` seconds of closed loop over both generators."""
    share = CLOSED_CONNECTIONS // GENERATOR_PROCS
    results: list[dict[str, Any]] = []
    for duration, measured in ((profile.warmup_s, False), (profile.closed_s, True)):
        start_at = time.time() + START_DELAY_S
        base = replace(command, mode="closed", duration_s=duration, start_at=start_at, connections=share)
        base = replace(base, stride=GENERATOR_PROCS, seq_base=time.time_ns() // 1000)
        gens.submit([replace(base, offset=n) for n in range(GENERATOR_PROCS)])
        window = CpuWindow(site, gens.processes())
        _sleep_until(start_at)
        window.start()
        results = gens.collect(GENERATOR_PROCS, duration + 30)
        cpu = window.stop(sum(r["sent"] for r in results), sum(r["cpu_s"] for r in results), duration)
        if measured:
            break
    errors: Counter[str] = Counter()
    for result in results:
        errors.update(result["errors"])
        if result["wrong_tier"]:
            errors["wrong_tier"] += result["wrong_tier"]
    sent = sum(r["sent"] for r in results)
    ok = sum(r["ok"] for r in results)
    latencies = [v for r in results for v in r["latencies_us"]]
    return ClosedResult(
        phase=phase,
        target="direct" if command.direct else "site",
        kind=command.kind,
        connections=CLOSED_CONNECTIONS,
        duration_s=profile.closed_s,
        sent=sent,
        ok=ok,
        errors=dict(errors),
        throughput_rps=round(ok / profile.closed_s, 1),
        latency_ms=_spread_ms(latencies),
        cpu=cpu,
    )


def closed_phases(
    gens: Generators, site: Site, profile: Profile, progress: Progress
) -> dict[str, ClosedResult]:
    server = site.server
    jobs: list[tuple[str, Command]] = []
    for service in SERVICES:
        port = _port_of(site.urls[service])
        jobs.append(
            (
                f"{service} direct",
                Command(mode="closed", port=port, kind=service, path="/invoke", direct=True),
            )
        )
    for service in SERVICES:
        jobs.append(
            (
                f"{service} via site",
                Command(
                    mode="closed", port=server.port, kind=service, key=server.key, budget_ms=CLOSED_BUDGET_MS
                ),
            )
        )
    jobs.append(
        (
            "cache hit via site",
            Command(mode="closed", port=server.port, kind="hit", key=server.key, expect_tier="cache"),
        )
    )
    results = {}
    for phase, command in jobs:
        progress.step(f"closed loop: {phase}")
        results[phase] = closed_loop(gens, site, phase, command, profile)
    return results


# --- open loop -----------------------------------------------------------------------------------


@dataclass
class Cell:
    """One open-loop run: a service at one budget and one multiple of its capacity."""

    service: str
    budget_ms: int
    level: float
    rate_rps: float
    capacity_rps: float
    generator_procs: int
    scheduled: int
    offered_rps: float
    goodput_rps: float
    goodput_share: float
    """Goodput over the service's capacity."""
    ok: int
    ok_latency_ms: dict[str, float]
    late_by_write: int
    late_by_schedule: int
    late_by_site_total: int
    late_share_pct: float
    status_503: dict[str, float]
    status_504: dict[str, float]
    other_statuses: dict[str, int]
    transport_errors: dict[str, int]
    unanswered: int
    send_lag_ms: dict[str, float]
    sched_lag_ms: dict[str, float]
    connections_opened: int
    peak_connections: int
    saturated: int
    cpu: CpuUse
    late_start_ms: float
    cooldown_s: float = 0.0


def summarise(
    service: str,
    budget_ms: int,
    level: float,
    rate: float,
    results: list[dict[str, Any]],
    cpu: CpuUse,
    cell_s: float,
    capacity: float,
) -> Cell:
    def joined(name: str) -> list[int]:
        return [v for r in results for v in r[name]]

    statuses, lat_write, lat_sched, site_total = (
        joined("statuses"),
        joined("lat_write_us"),
        joined("lat_sched_us"),
        joined("site_total_us"),
    )
    budget_us = budget_ms * 1000
    ok_write = [lat_write[i] for i, s in enumerate(statuses) if s == 200]
    ok_sched = [lat_sched[i] for i, s in enumerate(statuses) if s == 200]
    ok_site = [site_total[i] for i, s in enumerate(statuses) if s == 200 and site_total[i] >= 0]
    good = sum(1 for v in ok_write if v <= budget_us)
    by_status: dict[int, list[int]] = {}
    for status, latency in zip(statuses, lat_write, strict=True):
        by_status.setdefault(status, []).append(latency)
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    scheduled = sum(r["scheduled"] for r in results)
    return Cell(
        service=service,
        budget_ms=budget_ms,
        level=level,
        rate_rps=round(rate, 1),
        capacity_rps=capacity,
        generator_procs=len(results),
        scheduled=scheduled,
        offered_rps=round(scheduled / cell_s, 1),
        goodput_rps=round(good / cell_s, 1),
        goodput_share=round(good / cell_s / capacity, 3) if capacity else 0.0,
        ok=len(ok_write),
        ok_latency_ms=_spread_ms(ok_write),
        late_by_write=len(ok_write) - good,
        late_by_schedule=sum(1 for v in ok_sched if v > budget_us),
        late_by_site_total=sum(1 for v in ok_site if v > budget_us),
        late_share_pct=round(100 * (len(ok_write) - good) / len(ok_write), 2) if ok_write else 0.0,
        status_503=_spread_ms(by_status.get(503, [])),
        status_504=_spread_ms(by_status.get(504, [])),
        other_statuses={str(s): len(v) for s, v in sorted(by_status.items()) if s not in (200, 503, 504)},
        transport_errors=dict(errors),
        unanswered=sum(r["timeouts"] + r["cancelled"] + r["not_sent"] for r in results),
        send_lag_ms=_spread_ms(joined("send_lag_us")),
        sched_lag_ms=_spread_ms(joined("sched_lag_us")),
        connections_opened=sum(r["connections_opened"] for r in results),
        peak_connections=sum(r["peak_connections"] for r in results),
        saturated=sum(r["saturated"] for r in results),
        cpu=cpu,
        late_start_ms=round(max(r["late_start_us"] for r in results) / 1000, 2),
    )


def open_cell(
    gens: Generators,
    site: Site,
    service: str,
    budget_ms: int,
    level: float,
    capacity: float,
    profile: Profile,
) -> Cell:
    rate = max(10.0, level * capacity)
    procs = 1 if rate <= ONE_PROC_MAX_RATE else GENERATOR_PROCS
    prebuild = PREBUILD_S_PER_REQUEST * rate * profile.cell_s / procs
    start_at = time.time() + START_DELAY_S + prebuild
    base = Command(
        mode="open",
        port=site.server.port,
        kind=service,
        key=site.server.key,
        budget_ms=budget_ms,
        rate=rate,
        duration_s=profile.cell_s,
        start_at=start_at,
        stride=procs,
        connections=WARM_CONNECTIONS_PER_PROC,
        max_connections=MAX_CONNECTIONS_PER_PROC,
        timeout_s=budget_ms / 1000 + CLIENT_TIMEOUT_EXTRA_S,
        seq_base=time.time_ns() // 1000,
    )
    gens.submit([replace(base, offset=n) for n in range(procs)])
    window = CpuWindow(site, gens.processes())
    _sleep_until(start_at)
    window.start()
    results = gens.collect(procs, profile.cell_s + base.timeout_s + 30)
    answered = sum(len(r["statuses"]) for r in results)
    cpu = window.stop(answered, sum(r["cpu_s"] for r in results), profile.cell_s)
    cell = summarise(service, budget_ms, level, rate, results, cpu, profile.cell_s, capacity)
    cell.cooldown_s = cooldown(site, profile.cooldown_max_s)
    return cell


def open_phases(
    gens: Generators, site: Site, capacity: dict[str, float], profile: Profile, progress: Progress
) -> list[Cell]:
    cells = []
    for service in SERVICES:
        for budget in BUDGETS_MS:
            for level in LEVELS:
                progress.step(f"open loop: {service} {budget} ms {level:g}x")
                if capacity.get(service, 0.0) <= 0:
                    continue
                cells.append(open_cell(gens, site, service, budget, level, capacity[service], profile))
    return cells


# --- workers -------------------------------------------------------------------------------------


def workers_compare(
    children: Children, gens: Generators, workdir: Path, profile: Profile, progress: Progress
) -> dict[str, Any]:
    """Cache-hit closed loop on a fresh site with 1 and then 2 workers."""
    if not accepts_workers():
        progress.step("workers compare: skipped")
        return {"skipped": "mec serve has no --workers option in this checkout"}
    found: dict[str, Any] = {}
    for workers in (1, 2):
        progress.step(f"workers compare: --workers {workers}")
        site = start_site(children, workdir / f"workers-{workers}", workers)
        try:
            prime(site)
            server = site.server
            command = Command(
                mode="closed", port=server.port, kind="hit", key=server.key, expect_tier="cache"
            )
            found[str(workers)] = asdict(
                closed_loop(gens, site, f"cache hit, {workers} workers", command, profile)
            )
        finally:
            stop_site(site)
    one, two = found["1"]["throughput_rps"], found["2"]["throughput_rps"]
    found["ratio"] = round(two / one, 3) if one else 0.0
    return found


# --- checks and report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    target: str
    measured: str
    result: str
    """PASS, FAIL or SKIP (a skipped check does not fail the run)."""


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def _cells(cells: Sequence[Cell], service: str, **match: float) -> list[Cell]:
    return [c for c in cells if c.service == service and all(getattr(c, k) == v for k, v in match.items())]


def checks(report: dict[str, Any], closed: dict[str, ClosedResult], cells: Sequence[Cell]) -> list[Check]:
    found: list[Check] = []
    late = sum(c.late_by_write for c in cells)
    worst = max(cells, key=lambda c: c.late_share_pct, default=None)
    where = (
        f" (worst {worst.service} {worst.budget_ms} ms {worst.level:g}x: {worst.late_share_pct:.1f} %)"
        if worst and late
        else ""
    )
    found.append(
        Check(
            "late 200s, every level and budget", "= 0", f"{late}{where}", _verdict(late == 0 and bool(cells))
        )
    )
    hit = closed["cache hit via site"]
    for service in SERVICES:
        ratios = []
        for budget in BUDGETS_MS:
            base = _cells(cells, service, budget_ms=budget, level=1.0)
            if not base:
                continue
            for level in (2.0, 4.0):
                high = _cells(cells, service, budget_ms=budget, level=level)
                if high:
                    ratio = high[0].goodput_rps / base[0].goodput_rps if base[0].goodput_rps else 0.0
                    ratios.append((ratio, budget, level))
        low = min(ratios, default=(0.0, 0, 0.0))
        found.append(
            Check(
                f"{service}: goodput at 2x, 4x / at 1x",
                ">= 90 %",
                f"worst {100 * low[0]:.0f} % ({low[1]} ms, {low[2]:g}x)",
                _verdict(bool(ratios) and low[0] >= 0.9),
            )
        )
        mine = [c for c in _cells(cells, service) if c.ok]
        over = max(mine, key=lambda c: c.ok_latency_ms["p99"] / c.budget_ms, default=None)
        found.append(
            Check(
                f"{service}: p99 of 200s",
                "<= budget",
                f"worst {over.ok_latency_ms['p99']:.1f} ms at {over.budget_ms} ms {over.level:g}x"
                if over
                else "no 200s",
                _verdict(over is not None and over.ok_latency_ms["p99"] <= over.budget_ms),
            )
        )
        direct, via = closed[f"{service} direct"], closed[f"{service} via site"]
        ratio = via.throughput_rps / direct.throughput_rps if direct.throughput_rps else 0.0
        found.append(
            Check(
                f"{service}: miss throughput site / direct",
                ">= 50 %",
                f"{100 * ratio:.0f} % ({via.throughput_rps:.0f} / {direct.throughput_rps:.0f} req/s)",
                _verdict(ratio >= 0.5),
            )
        )
        cpu_ratio = (
            via.cpu.site_us_per_request / hit.cpu.site_us_per_request if hit.cpu.site_us_per_request else 0.0
        )
        found.append(
            Check(
                f"{service}: site CPU per miss / per hit",
                "<= 2x",
                f"{cpu_ratio:.2f}x ({via.cpu.site_us_per_request:.0f} / {hit.cpu.site_us_per_request:.0f} us)",
                _verdict(0 < cpu_ratio <= 2.0),
            )
        )
        at4 = _cells(cells, service, level=4.0)
        refused = [c for c in at4 if c.status_503["count"]]
        slow = max(refused, key=lambda c: c.status_503["p99"], default=None)
        measured = (
            f"worst {slow.status_503['p99']:.1f} ms ({slow.budget_ms} ms budget)" if slow else "no 503s at 4x"
        )
        if slow and len(refused) < len(at4):
            measured += f"; no 503s at {len(at4) - len(refused)} budget(s)"
        found.append(
            Check(
                f"{service}: 503 p99 at 4x",
                f"<= {TARGET_503_P99_MS:g} ms",
                measured,
                _verdict(
                    slow is not None
                    and len(refused) == len(at4)
                    and slow.status_503["p99"] <= TARGET_503_P99_MS
                ),
            )
        )
    compare = report.get("workers_compare")
    if compare is not None:
        if "skipped" in compare:
            found.append(
                Check(
                    "cache hits, 2 workers / 1", f">= {TARGET_WORKERS_RATIO:g}x", compare["skipped"], "SKIP"
                )
            )
        else:
            found.append(
                Check(
                    "cache hits, 2 workers / 1",
                    f">= {TARGET_WORKERS_RATIO:g}x",
                    f"{compare['ratio']:.2f}x ({compare['2']['throughput_rps']:.0f} / {compare['1']['throughput_rps']:.0f} req/s)",
                    _verdict(compare["ratio"] >= TARGET_WORKERS_RATIO),
                )
            )
    return found


def markdown(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _pair(spread: dict[str, float]) -> str:
    return f"{spread['p50']:.1f} / {spread['p99']:.1f}" if spread["count"] else "-"


def _counted(spread: dict[str, float]) -> str:
    return f"{spread['count']} ({_pair(spread)})" if spread["count"] else "0"


def _late(cell: Cell) -> str:
    return f"{cell.late_share_pct:.1f} ({cell.late_by_write} / {cell.late_by_schedule} / {cell.late_by_site_total})"


def _others(cell: Cell) -> str:
    parts = [f"{status}:{n}" for status, n in cell.other_statuses.items()]
    parts += [f"{name}:{n}" for name, n in cell.transport_errors.items()]
    return " ".join(parts) or "-"


Column = tuple[str, Callable[[Any], Any]]


def _cpu_columns(generator_title: str) -> tuple[Column, ...]:
    """The CPU columns of a closed-loop result or an open-loop cell (both have a `cpu`)."""
    return (
        (generator_title, lambda r: f"{r.cpu.generator_pct:.0f}"),
        ("site cpu us/req", lambda r: f"{r.cpu.site_us_per_request:.0f}"),
        ("workload cpu us/req", lambda r: f"{r.cpu.workload_us_per_request:.0f}"),
        ("busy % / others %", lambda r: f"{r.cpu.machine_busy_pct:.0f} / {r.cpu.others_pct:.0f}"),
    )


CLOSED_COLUMNS: tuple[Column, ...] = (
    ("phase", lambda r: r.phase),
    ("200/s", lambda r: f"{r.throughput_rps:.0f}"),
    ("p50 / p99 ms", lambda r: _pair(r.latency_ms)),
    ("errors", lambda r: " ".join(f"{k}:{n}" for k, n in r.errors.items()) or "-"),
    *_cpu_columns("generator cpu %"),
)
_CELL_KEY: tuple[Column, ...] = (
    ("service", lambda c: c.service),
    ("budget ms", lambda c: c.budget_ms),
    ("load", lambda c: f"{c.level:g}x"),
)
OPEN_COLUMNS: tuple[Column, ...] = (
    *_CELL_KEY,
    ("offered/s", lambda c: f"{c.offered_rps:.0f}"),
    ("goodput/s", lambda c: f"{c.goodput_rps:.0f}"),
    ("goodput / cap", lambda c: f"{c.goodput_share:.2f}"),
    ("200s", lambda c: c.ok),
    ("200 p50 / p99", lambda c: _pair(c.ok_latency_ms)),
    ("late % (write / sched / site n)", _late),
    ("503 n (p50 / p99)", lambda c: _counted(c.status_503)),
    ("504 n (p50 / p99)", lambda c: _counted(c.status_504)),
    ("other", _others),
    ("unanswered", lambda c: c.unanswered),
)
LOAD_COLUMNS: tuple[Column, ...] = (
    *_CELL_KEY,
    ("gen procs", lambda c: c.generator_procs),
    ("send lag p50 / p99", lambda c: _pair(c.send_lag_ms)),
    ("sched lag p99", lambda c: f"{c.sched_lag_ms['p99']:.1f}"),
    ("conns peak (opened)", lambda c: f"{c.peak_connections} ({c.connections_opened})"),
    ("saturated", lambda c: c.saturated),
    *_cpu_columns("gen cpu %"),
    ("cooldown s", lambda c: f"{c.cooldown_s:.1f}"),
)
WORKER_COLUMNS: tuple[Column, ...] = (
    ("workers", lambda r: r["workers"]),
    ("cache hits 200/s", lambda r: f"{r['throughput_rps']:.0f}"),
    ("p50 / p99 ms", lambda r: _pair(r["latency_ms"])),
    ("site cpu us/req", lambda r: f"{r['cpu']['site_us_per_request']:.0f}"),
    ("site processes", lambda r: r["cpu"]["site_processes"]),
    ("busy % / others %", lambda r: f"{r['cpu']['machine_busy_pct']:.0f} / {r['cpu']['others_pct']:.0f}"),
)


def columns(spec: Sequence[Column], rows: Iterable[Any]) -> str:
    return markdown([title for title, _ in spec], ([cell(row) for _, cell in spec] for row in rows))


def print_report(
    report: dict[str, Any], closed: dict[str, ClosedResult], cells: Sequence[Cell], results: Sequence[Check]
) -> None:
    env, site = report["environment"], report["site"]
    print(f"\ncores: {env['cpu_count']}   python: {env['python']}   {env['platform']}")
    print(f"machine before start: {env['busy_pct_before']:.0f} % busy, load average {env['loadavg_1m']:.2f}")
    doors = sorted({r.cpu.site_processes for r in closed.values()})
    print(
        f"site: {' '.join(site['command'][1:])}; ready in {site['ready_s']:.1f} s; "
        f"site processes (workloads apart): {'/'.join(map(str, doors))}"
    )
    print(f"workloads: {', '.join(f'{name} {url}' for name, url in site['urls'].items())}")
    print(
        f"\n### Closed loop ({CLOSED_CONNECTIONS} connections over {GENERATOR_PROCS} generator processes)\n"
    )
    print(columns(CLOSED_COLUMNS, closed.values()))
    capacity = ", ".join(f"{name} {rps:.0f}/s" for name, rps in report["capacity_rps"].items())
    print(f"\ncapacity (closed-loop goodput through the site): {capacity}")
    print("\n### Open loop: goodput and latency (ms, from the write; a late 200 came after the budget)\n")
    print(columns(OPEN_COLUMNS, cells))
    print("\n### Open loop: generator and CPU (lags in ms against the scheduled instants)\n")
    print(columns(LOAD_COLUMNS, cells))
    noisy = [c for c in cells if c.cpu.others_pct >= NOISY_PCT] + [
        r for r in closed.values() if r.cpu.others_pct >= NOISY_PCT
    ]
    if noisy:
        print(
            f"\nnote: processes outside the bench used {NOISY_PCT:g} % or more of the machine in "
            f"{len(noisy)} runs (see others %); their figures are disturbed"
        )
    compare = report.get("workers_compare")
    if compare is not None:
        print("\n### Workers (cache hits, closed loop)\n")
        if "skipped" in compare:
            print(f"skipped: {compare['skipped']}")
        else:
            print(columns(WORKER_COLUMNS, ({"workers": n, **compare[n]} for n in ("1", "2"))))
    print("\n### Targets\n")
    print(
        markdown(
            ["target", "wanted", "measured", "result"],
            ([c.name, c.target, c.measured, c.result] for c in results),
        )
    )
    written = [RESULTS_FILE] + ([PLOT_FILE] if report.get("plot") else [])
    print(
        f"\nwrote {' and '.join(str(path.relative_to(REPO_DIR)) for path in written)}; run took {report['duration_s']:.0f} s"
    )


def plot(cells: Sequence[Cell], path: Path) -> bool:
    """Goodput vs offered load (x capacity) per budget, and p99 of 200s vs budget; false without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(2, len(SERVICES), figsize=(6 * len(SERVICES), 9), squeeze=False)
    for column, service in enumerate(SERVICES):
        top, bottom = axes[0][column], axes[1][column]
        ideal = [0.0, 1.0, max(LEVELS)]
        top.plot(ideal, [min(x, 1.0) for x in ideal], "k--", label="ideal")
        for budget in BUDGETS_MS:
            mine = _cells(cells, service, budget_ms=budget)
            top.plot(
                [c.offered_rps / c.capacity_rps for c in mine],
                [c.goodput_share for c in mine],
                "o-",
                label=f"budget {budget} ms",
            )
        top.set(
            title=f"{service}: goodput", xlabel="offered load (x capacity)", ylabel="goodput (x capacity)"
        )
        top.legend()
        top.grid(alpha=0.3)
        bottom.plot(BUDGETS_MS, BUDGETS_MS, "k--", label="p99 = budget")
        for level in LEVELS:
            mine = [c for c in _cells(cells, service, level=level) if c.ok]
            bottom.plot(
                [c.budget_ms for c in mine],
                [max(c.ok_latency_ms["p99"], 0.01) for c in mine],
                "o-",
                label=f"{level:g}x capacity",
            )
        bottom.set(
            title=f"{service}: p99 of 200s",
            xlabel="budget (ms)",
            ylabel="p99 latency from the write (ms)",
            yscale="log",
        )
        bottom.legend()
        bottom.grid(alpha=0.3, which="both")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


# --- main ----------------------------------------------------------------------------------------


def run(
    children: Children, args: argparse.Namespace, profile: Profile, workdir: Path, progress: Progress
) -> dict[str, Any]:
    progress.step("starting the site and the generators")
    if args.workers is not None and not accepts_workers():
        raise SystemExit(
            "overload_bench: --workers given, but this checkout's `mec serve` has no --workers option"
        )
    gens = Generators(children, GENERATOR_PROCS)
    site = start_site(children, workdir / "main", args.workers)
    prime(site)
    closed = closed_phases(gens, site, profile, progress)
    capacity = {service: closed[f"{service} via site"].throughput_rps for service in SERVICES}
    for service, rps in capacity.items():
        if rps <= 0:
            progress.note(
                f"note: no 200s from {service} through the site in the closed loop; its open loop is skipped"
            )
    cells = open_phases(gens, site, capacity, profile, progress)
    found: dict[str, Any] = {
        "site": {
            "command": site_command([] if args.workers is None else ["--workers", str(args.workers)]),
            "ready_s": site.ready_s,
            "urls": site.urls,
        },
        "closed": closed,
        "capacity_rps": capacity,
        "cells": cells,
    }
    stop_site(site)
    if args.workers_compare:
        found["workers_compare"] = workers_compare(children, gens, workdir, profile, progress)
    return found


def _steps(args: argparse.Namespace) -> int:
    return (
        1
        + 2 * len(SERVICES)
        + 1
        + len(SERVICES) * len(BUDGETS_MS) * len(LEVELS)
        + (2 if args.workers_compare else 0)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Overload benchmark of one MEC site's fast path.")
    parser.add_argument("--quick", action="store_true", help="shorter phases (under about 2 minutes)")
    parser.add_argument("--workers", type=int, help="pass --workers N to mec serve")
    parser.add_argument("--workers-compare", action="store_true", help="also cache hits with 1 vs 2 workers")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    began = time.monotonic()
    report: dict[str, Any] = {
        "profile": "quick" if args.quick else "full",
        "workers": args.workers,
        "environment": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    report["environment"] |= machine_load()
    print(
        f"cores: {os.cpu_count()}  python: {platform.python_version()}  profile: {report['profile']}",
        flush=True,
    )
    children = Children()
    progress = Progress(_steps(args))
    try:
        with tempfile.TemporaryDirectory(prefix="mec-overload-") as tmp:
            try:
                report |= run(children, args, profile, Path(tmp), progress)
                progress.finish()
            finally:
                children.stop_all()
                progress.close()
    except KeyboardInterrupt:
        print("\ninterrupted; stopped what the bench started", file=sys.stderr)
        return 130
    closed: dict[str, ClosedResult] = report.pop("closed")
    cells: list[Cell] = report.pop("cells")
    report["duration_s"] = round(time.monotonic() - began, 1)
    results = checks(report, closed, cells)
    report["closed"] = {name: asdict(result) for name, result in closed.items()}
    report["cells"] = [asdict(cell) for cell in cells]
    report["checks"] = [asdict(check) for check in results]
    report["plot"] = str(PLOT_FILE.relative_to(REPO_DIR)) if plot(cells, PLOT_FILE) else None
    if report["plot"] is None:
        print("note: matplotlib is not installed, no plot (pip install matplotlib)", file=sys.stderr)
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report, closed, cells, results)
    return 0 if all(check.result != "FAIL" for check in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
