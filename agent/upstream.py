"""The site's HTTP/1.1 client for its workloads: keep-alive connections that cost less than the work.

Why not httpx: a pooled `httpx.AsyncClient` spends 0.4–1.5 ms of CPU per request on this kind of
traffic (measured on a 2-core machine against the sensor workload: 418–1454 µs of client CPU per
`POST /invoke`), most of it in httpcore's per-request scan of its connection pool
(encode/httpcore#1035) and in the layers around it. aiohttp does 75–96 µs. A workload answers
in tens of µs, so the client would cost more than the work. This module does 14–21 µs: a bare
`asyncio.Protocol` per connection, httptools' C parser (llhttp) for the responses, and no
per-request task, header dictionary or URL object.

Design:

* `UpstreamPool.request()` is a plain method that returns an `asyncio.Future`. With an idle
  connection to hand it writes the request at once, inside the call, and the response is
  delivered from the protocol's `data_received`: no task, no coroutine. Only opening a new
  connection runs a task (`loop.create_connection`).
* The returned future *is* the exchange (`_Exchange`, a Future subclass with slots): one object
  per request. The caller may stop waiting for it (`asyncio.wait(..., timeout=...)`) and the
  exchange still runs to its end; cancelling it aborts the exchange and closes its connection,
  which never goes back to the pool with a response pending.
* `timeout_s` is one hard limit for connect + send + receive, armed once with `loop.call_at`.
  On expiry the connection is aborted and the future fails with `UpstreamTimeout` (or with
  `UpstreamConnectError` while still connecting: nothing was sent).
* Idle connections live per (host, port) in an insertion-ordered dict used as a LIFO stack
  (`popitem()` takes the freshest; removal on `connection_lost` is O(1)). The freshest being
  on top, an expired top means every idle connection of that host has expired. One pool-wide
  timer sweeps expired idle connections while any exist; there are no per-connection timers.
* A reused connection lost before any byte of its response arrived (the server closed it while
  it was idle, and processed nothing) is retried once on a fresh connection.
* Hosts with no connection left are dropped from the map, idle stacks are bounded by
  `max_idle_per_host` and open connections by `max_connections_per_host`, and response bodies
  by `max_response_bytes`: nothing grows without bound.
* Only the callbacks the pool needs are defined on the protocol (no `on_header`, which would
  cost a Python call per header). Whether a body is delimited by the connection's close is
  worked out, on the rare EOF before the parser saw the message end, from the kept head bytes.

One pool serves one event loop. Failures are `UpstreamError`s, marked as retrieved so that a
result nobody waited for does not log "exception was never retrieved".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import httptools

__all__ = [
    "UpstreamClosed",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeout",
]

MAX_HEAD_BYTES = 64 * 1024
"""A response whose status line and headers take more than this is refused (llhttp has no limit)."""

MAX_CACHED_HEADS = 256
"""Request heads are built once per (authority, path, content type) and kept in an LRU of this size."""


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    body: bytes


class UpstreamError(Exception):
    """An exchange with a workload did not produce a full HTTP response."""


class UpstreamConnectError(UpstreamError):
    """The connection could not be opened (refused, unreachable, connect timeout, pool full): nothing was sent."""


class UpstreamTimeout(UpstreamError):
    """The exchange's hard timeout passed before a full response arrived."""


class UpstreamClosed(UpstreamError):
    """The connection closed or reset after the request was sent, before a full response (or the pool closed)."""


class UpstreamProtocolError(UpstreamError):
    """The response is not valid HTTP/1.x, or it is larger than the pool's limit."""


@functools.lru_cache(maxsize=MAX_CACHED_HEADS)
def _head_prefix(authority: bytes, path: str, content_type: bytes) -> bytes:
    """`POST path HTTP/1.1` and the fixed headers, up to the Content-Length value (validated)."""
    if not path.startswith("/") or not path.isascii() or not path.isprintable() or " " in path:
        raise ValueError(f"not a request target: {path!r}")
    if any(c in content_type for c in b"\r\n\0"):
        raise ValueError(f"not a header value: {content_type!r}")
    return b"POST %b HTTP/1.1\r\nHost: %b\r\nContent-Type: %b\r\nContent-Length: " % (
        path.encode("ascii"),
        authority,
        content_type,
    )


_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
"""The bytes of an HTTP header name (RFC 9110 `tchar`)."""
_OWN_HEADERS = frozenset({"host", "content-type", "content-length", "transfer-encoding", "connection"})
"""Headers the pool writes or relies on itself: a caller's `headers` may not name them."""
_CONTENT_LENGTH = b"Content-Length: "


def _with_headers(prefix: bytes, headers: Mapping[str, str]) -> bytes:
    """`prefix` (from `_head_prefix`) with `headers` inserted before its Content-Length (validated).

    Names must be HTTP tokens other than the pool's own headers; values printable ASCII (no CR,
    LF or NUL), so nothing a caller passes can split the request.
    """
    extra = []
    for name, value in headers.items():
        raw_name = name.encode("ascii", "replace")
        if not raw_name or not all(c in _TOKEN for c in raw_name):
            raise ValueError(f"not a header name: {name!r}")
        if name.lower() in _OWN_HEADERS:
            raise ValueError(f"the pool writes the {name!r} header itself")
        if not value.isascii() or not value.isprintable():
            raise ValueError(f"not a header value for {name}: {value!r}")
        extra.append(b"%b: %b\r\n" % (raw_name, value.strip().encode("ascii")))
    return prefix[: -len(_CONTENT_LENGTH)] + b"".join(extra) + _CONTENT_LENGTH


class _Host:
    """The connections of one (host, port): all of them (against the limit) and the idle stack."""

    __slots__ = ("authority", "conns", "host", "idle", "key", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.key = (host, port)
        name = f"[{host}]" if ":" in host else host
        self.authority = f"{name}:{port}".encode("idna")
        self.conns: set[_Conn] = set()
        """Every connection counted against `max_connections_per_host`: connecting, busy, idle."""
        self.idle: dict[_Conn, None] = {}
        """Idle connections, oldest first: `popitem()` takes the freshest (LIFO)."""


class _Exchange(asyncio.Future[UpstreamResponse]):
    """One request and its response: the future `UpstreamPool.request()` returns."""

    __slots__ = ("_conn", "_data", "_deadline", "_host", "_pool", "_reused", "_timer")

    _pool: UpstreamPool
    _host: _Host
    _data: bytes
    _deadline: float
    _timer: asyncio.TimerHandle | None
    _conn: _Conn | None
    """The connection carrying the exchange right now (None once it is over)."""
    _reused: bool
    """Sent on a connection that had been idle: a loss before any response byte is retried (once)."""

    def cancel(self, msg: Any | None = None) -> bool:
        """Cancel the future, abort the exchange and close its connection."""
        if not super().cancel(msg):
            return False
        self._stop_timer()
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn._ex = None
            conn._discard()
            self._pool._cancelled += 1
        return True

    def _stop_timer(self) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()

    def _resolve(self, response: UpstreamResponse) -> None:
        self._stop_timer()
        self._conn = None
        if not self.done():
            self.set_result(response)

    def _fail(self, error: UpstreamError) -> None:
        self._stop_timer()
        self._conn = None
        if not self.done():
            self.set_exception(error)
            self.exception()  # retrieved: a caller that stopped waiting must not make asyncio log it

    def _on_timeout(self) -> None:
        self._timer = None
        conn = self._conn
        if conn is None or self.done():
            return
        conn._ex = None
        connecting = conn._transport is None
        conn._discard()
        target = f"{self._host.host}:{self._host.port}"
        if connecting:
            self._pool._connect_errors += 1
            self._fail(UpstreamConnectError(f"{target}: the exchange's timeout passed while connecting"))
        else:
            self._pool._timeouts += 1
            self._fail(UpstreamTimeout(f"{target}: no full response within the exchange's timeout"))


class _Conn(asyncio.Protocol):
    """One keep-alive connection: the asyncio protocol and the parser's callbacks."""

    __slots__ = (
        "_body",
        "_closed",
        "_complete",
        "_connect_timer",
        "_connecting",
        "_ex",
        "_extra",
        "_got",
        "_head",
        "_head_size",
        "_headers_done",
        "_host",
        "_idle_since",
        "_interim",
        "_keep",
        "_parser",
        "_pool",
        "_size",
        "_status",
        "_transport",
    )

    def __init__(self, pool: UpstreamPool, host: _Host) -> None:
        self._pool = pool
        self._host = host
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._ex: _Exchange | None = None
        self._closed = False
        self._connecting: asyncio.Task[Any] | None = None
        self._connect_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._body: list[bytes] = []
        self._head: list[bytes] = []
        """The data chunks up to the end of the response head (for the close-delimited check)."""
        self._reset()

    def _reset(self) -> None:
        self._got = False
        self._headers_done = False
        self._complete = False
        self._extra = False
        self._interim = False
        self._keep = False
        self._size = 0
        self._head_size = 0
        self._status = 0

    # -- the pool's side -------------------------------------------------------------------

    def _send(self, ex: _Exchange) -> None:
        transport = self._transport
        assert transport is not None
        self._ex = ex
        ex._conn = self
        self._reset()
        try:
            transport.write(ex._data)
        except (RuntimeError, OSError):
            # The transport closed under us (uvloop raises on a closed handle): nothing went out.
            self._lost(None)

    def _closing(self) -> bool:
        transport = self._transport
        return transport is None or transport.is_closing()

    def _discard(self, abort: bool = True) -> None:
        """Take the connection out of the pool and close it (abort: RST, no waiting for the peer)."""
        if self._closed:
            return
        self._closed = True
        pool = self._pool
        pool._closed_conns += 1
        host = self._host
        host.conns.discard(self)
        host.idle.pop(self, None)
        if not host.conns and pool._hosts.get(host.key) is host:
            del pool._hosts[host.key]
        timer = self._connect_timer
        if timer is not None:
            self._connect_timer = None
            timer.cancel()
        transport = self._transport
        if transport is not None:
            if abort:
                transport.abort()
            else:
                transport.close()
        elif self._connecting is not None:
            self._connecting.cancel()

    def _connected(self, task: asyncio.Task[Any]) -> None:
        """`create_connection`'s end: a failure before `connection_made` means nothing was sent."""
        self._connecting = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None or self._closed:
            return
        self._pool._connect_errors += 1
        self._abandon(UpstreamConnectError, f"{type(exc).__name__}: {exc}")

    def _connect_timed_out(self) -> None:
        self._connect_timer = None
        self._pool._connect_errors += 1
        self._abandon(UpstreamConnectError, f"not connected within {self._pool._connect_timeout_s:g} s")

    def _abandon(self, error: type[UpstreamError], message: str) -> None:
        """Drop this connection and fail its exchange, if it has one, with `error` naming the host."""
        ex = self._ex
        self._ex = None
        self._discard()
        if ex is not None:
            ex._fail(error(f"{self._host.host}:{self._host.port}: {message}"))

    def _finish(self) -> None:
        ex = self._ex
        assert ex is not None
        self._ex = None
        body = self._body
        response = UpstreamResponse(self._status, b"".join(body))
        body.clear()
        self._head.clear()
        self._pool._release(self, self._keep and not self._extra)
        ex._resolve(response)

    def _protocol_error(self, message: str) -> None:
        self._pool._protocol_errors += 1
        self._abandon(UpstreamProtocolError, message)

    def _lost(self, exc: BaseException | None) -> None:
        """The peer closed or reset the connection: retry a stale reuse once, else fail."""
        if self._closed:
            return
        ex = self._ex
        self._ex = None
        self._discard(abort=False)
        if ex is None or ex.done():
            return
        ex._conn = None
        pool = self._pool
        if ex._reused and not self._got and not pool._closed:
            # The server closed the connection while it sat idle; it processed nothing.
            pool._stale_retries += 1
            ex._reused = False
            pool._open(ex, self._host)
            return
        pool._resets += 1
        host = self._host
        how = "reset" if exc is not None else "closed"
        ex._fail(UpstreamClosed(f"{host.host}:{host.port}: connection {how} before a full response"))

    def _body_is_close_delimited(self) -> bool:
        """Whether the current response, its head parsed, has neither Content-Length nor chunking."""
        if self._interim:
            return False  # the kept bytes hold more than one head: do not guess
        data = b"".join(self._head)
        head = data[: data.find(b"\r\n\r\n")].lower()
        return b"\ncontent-length:" not in head and b"\ntransfer-encoding:" not in head

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        timer = self._connect_timer
        if timer is not None:
            self._connect_timer = None
            timer.cancel()
        ex = self._ex
        if self._closed or ex is None:
            transport.abort()
            return
        self._send(ex)

    def data_received(self, data: bytes) -> None:
        if self._ex is None:
            self._discard()  # bytes nobody asked for, on an idle connection
            return
        self._got = True
        if not self._headers_done:
            self._head.append(data)
            self._head_size += len(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self._complete:
                self._extra = True  # a full response, then garbage: deliver it, drop the connection
                self._finish()
            else:
                self._protocol_error(f"invalid HTTP response: {type(exc).__name__}: {exc}")
            return
        if self._size > self._pool._max_response_bytes:
            self._protocol_error(f"response body over {self._pool._max_response_bytes} bytes")
        elif self._complete:
            self._finish()
        elif not self._headers_done and self._head_size > MAX_HEAD_BYTES:
            self._protocol_error(f"response head over {MAX_HEAD_BYTES} bytes")

    def eof_received(self) -> bool:
        if (
            self._ex is not None
            and self._headers_done
            and not self._complete
            and self._body_is_close_delimited()
        ):
            self._keep = False
            self._finish()
        else:
            self._lost(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            self._extra = True  # a second response to one request

    def on_headers_complete(self) -> None:
        if not self._complete:
            self._headers_done = True
            self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return  # a second response's body: the connection is dropped once the first is out
        size = self._size = self._size + len(body)
        if size <= self._pool._max_response_bytes:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self._status < 200:
            # An interim response (100 Continue, 103 Early Hints): the real one follows.
            self._interim = True
            self._headers_done = False
            self._body.clear()
            self._size = 0
            return
        if not self._complete:
            self._complete = True
            self._keep = self._parser.should_keep_alive()


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections per (host, port) on asyncio protocols with httptools' C parser.

    `request()` starts one POST and returns its future; `post()` awaits it. Limits: at most
    `max_idle_per_host` idle and `max_connections_per_host` open connections per host, idle
    ones closed after `idle_timeout_s`, connects given up after `connect_timeout_s`, response
    bodies of at most `max_response_bytes`.
    """

    def __init__(
        self,
        *,
        max_idle_per_host: int = 64,
        max_connections_per_host: int = 1024,
        idle_timeout_s: float = 30.0,
        connect_timeout_s: float = 1.0,
        max_response_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        if max_idle_per_host < 0 or max_connections_per_host < 1:
            raise ValueError("max_idle_per_host must be ≥ 0 and max_connections_per_host ≥ 1")
        if idle_timeout_s <= 0 or connect_timeout_s <= 0 or max_response_bytes < 0:
            raise ValueError("timeouts must be positive and max_response_bytes ≥ 0")
        self._max_idle = max_idle_per_host
        self._max_conns = max_connections_per_host
        self._idle_timeout_s = idle_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max_response_bytes = max_response_bytes
        self._sweep_every_s = min(max(idle_timeout_s / 2, 0.01), 5.0)
        self._hosts: dict[tuple[str, int], _Host] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        self._requests = 0
        self._created = 0
        self._reused = 0
        self._closed_conns = 0
        self._timeouts = 0
        self._connect_errors = 0
        self._resets = 0
        self._protocol_errors = 0
        self._stale_retries = 0
        self._cancelled = 0

    def request(
        self,
        host: str,
        port: int,
        path: str,
        body: bytes,
        timeout_s: float,
        content_type: bytes = b"application/json",
        headers: Mapping[str, str] | None = None,
    ) -> asyncio.Future[UpstreamResponse]:
        """Start one POST now and return a future for its response (or an UpstreamError).

        The future resolves whether or not anyone still waits for it; cancelling it aborts the
        exchange. `headers` are sent as well (e.g. a peer request's signature); they may not name
        Host, Content-Type, Content-Length, Transfer-Encoding or Connection. Raises ValueError (at
        once) for a path, content type or header that cannot go on the wire, and RuntimeError
        outside the loop the pool first ran on.
        """
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        ex = _Exchange(loop=loop)
        self._requests += 1
        h = self._hosts.get((host, port))
        if h is None:
            h = _Host(host, port)  # in the map once it has a connection (`_open`)
        prefix = _head_prefix(h.authority, path, content_type)
        if headers:
            prefix = _with_headers(prefix, headers)
        ex._data = b"%b%d\r\n\r\n%b" % (prefix, len(body), body)
        ex._pool = self
        ex._host = h
        ex._conn = None
        ex._reused = False
        ex._timer = None
        if self._closed:
            ex._fail(UpstreamClosed("the pool is closed"))
            return ex
        if timeout_s <= 0:
            self._timeouts += 1
            ex._fail(UpstreamTimeout(f"{host}:{port}: no time left for the exchange"))
            return ex
        now = loop.time()
        ex._deadline = deadline = now + timeout_s
        ex._timer = loop.call_at(deadline, ex._on_timeout)
        idle = h.idle
        while idle:
            conn = idle.popitem()[0]
            if now - conn._idle_since >= self._idle_timeout_s:
                # The freshest idle connection has expired, so have all the others.
                conn._discard(abort=False)
                for stale in list(idle):
                    stale._discard(abort=False)
                break
            if conn._closing():
                conn._discard(abort=False)  # lost, and its connection_lost not delivered yet
                continue
            self._reused += 1
            ex._reused = True
            conn._send(ex)
            return ex
        self._open(ex, h)
        return ex

    async def post(
        self,
        host: str,
        port: int,
        path: str,
        body: bytes,
        timeout_s: float,
        content_type: bytes = b"application/json",
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """`await request(...)`: the response, or an `UpstreamError`."""
        return await self.request(host, port, path, body, timeout_s, content_type, headers)

    def stats(self) -> dict[str, int]:
        """Plain counters: `open` and `idle` connections now, the rest since the start."""
        return {
            "hosts": len(self._hosts),
            "open": sum(len(h.conns) for h in self._hosts.values()),
            "idle": sum(len(h.idle) for h in self._hosts.values()),
            "requests": self._requests,
            "created": self._created,
            "reused": self._reused,
            "closed": self._closed_conns,
            "timeouts": self._timeouts,
            "connect_errors": self._connect_errors,
            "resets": self._resets,
            "protocol_errors": self._protocol_errors,
            "stale_retries": self._stale_retries,
            "cancelled": self._cancelled,
        }

    async def close(self) -> None:
        """Abort every connection; pending futures fail with UpstreamClosed, and so do later requests."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for h in list(self._hosts.values()):
            for conn in list(h.conns):
                ex = conn._ex
                conn._ex = None
                conn._discard()
                if ex is not None:
                    ex._fail(UpstreamClosed(f"{h.host}:{h.port}: the pool was closed"))
        self._hosts.clear()
        await asyncio.sleep(0)  # let the transports deliver connection_lost

    # -- internals -------------------------------------------------------------------------

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None:
            raise RuntimeError("an UpstreamPool serves the event loop it was first used on")
        self._loop = loop

    def _open(self, ex: _Exchange, h: _Host) -> None:
        """Carry `ex` on a new connection: a task connects, `connection_made` sends."""
        registered = self._hosts.get(h.key)
        if registered is None:
            self._hosts[h.key] = h
        elif registered is not h:
            h = ex._host = registered
        if len(h.conns) >= self._max_conns:
            self._connect_errors += 1
            ex._fail(UpstreamConnectError(f"pool full: {self._max_conns} connections to {h.host}:{h.port}"))
            return
        loop = self._loop
        assert loop is not None
        conn = _Conn(self, h)
        h.conns.add(conn)
        self._created += 1
        conn._ex = ex
        ex._conn = conn
        task = loop.create_task(loop.create_connection(lambda: conn, h.host, h.port))
        conn._connecting = task
        task.add_done_callback(conn._connected)
        if loop.time() + self._connect_timeout_s < ex._deadline:
            # Otherwise the exchange's own timer ends the connect (as a connect error).
            conn._connect_timer = loop.call_later(self._connect_timeout_s, conn._connect_timed_out)

    def _release(self, conn: _Conn, keep: bool) -> None:
        """A finished exchange's connection: back on its host's idle stack, or closed."""
        idle = conn._host.idle
        if keep and not self._closed and len(idle) < self._max_idle:
            loop = self._loop
            assert loop is not None
            conn._idle_since = loop.time()
            idle[conn] = None
            if self._sweep is None:
                self._sweep = loop.call_later(self._sweep_every_s, self._on_sweep)
        else:
            conn._discard(abort=False)

    def _on_sweep(self) -> None:
        """Close idle connections past `idle_timeout_s` (oldest first); re-arm while any remain."""
        self._sweep = None
        loop = self._loop
        assert loop is not None
        cutoff = loop.time() - self._idle_timeout_s
        remaining = False
        for h in list(self._hosts.values()):
            idle = h.idle
            while idle:
                oldest = next(iter(idle))
                if oldest._idle_since > cutoff:
                    remaining = True
                    break
                oldest._discard(abort=False)
        if remaining and not self._closed:
            self._sweep = loop.call_later(self._sweep_every_s, self._on_sweep)
