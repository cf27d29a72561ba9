"""Connection-flood benchmark: the fast path's latency without and during an idle TCP flood.

Run: `.venv/bin/python bench/conn_flood.py [--flood 19000] [--rate 100] [--duration 10] [--plain]`.

Method
------
1. A site starts in a temporary MEC_DATA_DIR with its embedded defaults (every other MEC_*
   variable of the caller is dropped) and two fixed keys, on 127.0.0.1 and a free port. It runs
   `mec serve` (which serves through `api.server.build_server`). `--plain` runs it instead through
   a launcher (`conn_flood.py plain-site`) that puts back the bare `uvicorn.Config` api/cli.py
   used before, for comparison.
2. Phase "quiet": keyed `POST /v1/requests` (a sensor reading, never cached) at a fixed rate for
   `--duration` seconds over `--connections` keep-alive connections, open loop (each request is
   scheduled at `start + i / rate`; latency counts from that instant, so queueing shows), from
   its own process. Alongside, a "fresh-connection probe" opens a new connection every
   `--probe-interval` seconds for one request: what a client that connects now gets.
3. `--procs` flood processes open `--flood` TCP connections in all (without a key; they never
   send a byte) and hold them; whenever the site closes one they open another, at most
   `--reopen-rate` a second in all, so that the pressure lasts through the phase.
4. Phase "flood": the same load as 2, while the flood holds on.

The site's process is sampled throughout: open descriptors (psutil, 10 times a second) and how
many of them are sockets (/proc/PID/fd, twice a second); its ESTABLISHED TCP connections are
counted once with psutil at the end of the flood phase (that read walks the kernel's whole
socket table, seconds of CPU with the flood open, so not during a measured window).
It prints the sockets and descriptors the site held at most, requests ok/failed, probe
outcomes, and fast-path p50/p99 in both phases with their ratio. Every process it starts is
stopped by pid in a `finally`, also on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import resource
import selectors
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))  # run as a script: this checkout's packages come first

import psutil  # noqa: E402
from loadgen import ProtocolError, parse_head, read_chunked  # noqa: E402

from api.launcher import DEGRADED_PREFIX, READY_PREFIX, ChildProcess  # noqa: E402

if TYPE_CHECKING:
    from site_bench import Children

HOST = "127.0.0.1"
BODY = b'{"service":"sensor","payload":{"sensor_id":"a","value":1},"client":{"kind":"iot","id":"b"}}'
WARMUP_TIMEOUT_S = 20.0
FLOOD_OPEN_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 15.0


# --- the baseline site (`conn_flood.py plain-site`) ------------------------------------------------


def run_plain_site() -> int:
    """`mec serve --host 127.0.0.1 --port 0` on a bare `uvicorn.Config`, as api/cli.py ran it before
    `build_server`: the baseline."""
    import uvicorn

    import api.cli as cli

    def plain_server(app: Any, settings: Any, log_level: str) -> uvicorn.Server:
        return uvicorn.Server(
            uvicorn.Config(
                app,
                host=settings.host,
                port=settings.port,
                log_level=log_level if log_level == "debug" else "warning",
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=10,
            )
        )

    cli.build_server = plain_server  # type: ignore[assignment]
    return cli.main(["serve", "--host", HOST, "--port", "0"])


# --- the keyed load (`conn_flood.py load`) -------------------------------------------------------


@dataclass
class LoadTally:
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_us: list[int] = field(default_factory=list)
    probes_ok: int = 0
    probe_errors: dict[str, int] = field(default_factory=dict)
    probe_latencies_us: list[int] = field(default_factory=list)
    send_lag_max_us: int = 0
    warmup_failed: int = 0
    """Keep-alive connections that got no answer before the window opened."""


def _request(port: int, key: str, close: bool = False) -> bytes:
    head = (
        f"POST /v1/requests HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: {len(BODY)}\r\n"
    )
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + BODY


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
    """Send one request, read its answer; the status."""
    writer.write(raw)
    status, length, chunked = parse_head(await reader.readuntil(b"\r\n\r\n"))
    if chunked:
        await read_chunked(reader)
    else:
        await reader.readexactly(length)
    return status


class KeepAlive:
    """One keep-alive connection of the keyed client; reconnects after a failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def exchange(self, raw: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        return await _exchange(self.reader, self.writer, raw)

    def drop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _error_name(exc: BaseException) -> str:
    return "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__


async def run_load(
    port: int, key: str, rate: float, duration_s: float, connections: int, probe_interval_s: float
) -> LoadTally:
    """Open loop at `rate` over `connections` keep-alive connections, plus fresh-connection probes."""
    tally = LoadTally()
    raw = _request(port, key)
    conns = [KeepAlive(port) for _ in range(connections)]
    # Each connection answers one request before the window opens (retrying), as a client's pool
    # that was already in use would. A connection still without an answer at the deadline goes
    # into the window as it is: its requests fail or reconnect there, and count.
    deadline = time.monotonic() + WARMUP_TIMEOUT_S
    for conn in conns:
        while time.monotonic() < deadline:
            try:
                if await asyncio.wait_for(conn.exchange(raw), REQUEST_TIMEOUT_S) == 200:
                    break
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError, ValueError):
                conn.drop()
            await asyncio.sleep(0.05)
        else:
            tally.warmup_failed += 1

    work: asyncio.Queue[float | None] = asyncio.Queue()

    async def worker(conn: KeepAlive) -> None:
        while (scheduled := await work.get()) is not None:
            tally.sent += 1
            try:
                status = await asyncio.wait_for(conn.exchange(raw), REQUEST_TIMEOUT_S)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError, ValueError) as exc:
                tally.errors[_error_name(exc)] = tally.errors.get(_error_name(exc), 0) + 1
                conn.drop()
                continue
            if status == 200:
                tally.ok += 1
                tally.latencies_us.append(int((time.perf_counter() - scheduled) * 1e6))
            else:
                tally.errors[f"status_{status}"] = tally.errors.get(f"status_{status}", 0) + 1

    async def probe() -> None:
        started = time.perf_counter()
        writer: asyncio.StreamWriter | None = None
        try:
            reader, opened = await asyncio.wait_for(asyncio.open_connection(HOST, port), REQUEST_TIMEOUT_S)
            writer = opened
            status = await asyncio.wait_for(_exchange(reader, opened, _request(port, key, True)), 5.0)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError, ValueError) as exc:
            tally.probe_errors[_error_name(exc)] = tally.probe_errors.get(_error_name(exc), 0) + 1
            return
        finally:
            if writer is not None:
                writer.close()
        if status == 200:
            tally.probes_ok += 1
            tally.probe_latencies_us.append(int((time.perf_counter() - started) * 1e6))
        else:
            tally.probe_errors[f"status_{status}"] = tally.probe_errors.get(f"status_{status}", 0) + 1

    workers = [asyncio.create_task(worker(conn)) for conn in conns]
    probes: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    next_probe = start
    for index in range(int(rate * duration_s)):
        scheduled = start + index / rate
        if (delay := scheduled - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        tally.send_lag_max_us = max(tally.send_lag_max_us, int((time.perf_counter() - scheduled) * 1e6))
        work.put_nowait(scheduled)
        if scheduled >= next_probe:
            probes.append(asyncio.create_task(probe()))
            next_probe += probe_interval_s
    for _ in workers:
        work.put_nowait(None)
    await asyncio.wait([*workers, *probes], timeout=REQUEST_TIMEOUT_S * 2)
    unanswered = int(rate * duration_s) - tally.ok - sum(tally.errors.values())
    if unanswered > 0:
        tally.errors["unanswered"] = unanswered
    for conn in conns:
        conn.drop()
    return tally


def _uvloop_run(main: Coroutine[Any, Any, LoadTally]) -> LoadTally:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


# --- one flood process (`conn_flood.py flood`) ---------------------------------------------------


@dataclass
class FloodTally:
    opened: int = 0
    connect_errors: dict[str, int] = field(default_factory=dict)
    closed_by_site: int = 0
    answered: int = 0
    """Connections on which the site wrote something (a 503 refusal) before closing."""
    held_max: int = 0


def run_flood(port: int, count: int, reopen_rate: float) -> FloodTally:
    """Hold `count` idle connections; reopen those the site closes at `reopen_rate` a second."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    tally = FloodTally()
    sel = selectors.DefaultSelector()

    def open_one() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex((HOST, port))
        if err not in (0, errno.EINPROGRESS):
            name = errno.errorcode.get(err, str(err))
            tally.connect_errors[name] = tally.connect_errors.get(name, 0) + 1
            sock.close()
            return
        sel.register(sock, selectors.EVENT_READ)
        tally.opened += 1

    def reap(timeout: float) -> int:
        closed = 0
        for key, _ in sel.select(timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if sock.recv(4096):
                    tally.answered += 1
            except OSError:
                pass
            sel.unregister(sock)
            sock.close()
            closed += 1
        tally.closed_by_site += closed
        return closed

    def held() -> int:
        return len(sel.get_map())

    try:
        for index in range(count):
            if stop.is_set():
                break
            open_one()
            if index % 200 == 199:
                reap(0.0)
                tally.held_max = max(tally.held_max, held())
                time.sleep(0.005)  # let the site's accept loop keep pace with the SYNs
        print(f"opened {tally.opened}", flush=True)
        owed = count - held()
        tokens, last = 0.0, time.monotonic()
        while not stop.is_set():
            owed += reap(0.05)
            now = time.monotonic()
            tokens = min(tokens + (now - last) * reopen_rate, max(reopen_rate, 1.0))
            last = now
            while owed > 0 and tokens >= 1.0:
                open_one()
                owed -= 1
                tokens -= 1.0
            tally.held_max = max(tally.held_max, held())
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()
    return tally


# --- the benchmark -------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Most descriptors and sockets the site process held, per phase (cheap reads of /proc).

    `psutil.Process.net_connections` walks the kernel's whole socket table, which takes seconds
    of CPU with ~20,000 sockets open on the machine: it would load the 2 cores under test. So
    the sampler counts the site's descriptors (`num_fds`, 10 times a second) and those of them
    that are sockets (twice a second); `established()` takes the exact ESTABLISHED count once,
    outside the measured windows.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.phase = "start"
        self.fds: dict[str, int] = {}
        self.sockets: dict[str, int] = {}
        self.machine_busy: dict[str, list[float]] = {}
        """Whole-machine CPU busy % (all cores), once a second, per phase."""
        self.done = threading.Event()

    def count_sockets(self) -> int:
        count = 0
        fd_dir = f"/proc/{self.proc.pid}/fd"
        for name in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                count += os.readlink(f"{fd_dir}/{name}").startswith("socket:")
        return count

    def established(self) -> int:
        conns = self.proc.net_connections(kind="tcp")
        return sum(1 for conn in conns if conn.status == psutil.CONN_ESTABLISHED)

    def run(self) -> None:
        tick = 0
        psutil.cpu_percent()
        while not self.done.is_set():
            try:
                phase = self.phase
                self.fds[phase] = max(self.fds.get(phase, 0), self.proc.num_fds())
                if tick % 5 == 0:
                    self.sockets[phase] = max(self.sockets.get(phase, 0), self.count_sockets())
                if tick % 10 == 9:
                    self.machine_busy.setdefault(phase, []).append(psutil.cpu_percent())
            except (psutil.Error, OSError):
                return
            tick += 1
            self.done.wait(0.1)


def _percentile(values: list[int], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))] / 1000.0


def _load(children: Children, port: int, key: str, args: argparse.Namespace) -> LoadTally:
    cmd = [sys.executable, __file__, "load", "--port", str(port), "--key", key]
    cmd += ["--rate", str(args.rate), "--duration", str(args.duration)]
    cmd += ["--connections", str(args.connections), "--probe-interval", str(args.probe_interval)]
    proc = children.spawn("load", cmd, pipe_stdout=True, cwd=REPO_DIR)
    out = proc.communicate(timeout=args.duration + WARMUP_TIMEOUT_S + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"the load generator failed with exit code {proc.returncode}")
    return LoadTally(**json.loads(out))


def _fmt_errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(errors.items())) or "none"


def bench(args: argparse.Namespace) -> int:
    from site_bench import Children, spawn_site, wait_site  # the bench's helpers (its children import less)

    children = Children()
    workdir = Path(tempfile.mkdtemp(prefix="mec-conn-flood-"))
    sampler: Sampler | None = None
    load_before = os.getloadavg()
    try:
        plain = [sys.executable, __file__, "plain-site"] if args.plain else None
        site = spawn_site(children, workdir, {"PYTHONPATH": str(REPO_DIR)}, plain)
        wait_site(site, (READY_PREFIX, DEGRADED_PREFIX))
        assert site.site is not None
        port, client_key = site.port, site.key
        nofile = psutil.Process(site.pid).rlimit(psutil.RLIMIT_NOFILE)
        wiring = "bare uvicorn.Config (baseline)" if args.plain else "`mec serve` (api.server.build_server)"
        print(f"site pid {site.pid} on {site.site.url}: {wiring}; {site.site.ready_line.split(' on ')[0]}")
        print(f"site RLIMIT_NOFILE soft/hard: {nofile[0]}/{nofile[1]}")
        sampler = Sampler(site.pid)
        sampler.start()

        sampler.phase = "quiet"
        quiet = _load(children, port, client_key, args)

        sampler.phase = "flood-open"
        share = [
            args.flood // args.procs + (1 if n < args.flood % args.procs else 0) for n in range(args.procs)
        ]
        floods: list[ChildProcess] = []
        started = time.monotonic()
        for count in share:
            cmd = [sys.executable, __file__, "flood", "--port", str(port), "--count", str(count)]
            cmd += ["--reopen-rate", str(args.reopen_rate / args.procs)]
            floods.append(children.spawn("flood", cmd, cwd=REPO_DIR))
        for proc in floods:
            proc.wait_line("opened ", FLOOD_OPEN_TIMEOUT_S)
        open_s = time.monotonic() - started

        sampler.phase = "flood"
        during = _load(children, port, client_key, args)

        sampler.phase = "end"
        established_end = sampler.established()  # the flood still on, the load done
        flood_totals = FloodTally()
        for proc in floods:
            proc.stop(STOP_TIMEOUT_S)
            part = FloodTally(**json.loads(proc.wait_line("{", 10)))
            flood_totals.opened += part.opened
            flood_totals.closed_by_site += part.closed_by_site
            flood_totals.answered += part.answered
            flood_totals.held_max += part.held_max
            for name, count in part.connect_errors.items():
                flood_totals.connect_errors[name] = flood_totals.connect_errors.get(name, 0) + count
        alive = site.proc.running
    finally:
        if sampler is not None:
            sampler.done.set()
        children.stop_all()

    def row(name: str, tally: LoadTally) -> str:
        p50, p99 = _percentile(tally.latencies_us, 50), _percentile(tally.latencies_us, 99)
        probes = len(tally.probe_latencies_us) + sum(tally.probe_errors.values())
        return (
            f"{name:<8} ok {tally.ok:>5}/{tally.sent:<5} failed {sum(tally.errors.values()):>4} "
            f"({_fmt_errors(tally.errors)})  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
            f"max {max(tally.latencies_us, default=0) / 1000:7.2f} ms  "
            f"fresh-connection probes ok {tally.probes_ok}/{probes} ({_fmt_errors(tally.probe_errors)})"
            + (f"  [{tally.warmup_failed} connections unanswered at warm-up]" if tally.warmup_failed else "")
        )

    assert sampler is not None
    print(
        f"\nflood: {args.flood} idle connections from {args.procs} processes, opened in {open_s:.1f} s; "
        f"reopened at <= {args.reopen_rate:g}/s as the site closed them"
    )
    print(
        f"  connections opened {flood_totals.opened}, closed by the site {flood_totals.closed_by_site} "
        f"(with a 503 first: {flood_totals.answered}), held at most {flood_totals.held_max} "
        f"(client side), connect errors: {_fmt_errors(flood_totals.connect_errors)}"
    )
    print("\nsite process (psutil, /proc): most sockets / open descriptors held")
    for phase in ("quiet", "flood-open", "flood"):
        print(f"  {phase:<10} {sampler.sockets.get(phase, 0):>6} / {sampler.fds.get(phase, 0):>6}")
    print(f"  ESTABLISHED TCP connections at the end of the flood phase: {established_end}")
    busy = {phase: sum(v) / len(v) for phase, v in sampler.machine_busy.items() if v}
    print(
        f"\nmachine ({psutil.cpu_count()} cores): load average {load_before[0]:.2f} before the start; "
        f"CPU busy {busy.get('quiet', 0):.0f} % in the quiet phase, {busy.get('flood', 0):.0f} % in the flood phase"
    )
    print(
        f"\nkeyed fast path, {args.rate:g} req/s open loop for {args.duration:g} s on {args.connections} keep-alive connections"
    )
    print(row("quiet", quiet))
    print(row("flood", during))
    q50, q99 = _percentile(quiet.latencies_us, 50), _percentile(quiet.latencies_us, 99)
    f50, f99 = _percentile(during.latencies_us, 50), _percentile(during.latencies_us, 99)
    print(f"ratio flood/quiet: p50 x{f50 / q50:.2f}  p99 x{f99 / q99:.2f}")
    print(f"site still running at the end: {alive}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("plain-site", help="(internal) run the site on a bare uvicorn.Config")
    load = sub.add_parser("load", help="(internal) the keyed open-loop client")
    load.add_argument("--port", type=int, required=True)
    load.add_argument("--key", required=True)
    load.add_argument("--rate", type=float, default=100.0)
    load.add_argument("--duration", type=float, default=10.0)
    load.add_argument("--connections", type=int, default=8)
    load.add_argument("--probe-interval", type=float, default=0.5)
    flood = sub.add_parser("flood", help="(internal) one flood process")
    flood.add_argument("--port", type=int, required=True)
    flood.add_argument("--count", type=int, required=True)
    flood.add_argument("--reopen-rate", type=float, default=250.0)
    parser.add_argument("--flood", type=int, default=19_000, help="idle connections in all")
    parser.add_argument("--procs", type=int, default=4, help="flood processes")
    parser.add_argument("--reopen-rate", type=float, default=1000.0, help="reopened connections/s in all")
    parser.add_argument("--rate", type=float, default=100.0, help="keyed requests/s")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--connections", type=int, default=8, help="keyed keep-alive connections")
    parser.add_argument("--probe-interval", type=float, default=0.5, help="s between fresh-connection probes")
    parser.add_argument("--plain", action="store_true", help="run the site on a bare uvicorn.Config")
    return parser


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "plain-site":
        return run_plain_site()
    if args.command == "load":
        tally = _uvloop_run(
            run_load(args.port, args.key, args.rate, args.duration, args.connections, args.probe_interval)
        )
        print(json.dumps(asdict(tally), separators=(",", ":")))
        return 0
    if args.command == "flood":
        print(json.dumps(asdict(run_flood(args.port, args.count, args.reopen_rate))), flush=True)
        return 0
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return bench(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
