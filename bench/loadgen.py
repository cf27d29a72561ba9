"""A small HTTP/1.1 load generator for `site_bench.py`, run as its own process.

It speaks raw keep-alive HTTP/1.1 over `asyncio.open_connection` (on uvloop when installed):
each request is prebuilt bytes, each response is read by its Content-Length (or chunks), so the
generator spends a few µs per request instead of the ~100 µs an HTTP client library costs.

Two modes, each printing one JSON object on stdout:

* `closed`: `--connections` connections each send a request as soon as the previous answer came
  back, for `--duration` seconds from the wall-clock instant `--start-at` (so several processes
  can run side by side). Counts answers that arrived within the window; records each latency.
* `open`: requests are *scheduled* at fixed instants `start + i / rate`, whatever the answers do.
  A scheduler puts each one on a queue at its instant; `--connections` keep-alive connections
  take them in order. Latency runs from the scheduled instant to the end of the answer, so time
  spent waiting for a free connection, or by a late scheduler, counts (no coordinated omission).
  The scheduler's own lateness is reported apart as `send_lag_us`.

Kinds of request (`--kind`): `hit` (one fixed inference payload with a one-hour
`cache_ttl_s`: a cache hit after the first),
`echo` (the same body, for the echo baseline), `inference-miss` (a unique text each time) and
`sensor` (never cached; 16 sensor ids in turn) and `chat` (operator questions for `--path
/v1/chat`). `--expect-tier` makes an answer without
`"tier":"<tier>"` count as `wrong_tier`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

HIT_PAYLOAD = {"text": "navigate to the nearest gas station"}
HIT_TTL_S = 3600
"""The hit payload is cached for an hour, so that it cannot expire (default 60 s) mid-bench."""
CHAT_MESSAGES = ("what is the cpu load?", "status", "why is sensor slow?", "cache stats")
"""What the `chat` kind sends to `/v1/chat`, in turn."""
REQUEST_TIMEOUT_S = 5.0
DRAIN_TIMEOUT_S = 6.0
_TOTAL_MS = re.compile(rb'"total":([0-9.]+)')


class ProtocolError(Exception):
    """An answer that is not parseable HTTP/1.1."""


def request_body(kind: str, index: int, nonce: str) -> bytes:
    """The JSON body of request number `index` of a given kind."""
    if kind in ("hit", "echo"):
        body = {"service": "inference", "payload": HIT_PAYLOAD, "client": {"kind": "mobile", "id": "bench"}}
        body["cache_ttl_s"] = HIT_TTL_S
    elif kind == "inference-miss":
        text = f"{HIT_PAYLOAD['text']} {nonce}-{index}"
        body = {
            "service": "inference",
            "payload": {"text": text},
            "client": {"kind": "mobile", "id": "bench"},
        }
    elif kind == "sensor":
        payload = {"sensor_id": f"s{index % 16}", "value": round((index % 100) * 0.5, 1)}
        body = {"service": "sensor", "payload": payload, "client": {"kind": "iot", "id": "bench"}}
    elif kind == "chat":
        body = {"message": CHAT_MESSAGES[index % len(CHAT_MESSAGES)]}
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return json.dumps(body, separators=(",", ":")).encode()


def http_request(host: str, port: int, path: str, key: str, body: bytes) -> bytes:
    """One complete POST request, ready to write on a keep-alive connection."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
    )
    if key:
        head += f"Authorization: Bearer {key}\r\n"
    return head.encode() + b"\r\n" + body


@dataclass
class Connection:
    """One keep-alive HTTP/1.1 connection; `exchange` sends one request and reads its answer."""

    host: str
    port: int
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status, length, chunked = parse_head(head)
        if chunked:
            return status, await read_chunked(self.reader)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def parse_head(head: bytes) -> tuple[int, int, bool]:
    """Status, Content-Length and whether the body is chunked, from a response head."""
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 "):
        raise ProtocolError(f"bad status line {lines[0][:40]!r}")
    status = int(lines[0][9:12])
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return status, length, chunked


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body, read to its last chunk."""
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            return b"".join(parts)
        parts.append(data[:-2])


@dataclass
class Tally:
    """What one run saw; printed as JSON."""

    mode: str
    kind: str
    sent: int = 0
    ok: int = 0
    wrong_tier: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    latencies_us: list[int] = field(default_factory=list)
    send_lag_us: list[int] = field(default_factory=list)
    site_total_us: list[int] = field(default_factory=list)

    def error(self, name: str) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str
    key: str
    kind: str
    expect_tier: str | None
    nonce: str

    def request(self, index: int) -> bytes:
        return http_request(
            self.host, self.port, self.path, self.key, request_body(self.kind, index, self.nonce)
        )


def _judge(tally: Tally, target: Target, status: int, body: bytes) -> bool:
    """Count one answer as ok, wrong tier or a status error; true when ok."""
    if status != 200:
        tally.error(f"status_{status}")
        return False
    if target.expect_tier is not None and f'"tier":"{target.expect_tier}"'.encode() not in body:
        tally.wrong_tier += 1
        return False
    found = _TOTAL_MS.search(body)
    if found is not None:
        tally.site_total_us.append(int(float(found.group(1)) * 1000))
    tally.ok += 1
    return True


async def _one(conn: Connection, tally: Tally, target: Target, index: int) -> bool:
    """Send request `index` on `conn`; a transport failure or timeout drops the connection."""
    tally.sent += 1
    try:
        status, body = await asyncio.wait_for(conn.exchange(target.request(index)), REQUEST_TIMEOUT_S)
    except TimeoutError:
        tally.error("timeout")
        conn.close()
        return False
    except (
        OSError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
        ProtocolError,
        ValueError,
    ) as exc:
        tally.error(type(exc).__name__)
        conn.close()
        await asyncio.sleep(0.01)
        return False
    return _judge(tally, target, status, body)


async def _sleep_until(when: float) -> None:
    delay = when - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def run_closed(target: Target, connections: int, duration_s: float, start_at: float) -> Tally:
    """Closed loop: every connection keeps exactly one request in flight until the window ends."""
    tally = Tally("closed", target.kind)
    conns = [Connection(target.host, target.port) for _ in range(connections)]
    for conn in conns:  # connect before the window opens, as wrk does
        conn.reader, conn.writer = await asyncio.open_connection(conn.host, conn.port)
    await _sleep_until(start_at)
    start = time.perf_counter()
    end = start + duration_s
    counter = iter(range(10**9))

    async def loop(conn: Connection) -> None:
        while True:
            sent = time.perf_counter()
            if sent >= end:
                return
            ok = await _one(conn, tally, target, next(counter))
            done = time.perf_counter()
            if ok and done <= end:
                tally.latencies_us.append(int((done - sent) * 1e6))
            elif ok:
                tally.ok -= 1  # answered after the window closed: not counted

    await asyncio.gather(*(loop(conn) for conn in conns))
    tally.duration_s = duration_s
    for conn in conns:
        conn.close()
    return tally


async def run_open(
    target: Target, connections: int, duration_s: float, rate: float, start_at: float
) -> Tally:
    """Open loop at a fixed rate; latency from each request's scheduled instant."""
    tally = Tally("open", target.kind)
    total = int(rate * duration_s)
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    conns = [Connection(target.host, target.port) for _ in range(connections)]
    for conn in conns:
        conn.reader, conn.writer = await asyncio.open_connection(conn.host, conn.port)
    await _sleep_until(start_at)
    start = time.perf_counter()

    async def worker(conn: Connection) -> None:
        while (item := await queue.get()) is not None:
            index, scheduled = item
            if await _one(conn, tally, target, index):
                tally.latencies_us.append(int((time.perf_counter() - scheduled) * 1e6))

    workers = [asyncio.create_task(worker(conn)) for conn in conns]
    for index in range(total):
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tally.send_lag_us.append(max(0, int((time.perf_counter() - scheduled) * 1e6)))
        queue.put_nowait((index, scheduled))
    for _ in workers:
        queue.put_nowait(None)
    _, pending = await asyncio.wait(workers, timeout=DRAIN_TIMEOUT_S)
    for task in pending:
        task.cancel()
    unanswered = total - (tally.ok + tally.wrong_tier + sum(tally.errors.values()))
    if unanswered:
        tally.errors["unanswered"] = unanswered
    tally.duration_s = time.perf_counter() - start
    for conn in conns:
        conn.close()
    return tally


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["closed", "open"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/requests")
    parser.add_argument("--key", default="")
    parser.add_argument("--kind", choices=["hit", "echo", "inference-miss", "sensor", "chat"], required=True)
    parser.add_argument("--expect-tier", choices=["cache", "local"])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--start-at", type=float, default=0.0, help="wall-clock start (time.time())")
    parser.add_argument("--nonce", default="n")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.host.startswith("127."):
        print("loadgen: loopback addresses only", file=sys.stderr)
        return 2
    target = Target(args.host, args.port, args.path, args.key, args.kind, args.expect_tier, args.nonce)
    start_at = args.start_at or time.time()
    if args.mode == "closed":
        run = run_closed(target, args.connections, args.duration, start_at)
    else:
        run = run_open(target, args.connections, args.duration, args.rate, start_at)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            tally = runner.run(run)
    except KeyboardInterrupt:
        return 130
    json.dump(asdict(tally), sys.stdout, separators=(",", ":"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
