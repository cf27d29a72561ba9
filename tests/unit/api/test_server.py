"""The connection guard of `api.server` against idle floods, slowloris and slow bodies.

Each test starts a real server (a tiny FastAPI app behind `build_server`) as a child process on a
free port, with a small `max_connections` and short timeouts, and drives it over raw loopback
sockets. The child's RLIMIT_NOFILE is capped at `CHILD_NOFILE`, so that a flood of
`FLOOD` idle connections would exhaust its descriptors if nothing bounded them. No assertion is on
timing: each waits for a condition until a generous deadline (the settings are under a second;
the deadlines are tens of seconds) so that the tests pass on a busy 2-core machine.

Run this file as a script (`python tests/unit/api/test_server.py SPEC`) to start the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import resource
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from fastapi import FastAPI

REPO = Path(__file__).resolve().parents[3]
if __name__ != "__main__":
    from api.launcher import ChildProcess

CHILD_NOFILE = 600
"""Hard and soft RLIMIT_NOFILE of the server child: room for `LIMIT` plus the reserves, not `FLOOD`."""
LIMIT = 32
FLOOD = 700
HEADER_TIMEOUT_S = 0.5
BODY_TIMEOUT_S = 1.0
KEEPALIVE_TIMEOUT_S = 5.0
"""Longer than the header timeout, to tell which one closed a silent connection."""
DEADLINE_S = 20.0
"""How long any condition may take to show: long, for a busy machine; a pass is much quicker."""
START_TIMEOUT_S = 60.0


# --- the child: a tiny app behind build_server --------------------------------------------------


def _child_main(spec: dict[str, Any]) -> None:
    import uvloop

    from api.server import build_server
    from config.settings import Settings

    app = FastAPI()
    settings = Settings(port=0, **spec["settings"])
    server = build_server(app, settings, "warning")

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/echo")
    async def echo(body: dict[str, Any]) -> dict[str, int]:
        """A JSON body, read by FastAPI as the site's routes do (a disconnect becomes a 400)."""
        return {"keys": len(body)}

    released = asyncio.Event()

    @app.get("/hold")
    async def hold() -> dict[str, bool]:
        """Keeps its request in progress until the process gets SIGUSR1."""
        await released.wait()
        return {"held": True}

    @app.get("/guard")
    async def guard() -> dict[str, int]:
        found = getattr(server, "guard", None)
        return found.stats() if found is not None else {}

    async def main() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, released.set)
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if server.started:
            print(f"ready on {server.servers[0].sockets[0].getsockname()[1]}", flush=True)
        await task

    uvloop.run(main())


# --- the parent side ----------------------------------------------------------------------------


def _cap_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (CHILD_NOFILE, CHILD_NOFILE))


@dataclass
class Server:
    """A server child process, read from its `ready on PORT` line; stopped by pid."""

    proc: ChildProcess
    port: int
    log: Path

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=DEADLINE_S)

    def stats(self) -> dict[str, int]:
        """The guard's counters, over a fresh connection (polled until it gets through)."""
        status, body = poll(lambda: request(self, b"GET /guard HTTP/1.1\r\nHost: t\r\n\r\n"))
        assert status == 200
        return dict(json.loads(body))

    def established(self) -> int:
        """TCP connections the server process holds open now (its listener excluded)."""
        conns = psutil.Process(self.proc.pid).net_connections(kind="tcp")
        return sum(1 for conn in conns if conn.status == psutil.CONN_ESTABLISHED)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    with contextlib.ExitStack() as started:
        count = itertools.count()

        def start(**settings: Any) -> Server:
            spec = {
                "settings": {
                    "max_connections": LIMIT,
                    "header_timeout_s": HEADER_TIMEOUT_S,
                    "body_timeout_s": BODY_TIMEOUT_S,
                    "keepalive_timeout_s": KEEPALIVE_TIMEOUT_S,
                    **settings,
                }
            }
            log = tmp_path / f"server{next(count)}.log"
            child = ChildProcess(
                [sys.executable, __file__, json.dumps(spec)],
                name="server",
                env={**os.environ, "PYTHONPATH": str(REPO)},
                cwd=REPO,
                log=log,
                preexec_fn=_cap_nofile,
            )
            started.enter_context(child.start())
            line = child.wait_line("ready on ", START_TIMEOUT_S)
            return Server(child, int(line.split()[-1]), log)

        yield start


def poll(probe: Callable[[], Any], deadline_s: float = DEADLINE_S) -> Any:
    """`probe()`'s first result that is not None and raised no OSError, polled until the deadline."""
    deadline = time.monotonic() + deadline_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except OSError as exc:
            last = exc
        else:
            if result is not None:
                return result
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {deadline_s} s (last error: {last!r})")


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length; raises ConnectionError if the server closes."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed by the server after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server mid-body")
        body += chunk
    return int(head[9:12]), body


def request(server: Server, raw: bytes) -> tuple[int, bytes]:
    """`raw` on a new connection; its response."""
    with server.connect() as sock:
        sock.sendall(raw)
        return read_response(sock)


def closed_by_peer(sock: socket.socket, deadline_s: float = DEADLINE_S) -> bool:
    """Whether the server closes `sock` (EOF or reset) before the deadline; data read is dropped."""
    sock.settimeout(0.1)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


@dataclass
class Flood:
    """Idle TCP connections that never send a byte, opened without blocking."""

    socks: list[socket.socket] = field(default_factory=list)

    def open(self, port: int, count: int, batch: int = 64) -> None:
        """`count` connections, `batch` at a time with a short pause, so that the server's accept
        queue (128 in the child) does not overflow and every one reaches the server soon."""
        for start in range(0, count, batch):
            self._open(port, min(batch, count - start))
            time.sleep(0.02)

    def _open(self, port: int, count: int) -> None:
        pending: list[socket.socket] = []
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            err = sock.connect_ex(("127.0.0.1", port))
            if err not in (0, errno.EINPROGRESS):
                sock.close()
                continue
            pending.append(sock)
        # Wait until the handshakes are done (the server may well evict them right after).
        with selectors.DefaultSelector() as sel:
            for sock in pending:
                sel.register(sock, selectors.EVENT_WRITE)
            waiting = len(pending)
            deadline = time.monotonic() + DEADLINE_S
            while waiting and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0.2):
                    sel.unregister(key.fileobj)
                    waiting -= 1
        self.socks.extend(pending)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.socks.clear()


@pytest.fixture
def flood() -> Iterator[Flood]:
    opened = Flood()
    try:
        yield opened
    finally:
        opened.close()


def closed_enough(server: Server, count: int) -> dict[str, int] | None:
    """The guard's counters once it has closed `count` idle connections (evicted or timed out)."""
    stats = server.stats()
    return stats if stats["evicted"] + stats["header_timeouts"] >= count else None


PING = b"GET /ping HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer test-client-key-0123456789\r\n\r\n"


# --- tests --------------------------------------------------------------------------------------


def test_idle_flood_over_the_limit_does_not_block_a_keyed_client(
    start_server: Callable[..., Server], flood: Flood
) -> None:
    server = start_server()
    flood.open(server.port, FLOOD)  # more than the child has descriptors for

    status, body = poll(lambda: request(server, PING))
    assert (status, json.loads(body)) == (200, {"ok": True})
    stats = poll(lambda: closed_enough(server, FLOOD - LIMIT))
    assert stats["peak"] <= LIMIT
    assert server.established() <= LIMIT
    assert request(server, PING)[0] == 200


def test_connection_that_sends_nothing_is_closed_after_header_timeout(
    start_server: Callable[..., Server],
) -> None:
    server = start_server()
    with server.connect() as sock:
        assert closed_by_peer(sock), "a silent connection stayed open"
    stats = server.stats()
    assert stats["header_timeouts"] >= 1
    assert stats["keepalive_timeouts"] == 0


def test_slowloris_headers_are_cut_off(start_server: Callable[..., Server]) -> None:
    server = start_server()
    dribble = b"X-Slow: " + b"a" * 100  # 0.2 s a byte: 20 s if nothing cuts it off
    with server.connect() as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\n")
        cut = False
        for byte in dribble:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            if closed_by_peer(sock, deadline_s=0.2):
                cut = True
                break
        assert cut, "the server took headers one byte every 0.2 s to the end"
    assert server.stats()["header_timeouts"] >= 1


def test_slow_body_gets_408(start_server: Callable[..., Server]) -> None:
    server = start_server()
    with server.connect() as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"a": "xxxx'
        )
        status, body = read_response(sock)
        assert status == 408
        assert json.loads(body)["error"]["code"] == "body_timeout"
        assert json.loads(body)["error"]["field"] == "body"
        assert closed_by_peer(sock)
    assert server.stats()["body_timeouts"] == 1
    assert "Exception in ASGI application" not in server.stderr()


def test_a_body_in_time_is_answered(start_server: Callable[..., Server]) -> None:
    server = start_server(body_timeout_s=30.0)
    with server.connect() as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n"
            + b'{"a": 1, '
        )
        time.sleep(0.1)
        sock.sendall(b'"b": 2}')
        assert read_response(sock) == (200, b'{"keys":2}')


def test_active_keepalive_connection_is_not_evicted_by_a_flood(
    start_server: Callable[..., Server], flood: Flood
) -> None:
    server = start_server()
    with server.connect() as client:
        for _ in range(FLOOD // 50):
            client.sendall(PING)
            assert read_response(client)[0] == 200
            flood.open(server.port, 50)
        client.sendall(PING)
        assert read_response(client)[0] == 200
    stats = poll(lambda: closed_enough(server, FLOOD - LIMIT))
    assert stats["evicted"] > 0
    assert stats["peak"] <= LIMIT


def test_idle_keepalive_client_outlasts_connections_that_never_sent_a_request(
    start_server: Callable[..., Server], flood: Flood
) -> None:
    server = start_server(keepalive_timeout_s=60.0)
    with server.connect() as client:
        client.sendall(PING)
        assert read_response(client)[0] == 200
        flood.open(server.port, FLOOD)  # the client stays idle, the oldest connection of all
        stats = poll(lambda: closed_enough(server, FLOOD - LIMIT))
        assert stats["evicted"] > 0
        client.sendall(PING)
        assert read_response(client)[0] == 200


def test_new_connection_is_refused_with_503_when_every_connection_is_busy(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(max_connections=8)
    held = [server.connect() for _ in range(8)]
    try:
        for sock in held:
            sock.sendall(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")

        def refused() -> tuple[int, bytes] | None:
            with server.connect() as sock:
                try:
                    status, body = read_response(sock)
                except ConnectionError:
                    return None  # admitted by evicting a held one not yet parsed: not the case sought
                return (status, body) if status == 503 else None

        _, body = poll(refused)
        assert json.loads(body)["error"]["code"] == "too_many_connections"
        os.kill(server.proc.pid, signal.SIGUSR1)
        for sock in held:  # the held requests were not evicted
            assert read_response(sock) == (200, b'{"held":true}')
    finally:
        for sock in held:
            sock.close()
    assert server.stats()["refused"] >= 1


def test_blank_lines_do_not_keep_an_idle_connection_open(start_server: Callable[..., Server]) -> None:
    server = start_server(keepalive_timeout_s=0.5)
    with server.connect() as sock:
        sock.sendall(PING)
        assert read_response(sock)[0] == 200
        sock.sendall(b"\r\n")  # cancels uvicorn's keep-alive timer and starts no request
        assert closed_by_peer(sock)
    assert server.stats()["keepalive_timeouts"] >= 1


def test_plan_limits_keeps_descriptors_free() -> None:
    from api.server import BACKLOG, FD_RESERVE, MIN_BACKLOG, plan_limits

    assert plan_limits(2048, 20000, 40) == (2048, BACKLOG)
    limit, backlog = plan_limits(2048, 1024, 40)  # a common default soft limit
    assert backlog >= MIN_BACKLOG
    assert limit + backlog + FD_RESERVE + 40 <= 1024
    assert plan_limits(LIMIT, CHILD_NOFILE, 40) == (LIMIT, MIN_BACKLOG)  # the tests' child
    assert plan_limits(2048, 100, 40) == (1, MIN_BACKLOG)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        _child_main(json.loads(sys.argv[1]))
