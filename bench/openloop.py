"""Open-loop (and closed-loop) HTTP/1.1 load generator for `overload_bench.py`, run as its own process.

Method
------
* Open loop: this process owns the requests `offset, offset + stride, ...` of a schedule in which
  request `i` is due at `start + i / rate` (so two processes with stride 2 together keep one
  schedule). When a request's instant comes it is written at once on an idle keep-alive
  connection; when none is idle a new connection is opened for it (at most `max_connections`;
  past that bound the request waits for the next connection to come free and the event is
  counted as `saturated`). Nothing waits for an answer before sending the next request, so a
  slow server cannot slow the offered load down (no coordinated omission).
* Each request is prebuilt raw HTTP/1.1 bytes before the start (`loadgen.http_request`); each
  answer is read by its Content-Length or chunks (`loadgen.parse_head`, `loadgen.read_chunked`).
  For every answer it records the status, the latency from the moment the request was written
  to its socket, the latency from its scheduled instant, and for 200s the site's own
  `timings.total`. A request has `timeout_s` (the caller passes budget + 2 s) from its write;
  past that it counts as a timeout and its connection is dropped.
* The generator's own lateness is measured twice: `sched_lag_us` (when the scheduler got to a
  request, against its instant: the generator keeping up or not) and `send_lag_us` (when the
  request was written: also includes opening a connection and waiting at the bound).
* Closed loop: `loadgen.run_closed` (each connection keeps one request in flight), with the
  bodies of this module.

Kinds (`kind`): `sensor`, `game-state` (valid updates with an increasing `seq`; workloads/
game_state.py refuses stale ones with a 200, which is fine here) and `hit` (loadgen's cached
inference payload). With `direct` the body is the payload alone, for a workload's `POST /invoke`.

Run `python bench/openloop.py serve`: it reads one JSON `Command` per line on stdin, runs it and
prints one JSON result per line, until stdin closes (so the driver starts it once). Or once,
from the shell: `python bench/openloop.py open --port 8080 --key KEY --kind sensor --rate 500
--duration 5 --budget-ms 50`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import re
import resource
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from loadgen import (
    Connection,
    ProtocolError,
    Target,
    _loop_factory,
    http_request,
    parse_head,
    read_chunked,
    request_body,
    run_closed,
)

SERVICES = {"sensor": "iot", "game-state": "gaming", "inference": "mobile"}
"""Services this generator sends, with the client kind each one serves."""
KINDS = (*SERVICES, "hit")
IDLE_REUSE_S = 4.0
"""An idle connection older than this is not reused (the site closes idle ones after 5 s)."""
MIN_SLEEP_S = 0.001
"""Shortest sleep of the scheduler (libuv timers count whole ms); due requests go out together."""
DRAIN_EXTRA_S = 0.5
"""After the last instant, answers are awaited for the request timeout plus this."""
_TIMINGS_TOTAL = re.compile(rb'"total":([0-9.eE+-]+)')
_TRANSPORT_ERRORS = (
    OSError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    ProtocolError,
    ValueError,
)


@dataclass(frozen=True)
class Command:
    """One run of the generator, as the driver sends it (JSON) or the command line builds it."""

    mode: str
    port: int
    kind: str
    path: str = "/v1/requests"
    key: str = ""
    direct: bool = False
    budget_ms: int | None = None
    rate: float = 0.0
    duration_s: float = 5.0
    start_at: float = 0.0
    offset: int = 0
    stride: int = 1
    connections: int = 16
    """Closed loop: connections kept busy. Open loop: connections opened before the start."""
    max_connections: int = 1024
    timeout_s: float = 5.0
    seq_base: int = 0
    expect_tier: str | None = None
    host: str = "127.0.0.1"

    @classmethod
    def from_json(cls, text: str) -> Command:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})


# --- bodies ---------------------------------------------------------------------------------------


def payload(kind: str, index: int, seq_base: int = 0) -> dict[str, Any]:
    """The service payload of request number `index`."""
    if kind == "sensor":
        return {"sensor_id": f"s{index % 16}", "value": round((index % 100) * 0.5 + 10.0, 1)}
    if kind == "game-state":
        return {
            "session_id": f"m{index % 16}",
            "player_id": f"p{index % 4}",
            "seq": seq_base + index,
            "state": {"x": float(index * 7 % 1000), "y": float(index * 13 % 1000)},
        }
    if kind == "inference":
        return {"text": f"navigate to charging station {index % 16}"}
    raise ValueError(f"no payload for kind {kind!r}")


def body(command: Command, index: int) -> bytes:
    """The request body of request `index`: a site request, or the bare payload when `direct`."""
    if command.kind == "hit":
        raw = request_body("hit", index, "overload")
        if command.budget_ms is None:
            return raw
        return raw[:-1] + f',"latency_budget_ms":{command.budget_ms}}}'.encode()
    data = payload(command.kind, index, command.seq_base)
    if not command.direct:
        data = {
            "service": command.kind,
            "payload": data,
            "client": {"kind": SERVICES[command.kind], "id": "bench"},
        }
        if command.budget_ms is not None:
            data["latency_budget_ms"] = command.budget_ms
    return json.dumps(data, separators=(",", ":")).encode()


def request(command: Command, index: int) -> bytes:
    """Request `index` as raw HTTP/1.1 bytes."""
    return http_request(command.host, command.port, command.path, command.key, body(command, index))


def site_total_us(answer: bytes) -> int:
    """The site's own `timings.total` of a 200 answer, in µs; -1 when it has none."""
    at = answer.rfind(b'"timings":')
    found = _TIMINGS_TOTAL.search(answer, at) if at >= 0 else None
    return int(float(found.group(1)) * 1000) if found else -1


# --- open loop ------------------------------------------------------------------------------------


@dataclass
class Conn(Connection):
    """A keep-alive connection that knows when it last finished an exchange."""

    last_used: float = 0.0

    def usable(self, now: float) -> bool:
        return (
            self.reader is not None
            and not self.reader.at_eof()
            and self.writer is not None
            and not self.writer.is_closing()
            and now - self.last_used < IDLE_REUSE_S
        )


@dataclass
class OpenTally:
    """What one open-loop run saw; printed as JSON. Lists are per answer unless named otherwise."""

    mode: str = "open"
    scheduled: int = 0
    sent: int = 0
    statuses: list[int] = field(default_factory=list)
    lat_write_us: list[int] = field(default_factory=list)
    lat_sched_us: list[int] = field(default_factory=list)
    site_total_us: list[int] = field(default_factory=list)
    send_lag_us: list[int] = field(default_factory=list)
    """Per request sent: write time minus scheduled instant."""
    sched_lag_us: list[int] = field(default_factory=list)
    """Per request: when the scheduler reached it minus its instant."""
    errors: dict[str, int] = field(default_factory=dict)
    timeouts: int = 0
    cancelled: int = 0
    not_sent: int = 0
    connections_opened: int = 0
    peak_connections: int = 0
    saturated: int = 0
    late_start_us: int = 0
    duration_s: float = 0.0
    cpu_s: float = 0.0

    def error(self, name: str) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1


class OpenLoop:
    """The open-loop engine of one process: schedule, connections, answers."""

    def __init__(self, command: Command) -> None:
        self.command = command
        self.tally = OpenTally()
        total = math.ceil(command.rate * command.duration_s)
        self.slots = list(range(command.offset, total, command.stride))
        self.requests = [request(command, index) for index in self.slots]
        self.tally.scheduled = len(self.slots)
        self.idle: list[Conn] = []
        self.open = 0
        self.pending: deque[tuple[int, float]] = deque()
        self.tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect(self) -> Conn:
        conn = Conn(self.command.host, self.command.port)
        async with asyncio.timeout(self.command.timeout_s):
            conn.reader, conn.writer = await asyncio.open_connection(conn.host, conn.port)
        self.tally.connections_opened += 1
        return conn

    def _opened(self) -> None:
        self.open += 1
        self.tally.peak_connections = max(self.tally.peak_connections, self.open)

    def _dispatch(self, slot: int, scheduled: float) -> None:
        now = time.perf_counter()
        while self.idle:
            conn = self.idle.pop()
            if conn.usable(now):
                self._send(conn, slot, scheduled)
                return
            self._drop(conn, refill=False)
        if self.open < self.command.max_connections:
            self._opened()
            self._spawn(self._connect_and_send(slot, scheduled))
        else:
            self.tally.saturated += 1
            self.pending.append((slot, scheduled))

    async def _connect_and_send(self, slot: int, scheduled: float) -> None:
        try:
            conn = await self._connect()
        except asyncio.CancelledError:
            self.tally.not_sent += 1
            raise
        except (OSError, TimeoutError) as exc:
            self.open -= 1
            self.tally.error(f"connect_{type(exc).__name__}")
            self._refill()
            return
        self._send(conn, slot, scheduled)

    def _send(self, conn: Conn, slot: int, scheduled: float) -> None:
        assert conn.writer is not None
        sent = time.perf_counter()  # before the write: a preemption inside it counts as latency
        try:
            conn.writer.write(self.requests[slot])
        except (OSError, RuntimeError) as exc:  # the transport went away under us
            self.tally.error(f"write_{type(exc).__name__}")
            self._drop(conn)
            return
        self.tally.sent += 1
        self.tally.send_lag_us.append(int((sent - scheduled) * 1e6))
        self._spawn(self._answer(conn, scheduled, sent))

    async def _answer(self, conn: Conn, scheduled: float, sent: float) -> None:
        assert conn.reader is not None
        try:
            async with asyncio.timeout(self.command.timeout_s):
                head = await conn.reader.readuntil(b"\r\n\r\n")
                status, length, chunked = parse_head(head)
                answer = await read_chunked(conn.reader) if chunked else await conn.reader.readexactly(length)
        except TimeoutError:
            self.tally.timeouts += 1
            self._drop(conn)
            return
        except asyncio.CancelledError:
            self.tally.cancelled += 1
            conn.close()
            raise
        except _TRANSPORT_ERRORS as exc:
            self.tally.error(type(exc).__name__)
            self._drop(conn)
            return
        done = time.perf_counter()
        tally = self.tally
        tally.statuses.append(status)
        tally.lat_write_us.append(int((done - sent) * 1e6))
        tally.lat_sched_us.append(int((done - scheduled) * 1e6))
        tally.site_total_us.append(site_total_us(answer) if status == 200 else -1)
        conn.last_used = done
        if b"connection: close" in head.lower():
            self._drop(conn)
        elif self.pending:
            self._send(conn, *self.pending.popleft())
        else:
            self.idle.append(conn)

    def _drop(self, conn: Conn, refill: bool = True) -> None:
        conn.close()
        self.open -= 1
        if refill:
            self._refill()

    def _refill(self) -> None:
        """A connection went away: open one for the oldest request waiting at the bound."""
        if self.pending and self.open < self.command.max_connections:
            self._opened()
            self._spawn(self._connect_and_send(*self.pending.popleft()))

    async def run(self) -> OpenTally:
        command, tally = self.command, self.tally
        for _ in range(min(command.connections, command.max_connections)):
            try:
                conn = await self._connect()
            except (OSError, TimeoutError) as exc:
                tally.error(f"connect_{type(exc).__name__}")
                break
            conn.last_used = time.perf_counter()
            self._opened()
            self.idle.append(conn)
        cpu0 = _cpu_s()
        gc.collect()
        gc.freeze()  # the prebuilt requests and warm connections stay out of the collector's passes
        gc.disable()  # no collector pauses inside the schedule; re-enabled after the drain
        try:
            await self._timed(start_at=command.start_at)
        finally:
            gc.enable()
            gc.unfreeze()
        tally.cpu_s = round(_cpu_s() - cpu0, 3)
        return tally

    async def _timed(self, start_at: float) -> None:
        tally = self.tally
        delay = start_at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tally.late_start_us = max(0, int(-delay * 1e6))
        start = time.perf_counter() - max(0.0, -delay)
        await self._schedule(start)
        await self._drain(start)
        tally.duration_s = round(time.perf_counter() - start, 3)

    async def _schedule(self, start: float) -> None:
        rate, slots, clock = self.command.rate, self.slots, time.perf_counter
        lags = self.tally.sched_lag_us
        k, count = 0, len(slots)
        while k < count:
            now = clock()
            while k < count and start + slots[k] / rate <= now:
                scheduled = start + slots[k] / rate
                lags.append(int((now - scheduled) * 1e6))
                self._dispatch(k, scheduled)
                k += 1
            if k < count:
                # never a shorter sleep than the loop's timer resolution: it would spin a core
                await asyncio.sleep(max(MIN_SLEEP_S, start + slots[k] / rate - clock()))

    async def _drain(self, start: float) -> None:
        last = start + (self.slots[-1] / self.command.rate if self.slots else 0.0)
        deadline = last + self.command.timeout_s + DRAIN_EXTRA_S
        while self.tasks and time.perf_counter() < deadline:
            await asyncio.wait(set(self.tasks), timeout=max(0.0, deadline - time.perf_counter()))
        self.tally.not_sent += len(self.pending)
        self.pending.clear()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=1.0)
        for conn in self.idle:
            conn.close()
        self.idle.clear()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- closed loop ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BodyTarget(Target):
    """loadgen's target with this module's bodies (game-state, direct `/invoke`, budgets)."""

    build: Callable[[int], bytes] = field(default=lambda index: b"")

    def request(self, index: int) -> bytes:
        return self.build(index)


async def closed(command: Command) -> dict[str, Any]:
    target = BodyTarget(
        command.host,
        command.port,
        command.path,
        command.key,
        command.kind,
        command.expect_tier,
        "overload",
        build=lambda index: request(command, command.offset + index * command.stride),
    )
    cpu0 = _cpu_s()
    tally = await run_closed(target, command.connections, command.duration_s, command.start_at)
    result = asdict(tally)
    result["cpu_s"] = round(_cpu_s() - cpu0, 3)
    return result


# --- entry points ---------------------------------------------------------------------------------


async def execute(command: Command) -> dict[str, Any]:
    if not command.host.startswith("127."):
        raise ValueError("openloop: loopback addresses only")
    if command.kind not in KINDS:
        raise ValueError(f"openloop: unknown kind {command.kind!r}")
    if command.mode == "closed":
        return await closed(command)
    if command.mode == "open":
        if command.rate <= 0:
            raise ValueError("openloop: the open loop needs a rate above 0")
        return asdict(await OpenLoop(command).run())
    raise ValueError(f"openloop: unknown mode {command.mode!r}")


async def serve() -> None:
    """One command per stdin line, one JSON result per stdout line, until stdin closes."""
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if not line.strip():
            continue
        try:
            result = await execute(Command.from_json(line))
        except (ValueError, TypeError) as exc:
            result = {"error": str(exc)}
        sys.stdout.write(json.dumps(result, separators=(",", ":")) + "\n")
        sys.stdout.flush()


def _raise_nofile() -> None:
    """Up to the hard limit, so that `max_connections` sockets fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["serve", "open", "closed"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", default="/v1/requests")
    parser.add_argument("--key", default="")
    parser.add_argument("--kind", choices=KINDS, default="sensor")
    parser.add_argument("--direct", action="store_true", help="bare payloads, for a workload's /invoke")
    parser.add_argument("--budget-ms", type=int)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--max-connections", type=int, default=1024)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _raise_nofile()
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            if args.mode == "serve":
                runner.run(serve())
                return 0
            budget = args.budget_ms
            command = Command(
                mode=args.mode,
                port=args.port,
                kind=args.kind,
                path=args.path,
                key=args.key,
                direct=args.direct,
                budget_ms=budget,
                rate=args.rate,
                duration_s=args.duration,
                start_at=time.time() + 0.2,
                connections=args.connections,
                max_connections=args.max_connections,
                timeout_s=(budget or 0) / 1000 + 2.0,
                seq_base=time.time_ns() // 1000,
            )
            result = runner.run(execute(command))
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, separators=(",", ":"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
