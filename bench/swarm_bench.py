"""Benchmark of a 3-site swarm on loopback: forwarding overhead, leader failover, 2x one site's load.

Run: `.venv/bin/python bench/swarm_bench.py [--quick] [--kills K] [--runtime docker|local]
[--cpus C] [--cpu-period-ms P]`.
Prints tables, writes `bench/results/swarm-latest.json`; exits 0 when every target passes, 1
otherwise, 130 when interrupted.

Method
------
1. Three `mec serve` processes of this checkout (`python -m api.cli serve`, via
   `api.launcher.SiteProcess`) on free loopback ports, each with its own API port, Raft port and
   temporary data dir, peers of each other (`--peers ID=URL@127.0.0.1:RAFT`), one generated
   `MEC_PEER_SECRET`, generated client and operator keys shared by the three, and every other
   MEC_* variable of the caller dropped (so: the embedded defaults, embedded Raft included),
   except the runtime: Docker by default, with each inference instance limited to `--cpus`
   (0.25) per `--cpu-period-ms` (10 ms) CFS period, so that what bounds one site is its own
   instance, as at a real site, and not the two cores all three sites share here.
   The bench waits until every site reports the same leader and every site is a member.
2. Forwarding overhead. `sensor` is scaled to 1 replica and moved to site-2 (so site-1 and
   site-3 run none); the bench waits until `GET /v1/services` on each site shows that and
   site-1's load table shows site-2 with a ready sensor. Then the same open-loop sensor load
   (distinct `sensor_id` per request, `latency_budget_ms` 200, 100 req/s) goes (a) to site-2
   directly and (b) to site-1, which forwards it to site-2, in interleaved rounds after a 1 s
   warm-up of each. Latency is from each request's scheduled send time to the end of its answer.
   Reported: p50/p99 of the 200s of each, p50(b) - p50(a) (pooled over the rounds, and per
   round), the share of (b)'s 200s whose `route.tier` is `peer`, and the 5xx counts.
3. Capacity of one site for `inference` (scaled to 1 replica and moved to site-2, so the peers
   run none and site-2 cannot hand work on; each request a distinct text of `TEXT_WORDS` words,
   about 3 ms of CPU, never a cache hit): an open-loop ramp against site-2 from 20 req/s (x 1.25
   per step full, x 1.5 quick); a step passes when >= 99 % of its scheduled requests got a 200 within the
   budget from their scheduled instant and none got a 5xx or no answer. A failing step is run
   once more (noise on a shared machine only ever makes a step fail); the capacity is the
   highest passing rate.
4. 2x one site's capacity. `inference` is scaled to 3 replicas (one per site; checked), then 2x
   the capacity of step 3 is offered to site-1 alone, open loop, budget 200 ms. Reported: the
   share of scheduled requests answered 200 within budget, the 5xx count, the share of the 200s
   served by a peer (`route.tier == "peer"`) and by which site.
5. Failover at the site level, K times (`--kills`, default 5; 3 with `--quick`): SIGKILL the
   process of the current leader site (its workloads get SIGTERM from the kernel, as after a
   crash); from just before the kill, one thread polls `GET /v1/sites` on both survivors every
   20 ms until both name the same survivor as leader, and another posts
   `POST /v1/services/sensor/scale` (to the replicas it already has, so no instance changes)
   to the first survivor every 20 ms until one answers 200. Then the killed site is started
   again on its data dir and the bench waits until it is ready, names the same leader, has
   applied at least the leader's commit index, has the leader's placements and runs its share
   of sensor. Median and max over the kills are reported.

Load comes from this file run as `swarm_bench.py generator`: `bench/openloop.py`'s open-loop
engine (the schedule, connections and latency accounting of `overload_bench.py`) in processes
of its own, fed one command per line. Two hooks on `openloop`'s module functions, in that
process only: `payload` gives each sensor request its own `sensor_id`, and `site_total_us`
(called once per 200 answer, with its body) also notes the answer's `route.tier` and
`route.site`; inference requests get their own texts the same way. Above 2,500 req/s the schedule is split over more processes (interleaved).

Every load run also reports the CPU used by each site's front door and by its workloads (under
Docker: by all workload containers together, as "containers"), by the generators and by this process, in % of one core; how busy the whole machine was and the share
of it taken by processes outside the bench ("others"), in % of all cores; the load average; the
503s the target's front door wrote before reading the body (`admission.door.refused` of
`GET /v1/metrics/snapshot`, before and after: such a request never reaches the router, so no
peer can take it); and the 200s later than the budget, by the client's clock from the write and
by the site's own `timings.total`. During the 2x run a side thread also samples site-1's accept
queue (/proc/net/tcp: connections the kernel holds that the site has not accepted, whose wait
comes before the site's clock starts), sends 4 req/s of its own to read the refusals' codes, and
reads site-1's load table every 0.5 s (are the peers fresh, with room?).

On a 2-core machine the generators, the three sites and their workloads share the cores: the
figures are those of the whole arrangement, not of one site on a machine of its own. Every
process the bench starts is stopped by its pid (its process group: each site runs in a session
of its own) in a `finally`, also on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import re
import secrets
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))  # run as a script: this checkout's packages come first

import psutil  # noqa: E402
from openloop import Command  # noqa: E402
from overload_bench import _is_workload, _ms, _pump_lines  # noqa: E402
from progress import Progress  # noqa: E402
from site_bench import HOST, _get, _post, busy_shares, machine_load, table  # noqa: E402

from api.launcher import ChildProcess, NotReadyError, SiteProcess, generated_key  # noqa: E402
from tools.runtimes.base import free_port  # noqa: E402

RESULTS_FILE = BENCH_DIR / "results" / "swarm-latest.json"
SITE_IDS = ("site-1", "site-2", "site-3")
SERVICE = "sensor"
"""The service of the forwarding and failover phases."""
CAPACITY_SERVICE = "inference"
"""The service of the capacity and 2x phases: CPU-bound (a text of `TEXT_WORDS` words costs about
3 ms of the instance's CPU), so one instance with a CPU limit is what bounds one site."""
TEXT_WORDS = 48
CAPACITY_CPUS = 0.25
"""The CPU limit of each inference instance (`--cpus`), enforced by the Docker engine."""
CPU_PERIOD_MS = 10.0
"""The CFS period of that limit (`--cpu-period-ms`, `MEC_DOCKER_CPU_PERIOD_MS`)."""
BUDGET_MS = 200
FORWARD_RATE = 100.0
SITE_READY_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 90.0
POLL_S = 0.02
"""How often the failover probes look again."""
FAILOVER_GIVE_UP_S = 30.0
STOP_TIMEOUT_S = 15.0
ONE_PROC_MAX_RATE = 2500.0
MAX_GENERATOR_PROCS = 4
WARM_CONNECTIONS = 16
MAX_CONNECTIONS_PER_PROC = 1024
START_DELAY_S = 0.5
PREBUILD_S_PER_REQUEST = 25e-6
CLIENT_TIMEOUT_EXTRA_S = 2.0
IDLE_CORES = 0.5
"""Between runs the bench waits (bounded) until the three sites use less than this many cores."""
NOISY_PCT = 10.0

TARGET_FORWARD_P50_MS = 5.0
TARGET_FAILOVER_S = 2.0
TARGET_WITHIN_PCT = 99.0

_ROUTE = re.compile(rb'"route":\{"tier":"([a-z]+)","site":"([^"]*)"')


@dataclass(frozen=True)
class Profile:
    forward_s: float
    forward_rounds: int
    ramp_start: float
    ramp_factor: float
    ramp_step_s: float
    ramp_max: float
    overload_s: float
    kills: int
    cooldown_max_s: float


FULL = Profile(
    forward_s=10.0,
    forward_rounds=2,
    ramp_start=20.0,
    ramp_factor=1.25,
    ramp_step_s=3.0,
    ramp_max=8000.0,
    overload_s=10.0,
    kills=5,
    cooldown_max_s=5.0,
)
QUICK = Profile(
    forward_s=4.0,
    forward_rounds=1,
    ramp_start=20.0,
    ramp_factor=1.5,
    ramp_step_s=1.5,
    ramp_max=8000.0,
    overload_s=4.0,
    kills=3,
    cooldown_max_s=3.0,
)


def _loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def _wait(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """The first truthy value of `predicate()` (an OSError, ValueError or KeyError is "not yet");
    RuntimeError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            value = predicate()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            value, last = None, exc
        if value:
            return value
        if time.monotonic() >= deadline:
            raise RuntimeError(f"not within {timeout_s:g} s: {what} (last error: {last!r})")
        time.sleep(interval_s)


# --- the swarm -----------------------------------------------------------------------------------


class Swarm:
    """Three `mec serve` processes that are each other's peers; every process ever launched is
    remembered, so that `stop_all` ends them (and their process groups) by pid."""

    def __init__(
        self,
        workdir: Path,
        runtime: str,
        cpus: float,
        cpu_period_ms: float | None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.client_key = generated_key("client")
        self.operator_key = generated_key("operator")
        secret = secrets.token_urlsafe(24)
        api = {sid: free_port(HOST) for sid in SITE_IDS}
        raft = {sid: free_port(HOST) for sid in SITE_IDS}
        self.sites: dict[str, SiteProcess] = {}
        for sid in SITE_IDS:
            peers = ",".join(
                f"{other}=http://{HOST}:{api[other]}@{HOST}:{raft[other]}"
                for other in SITE_IDS
                if other != sid
            )
            self.sites[sid] = SiteProcess(
                workdir / sid,
                client_key=self.client_key,
                operator_key=self.operator_key,
                env={
                    "MEC_PEER_SECRET": secret,
                    "MEC_RUNTIME": runtime,
                    f"MEC_SERVICES__{CAPACITY_SERVICE.upper()}__CPUS": str(cpus),
                    **({} if cpu_period_ms is None else {"MEC_DOCKER_CPU_PERIOD_MS": str(cpu_period_ms)}),
                    **(extra_env or {}),
                },
                args=["--site-id", sid, "--peers", peers, "--raft-port", str(raft[sid])],
                port=api[sid],
                embedded_defaults=True,
                cwd=REPO_DIR,
                new_session=True,
                name=sid,
            )
        self.launched: list[ChildProcess] = []
        self.orphans: list[psutil.Process] = []

    # -- processes --

    def launch(self, sid: str) -> None:
        self.launched.append(self.sites[sid].launch())

    def wait_ready(self, sid: str) -> float:
        ready_s = self.sites[sid].wait_ready(SITE_READY_TIMEOUT_S)
        self.adopt(sid)
        return ready_s

    def adopt(self, sid: str) -> None:
        """Remember the site's descendants (its workloads), to kill any it leaves behind."""
        try:
            self.orphans.extend(psutil.Process(self.pid(sid)).children(recursive=True))
        except psutil.Error:
            pass

    def pid(self, sid: str) -> int:
        proc = self.sites[sid].proc
        assert proc is not None
        return proc.pid

    def alive(self) -> list[str]:
        return [sid for sid, site in self.sites.items() if site.proc is not None and site.proc.running]

    def kill(self, sid: str) -> None:
        """SIGKILL by pid (and reap): the abrupt failure of one site."""
        proc = self.sites[sid].proc
        assert proc is not None
        proc.kill()

    def restart(self, sid: str) -> float:
        """Start a killed site again on the same data dir and ports; seconds until it serves."""
        old = self.sites[sid].proc
        if old is not None:
            old.stop(STOP_TIMEOUT_S)  # exited already: only its leftover process group is killed
        self.launch(sid)
        return self.wait_ready(sid)

    def stop_all(self) -> None:
        for proc in reversed(self.launched):
            proc.stop(STOP_TIMEOUT_S)
        for orphan in self.orphans:
            try:
                if orphan.is_running():  # psutil also checks that the pid was not reused
                    orphan.kill()
            except psutil.Error:
                pass

    def tail(self, sid: str) -> str:
        proc = self.sites[sid].proc
        return proc.tail(3000) if proc is not None else ""

    # -- the API --

    def port(self, sid: str) -> int:
        return self.sites[sid].port

    def view(self, sid: str, timeout: float = 5.0) -> dict[str, Any]:
        status, raw = _get(self.port(sid), "/v1/sites", self.operator_key, timeout)
        if status != 200:
            raise ValueError(f"GET /v1/sites on {sid}: {status} {raw[:200]!r}")
        view: dict[str, Any] = json.loads(raw)
        return view

    def ready_instances(self, sid: str, service: str = SERVICE) -> int:
        status, raw = _get(self.port(sid), "/v1/services", self.client_key)
        if status != 200:
            raise ValueError(f"GET /v1/services on {sid}: {status} {raw[:200]!r}")
        found = next(s for s in json.loads(raw)["services"] if s["name"] == service)
        return int(found["instances_ready"])

    def change(
        self, sid: str, action: str, argument: int | str, timeout: float = 20.0, service: str = SERVICE
    ) -> tuple[int, Any]:
        """POST scale (`argument`: replicas) or move (`argument`: site) of `service` through `sid`."""
        body = {"replicas": argument} if action == "scale" else {"site": argument}
        status, raw = _post(
            self.port(sid),
            f"/v1/services/{service}/{action}",
            json.dumps(body).encode(),
            self.operator_key,
            timeout,
        )
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw[:300].decode(errors="replace")

    def agreed_leader(self, among: Sequence[str]) -> str | None:
        """The leader every site of `among` names, when they agree on one of them."""
        leaders = {self.view(sid, 2.0)["leader"] for sid in among}
        leader = leaders.pop() if len(leaders) == 1 else None
        return leader if leader in among else None

    def start_all(self) -> str:
        """Start every site, wait until each is ready and they agree on a leader: its id."""
        for sid in SITE_IDS:
            self.launch(sid)
        for sid in SITE_IDS:
            self.wait_ready(sid)
        return self.settled()

    def settled(self) -> str:
        """Wait until every live site names the same leader and every site is a member of all views."""

        def steady() -> str | None:
            ids = self.alive()
            leader = self.agreed_leader(ids)
            if leader is None:
                return None
            for sid in ids:
                members = {s["site_id"] for s in self.view(sid)["sites"] if s.get("member")}
                if members != set(SITE_IDS):
                    return None
            return leader

        leader: str = _wait(steady, SETTLE_TIMEOUT_S, "one leader and three members in every view")
        return leader

    def placement(self, sid: str, service: str = SERVICE) -> dict[str, int]:
        placements = self.view(sid)["placements"]
        return {site: int(n) for site, n in placements.get(service, {}).items()}

    def peer_ready(self, sid: str, peer: str, service: str = SERVICE) -> bool:
        """Whether `sid`'s load table has a fresh report of `peer` with a ready `service` and an RTT."""
        for entry in self.view(sid)["sites"]:
            if entry["site_id"] == peer and entry.get("healthy") and entry.get("rtt_ms") is not None:
                load = (entry.get("load") or {}).get("services", {}).get(service, {})
                return int(load.get("ready", 0)) >= 1
        return False


def place(swarm: Swarm, service: str, wanted: dict[str, int], steps: Sequence[tuple[str, int | str]]) -> None:
    """Apply placement changes of `service` through site-3 (not the leader, in general), then wait
    until every site runs its share and each site with none sees a peer with a ready one."""
    for action, argument in steps:
        status, answer = swarm.change("site-3", action, argument, service=service)
        if status != 200:
            raise RuntimeError(f"{action} {service} {argument}: {status} {answer}")
    got = _wait(
        lambda: all(swarm.placement(sid, service) == wanted for sid in SITE_IDS),
        30,
        f"the placement {wanted} of {service} in every view",
    )
    assert got
    for sid in SITE_IDS:
        share = wanted.get(sid, 0)
        _wait(partial(_runs, swarm, sid, share, service), 90, f"{sid} runs {share} {service}")
    for sid in SITE_IDS:
        for peer in SITE_IDS:
            if peer != sid and wanted.get(peer, 0) > 0:
                _wait(partial(swarm.peer_ready, sid, peer, service), 30, f"{sid} sees {peer}'s {service}")


def _runs(swarm: Swarm, sid: str, share: int, service: str = SERVICE) -> bool:
    return swarm.ready_instances(sid, service) == share


# --- load generators ----------------------------------------------------------------------------


WORDS = (
    "please navigate to the nearest charging station then play some quiet music and remind me "
    "to call the office when we arrive also check the weather for tomorrow morning and book a "
    "table for two at the usual place near the river"
).split()


def inference_text(seq_base: int, index: int) -> str:
    """A text of `TEXT_WORDS` words no other request of the bench sends (so no cache answers it)."""
    start = index % len(WORDS)
    words = [WORDS[(start + n) % len(WORDS)] for n in range(TEXT_WORDS - 1)]
    return f"r{seq_base}x{index} " + " ".join(words)


def distinct_requests(
    payload: Callable[[str, int, int], dict[str, Any]],
) -> Callable[[str, int, int], dict[str, Any]]:
    """openloop's `payload`, but each sensor request its own `sensor_id` and each inference request
    its own text (`seq_base` is the run's nonce, so no two runs share one either)."""

    def distinct(kind: str, index: int, seq_base: int = 0) -> dict[str, Any]:
        if kind == SERVICE:
            return {"sensor_id": f"swb-{seq_base}-{index}", "value": round((index % 100) * 0.5 + 10.0, 1)}
        if kind == CAPACITY_SERVICE:
            return {"text": inference_text(seq_base, index)}
        return payload(kind, index, seq_base)

    return distinct


def generator_main() -> int:
    """`swarm_bench.py generator`: openloop's engine, one JSON command per stdin line, one JSON
    result per stdout line, each result with `routes` ("tier@site" of each 200, in answer order)."""
    import asyncio

    import openloop
    from loadgen import _loop_factory

    routes: list[str] = []
    site_total_us = openloop.site_total_us

    def noting_route(answer: bytes) -> int:
        found = _ROUTE.search(answer, max(0, answer.rfind(b'"route":')))
        routes.append(f"{found.group(1).decode()}@{found.group(2).decode()}" if found else "?@?")
        return site_total_us(answer)

    openloop.payload = distinct_requests(openloop.payload)  # type: ignore[assignment]
    openloop.site_total_us = noting_route
    openloop._raise_nofile()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        for line in sys.stdin:
            if not line.strip():
                continue
            routes.clear()
            try:
                result = runner.run(openloop.execute(Command.from_json(line)))
            except (ValueError, TypeError) as exc:
                result = {"error": str(exc)}
            result["routes"] = list(routes)
            sys.stdout.write(json.dumps(result, separators=(",", ":")) + "\n")
            sys.stdout.flush()
    return 0


class Generators:
    """`swarm_bench.py generator` processes, started once; each takes one command at a time."""

    def __init__(self, count: int) -> None:
        self.procs: list[ChildProcess] = []
        self.lines: list[queue.Queue[str]] = []
        for n in range(count):
            proc = ChildProcess(
                [sys.executable, str(Path(__file__).resolve()), "generator"],
                name=f"generator-{n}",
                cwd=REPO_DIR,
                stdin=True,
                pipe_stdout=True,
                new_session=True,
            ).start()
            lines: queue.Queue[str] = queue.Queue()
            threading.Thread(target=_pump_lines, args=(proc.stdout, lines), daemon=True).start()
            self.procs.append(proc)
            self.lines.append(lines)

    def processes(self) -> list[psutil.Process]:
        found = []
        for proc in self.procs:
            try:
                found.append(psutil.Process(proc.pid))
            except psutil.Error:
                continue
        return found

    def submit(self, commands: Sequence[Command]) -> None:
        for proc, command in zip(self.procs, commands, strict=False):
            proc.stdin.write(json.dumps(asdict(command)).encode() + b"\n")
            proc.stdin.flush()

    def collect(self, count: int, timeout_s: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        results = []
        for n in range(count):
            while True:
                try:
                    line = self.lines[n].get(timeout=0.5)
                    break
                except queue.Empty:
                    if self.procs[n].returncode is not None:
                        raise RuntimeError(f"generator {n} exited ({self.procs[n].returncode})") from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"generator {n} gave no result within {timeout_s:.0f} s") from None
            result = json.loads(line)
            if "error" in result:
                raise RuntimeError(f"generator {n}: {result['error']}")
            results.append(result)
        return results

    def stop(self) -> None:
        for proc in self.procs:
            try:
                proc.stdin.close()
            except OSError:
                pass
            proc.stop(5.0)


# --- CPU ----------------------------------------------------------------------------------------


def _cpu(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


class CpuWindow:
    """CPU seconds by group between `start` and `stop`: each site's front door (the site process
    and every descendant that is not a workload) and its workloads, the generators, this process;
    how busy the machine was and the share outside the bench. Keyed by pid (a process started
    inside the window counts from zero)."""

    def __init__(self, swarm: Swarm, gens: Generators) -> None:
        self.swarm = swarm
        self.gens = gens

    def _groups(self) -> dict[str, list[psutil.Process]]:
        groups: dict[str, list[psutil.Process]] = {}
        seen: set[int] = set()
        for sid in self.swarm.alive():
            try:
                root = psutil.Process(self.swarm.pid(sid))
                children = root.children(recursive=True)
            except psutil.Error:
                continue
            seen.update(c.pid for c in children)
            groups[f"{sid} front"] = [root, *(c for c in children if not _is_workload(c))]
            groups[f"{sid} workloads"] = [c for c in children if _is_workload(c)]
        # Under Docker the workloads are children of the engine's shims, not of their sites.
        groups["containers"] = [p for p in psutil.process_iter() if p.pid not in seen and _is_workload(p)]
        groups["generators"] = self.gens.processes()
        groups["bench"] = [psutil.Process()]
        return groups

    def _sample(self) -> dict[str, dict[int, float]]:
        return {name: {p.pid: _cpu(p) for p in procs} for name, procs in self._groups().items()}

    def start(self) -> None:
        self.before = self._sample()
        self.machine0 = psutil.cpu_times()
        self.t0 = time.monotonic()

    def stop(self) -> dict[str, Any]:
        after = self._sample()
        seconds = max(1e-6, time.monotonic() - self.t0)
        used = {
            name: sum(s - self.before.get(name, {}).get(pid, 0.0) for pid, s in now.items())
            for name, now in after.items()
        }
        busy, others = busy_shares(self.machine0, sum(used.values()))
        return {
            "core_pct": {name: round(100 * s / seconds, 1) for name, s in used.items()},
            "machine_busy_pct": busy,
            "others_pct": others,
            "seconds": round(seconds, 2),
        }


def sites_cpu_s(swarm: Swarm) -> float:
    total = 0.0
    for sid in swarm.alive():
        try:
            root = psutil.Process(swarm.pid(sid))
            total += _cpu(root) + sum(_cpu(c) for c in root.children(recursive=True))
        except psutil.Error:
            continue
    return total


def cooldown(swarm: Swarm, max_s: float) -> float:
    """Wait until the three sites are idle again (a run's backlog is done), at most `max_s`."""
    started = time.monotonic()
    while time.monotonic() - started < max_s:
        before = sites_cpu_s(swarm)
        time.sleep(0.25)
        if sites_cpu_s(swarm) - before < 0.25 * IDLE_CORES:
            break
    return round(time.monotonic() - started, 2)


# --- one open-loop run --------------------------------------------------------------------------

_nonce = [time.time_ns() // 1000]


def _next_nonce() -> int:
    _nonce[0] += 1
    return _nonce[0]


@dataclass
class Run:
    """One open-loop run of sensor requests at one site."""

    label: str
    target: str
    rate_rps: float
    duration_s: float
    generator_procs: int
    scheduled: int
    answered: int
    ok: int
    within_budget: int
    within_budget_pct: float
    status_5xx: int
    statuses_5xx: dict[str, int]
    other_statuses: dict[str, int]
    unanswered: int
    transport_errors: dict[str, int]
    latency_ms: dict[str, float]
    """Of the 200s, from the scheduled instant: p50, p99, max."""
    write_latency_ms: dict[str, float]
    """Of the 200s, from the write to the socket (the generator's own lateness left out)."""
    tiers: dict[str, int]
    served_by: dict[str, int]
    peer_pct: float
    send_lag_ms: dict[str, float]
    saturated: int
    peak_connections: int
    cpu: dict[str, Any]
    loadavg_1m: float
    cooldown_s: float = 0.0
    tier_latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    late_200_by_write: int = 0
    """200s that came later than the budget after the request was written to its socket."""
    late_200_by_site: int = 0
    """200s whose own `timings.total` (the site's clock, from the first byte it read) exceeds the budget."""
    samples_us: list[int] = field(default_factory=list, repr=False)
    """The 200s' latencies from their scheduled instants (for pooled percentiles; not in the JSON)."""
    door: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per site, what its front door counted during the run (`admission.door` of
    `GET /v1/metrics/snapshot`): `refused` are 503s written before the body was read."""


def summarise(
    label: str,
    target: str,
    rate: float,
    duration: float,
    results: list[dict[str, Any]],
    cpu: dict[str, Any],
    budget_ms: int = BUDGET_MS,
) -> Run:
    budget_us = budget_ms * 1000
    statuses: list[int] = []
    lat_sched: list[int] = []
    lat_write: list[int] = []
    site_total: list[int] = []
    routes: list[str] = []
    for result in results:
        ok_count = sum(1 for s in result["statuses"] if s == 200)
        if len(result["routes"]) != ok_count:
            raise RuntimeError(f"{label}: {len(result['routes'])} routes noted for {ok_count} answers 200")
        it = iter(result["routes"])
        for status, sched, write, total in zip(
            result["statuses"],
            result["lat_sched_us"],
            result["lat_write_us"],
            result["site_total_us"],
            strict=True,
        ):
            statuses.append(status)
            lat_sched.append(sched)
            lat_write.append(write)
            site_total.append(total)
            routes.append(next(it) if status == 200 else "")
    ok_sched = [lat_sched[i] for i, s in enumerate(statuses) if s == 200]
    ok_write = [lat_write[i] for i, s in enumerate(statuses) if s == 200]
    within = sum(1 for v in ok_sched if v <= budget_us)
    scheduled = sum(r["scheduled"] for r in results)
    counts = Counter(statuses)
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    ok_routes = [r for r in routes if r]
    tiers = Counter(r.split("@")[0] for r in ok_routes)
    served = Counter(r.split("@")[1] for r in ok_routes)
    by_tier: dict[str, list[int]] = {}
    for route, latency in zip(routes, lat_sched, strict=True):
        if route:
            by_tier.setdefault(route.split("@")[0], []).append(latency)
    send_lag = [v for r in results for v in r["send_lag_us"]]
    return Run(
        label=label,
        target=target,
        rate_rps=round(rate, 1),
        duration_s=duration,
        generator_procs=len(results),
        scheduled=scheduled,
        answered=len(statuses),
        ok=len(ok_sched),
        within_budget=within,
        within_budget_pct=round(100 * within / scheduled, 2) if scheduled else 0.0,
        status_5xx=sum(n for s, n in counts.items() if s >= 500),
        statuses_5xx={str(s): n for s, n in sorted(counts.items()) if s >= 500},
        other_statuses={str(s): n for s, n in sorted(counts.items()) if s != 200 and s < 500},
        unanswered=sum(r["timeouts"] + r["cancelled"] + r["not_sent"] for r in results),
        transport_errors=dict(errors),
        latency_ms={"p50": _ms(ok_sched, 50), "p99": _ms(ok_sched, 99), "max": _ms(ok_sched, 100)},
        write_latency_ms={"p50": _ms(ok_write, 50), "p99": _ms(ok_write, 99)},
        tiers=dict(tiers),
        served_by=dict(served),
        peer_pct=round(100 * tiers.get("peer", 0) / len(ok_routes), 2) if ok_routes else 0.0,
        send_lag_ms={"p50": _ms(send_lag, 50), "p99": _ms(send_lag, 99)},
        saturated=sum(r["saturated"] for r in results),
        peak_connections=sum(r["peak_connections"] for r in results),
        cpu=cpu,
        loadavg_1m=_loadavg(),
        tier_latency_ms={
            tier: {"count": len(v), "p50": _ms(v, 50), "p99": _ms(v, 99)} for tier, v in by_tier.items()
        },
        samples_us=ok_sched,
        late_200_by_write=sum(1 for v in ok_write if v > budget_us),
        late_200_by_site=sum(1 for i, s in enumerate(statuses) if s == 200 and site_total[i] > budget_us),
    )


DOOR_COUNTERS = ("admitted", "refused", "standing_intervals", "failing_intervals")


def door_counters(swarm: Swarm) -> dict[str, dict[str, int]]:
    """Each live site's front-door counters now (sites that do not answer are left out)."""
    found: dict[str, dict[str, int]] = {}
    for sid in swarm.alive():
        try:
            status, raw = _get(swarm.port(sid), "/v1/metrics/snapshot", swarm.operator_key)
            door = json.loads(raw)["admission"]["door"] if status == 200 else None
        except (OSError, ValueError, KeyError):
            door = None
        if door is not None:
            found[sid] = {name: int(door.get(name, 0)) for name in DOOR_COUNTERS}
    return found


def open_run(
    swarm: Swarm,
    gens: Generators,
    label: str,
    target: str,
    rate: float,
    duration: float,
    profile: Profile,
    measured: bool = True,
    kind: str = SERVICE,
) -> Run:
    procs = min(MAX_GENERATOR_PROCS, max(1, math.ceil(rate / ONE_PROC_MAX_RATE)))
    prebuild = PREBUILD_S_PER_REQUEST * rate * duration / procs
    start_at = time.time() + START_DELAY_S + prebuild
    base = Command(
        mode="open",
        port=swarm.port(target),
        kind=kind,
        key=swarm.client_key,
        budget_ms=BUDGET_MS,
        rate=rate,
        duration_s=duration,
        start_at=start_at,
        stride=procs,
        connections=WARM_CONNECTIONS,
        max_connections=MAX_CONNECTIONS_PER_PROC,
        timeout_s=BUDGET_MS / 1000 + CLIENT_TIMEOUT_EXTRA_S,
        seq_base=_next_nonce(),
    )
    doors0 = door_counters(swarm)
    gens.submit([replace(base, offset=n) for n in range(procs)])
    window = CpuWindow(swarm, gens)
    time.sleep(max(0.0, start_at - time.time()))
    window.start()
    results = gens.collect(procs, duration + base.timeout_s + 60)
    cpu = window.stop()
    run = summarise(label, target, rate, duration, results, cpu)
    doors1 = door_counters(swarm)
    run.door = {
        sid: {name: now[name] - doors0[sid].get(name, 0) for name in now}
        for sid, now in doors1.items()
        if sid in doors0
    }
    run.cooldown_s = cooldown(swarm, profile.cooldown_max_s)
    if measured:
        lat = run.latency_ms
        print(
            f"  {label}: {run.ok}/{run.scheduled} ok, p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, "
            f"5xx {run.status_5xx}, peer {run.peer_pct:.1f} %, load {run.loadavg_1m:.2f}",
            flush=True,
        )
    return run


# --- the phases -----------------------------------------------------------------------------------


def forwarding_phase(swarm: Swarm, gens: Generators, profile: Profile) -> dict[str, Any]:
    print("forwarding: sensor on site-2 only ...", flush=True)
    place(swarm, SERVICE, {"site-2": 1}, [("scale", 1), ("move", "site-2")])
    for target in ("site-2", "site-1"):  # warm-up: connections, the forwarder's pool
        open_run(swarm, gens, f"warm-up {target}", target, FORWARD_RATE, 1.0, profile, measured=False)
    runs: list[Run] = []
    for n in range(profile.forward_rounds):
        print(f"measuring: forwarding, round {n + 1} of {profile.forward_rounds} ...", flush=True)
        for label, target in (("direct", "site-2"), ("forwarded", "site-1")):
            runs.append(
                open_run(swarm, gens, f"{label} r{n + 1}", target, FORWARD_RATE, profile.forward_s, profile)
            )
    direct = [r for r in runs if r.target == "site-2"]
    forwarded = [r for r in runs if r.target == "site-1"]
    return {"runs": runs, "direct": direct, "forwarded": forwarded}


def pooled_ms(runs: Sequence[Run], pct: float) -> float:
    """A percentile over the 200s of several runs together."""
    return _ms([v for r in runs for v in r.samples_us], pct)


def run_json(run: Run) -> dict[str, Any]:
    data = asdict(run)
    data.pop("samples_us")
    return data


def _step_passes(run: Run) -> bool:
    return (
        run.within_budget_pct >= TARGET_WITHIN_PCT
        and run.status_5xx == 0
        and run.unanswered == 0
        and not run.transport_errors
    )


def capacity_phase(swarm: Swarm, gens: Generators, profile: Profile) -> dict[str, Any]:
    """Open-loop ramp of inference against site-2, the only site with an inference instance."""
    print(f"capacity: {CAPACITY_SERVICE} on site-2 only ...", flush=True)
    place(swarm, CAPACITY_SERVICE, {"site-2": 1}, [("scale", 1), ("move", "site-2")])
    print(
        f"measuring: one site's capacity (ramp against site-2, the only {CAPACITY_SERVICE}) ...", flush=True
    )
    steps: list[dict[str, Any]] = []
    capacity = 0.0
    rate = profile.ramp_start
    while rate <= profile.ramp_max:
        for retry in (False, True):  # a failing step is run once more
            label = f"ramp {rate:.0f}/s" + (" again" if retry else "")
            run = open_run(
                swarm, gens, label, "site-2", rate, profile.ramp_step_s, profile, kind=CAPACITY_SERVICE
            )
            passed = _step_passes(run)
            steps.append({"run": run, "passed": passed, "retry": retry})
            if passed:
                break
        if not passed:
            break
        capacity = rate
        rate = round(rate * profile.ramp_factor)
    return {"capacity_rps": capacity, "steps": steps, "ramp_max_reached": rate > profile.ramp_max}


def overload_phase(swarm: Swarm, gens: Generators, profile: Profile, capacity: float) -> dict[str, Any]:
    print(f"overload: {CAPACITY_SERVICE} one replica per site ...", flush=True)
    place(swarm, CAPACITY_SERVICE, dict.fromkeys(SITE_IDS, 1), [("scale", 3)])
    rate = 2 * capacity
    print(f"measuring: 2 x capacity = {rate:.0f} req/s to site-1 only ...", flush=True)
    open_run(
        swarm, gens, "warm-up site-1", "site-1", capacity, 2.0, profile, measured=False, kind=CAPACITY_SERVICE
    )
    probe = SideProbe(swarm, "site-1", profile.overload_s + START_DELAY_S + 1.0)
    probe.start()
    run = open_run(
        swarm, gens, "2x capacity", "site-1", rate, profile.overload_s, profile, kind=CAPACITY_SERVICE
    )
    probe.join(30)
    return {"rate_rps": rate, "run": run, "side_probe": probe.summary(), "sites": site_states(swarm)}


def site_states(swarm: Swarm) -> dict[str, Any]:
    """Each site's overload state and changes, hedges and alerts, as its snapshot says."""
    found: dict[str, Any] = {}
    for sid in swarm.alive():
        try:
            status, raw = _get(swarm.port(sid), "/v1/metrics/snapshot", swarm.operator_key)
            snap = json.loads(raw) if status == 200 else {}
        except (OSError, ValueError):
            continue
        overload = snap.get("overload", {})
        found[sid] = {
            "overload": overload.get("state"),
            "changes": [f"{c['from']}->{c['to']}" for c in overload.get("history", [])],
            "hedged": snap.get("admission", {}).get("hedged"),
            "hedges_won": snap.get("admission", {}).get("hedges_won"),
            "alerts_active": snap.get("alerts", {}).get("active"),
        }
    return found


def accept_queue(port: int) -> int | None:
    """Connections waiting in the kernel for the listener on 127.0.0.1:`port` to accept them (the
    `rx_queue` of its LISTEN line in /proc/net/tcp); None where that cannot be read."""
    wanted = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as lines:
            for line in lines:
                fields = line.split()
                if len(fields) > 4 and fields[1] == wanted and fields[3] == "0A":
                    return int(fields[4].split(":")[1], 16)
    except (OSError, ValueError, IndexError):
        return None
    return None


class SideProbe(threading.Thread):
    """Diagnostics while site-1 is overloaded, from this process, for `seconds`: every 0.25 s the
    length of the site's accept queue (connections the kernel holds that the site has not
    accepted: their wait is before the site's clock starts) and one more inference request to the
    site (4 req/s besides the load; each answer's tier, or each refusal's status, code and message,
    digits masked, is counted), and every 0.5 s the site's `GET /v1/sites` (how long it took, and
    each peer's entry in its load table: fresh or not, RTT, inference's room)."""

    def __init__(self, swarm: Swarm, sid: str, seconds: float) -> None:
        super().__init__(daemon=True, name="side-probe")
        self.swarm, self.sid, self.seconds = swarm, sid, seconds
        self.answers: Counter[str] = Counter()
        self.accept_queue: list[int] = []
        self.view_ms: list[float] = []
        self.peers: dict[str, list[dict[str, Any]]] = {}

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        n = 0
        while time.monotonic() < deadline:
            tick = time.monotonic()
            queued = accept_queue(self.swarm.port(self.sid))
            if queued is not None:
                self.accept_queue.append(queued)
            self._request(n)
            if n % 2 == 0:
                self._view()
            n += 1
            time.sleep(max(0.0, tick + 0.25 - time.monotonic()))

    def _request(self, n: int) -> None:
        body = {
            "service": CAPACITY_SERVICE,
            "payload": {"text": inference_text(_next_nonce(), n)},
            "client": {"kind": "mobile", "id": "swarm-bench-probe"},
            "latency_budget_ms": BUDGET_MS,
        }
        try:
            status, raw = _post(
                self.swarm.port(self.sid),
                "/v1/requests",
                json.dumps(body).encode(),
                self.swarm.client_key,
                BUDGET_MS / 1000 + CLIENT_TIMEOUT_EXTRA_S,
            )
        except OSError as exc:
            self.answers[f"no answer: {type(exc).__name__}"] += 1
            return
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = {}
        if status == 200:
            self.answers[f"200 {answer.get('route', {}).get('tier', '?')}"] += 1
            return
        error = answer.get("error", {})
        message = re.sub(r"\d+(\.\d+)?", "#", str(error.get("message", "")))[:160]
        self.answers[f"{status} {error.get('code', '?')}: {message}"] += 1

    def _view(self) -> None:
        started = time.perf_counter()
        try:
            view = self.swarm.view(self.sid, 2.0)
        except (OSError, ValueError):
            self.view_ms.append(-1.0)
            return
        self.view_ms.append((time.perf_counter() - started) * 1000)
        for entry in view["sites"]:
            if entry["site_id"] == self.sid:
                continue
            load = (entry.get("load") or {}).get("services", {}).get(CAPACITY_SERVICE, {})
            self.peers.setdefault(entry["site_id"], []).append(
                {
                    "healthy": bool(entry.get("healthy")),
                    "rtt_ms": entry.get("rtt_ms"),
                    "has_room": bool(load.get("has_room")),
                    "predicted_ms": load.get("predicted_ms"),
                }
            )

    def summary(self) -> dict[str, Any]:
        answered = [v for v in self.view_ms if v >= 0]
        peers = {}
        for peer, samples in self.peers.items():
            rtts = sorted(s["rtt_ms"] for s in samples if s["rtt_ms"] is not None)
            predicted = sorted(s["predicted_ms"] for s in samples if s["predicted_ms"] is not None)
            peers[peer] = {
                "samples": len(samples),
                "fresh_pct": round(100 * sum(s["healthy"] for s in samples) / len(samples), 1),
                "room_pct": round(100 * sum(s["has_room"] for s in samples) / len(samples), 1),
                "rtt_ms_p50": round(rtts[len(rtts) // 2], 2) if rtts else None,
                "rtt_ms_max": round(rtts[-1], 2) if rtts else None,
                "predicted_ms_p50": round(predicted[len(predicted) // 2], 2) if predicted else None,
            }
        queues = sorted(self.accept_queue)
        return {
            "accept_queue": {
                "samples": len(queues),
                "p50": queues[len(queues) // 2] if queues else None,
                "max": queues[-1] if queues else None,
            },
            "answers": dict(self.answers.most_common()),
            "view_ms": {
                "count": len(self.view_ms),
                "failed": len(self.view_ms) - len(answered),
                "p50": round(statistics.median(answered), 1) if answered else None,
                "max": round(max(answered), 1) if answered else None,
            },
            "peers": peers,
        }


@dataclass
class Kill:
    n: int
    killed: str
    term_before: int
    new_leader: str | None
    term_after: int | None
    leader_agreed_s: float | None
    commit_s: float | None
    commit_via: str
    decided_by: str | None
    commit_attempts: int
    last_refusal: str
    restart_ready_s: float
    caught_up_s: float
    leader_after_restart: str
    loadavg_1m: float


def _probe_leader(swarm: Swarm, survivors: list[str], t0: float, out: dict[str, Any]) -> None:
    tick = t0
    while time.perf_counter() - t0 < FAILOVER_GIVE_UP_S:
        try:
            leader = swarm.agreed_leader(survivors)
        except (OSError, ValueError, KeyError):
            leader = None
        if leader is not None:
            out["leader_s"] = time.perf_counter() - t0
            out["leader"] = leader
            return
        tick += POLL_S
        time.sleep(max(0.0, tick - time.perf_counter()))


def _probe_commit(swarm: Swarm, via: str, replicas: int, t0: float, out: dict[str, Any]) -> None:
    tick = t0
    out["attempts"] = 0
    while time.perf_counter() - t0 < FAILOVER_GIVE_UP_S:
        out["attempts"] += 1
        try:
            status, answer = swarm.change(via, "scale", replicas, timeout=FAILOVER_GIVE_UP_S)
        except OSError as exc:
            status, answer = 0, repr(exc)
        if status == 200:
            out["commit_s"] = time.perf_counter() - t0
            out["decided_by"] = answer.get("decided_by") if isinstance(answer, dict) else None
            return
        if isinstance(answer, dict):
            out["last_refusal"] = f"{status} {answer.get('error', {}).get('code', '')}"
        else:
            out["last_refusal"] = f"{status} {answer}"[:120]
        tick = max(tick + POLL_S, time.perf_counter())
        time.sleep(max(0.0, tick - time.perf_counter()))


def caught_up(swarm: Swarm, sid: str, leader: str) -> bool:
    """`sid` names `leader`, has applied what the leader has committed, has its placements and runs
    its share of sensor."""
    mine, theirs = swarm.view(sid), swarm.view(leader)
    if mine["leader"] != leader or mine["applied_index"] < theirs["commit_index"]:
        return False
    if mine["placements"] != theirs["placements"]:
        return False
    share = int(theirs["placements"].get(SERVICE, {}).get(sid, 0))
    return swarm.ready_instances(sid) == share


def back_in_step(swarm: Swarm, sid: str) -> str | None:
    """The leader all three agree on, once the restarted `sid` has caught up with it."""
    current = swarm.agreed_leader(SITE_IDS)
    return current if current is not None and caught_up(swarm, sid, current) else None


def failover_phase(swarm: Swarm, kills: int) -> list[Kill]:
    results: list[Kill] = []
    for n in range(1, kills + 1):
        leader = swarm.settled()
        survivors = [sid for sid in SITE_IDS if sid != leader]
        term_before = int(swarm.view(leader)["term"])
        replicas = sum(swarm.placement(survivors[0]).values())
        print(f"measuring: failover {n} of {kills}: SIGKILL the leader {leader} ...", flush=True)
        leader_out: dict[str, Any] = {}
        commit_out: dict[str, Any] = {}
        t0 = time.perf_counter()
        swarm.kill(leader)
        threads = [
            threading.Thread(target=_probe_leader, args=(swarm, survivors, t0, leader_out), daemon=True),
            threading.Thread(
                target=_probe_commit, args=(swarm, survivors[0], replicas, t0, commit_out), daemon=True
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(FAILOVER_GIVE_UP_S + 30)
        new_leader = leader_out.get("leader")
        term_after = int(swarm.view(new_leader)["term"]) if new_leader else None
        restart_s = swarm.restart(leader)
        t1 = time.monotonic()
        after = _wait(partial(back_in_step, swarm, leader), 120, f"{leader} caught up after its restart")
        kill = Kill(
            n=n,
            killed=leader,
            term_before=term_before,
            new_leader=new_leader,
            term_after=term_after,
            leader_agreed_s=round(leader_out["leader_s"], 3) if "leader_s" in leader_out else None,
            commit_s=round(commit_out["commit_s"], 3) if "commit_s" in commit_out else None,
            commit_via=survivors[0],
            decided_by=commit_out.get("decided_by"),
            commit_attempts=int(commit_out.get("attempts", 0)),
            last_refusal=str(commit_out.get("last_refusal", "")),
            restart_ready_s=round(restart_s, 2),
            caught_up_s=round(time.monotonic() - t1, 2),
            leader_after_restart=after,
            loadavg_1m=_loadavg(),
        )
        print(
            f"  kill {n}: new leader {kill.new_leader} agreed in {kill.leader_agreed_s} s, "
            f"scale committed in {kill.commit_s} s; {leader} back in {kill.restart_ready_s} s, "
            f"caught up {kill.caught_up_s} s later",
            flush=True,
        )
        results.append(kill)
    return results


# --- report -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    target: str
    measured: str
    result: str


def _spread(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Median and max of the measured values, and how many runs measured none (gave up)."""
    seen = [v for v in values if v is not None]
    missing = len(values) - len(seen)
    if not seen:
        return None, None, missing
    return round(statistics.median(seen), 3), round(max(seen), 3), missing


def checks(report: dict[str, Any]) -> list[Check]:
    fwd = report["forwarding"]
    found: list[Check] = []
    diff = fwd["p50_difference_ms"]
    found.append(
        Check(
            "forwarding adds (p50)",
            f"<= {TARGET_FORWARD_P50_MS:g} ms",
            f"{diff:+.2f} ms ({fwd['forwarded_p50_ms']:.2f} vs {fwd['direct_p50_ms']:.2f} ms direct)",
            "PASS" if diff <= TARGET_FORWARD_P50_MS else "FAIL",
        )
    )
    peer = fwd["forwarded_peer_pct"]
    found.append(
        Check(
            "forwarded answers with tier peer",
            "100 %",
            f"{peer:.2f} % (served by {fwd['forwarded_served_by']})",
            "PASS" if peer == 100.0 else "FAIL",
        )
    )
    fivexx = fwd["direct_5xx"] + fwd["forwarded_5xx"]
    found.append(
        Check(
            "5xx in the forwarding runs",
            "0",
            f"{fwd['direct_5xx']} direct, {fwd['forwarded_5xx']} forwarded",
            "PASS" if fivexx == 0 else "FAIL",
        )
    )
    fail = report["failover"]
    for key, name in (
        ("leader_agreed_s", "new leader agreed"),
        ("commit_s", "scale committed via a survivor"),
    ):
        median, worst, missing = _spread([k[key] for k in fail["kills"]])
        if median is None or worst is None:
            measured, passed = f"never within {FAILOVER_GIVE_UP_S:g} s", False
        else:
            measured = f"median {median:.3f} s, max {worst:.3f} s over {len(fail['kills'])} kills"
            measured += f" ({missing} gave up)" if missing else ""
            passed = worst <= TARGET_FAILOVER_S and missing == 0
        found.append(
            Check(
                f"after SIGKILL of the leader: {name}", f"<= {TARGET_FAILOVER_S:g} s", measured, _pf(passed)
            )
        )
    over = report["overload"]
    capacity = report["capacity"]["capacity_rps"]
    found.append(
        Check(f"one site's {CAPACITY_SERVICE} capacity (ramp)", "(measured)", f"{capacity:.0f} req/s", "INFO")
    )
    if over is None:
        for name in ("2x capacity: answered within budget", "2x capacity: 5xx"):
            found.append(Check(name, "-", "not run (no capacity measured)", "FAIL"))
    else:
        run: dict[str, Any] = over["run"]
        found.append(
            Check(
                "2x capacity: answered within budget",
                f">= {TARGET_WITHIN_PCT:g} %",
                f"{run['within_budget_pct']:.2f} % of {run['scheduled']} at {over['rate_rps']:.0f} req/s",
                _pf(run["within_budget_pct"] >= TARGET_WITHIN_PCT),
            )
        )
        found.append(
            Check(
                "2x capacity: 5xx",
                "0",
                f"{run['status_5xx']} (unanswered {run['unanswered']})",
                _pf(run["status_5xx"] == 0),
            )
        )
        found.append(
            Check(
                "2x capacity: 200s served by a peer",
                "(reported)",
                f"{run['peer_pct']:.1f} % (by site: {run['served_by']})",
                "INFO",
            )
        )
    return found


def _pf(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def run_rows(runs: Sequence[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in runs:
        rows.append(
            [
                r["label"],
                r["target"],
                f"{r['rate_rps']:g}",
                str(r["generator_procs"]),
                str(r["scheduled"]),
                str(r["ok"]),
                f"{r['within_budget_pct']:.2f}",
                str(r["status_5xx"]),
                str(r["door"].get(r["target"], {}).get("refused", "?")),
                str(r["unanswered"] + sum(r["transport_errors"].values())),
                f"{r['late_200_by_write']}/{r['late_200_by_site']}",
                f"{r['latency_ms']['p50']:.2f}",
                f"{r['latency_ms']['p99']:.2f}",
                f"{r['peer_pct']:.1f}",
                f"{r['send_lag_ms']['p99']:.2f}",
                f"{r['cpu']['machine_busy_pct']:.0f}",
                f"{r['cpu']['others_pct']:.0f}",
                f"{r['loadavg_1m']:.2f}",
            ]
        )
    return rows


RUN_HEADER = [
    "run",
    "to",
    "req/s",
    "gens",
    "sched",
    "200",
    "in budget %",
    "5xx",
    "door 503",
    "lost",
    "late 200 c/s",
    "p50 ms",
    "p99 ms",
    "peer %",
    "send lag p99",
    "busy %",
    "others %",
    "load 1m",
]


def cpu_rows(runs: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    names: list[str] = []
    for r in runs:
        for name in r["cpu"]["core_pct"]:
            if name not in names:
                names.append(name)
    rows = [[r["label"], *(f"{r['cpu']['core_pct'].get(n, 0.0):.0f}" for n in names)] for r in runs]
    return ["run (% of one core)", *names], rows


def print_report(report: dict[str, Any], results: list[Check]) -> None:
    env = report["environment"]
    print(
        f"\ncores: {env['cpu_count']}   python: {env['python']}   {env['platform']}   profile: {report['profile']}"
    )
    print(
        f"machine before start: {env['busy_pct_before']:.0f} % busy, load average {env['loadavg_1m']:.2f} (1 min)"
        f" / {env['loadavg_5m']:.2f} (5 min); at the end: {report['loadavg_end']}"
    )
    print(f"swarm ready in {report['startup_s']:.1f} s; leader {report['first_leader']}")
    fwd = report["forwarding"]
    print(f"\nforwarding overhead: sensor only on site-2, {FORWARD_RATE:g} req/s, budget {BUDGET_MS} ms")
    print(
        "(latency from the scheduled send time; p50/p99 of the 200s; door 503 = refused by the target's"
        " front door before the body was read; lost = unanswered + transport errors; late 200 c/s = 200s"
        " later than the budget after their write / by the site's own timings.total)"
    )
    print(table(RUN_HEADER, run_rows(fwd["runs"])))
    print(
        f"forwarding adds {fwd['p50_difference_ms']:+.2f} ms at p50 (forwarded {fwd['forwarded_p50_ms']:.2f} ms"
        f" - direct {fwd['direct_p50_ms']:.2f} ms; per round: "
        + ", ".join(f"{d:+.2f}" for d in fwd["per_round_difference_ms"])
        + f" ms); p99 {fwd['forwarded_p99_ms']:.2f} vs {fwd['direct_p99_ms']:.2f} ms"
    )
    cap = report["capacity"]
    print(
        f"\none site's capacity for {CAPACITY_SERVICE} ({report['settings']['capacity_cpus']:g} CPU per instance,"
        f" per {report['settings']['cpu_period_ms'] or 100:g} ms, {report['settings']['runtime']} runtime):"
        f" open-loop ramp against site-2 (the only one), "
        f"step {cap['step_s']:g} s, pass = >= {TARGET_WITHIN_PCT:g} % in budget, 0 5xx, 0 lost"
    )
    steps = [s["run"] for s in cap["steps"]]
    print(
        table(
            [*RUN_HEADER, "step"],
            [[*row, _pf(s["passed"])] for row, s in zip(run_rows(steps), cap["steps"], strict=True)],
        )
    )
    print(
        f"capacity: {cap['capacity_rps']:.0f} req/s"
        + (" (ramp ceiling reached)" if cap["ramp_max_reached"] else "")
    )
    over = report["overload"]
    if over is not None:
        run = over["run"]
        print(
            f"\n2 x capacity = {over['rate_rps']:.0f} req/s to site-1, {CAPACITY_SERVICE} one replica per site,"
            f" budget {BUDGET_MS} ms"
        )
        print(table(RUN_HEADER, run_rows([run])))
        print(
            f"200s by tier: {run['tiers']}; by site: {run['served_by']}; 5xx: {run['statuses_5xx'] or 'none'};"
            f" other statuses: "
            f"{run['other_statuses'] or 'none'}; transport errors: {run['transport_errors'] or 'none'}"
        )
        per_tier = ", ".join(
            f"{t}: p50 {v['p50']:.2f} / p99 {v['p99']:.2f} ms" for t, v in run["tier_latency_ms"].items()
        )
        print(f"latency by tier (200s): {per_tier or '-'}")
        doors = "; ".join(
            f"{sid}: admitted {d['admitted']}, refused {d['refused']}, queue-standing intervals "
            f"{d['standing_intervals']}, failing intervals {d['failing_intervals']}"
            for sid, d in run["door"].items()
        )
        print(f"front doors during the run: {doors}")
        print(
            f"sites after the run (overload state, its changes, hedges sent/won, active alerts): {over['sites']}"
        )
        side = over["side_probe"]
        print(
            f"side probe at site-1 during the run (4 req/s besides the load, GET /v1/sites every 0.5 s:"
            f" p50 {side['view_ms']['p50']} ms, max {side['view_ms']['max']} ms, {side['view_ms']['failed']}"
            f" of {side['view_ms']['count']} failed):"
        )
        queue_seen = side["accept_queue"]
        print(
            f"  connections waiting in site-1's accept queue: p50 {queue_seen['p50']}, max {queue_seen['max']}"
            f" ({queue_seen['samples']} looks)"
        )
        for answer, count in side["answers"].items():
            print(f"  {count:4d} x {answer}")
        for peer, seen in side["peers"].items():
            print(
                f"  site-1's load table, {peer}: fresh in {seen['fresh_pct']:.0f} % of {seen['samples']} looks,"
                f" {CAPACITY_SERVICE} with room in {seen['room_pct']:.0f} %, rtt p50 {seen['rtt_ms_p50']} ms"
                f" (max {seen['rtt_ms_max']}), predicted p50 {seen['predicted_ms_p50']} ms"
            )
    all_runs = [*fwd["runs"], *steps, *([over["run"]] if over is not None else [])]
    header, rows = cpu_rows(all_runs)
    print(f"\nCPU by process group during each run (% of one core; the machine has {env['cpu_count']} cores)")
    print(table(header, rows))
    noisy = [r["label"] for r in all_runs if r["cpu"]["others_pct"] >= NOISY_PCT]
    if noisy:
        print(
            f"note: processes outside the bench used >= {NOISY_PCT:g} % of the machine during: {', '.join(noisy)}"
        )
    fail = report["failover"]
    print(
        f"\nfailover: SIGKILL the leader site, {len(fail['kills'])} times; probes every {POLL_S * 1000:g} ms"
    )
    print(
        table(
            [
                "kill",
                "killed",
                "term",
                "new leader",
                "agreed s",
                "committed s",
                "via",
                "decided by",
                "tries",
                "restart ready s",
                "caught up s",
                "load 1m",
            ],
            [
                [
                    str(k["n"]),
                    k["killed"],
                    f"{k['term_before']}->{k['term_after']}",
                    str(k["new_leader"]),
                    "-" if k["leader_agreed_s"] is None else f"{k['leader_agreed_s']:.3f}",
                    "-" if k["commit_s"] is None else f"{k['commit_s']:.3f}",
                    k["commit_via"],
                    str(k["decided_by"]),
                    str(k["commit_attempts"]),
                    f"{k['restart_ready_s']:.1f}",
                    f"{k['caught_up_s']:.1f}",
                    f"{k['loadavg_1m']:.2f}",
                ]
                for k in fail["kills"]
            ],
        )
    )
    print()
    print(
        table(
            ["target", "wanted", "measured", "result"],
            [[c.name, c.target, c.measured, c.result] for c in results],
        )
    )
    print(f"\nwrote {RESULTS_FILE.relative_to(REPO_DIR)} ({report['duration_s']:.0f} s in all)")


# --- main -------------------------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def forwarding_summary(found: dict[str, Any]) -> dict[str, Any]:
    direct, forwarded = found["direct"], found["forwarded"]
    d50, f50 = pooled_ms(direct, 50), pooled_ms(forwarded, 50)
    ok_fwd = sum(r.ok for r in forwarded)
    peers = sum(r.tiers.get("peer", 0) for r in forwarded)
    served: Counter[str] = Counter()
    for r in forwarded:
        served.update(r.served_by)
    return {
        "runs": [run_json(r) for r in found["runs"]],
        "direct_p50_ms": d50,
        "forwarded_p50_ms": f50,
        "p50_difference_ms": round(f50 - d50, 2),
        "per_round_difference_ms": [
            round(f.latency_ms["p50"] - d.latency_ms["p50"], 2)
            for d, f in zip(direct, forwarded, strict=True)
        ],
        "direct_p99_ms": pooled_ms(direct, 99),
        "forwarded_p99_ms": pooled_ms(forwarded, 99),
        "forwarded_peer_pct": round(100 * peers / ok_fwd, 2) if ok_fwd else 0.0,
        "forwarded_served_by": dict(served),
        "direct_5xx": sum(r.status_5xx for r in direct),
        "forwarded_5xx": sum(r.status_5xx for r in forwarded),
    }


def bench(workdir: Path, profile: Profile, kills: int, report: dict[str, Any]) -> None:
    settings = report["settings"]
    swarm = Swarm(workdir, settings["runtime"], settings["capacity_cpus"], settings["cpu_period_ms"])
    gens: Generators | None = None
    progress = Progress(5)
    try:
        started = time.monotonic()
        progress.step("starting 3 sites")
        print("starting 3 sites ...", flush=True)
        report["first_leader"] = swarm.start_all()
        report["startup_s"] = round(time.monotonic() - started, 2)
        gens = Generators(MAX_GENERATOR_PROCS)
        progress.step("forwarding")
        report["forwarding"] = forwarding_summary(forwarding_phase(swarm, gens, profile))
        progress.step("one site's capacity")
        cap = capacity_phase(swarm, gens, profile)
        report["capacity"] = {
            "capacity_rps": cap["capacity_rps"],
            "step_s": profile.ramp_step_s,
            "ramp_max_reached": cap["ramp_max_reached"],
            "steps": [
                {"run": run_json(s["run"]), "passed": s["passed"], "retry": s["retry"]} for s in cap["steps"]
            ],
        }
        progress.step("2x capacity")
        if cap["capacity_rps"] > 0:
            over = overload_phase(swarm, gens, profile, cap["capacity_rps"])
            report["overload"] = {
                "rate_rps": over["rate_rps"],
                "run": run_json(over["run"]),
                "side_probe": over["side_probe"],
                "sites": over["sites"],
            }
        else:
            report["overload"] = None
        gens.stop()
        gens = None
        progress.step("leader kills")
        report["failover"] = {"kills": [asdict(k) for k in failover_phase(swarm, kills)]}
        progress.finish()
    except (RuntimeError, NotReadyError, AssertionError):
        for sid in SITE_IDS:
            print(f"--- {sid} log tail ---\n{swarm.tail(sid)}", file=sys.stderr)
        raise
    finally:
        progress.close()
        if gens is not None:
            gens.stop()
        swarm.stop_all()


def main(argv: list[str] | None = None) -> int:
    if (argv if argv is not None else sys.argv[1:])[:1] == ["generator"]:
        return generator_main()
    parser = argparse.ArgumentParser(description="Benchmark a 3-site swarm on loopback.")
    parser.add_argument("--quick", action="store_true", help="shorter phases (about 2 minutes)")
    parser.add_argument("--kills", type=int, default=None, help="leader kills (default 5; 3 with --quick)")
    parser.add_argument(
        "--runtime",
        choices=("docker", "local"),
        default="docker",
        help="the sites' runtime (docker: each instance's CPU limit is enforced; local: it is not,"
        " so one site's capacity is the machine's)",
    )
    parser.add_argument(
        "--cpus",
        type=float,
        default=CAPACITY_CPUS,
        help=f"CPU limit of each {CAPACITY_SERVICE} instance (default {CAPACITY_CPUS:g})",
    )
    parser.add_argument(
        "--cpu-period-ms",
        type=float,
        default=CPU_PERIOD_MS,
        help=f"CFS period of the containers' CPU limit (default {CPU_PERIOD_MS:g}; 0: the engine's 100 ms)",
    )
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    kills = args.kills if args.kills is not None else profile.kills
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    report: dict[str, Any] = {
        "profile": "quick" if args.quick else "full",
        "settings": asdict(profile)
        | {
            "kills": kills,
            "budget_ms": BUDGET_MS,
            "forward_rate_rps": FORWARD_RATE,
            "runtime": args.runtime,
            "capacity_service": CAPACITY_SERVICE,
            "capacity_cpus": args.cpus,
            "cpu_period_ms": args.cpu_period_ms or None,
            "text_words": TEXT_WORDS,
        },
        "environment": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    report["environment"] |= machine_load()
    print(
        f"cores: {os.cpu_count()}  python: {platform.python_version()}  profile: {report['profile']}  "
        f"load average {report['environment']['loadavg_1m']:.2f}",
        flush=True,
    )
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="mec-swarm-bench-") as tmp:
            bench(Path(tmp), profile, kills, report)
    except KeyboardInterrupt:
        print("\ninterrupted; stopped what the bench started", file=sys.stderr)
        return 130
    report["duration_s"] = round(time.monotonic() - started, 1)
    report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    results = checks(report)
    report["checks"] = [asdict(c) for c in results]
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report, results)
    return 0 if all(c.result != "FAIL" for c in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
