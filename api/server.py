"""The site's HTTP server: uvicorn with its client connections bounded and timed out.

uvicorn on its own holds every accepted connection for as long as the client likes: it arms no
timer on a connection that never sends a byte, and its keep-alive timer is cancelled by the first
byte of a request and re-armed only when a response completes, so headers or a body can be
dribbled forever. An idle flood therefore runs the process out of file descriptors, and
`limit_concurrency` does not help (it counts connections, so idle attackers turn every legitimate
request into a 503).

`build_server` returns a `uvicorn.Server` whose HTTP protocol (`GuardedHttpToolsProtocol`, a
subclass of uvicorn's httptools protocol) reports to one `ConnectionGuard` per server:

* At most `max_connections` are open. To admit one more at the limit, the guard closes the least
  recently active connection that has no request in progress, taking first those that have never
  completed a request (fresh or still sending their first headers), then idle keep-alive ones
  (nginx's "reusable connections", drained oldest first). When every connection has a request in
  the application, the new one is answered `503` with `Retry-After` and closed.
* Header deadline (`header_timeout_s`): a new connection must deliver its first request's headers
  within it, counted from the accept (so a connection that sends nothing is closed after it too,
  like nginx's `client_header_timeout` and Node's `headersTimeout`); on a keep-alive connection it
  runs from the first byte of each later request to the end of its headers (Envoy's
  `request_headers_timeout`). On expiry the connection is closed without an answer.
* Body deadline (`body_timeout_s`): from the end of the headers to the end of the body, in total
  (not per read as nginx's `client_body_timeout`, so a dribble cannot stretch it). On expiry the
  client gets `408 {"error": {"code": "body_timeout", ...}}` if no response has started, then the
  connection is closed.
* Keep-alive (`keepalive_timeout_s`): uvicorn's own timer after each response; it is re-armed when
  stray bytes that start no request (blank lines) would otherwise have cancelled it for good.

Every callback runs on the event loop thread; the guard has no locks and no threads. Its counters
are plain attributes (`ConnectionGuard.stats()` gathers them) for /metrics.

At start, `build_server` raises the soft RLIMIT_NOFILE to the hard limit and lowers
`max_connections` when needed so that `FD_RESERVE` descriptors stay free for the site's own files
and outgoing connections (workload pool, Redis, subprocess pipes) even while a full accept backlog
waits for the guard (`plan_limits`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections import OrderedDict
from typing import Any, ClassVar, cast

import psutil
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from api.door import CLOCK_KEY, FAST_PATH, FrontDoor, RequestClock
from config.settings import Settings

log = logging.getLogger("mec.server")

FD_RESERVE = 256
"""File descriptors kept free for the site itself on top of those already open at start."""
BACKLOG = 2048
"""Listen backlog (uvicorn's default), lowered when descriptors are scarce (see `plan_limits`)."""
MIN_BACKLOG = 128
GRACEFUL_SHUTDOWN_S = 10
CLOSE_GRACE_S = 2.0
"""How long a closing connection may take to flush a final 408/503 before it is aborted."""
_NOFILE_CEILING = 1 << 20
"""Soft limit to ask for when the hard limit is unlimited."""

_IDLE, _HEADERS, _BODY = 0, 1, 2
"""Where the parser stands on a connection: between requests, inside a request's headers, or
inside its body."""

_Tier = OrderedDict["GuardedHttpToolsProtocol", None]


def _error_response(
    status: int, reason: str, code: str, message: str, field: str | None, extra: str = ""
) -> bytes:
    """A complete HTTP/1.1 answer in the API's error shape, closing the connection."""
    body = json.dumps({"error": {"code": code, "message": message, "field": field}})
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}connection: close\r\n\r\n{body}"
    ).encode()


class ConnectionGuard:
    """The open client connections of one server, ordered by last activity, and their counters.

    A connection with no request in the application sits in one of two tiers, each an ordered
    dict oldest-activity first: `_fresh` (has not completed a request yet) and `_kept` (idle
    keep-alive after at least one response). A connection whose request the application is
    handling is in neither and is never evicted.
    """

    def __init__(
        self,
        max_connections: int,
        header_timeout_s: float,
        body_timeout_s: float,
        keepalive_timeout_s: float,
        retry_after_s: int = 1,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self._fresh: _Tier = OrderedDict()
        self._kept: _Tier = OrderedDict()
        self.refusal = _error_response(
            503,
            "Service Unavailable",
            "too_many_connections",
            "the site holds as many connections as it can; retry shortly",
            None,
            f"retry-after: {retry_after_s}\r\n",
        )
        self.body_timeout_response = _error_response(
            408,
            "Request Timeout",
            "body_timeout",
            f"the request body did not arrive within {body_timeout_s:g} s",
            "body",
        )
        # Counters, published as they are (plain ints).
        self.open = 0
        """Connections open now (gauge)."""
        self.peak = 0
        """Most connections open at once since start."""
        self.accepted = 0
        """Connections admitted since start."""
        self.evicted = 0
        """Idle connections closed to admit a new one."""
        self.refused = 0
        """New connections refused (503) because every open one had a request in progress."""
        self.header_timeouts = 0
        """Connections closed for not delivering a request's headers in time (silent ones included)."""
        self.body_timeouts = 0
        """Requests whose body did not arrive in time (answered 408 when possible)."""
        self.keepalive_timeouts = 0
        """Idle keep-alive connections closed after `keepalive_timeout_s`."""

    @classmethod
    def from_settings(cls, settings: Settings, max_connections: int | None = None) -> ConnectionGuard:
        return cls(
            max_connections if max_connections is not None else settings.max_connections,
            settings.header_timeout_s,
            settings.body_timeout_s,
            settings.keepalive_timeout_s,
            settings.retry_after_s,
        )

    def stats(self) -> dict[str, int]:
        """The counters, for /metrics."""
        return {
            "max": self.max_connections,
            "open": self.open,
            "peak": self.peak,
            "accepted": self.accepted,
            "evicted": self.evicted,
            "refused": self.refused,
            "header_timeouts": self.header_timeouts,
            "body_timeouts": self.body_timeouts,
            "keepalive_timeouts": self.keepalive_timeouts,
        }

    def protocol_class(self, door: FrontDoor | None = None) -> type[GuardedHttpToolsProtocol]:
        """A protocol class bound to this guard (and the fast path's door), for `uvicorn.Config`."""
        bound = type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"guard": self, "door": door})
        return cast(type[GuardedHttpToolsProtocol], bound)

    # Called by the protocol, on the event loop.

    def admit(self, conn: GuardedHttpToolsProtocol) -> bool:
        """Count a new connection in, evicting an idle one at the limit; false: refuse it."""
        if self.open >= self.max_connections:
            tier = self._fresh or self._kept
            if not tier:
                self.refused += 1
                return False
            victim, _ = tier.popitem(last=False)
            victim.guard_tier = None
            self.release(victim)
            self.evicted += 1
            victim.evict()
        self.open += 1
        self.accepted += 1
        self.peak = max(self.peak, self.open)
        conn.guard_open = True
        conn.guard_tier = self._fresh
        self._fresh[conn] = None
        return True

    def busy(self, conn: GuardedHttpToolsProtocol) -> None:
        """The application has a request of `conn`: it may not be evicted."""
        if conn.guard_tier is not None:
            del conn.guard_tier[conn]
            conn.guard_tier = None

    def idle(self, conn: GuardedHttpToolsProtocol) -> None:
        """`conn` answered its requests and waits for the next one: the most recently active."""
        if not conn.guard_open:
            return
        if conn.guard_tier is not None:
            del conn.guard_tier[conn]
        conn.guard_tier = self._kept
        self._kept[conn] = None

    def release(self, conn: GuardedHttpToolsProtocol) -> None:
        """`conn` is closed (or about to be): count it out. Idempotent."""
        if conn.guard_tier is not None:
            del conn.guard_tier[conn]
            conn.guard_tier = None
        if conn.guard_open:
            conn.guard_open = False
            self.open -= 1


_FAST_PATH = FAST_PATH.encode()
_FAST_PATH_QUERY = _FAST_PATH + b"?"


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with admission control and header/body/keep-alive deadlines.

    It also stamps each request's arrival (its first byte) and, for the fast path, asks the
    `FrontDoor` before anything else happens: a refused request is answered with the door's
    prebuilt 503 from here, and its body is read and dropped without reaching the application.

    Use a subclass bound to a guard (`ConnectionGuard.protocol_class()`); `build_server` does.
    """

    guard: ClassVar[ConnectionGuard]
    door: ClassVar[FrontDoor | None] = None

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.timeout_keep_alive = self.guard.keepalive_timeout_s  # type: ignore[assignment]
        self.guard_open = False
        self.guard_tier: _Tier | None = None
        self._phase = _IDLE
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._arrived = 0.0
        self._refused = False
        self._clock: RequestClock | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            transport.write(self.guard.refusal)
            self._close_gracefully()
            return
        self._header_timer = self.loop.call_later(self.guard.header_timeout_s, self._on_header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self.guard.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        tier = self.guard_tier
        if tier is not None:
            tier.move_to_end(self)
        super().data_received(data)
        if self.transport.is_closing():
            return
        # Arm deadlines after the whole chunk is parsed, so that a request arriving in one piece
        # (the usual case) costs no timer at all.
        if self._phase == _HEADERS:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(
                    self.guard.header_timeout_s, self._on_header_timeout
                )
        elif self._phase == _BODY:
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.guard.body_timeout_s, self._on_body_timeout)
        elif (
            self._header_timer is None
            and self.timeout_keep_alive_task is None
            and (self.cycle is None or self.cycle.response_complete)
        ):
            # Bytes that started no request (blank lines) cancelled uvicorn's keep-alive timer.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    # httptools parser callbacks

    def on_message_begin(self) -> None:
        self._arrived = time.perf_counter()
        super().on_message_begin()
        self._phase = _HEADERS

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        door = self.door
        if door is not None and self._at_the_door():
            clock = door.admit(self._arrived)
            if clock is None:
                self._refuse(door)
                return
            self._clock = clock
            self.scope["state"][CLOCK_KEY] = clock  # the task that serves it has not started yet
        super().on_headers_complete()
        self.guard.busy(self)

    def _at_the_door(self) -> bool:
        """A fast-path request that nothing else on this connection is ahead of."""
        url = self.url
        return (
            (url == _FAST_PATH or url.startswith(_FAST_PATH_QUERY))
            and self.parser.get_method() == b"POST"
            and (self.cycle is None or self.cycle.response_complete)
            and not self.pipeline
        )

    def _refuse(self, door: FrontDoor) -> None:
        """Answer the door's 503 now; the body that follows is dropped (`on_body`)."""
        self._refused = True
        if self.expect_100_continue:
            self.transport.write(door.refusal_close)  # the body will never come
            self._close_gracefully()
            return
        keep = self.parser.should_keep_alive()
        self.transport.write(door.refusal_keep_alive if keep else door.refusal_close)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self._clock is not None:
            self._clock.received = time.perf_counter()
            self._clock = None
        if self._refused:
            self._refused = False
            self._after_refusal()
            return
        super().on_message_complete()

    def _after_refusal(self) -> None:
        """A refused request's body is in: keep the connection for the next one, or close it."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if not self.parser.should_keep_alive():
            self._close_gracefully()
            return
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )
        self.guard.idle(self)

    # uvicorn hooks

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline and self.cycle.response_complete:
            self.guard.idle(self)

    def _unsupported_upgrade_warning(self) -> None:
        # WebSockets are off (`ws="none"`): an Upgrade header is served as plain HTTP. uvicorn
        # would log two warnings per such request, one saying a library is missing.
        self.logger.debug("upgrade request served as plain HTTP (WebSockets are off)")

    def timeout_keep_alive_handler(self) -> None:
        self.timeout_keep_alive_task = None
        if not self.transport.is_closing():
            self.guard.keepalive_timeouts += 1
            self._close_now()

    # Deadlines and closing

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self._phase != _BODY and not self.transport.is_closing():
            self.guard.header_timeouts += 1
            self._close_now()

    def _on_body_timeout(self) -> None:
        self._body_timer = None
        if self._phase != _BODY or self.transport.is_closing():
            return
        self.guard.body_timeouts += 1
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The application sees a disconnect and its own response is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
            if not cycle.response_started:
                self.transport.write(self.guard.body_timeout_response)
                self._close_gracefully()
                return
        self._close_now()

    def evict(self) -> None:
        """Closed by the guard to admit a newer connection."""
        self._cancel_timers()
        self.transport.abort()

    def _close_now(self) -> None:
        self._cancel_timers()
        self.guard.release(self)
        self.transport.abort()

    def _close_gracefully(self) -> None:
        """Close after the final answer is flushed, or abort if the client does not read it."""
        self._cancel_timers()
        self.guard.release(self)
        self.transport.close()
        self.loop.call_later(CLOSE_GRACE_S, self.transport.abort)

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer, self.timeout_keep_alive_task):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = self.timeout_keep_alive_task = None


class GuardedServer(uvicorn.Server):
    """A `uvicorn.Server` that carries the guard of its connections."""

    def __init__(self, config: uvicorn.Config, guard: ConnectionGuard) -> None:
        super().__init__(config)
        self.guard = guard


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as far as the kernel allows); the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _NOFILE_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise RLIMIT_NOFILE from %d to %d: %s", soft, target, exc)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return _NOFILE_CEILING if soft == resource.RLIM_INFINITY else soft


def open_fds() -> int:
    """File descriptors this process holds now (0 when the platform cannot tell)."""
    try:
        return psutil.Process().num_fds()
    except (psutil.Error, AttributeError, OSError):
        return 0


def plan_limits(requested: int, nofile: int, in_use: int) -> tuple[int, int]:
    """(max_connections, listen backlog) that leave `FD_RESERVE` descriptors free, at the worst.

    uvloop accepts the whole accept queue in one turn and only then runs the `connection_made`
    callbacks in which the guard evicts, so for a moment up to `backlog` connections more than
    `max_connections` hold a descriptor. The backlog is uvicorn's 2048 unless descriptors are
    scarce (then a quarter of what is free, at least `MIN_BACKLOG`); `max_connections` is lowered
    to fit what is left, and is at least 1.
    """
    room = nofile - in_use - FD_RESERVE
    backlog = min(BACKLOG, max(MIN_BACKLOG, room // 4))
    return max(1, min(requested, room - backlog)), backlog


def build_server(
    app: Any, settings: Settings, log_level: str, door: FrontDoor | None = None
) -> GuardedServer:
    """The site's uvicorn server, its connections bounded and timed out by a `ConnectionGuard`,
    and its fast-path requests stamped and admitted by `door` (when given).

    `log_level` is the CLI's: uvicorn itself logs at warning unless it is "debug".
    """
    nofile = raise_nofile_limit()
    in_use = open_fds()
    limit, backlog = plan_limits(settings.max_connections, nofile, in_use)
    if limit < settings.max_connections:
        log.warning(
            "max_connections lowered from %d to %d: RLIMIT_NOFILE is %d, %d in use, %d kept free "
            "and %d for the accept backlog",
            settings.max_connections,
            limit,
            nofile,
            in_use,
            FD_RESERVE,
            backlog,
        )
    log.info(
        "client connections: at most %d (RLIMIT_NOFILE %d, backlog %d); "
        "header timeout %g s, body %g s, keep-alive %g s",
        limit,
        nofile,
        backlog,
        settings.header_timeout_s,
        settings.body_timeout_s,
        settings.keepalive_timeout_s,
    )
    guard = ConnectionGuard.from_settings(settings, limit)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level if log_level == "debug" else "warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        http=guard.protocol_class(door),
        ws="none",  # the API has no WebSocket routes; an upgraded connection would leave the guard
        proxy_headers=False,  # clients reach the site directly; nothing trusts X-Forwarded-For
        backlog=backlog,
    )
    return GuardedServer(config, guard)
