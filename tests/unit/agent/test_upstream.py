"""`agent.upstream.UpstreamPool` over real loopback sockets, against asyncio servers scripted here.

Each `Server` runs its handler once per accepted connection; the handler reads requests and
writes whatever bytes the test needs (keep-alive answers, chunks, garbage, resets), and the
server counts connections, requests and the connections the client closed. Nothing is mocked,
and no test waits a fixed time: each polls for its condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from agent.upstream import (
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
)
from tests.support.workloads import ScriptedWorkload
from tools.runtimes.base import free_port

HOST = "127.0.0.1"
TIMEOUT_S = 10.0
"""The exchange timeout of tests that do not test timeouts: far beyond any loopback answer."""


async def until(condition: Callable[[], bool], deadline_s: float = 5.0) -> None:
    """Poll `condition` until it holds; fail after `deadline_s`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not condition():
        if loop.time() > end:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.005)


def response(body: bytes, status: int = 200, headers: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n%b\r\n%b" % (status, len(body), headers, body)


class Peer:
    """The server's side of one connection."""

    def __init__(
        self, server: Server, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ):
        self.server = server
        self.index = index
        """0 for the server's first connection, 1 for the next, ..."""
        self.reader = reader
        self.writer = writer
        self.requests = 0

    async def read_request(self) -> bytes | None:
        """The next request's body; None when the client closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        self.requests += 1
        self.server.requests += 1
        self.server.heads.append(head)
        return body

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_client_closes(self) -> None:
        """Read to EOF (or reset): the client closed the connection."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass
        self.server.client_closes += 1

    def reset(self) -> None:
        """Close with a TCP reset (SO_LINGER 0) instead of a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Handler = Callable[[Peer], Awaitable[None]]


class Server:
    """An asyncio TCP server on a loopback port that runs `handler` for each connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.port = 0
        self.connections = 0
        self.requests = 0
        self.client_closes = 0
        self.heads: list[bytes] = []
        self.release = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, HOST, 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self.release.set()
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(self, self.connections, reader, writer)
        self.connections += 1
        try:
            await self.handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def echo(peer: Peer) -> None:
    """Keep-alive: answer each request with its own body; count the client's close."""
    while (body := await peer.read_request()) is not None:
        await peer.send(response(body))
    peer.server.client_closes += 1


@contextlib.asynccontextmanager
async def pool_of(**options: Any) -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool(**options)
    try:
        yield pool
    finally:
        await pool.close()


async def post(
    pool: UpstreamPool, server: Server, body: bytes = b"{}", timeout_s: float = TIMEOUT_S
) -> UpstreamResponse:
    return await pool.post(HOST, server.port, "/invoke", body, timeout_s)


# -- keep-alive and framing ----------------------------------------------------------------------


async def test_sequential_requests_share_one_keep_alive_connection() -> None:
    async with Server(echo) as server, pool_of() as pool:
        for i in range(50):
            answer = await post(pool, server, b'{"i":%d}' % i)
            assert answer == UpstreamResponse(200, b'{"i":%d}' % i)
        assert server.connections == 1
        stats = pool.stats()
        assert (stats["created"], stats["reused"], stats["open"], stats["idle"]) == (1, 49, 1, 1)


async def test_request_head_names_the_target_host_type_and_length() -> None:
    async with Server(echo) as server, pool_of() as pool:
        await pool.request(HOST, server.port, "/invoke?x=1", b"abc", TIMEOUT_S, content_type=b"text/plain")
        lines = server.heads[0].split(b"\r\n")
        assert lines[0] == b"POST /invoke?x=1 HTTP/1.1"
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:] if line)}
        assert headers == {
            b"host": f"{HOST}:{server.port}".encode(),
            b"content-type": b"text/plain",
            b"content-length": b"3",
        }


@pytest.mark.parametrize("path", ["invoke", "/in voke", "/in\r\nX: 1", "/é"])
async def test_a_path_that_cannot_go_on_the_wire_is_refused_before_sending(path: str) -> None:
    async with pool_of() as pool:
        with pytest.raises(ValueError):
            pool.request(HOST, 1, path, b"", TIMEOUT_S)
        assert (pool.stats()["created"], pool.stats()["hosts"]) == (0, 0)


async def test_concurrent_requests_each_get_their_own_body() -> None:
    async def jittery_echo(peer: Peer) -> None:
        while (body := await peer.read_request()) is not None:
            await asyncio.sleep(random.random() / 200)
            await peer.send(response(body))

    async with Server(jittery_echo) as server, pool_of() as pool:
        for _ in range(2):  # the second round runs on the connections the first left idle, and more
            bodies = [json.dumps({"i": i, "pad": "x" * (i % 50)}).encode() for i in range(200)]
            futures = [pool.request(HOST, server.port, "/invoke", body, TIMEOUT_S) for body in bodies]
            answers = await asyncio.gather(*futures)
            assert [a.body for a in answers] == bodies
        stats = pool.stats()
        assert stats["idle"] <= 64
        assert stats["open"] == stats["idle"]


async def test_concurrent_requests_to_a_scripted_workload_are_not_mixed() -> None:
    async with ScriptedWorkload() as workload, pool_of(connect_timeout_s=5.0) as pool:
        futures = [
            pool.request(
                HOST, workload.port, "/invoke", b'{"mode":"wait","ms":%d,"i":%d}' % (i % 5, i), TIMEOUT_S
            )
            for i in range(50)
        ]
        answers = await asyncio.gather(*futures)
        assert [json.loads(a.body)["echo"]["i"] for a in answers] == list(range(50))


async def test_chunked_response_is_joined_and_the_connection_reused() -> None:
    async def chunked(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for piece in (b"hello", b", ", b"chunked world"):
                await peer.send(b"%x\r\n%b\r\n" % (len(piece), piece))
            await peer.send(b"0\r\n\r\n")

    async with Server(chunked) as server, pool_of() as pool:
        for _ in range(3):
            assert (await post(pool, server)).body == b"hello, chunked world"
        assert server.connections == 1


async def test_close_delimited_response_is_read_to_the_end() -> None:
    async def until_close(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\npart one, ")
        await peer.send(b"part two")
        peer.writer.close()

    async with Server(until_close) as server, pool_of() as pool:
        assert (await post(pool, server)).body == b"part one, part two"
        assert (await post(pool, server)).body == b"part one, part two"
        assert server.connections == 2
        assert pool.stats()["reused"] == 0


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_a_body_cut_short_by_the_close_is_closed_not_a_short_answer(head: bytes) -> None:
    async def truncated(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(head + b"abc")
        peer.writer.close()

    async with Server(truncated) as server, pool_of() as pool:
        with pytest.raises(UpstreamClosed):
            await post(pool, server)


async def test_interim_100_continue_is_skipped() -> None:
    async def with_continue(peer: Peer) -> None:
        while (body := await peer.read_request()) is not None:
            await peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            await peer.send(response(body))

    async with Server(with_continue) as server, pool_of() as pool:
        assert (await post(pool, server, b"one")).body == b"one"
        assert (await post(pool, server, b"two")).body == b"two"
        assert server.connections == 1


async def test_error_statuses_are_answers_not_errors() -> None:
    async def unavailable(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(response(b'{"error":"busy"}', status=503))

    async with Server(unavailable) as server, pool_of() as pool:
        assert await post(pool, server) == UpstreamResponse(503, b'{"error":"busy"}')
        assert await post(pool, server) == UpstreamResponse(503, b'{"error":"busy"}')
        assert server.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        response(b"bye", headers=b"connection: close\r\n"),
        b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nbye",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_a_connection_the_response_closes_is_not_reused(answer: bytes) -> None:
    async def answers_then_waits(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(answer)
        peer.server.client_closes += 1

    async with Server(answers_then_waits) as server, pool_of() as pool:
        assert (await post(pool, server)).body == b"bye"
        assert (await post(pool, server)).body == b"bye"
        assert server.connections == 2
        await until(lambda: server.client_closes == 2)
        assert pool.stats()["open"] == 0


async def test_bytes_after_a_complete_response_deliver_it_but_drop_the_connection() -> None:
    async def doubled(peer: Peer) -> None:
        while (body := await peer.read_request()) is not None:
            await peer.send(response(body) + response(b"again"))
        peer.server.client_closes += 1

    async with Server(doubled) as server, pool_of() as pool:
        assert (await post(pool, server, b"first")).body == b"first"
        assert (await post(pool, server, b"second")).body == b"second"
        assert server.connections == 2


# -- stale keep-alive connections ------------------------------------------------------------------


async def test_an_idle_connection_the_server_closes_leaves_the_pool_at_once() -> None:
    async def answers_once(peer: Peer) -> None:
        body = await peer.read_request()
        assert body is not None
        await peer.send(response(body))
        peer.writer.close()

    async with Server(answers_once) as server, pool_of() as pool:
        assert (await post(pool, server, b"1")).body == b"1"
        await until(lambda: pool.stats()["open"] == 0)
        assert (await post(pool, server, b"2")).body == b"2"
        assert pool.stats()["stale_retries"] == 0
        assert server.connections == 2


async def test_a_reused_connection_closed_before_any_answer_is_retried_on_a_fresh_one() -> None:
    async def drops_second_request(peer: Peer) -> None:
        body = await peer.read_request()
        assert body is not None
        await peer.send(response(body))
        await peer.read_request()  # the server "closed it while idle": it answers nothing
        peer.writer.close()

    async with Server(drops_second_request) as server, pool_of() as pool:
        assert (await post(pool, server, b"1")).body == b"1"
        assert (await post(pool, server, b"2")).body == b"2"
        assert server.connections == 2
        assert pool.stats()["stale_retries"] == 1


async def test_the_stale_retry_happens_once() -> None:
    async def first_connection_answers_once(peer: Peer) -> None:
        await peer.read_request()
        if peer.index == 0:
            await peer.send(response(b"ok"))
            await peer.read_request()
        peer.reset()

    async with Server(first_connection_answers_once) as server, pool_of() as pool:
        assert (await post(pool, server)).body == b"ok"
        with pytest.raises(UpstreamClosed):
            await post(pool, server)
        assert server.connections == 2
        assert pool.stats()["stale_retries"] == 1


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_a_fresh_connection_lost_before_any_answer_is_closed(how: str) -> None:
    async def hangs_up(peer: Peer) -> None:
        await peer.read_request()
        if how == "reset":
            peer.reset()
        else:
            peer.writer.close()

    async with Server(hangs_up) as server, pool_of() as pool:
        with pytest.raises(UpstreamClosed):
            await post(pool, server)
        assert server.connections == 1
        stats = pool.stats()
        assert (stats["stale_retries"], stats["resets"], stats["open"]) == (0, 1, 0)


# -- connect failures -------------------------------------------------------------------------------


async def test_a_refused_port_is_a_connect_error_without_waiting_for_the_timeout() -> None:
    async with pool_of(connect_timeout_s=60.0) as pool:
        async with asyncio.timeout(30):  # a guard: refused connects fail at once
            with pytest.raises(UpstreamConnectError):
                await pool.post(HOST, free_port(), "/invoke", b"{}", 60.0)
        stats = pool.stats()
        assert (stats["connect_errors"], stats["open"], stats["hosts"]) == (1, 0, 0)


@contextlib.contextmanager
def unanswered_listener() -> Any:
    """A port whose accept queue is full: further connects get no SYN-ACK and hang."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # backlog 0 still queues one; fill it and then some
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex((HOST, port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.parametrize("limit", ["connect_timeout_s", "timeout_s"])
async def test_a_connect_that_does_not_complete_is_a_connect_error(limit: str) -> None:
    connect_timeout_s, timeout_s = (0.05, TIMEOUT_S) if limit == "connect_timeout_s" else (TIMEOUT_S, 0.05)
    with unanswered_listener() as port:
        async with pool_of(connect_timeout_s=connect_timeout_s) as pool:
            with pytest.raises(UpstreamConnectError):
                await pool.post(HOST, port, "/invoke", b"{}", timeout_s)
            stats = pool.stats()
            assert (stats["connect_errors"], stats["timeouts"], stats["open"]) == (1, 0, 0)


async def test_more_connections_than_the_limit_is_pool_full() -> None:
    async def held(peer: Peer) -> None:
        while (body := await peer.read_request()) is not None:
            await peer.server.release.wait()
            await peer.send(response(body))

    async with Server(held) as server, pool_of(max_connections_per_host=2) as pool:
        first = pool.request(HOST, server.port, "/invoke", b"1", TIMEOUT_S)
        second = pool.request(HOST, server.port, "/invoke", b"2", TIMEOUT_S)
        with pytest.raises(UpstreamConnectError, match="pool full"):
            await pool.post(HOST, server.port, "/invoke", b"3", TIMEOUT_S)
        server.release.set()
        assert [(await first).body, (await second).body] == [b"1", b"2"]
        assert (await post(pool, server, b"4")).body == b"4"


# -- timeouts, callers that stop waiting, cancellation ----------------------------------------------


async def test_a_server_slower_than_the_timeout_is_a_timeout_and_its_connection_dropped() -> None:
    async def first_connection_never_answers(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_request()
            await peer.until_client_closes()
        else:
            await echo(peer)

    async with Server(first_connection_never_answers) as server, pool_of() as pool:
        with pytest.raises(UpstreamTimeout):
            await post(pool, server, timeout_s=0.05)
        await until(lambda: server.client_closes == 1)
        assert (await post(pool, server, b"next")).body == b"next"
        assert server.connections == 2
        stats = pool.stats()
        assert (stats["timeouts"], stats["reused"]) == (1, 0)


async def test_a_timeout_on_a_reused_connection_drops_it_too() -> None:
    async def second_request_unanswered(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(response(b"ok"))
        if peer.index == 0:
            await peer.read_request()
            await peer.until_client_closes()
        else:
            await echo(peer)

    async with Server(second_request_unanswered) as server, pool_of() as pool:
        await post(pool, server)
        with pytest.raises(UpstreamTimeout):
            await post(pool, server, timeout_s=0.05)
        await until(lambda: server.client_closes == 1)
        assert pool.stats()["open"] == 0


async def test_no_time_left_fails_at_once_without_sending() -> None:
    async with Server(echo) as server, pool_of() as pool:
        with pytest.raises(UpstreamTimeout):
            await post(pool, server, timeout_s=0)
        assert server.connections == 0
        assert pool.stats()["hosts"] == 0


async def test_a_caller_that_stops_waiting_still_gets_the_full_response_later() -> None:
    async def held(peer: Peer) -> None:
        while (body := await peer.read_request()) is not None:
            await peer.server.release.wait()
            await peer.send(response(body))

    async with Server(held) as server, pool_of() as pool:
        future = pool.request(HOST, server.port, "/invoke", b"late", TIMEOUT_S)
        done, pending = await asyncio.wait((future,), timeout=0.01)
        assert (done, pending) == (set(), {future})
        server.release.set()
        assert (await future).body == b"late"
        assert pool.stats()["idle"] == 1
        assert (await post(pool, server, b"again")).body == b"again"
        assert server.connections == 1


async def test_cancelling_the_future_closes_its_connection() -> None:
    async def never_answers(peer: Peer) -> None:
        await peer.read_request()
        await peer.until_client_closes()

    async with Server(never_answers) as server, pool_of() as pool:
        future = pool.request(HOST, server.port, "/invoke", b"{}", TIMEOUT_S)
        await until(lambda: server.requests == 1)
        assert future.cancel()
        await until(lambda: server.client_closes == 1)
        stats = pool.stats()
        assert (stats["open"], stats["idle"], stats["cancelled"]) == (0, 0, 1)


async def test_cancelling_a_task_awaiting_post_closes_the_connection() -> None:
    async def never_answers(peer: Peer) -> None:
        await peer.read_request()
        await peer.until_client_closes()

    async with Server(never_answers) as server, pool_of() as pool:
        task = asyncio.ensure_future(post(pool, server))
        await until(lambda: server.requests == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: server.client_closes == 1)
        assert pool.stats()["open"] == 0


async def test_cancelling_while_connecting_opens_nothing() -> None:
    with unanswered_listener() as port:
        async with pool_of(connect_timeout_s=TIMEOUT_S) as pool:
            future = pool.request(HOST, port, "/invoke", b"{}", TIMEOUT_S)
            assert pool.stats()["open"] == 1
            future.cancel()
            assert pool.stats()["open"] == 0


# -- bad responses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        response(b"x" * 5000),
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"400\r\n"
        + b"x" * 1024
        + b"\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 5000,
    ],
    ids=["content-length", "chunked", "close-delimited"],
)
async def test_a_response_over_the_limit_is_a_protocol_error(answer: bytes) -> None:
    async def oversize(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(answer)
        await peer.until_client_closes()

    async with Server(oversize) as server, pool_of(max_response_bytes=1000) as pool:
        with pytest.raises(UpstreamProtocolError, match="over 1000 bytes"):
            await post(pool, server)
        await until(lambda: server.client_closes == 1)
        assert pool.stats()["open"] == 0


async def test_a_response_at_the_limit_is_delivered() -> None:
    async def at_limit(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(response(b"x" * 1000))

    async with Server(at_limit) as server, pool_of(max_response_bytes=1000) as pool:
        assert len((await post(pool, server)).body) == 1000


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTZ/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi",
        b"HTTP/1.1 abc OK\r\ncontent-length: 2\r\n\r\nhi",
        b"hello world\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nhi",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
    ],
    ids=["protocol-name", "status-code", "no-status-line", "two-lengths", "upgrade"],
)
async def test_an_invalid_response_is_a_protocol_error(answer: bytes) -> None:
    async def malformed(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(answer)
        await peer.until_client_closes()

    async with Server(malformed) as server, pool_of() as pool:
        with pytest.raises(UpstreamProtocolError):
            await post(pool, server)
        await until(lambda: server.client_closes == 1)
        assert pool.stats()["protocol_errors"] == 1


async def test_an_endless_response_head_is_a_protocol_error() -> None:
    async def endless_head(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\n")
        line = b"x-filler: " + b"y" * 1000 + b"\r\n"
        with contextlib.suppress(ConnectionError):
            for _ in range(1000):
                await peer.send(line)
        await peer.until_client_closes()

    async with Server(endless_head) as server, pool_of() as pool:
        with pytest.raises(UpstreamProtocolError, match="head over"):
            await post(pool, server)


# -- bounds and expiry -----------------------------------------------------------------------------


async def test_idle_connections_per_host_are_bounded() -> None:
    async def all_at_once(peer: Peer) -> None:
        while (body := await peer.read_request()) is not None:
            if peer.server.requests >= 5:
                peer.server.release.set()
            await peer.server.release.wait()
            await peer.send(response(body))
        peer.server.client_closes += 1

    async with Server(all_at_once) as server, pool_of(max_idle_per_host=2) as pool:
        answers = await asyncio.gather(*(post(pool, server, b"%d" % i) for i in range(5)))
        assert [a.body for a in answers] == [b"0", b"1", b"2", b"3", b"4"]
        assert server.connections == 5
        stats = pool.stats()
        assert (stats["open"], stats["idle"], stats["closed"]) == (2, 2, 3)
        await until(lambda: server.client_closes == 3)


async def test_idle_connections_expire_after_the_idle_timeout() -> None:
    async with Server(echo) as server, pool_of(idle_timeout_s=0.05) as pool:
        await post(pool, server)
        await until(lambda: server.client_closes == 1)
        stats = pool.stats()
        assert (stats["open"], stats["idle"], stats["hosts"]) == (0, 0, 0)
        await post(pool, server)
        assert server.connections == 2


async def test_an_expired_idle_connection_is_not_used_even_before_the_sweep() -> None:
    async with Server(echo) as server, pool_of(idle_timeout_s=0.05) as pool:
        await post(pool, server)
        assert pool.stats()["idle"] == 1
        # Hold the loop (no await) past the idle timeout: the sweep cannot run, only the check on use.
        loop = asyncio.get_running_loop()
        left_idle = loop.time()
        while loop.time() - left_idle <= 0.06:
            pass
        future = pool.request(HOST, server.port, "/invoke", b"{}", TIMEOUT_S)
        assert pool.stats()["reused"] == 0
        await future
        assert server.connections == 2


async def test_hosts_without_connections_leave_the_map() -> None:
    servers = [Server(echo) for _ in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        for server in servers:
            await stack.enter_async_context(server)
        async with pool_of(idle_timeout_s=0.05) as pool:
            for server in servers:
                await post(pool, server)
            assert pool.stats()["hosts"] == 3
            await until(lambda: pool.stats()["hosts"] == 0)


# -- closing the pool ------------------------------------------------------------------------------


async def test_close_fails_pending_futures_and_later_requests() -> None:
    async def never_answers(peer: Peer) -> None:
        await peer.read_request()
        await peer.until_client_closes()

    async with Server(never_answers) as server:
        pool = UpstreamPool()
        pending = pool.request(HOST, server.port, "/invoke", b"{}", TIMEOUT_S)
        await until(lambda: server.requests == 1)
        await pool.close()
        assert isinstance(pending.exception(), UpstreamClosed)
        with pytest.raises(UpstreamClosed):
            await post(pool, server)
        await until(lambda: server.client_closes == 1)
        assert pool.stats()["open"] == 0


async def test_close_ends_idle_and_connecting_connections() -> None:
    async with Server(echo) as server:
        with unanswered_listener() as port:
            pool = UpstreamPool(connect_timeout_s=TIMEOUT_S)
            await post(pool, server)
            connecting = pool.request(HOST, port, "/invoke", b"{}", TIMEOUT_S)
            await pool.close()
            assert isinstance(connecting.exception(), UpstreamClosed)
            await until(lambda: server.client_closes == 1)


async def test_every_failure_is_an_upstream_error() -> None:
    for error in (UpstreamConnectError, UpstreamTimeout, UpstreamClosed, UpstreamProtocolError):
        assert issubclass(error, UpstreamError)


# -- the site's loop -------------------------------------------------------------------------------

ON_UVLOOP = [
    test_sequential_requests_share_one_keep_alive_connection,
    test_concurrent_requests_each_get_their_own_body,
    test_close_delimited_response_is_read_to_the_end,
    test_a_reused_connection_closed_before_any_answer_is_retried_on_a_fresh_one,
    test_a_server_slower_than_the_timeout_is_a_timeout_and_its_connection_dropped,
    test_a_caller_that_stops_waiting_still_gets_the_full_response_later,
    test_cancelling_the_future_closes_its_connection,
    test_a_refused_port_is_a_connect_error_without_waiting_for_the_timeout,
    test_idle_connections_expire_after_the_idle_timeout,
    test_close_fails_pending_futures_and_later_requests,
]


@pytest.mark.parametrize("scenario", ON_UVLOOP, ids=[s.__name__.removeprefix("test_") for s in ON_UVLOOP])
def test_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    """The site serves on uvloop, whose transports differ from asyncio's: run the main cases there too."""
    uvloop = pytest.importorskip("uvloop")

    async def run() -> None:
        await scenario()

    uvloop.run(run())
