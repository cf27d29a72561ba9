"""Client cost of the site→workload call: httpx vs aiohttp vs `agent.upstream.UpstreamPool`.

Run: ``.venv/bin/python bench/upstream_bench.py [--duration S] [--concurrency 1,8,32]``
(about 30 s with the defaults).

A real sensor workload runs as its own process (``python -m workloads.sensor --port N``, as a
site starts it, from the repository root) and this process, on uvloop, sends it
``POST /invoke`` with one sensor reading per request (16 sensors in turn) through each client:

* httpx: an ``httpx.AsyncClient`` pooled like the site's (``max_connections=512``,
  ``max_keepalive_connections=128``), posting like ``agent.dispatch`` does;
* aiohttp: a ``ClientSession`` (when aiohttp is importable; "not installed" otherwise);
* upstream: an ``UpstreamPool`` with its defaults.

For each concurrency (that many workers, each sending its next request when its answer came
back) and each client: a short warm-up, then ``--duration`` seconds measured. It prints the
answers per second and the client process's CPU time per request (``time.process_time()``,
every thread of this process: the loop, the parser, the client library). The workload's CPU
is not counted. On a 2-core machine the workload and the client share the cores, so req/s
also reflect how much CPU the client leaves to the workload. Figures to read, not a gate:
it always exits 0 once it ran.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))  # run as a script: this checkout's packages come first

import httpx  # noqa: E402
from workload_bench import start_workload, stop_workload  # noqa: E402

from agent.upstream import UpstreamPool  # noqa: E402

HOST = "127.0.0.1"
PATH = "/invoke"
REQUEST_TIMEOUT_S = 5.0
WARMUP_S = 0.3
BODIES = [
    json.dumps({"sensor_id": f"pump-{i % 16}", "value": 20.0 + (i % 7) / 10}, separators=(",", ":")).encode()
    for i in range(64)
]

Send = Callable[[bytes], Awaitable[int]]
"""Post one body, return the answer's status."""


@dataclass(frozen=True)
class Row:
    client: str
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.requests / self.wall_s

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / max(self.requests, 1) * 1e6


async def closed_loop(send: Send, concurrency: int, duration_s: float) -> tuple[int, int, float, float]:
    """`concurrency` workers for `duration_s`: (answers, errors, wall s, CPU s)."""
    bodies = itertools.cycle(BODIES)
    counts = [0, 0]
    stop_at = 0.0

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            try:
                status = await send(next(bodies))
            except Exception:
                status = 0
            counts[0 if status == 200 else 1] += 1

    stop_at = time.perf_counter() + WARMUP_S
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    counts[:] = [0, 0]
    cpu, wall = time.process_time(), time.perf_counter()
    stop_at = wall + duration_s
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts[0], counts[1], time.perf_counter() - wall, time.process_time() - cpu


async def measure_httpx(port: int, concurrency: int, duration_s: float) -> Row:
    url = f"http://{HOST}:{port}{PATH}"
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=128)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(REQUEST_TIMEOUT_S)) as client:

        async def send(body: bytes) -> int:
            response = await client.post(url, content=body, headers=headers, timeout=REQUEST_TIMEOUT_S)
            return response.status_code

        return Row("httpx", concurrency, *await closed_loop(send, concurrency, duration_s))


async def measure_aiohttp(port: int, concurrency: int, duration_s: float) -> Row:
    import aiohttp

    url = f"http://{HOST}:{port}{PATH}"
    headers = {"content-type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512), timeout=timeout) as session:

        async def send(body: bytes) -> int:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                return response.status

        return Row("aiohttp", concurrency, *await closed_loop(send, concurrency, duration_s))


async def measure_upstream(port: int, concurrency: int, duration_s: float) -> Row:
    pool = UpstreamPool()
    try:

        async def send(body: bytes) -> int:
            return (await pool.request(HOST, port, PATH, body, REQUEST_TIMEOUT_S)).status

        return Row("upstream", concurrency, *await closed_loop(send, concurrency, duration_s))
    finally:
        await pool.close()


async def run(port: int, concurrencies: Sequence[int], duration_s: float, with_aiohttp: bool) -> list[Row]:
    measures = [measure_httpx, *([measure_aiohttp] if with_aiohttp else []), measure_upstream]
    rows = []
    for concurrency in concurrencies:
        for measure in measures:
            rows.append(await measure(port, concurrency, duration_s))
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Client cost of the site→workload call.")
    parser.add_argument("--duration", type=float, default=2.0, help="measured seconds per row (default 2)")
    parser.add_argument(
        "--concurrency", default="1,8,32", help="comma-separated worker counts (default 1,8,32)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    with_aiohttp = importlib.util.find_spec("aiohttp") is not None
    try:
        import uvloop
    except ImportError:
        print("uvloop is not installed; this bench measures the site's loop (pip install uvloop)")
        return 1
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"python {platform.python_version()}, uvloop {uvloop.__version__}, httpx {httpx.__version__}, "
        f"{os.cpu_count()} CPUs, load average {load}"
    )
    if not with_aiohttp:
        print("aiohttp: not installed (its rows are left out)")
    process, port = start_workload("sensor")
    try:
        rows = uvloop.run(run(port, concurrencies, args.duration, with_aiohttp))
    finally:
        stop_workload(process)
    print(f"\nsensor workload, POST {PATH}, {args.duration:g} s per row after a {WARMUP_S:g} s warm-up\n")
    print(f"{'client':<10} {'conc':>5} {'req/s':>9} {'client CPU µs/req':>18} {'answers':>9} {'errors':>7}")
    for row in rows:
        print(
            f"{row.client:<10} {row.concurrency:>5} {row.rate:>9.0f} {row.cpu_us:>18.1f} "
            f"{row.requests:>9} {row.errors:>7}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
