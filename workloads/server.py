"""HTTP plumbing shared by the sample workloads (standard library only).

Each workload is a *service*: an object with a ``name``, an ``info()`` that describes it for
``GET /healthz``, and an ``invoke(payload)`` that turns one JSON object into one JSON object
for ``POST /invoke``. Bad input is reported by raising :class:`PayloadError`, which names the
offending field. This module turns such a service into a small keep-alive HTTP/1.1 server:

* ``GET /healthz``  -> 200 ``{"status": "ok", "service": NAME, **info()}``, or 503
  ``{"status": "not_ready", "service": NAME, "reason": str}`` while ``info()`` raises
  :class:`NotReady` (a dependency it needs is down: the site's runtime then takes it out of service)
* ``POST /invoke``  -> 200 with the service's result

Every error is JSON, ``{"error": {"code": str, "message": str, "field": str | null}}``:

* 400: the body is not valid JSON (``invalid_json``), is not a JSON object (``invalid_body``),
  has a bad Content-Length (``invalid_content_length``) or ended before it
  (``incomplete_body``);
* 422 ``invalid_payload``: the body is a JSON object but a field is invalid (a
  :class:`PayloadError`), including numbers the service cannot handle, such as an integer
  literal too long to parse at all; ``field`` names it (``payload.state.x``,
  ``payload.values[3]``);
* 503 ``unavailable``: ``invoke`` raised :class:`Unavailable` (a dependency it needs did not
  answer); not a bug, so no traceback;
* 404 (unknown path), 405 (wrong method), 411 (no Content-Length, or a chunked body), 413 (a
  body over :data:`MAX_BODY_BYTES`, refused from its Content-Length before anything is read);
* 500 ``internal_error``: an unexpected exception, i.e. a bug; the traceback goes to stderr,
  never into the response. A client's input never causes one.

A client that goes away (connection reset, broken pipe) or stalls past
:data:`IDLE_CONNECTION_TIMEOUT_S` is a client event, not an error of the service: the
connection is closed quietly, with at most one line on stderr when a request was under way.

Every response carries a Content-Length, so clients with a connection pool can keep the
connection open between requests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import socketserver
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

MAX_BODY_BYTES = 1024 * 1024
"""Largest request body accepted by ``POST /invoke`` (1 MiB)."""

IDLE_CONNECTION_TIMEOUT_S = 60.0
"""A keep-alive connection that sends nothing for this long is closed by the server."""

HOST_ENV = "MEC_WORKLOAD_HOST"
PORT_ENV = "MEC_WORKLOAD_PORT"
DEFAULT_HOST = "127.0.0.1"

HEALTH_PATH = "/healthz"
INVOKE_PATH = "/invoke"
_ALLOWED_METHODS = {HEALTH_PATH: "GET, HEAD", INVOKE_PATH: "POST"}


class PayloadError(ValueError):
    """The payload of ``POST /invoke`` is invalid; ``field`` names the offending field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotReady(Exception):
    """Raised by ``info()`` while the service cannot serve (its message is the reason)."""


class Unavailable(Exception):
    """Raised by ``invoke()`` when a dependency it needs failed; a 503, not a bug."""


@runtime_checkable
class Workload(Protocol):
    """What a sample service provides to the HTTP server.

    ``invoke`` may be called from several request threads at once: a service that keeps
    state guards it with a lock.
    """

    name: str

    def info(self) -> dict[str, Any]:
        """Facts shown by ``GET /healthz`` next to ``status`` and ``service``."""
        ...

    def invoke(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Compute the result for one payload; raise :class:`PayloadError` for bad input."""
        ...


# --- payload field checks shared by the services ------------------------------------------------


def field_path(name: str) -> str:
    """The name of a payload field as reported in errors, e.g. ``payload.value``."""
    return f"payload.{name}"


def require_str(payload: dict[str, Any], name: str, *, min_len: int = 1, max_len: int) -> str:
    """The string field ``name``, checked for presence, type and length."""
    if name not in payload:
        raise PayloadError(f"'{name}' is required", field_path(name))
    value = payload[name]
    if not isinstance(value, str):
        raise PayloadError(f"'{name}' must be a string", field_path(name))
    if not min_len <= len(value) <= max_len:
        raise PayloadError(
            f"'{name}' must be {min_len}..{max_len} characters long (got {len(value)})", field_path(name)
        )
    return value


def as_finite_number(value: object, field: str, *, max_abs: float | None = None) -> float:
    """``value`` as a float when it is a finite JSON number (not a bool) within ``±max_abs``.

    Anything else is a :class:`PayloadError` naming ``field``: a non-number, NaN or infinity
    (the JSON literal ``1e400`` parses to infinity), a number beyond ``max_abs``, and an integer
    too large for a float at all (``1`` followed by 400 zeros), whatever ``max_abs`` is.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError("must be a number", field)
    if isinstance(value, int):
        # Compared as an int (exact), before float() could overflow on it.
        if max_abs is not None and abs(value) > max_abs:
            raise PayloadError(f"must be within ±{max_abs:g}", field)
        try:
            return float(value)
        except OverflowError:
            raise PayloadError(f"number too large: must be within ±{sys.float_info.max:.6g}", field) from None
    if not math.isfinite(value):
        raise PayloadError("must be a finite number", field)
    if max_abs is not None and abs(value) > max_abs:
        raise PayloadError(f"must be within ±{max_abs:g}", field)
    return value


def as_int(value: object, field: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` when it is a JSON integer (not a bool) within the bounds, else a PayloadError.

    A service should give both bounds: an integer without any (``10**400`` is valid JSON) may
    be more than the service, or the clients its results go back to, can handle.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError("must be an integer", field)
    if minimum is not None and value < minimum:
        raise PayloadError(f"must be >= {minimum}", field)
    if maximum is not None and value > maximum:
        raise PayloadError(f"must be <= {maximum}", field)
    return value


# --- HTTP ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ErrorReply:
    status: HTTPStatus
    code: str
    message: str
    field: str | None = None

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class WorkloadHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server bound to one workload; request threads are daemons."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # socketserver's default of 5 turned bursts of new connections into timeouts

    def __init__(self, address: tuple[str, int], workload: Workload) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.workload = workload
        super().__init__(address, WorkloadRequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A traceback for an exception that escaped a handler, unless the client just went away.

        The handler already ends a connection quietly when its client resets it, breaks the
        pipe or times out; this is the net for the same events outside ``handle()`` (setting
        up or finishing the connection).
        """
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host (slow or hanging offline)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    @property
    def url(self) -> str:
        host = self.server_name  # the bound address as text (server_bind)
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.server_port}"


class WorkloadRequestHandler(BaseHTTPRequestHandler):
    """Routes ``/healthz`` and ``/invoke``; every reply is JSON with a Content-Length."""

    protocol_version = "HTTP/1.1"
    server_version = "mec-workload/1"
    sys_version = ""
    timeout = IDLE_CONNECTION_TIMEOUT_S
    # Buffer each reply and send it in one piece (the base class flushes after every request),
    # and disable Nagle: a reply split in two writes would otherwise wait for the client's
    # delayed ACK (≈ 40 ms) on a keep-alive connection.
    wbufsize = 64 * 1024
    server: WorkloadHTTPServer
    _request_under_way = False
    """True once a request line was read, until the next one: a client leaving then is noted."""

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):  # an optimisation only; the client may be gone already
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        """Serve one request; a client that resets or breaks the connection only ends it.

        The base class already ends a connection quietly on a timeout (an idle keep-alive
        connection, or a client that stalls mid-request). A reset or a broken pipe would
        otherwise escape to ``handle_error`` and print a traceback: here it closes the
        connection with one line on stderr when a request was under way, and none when the
        client dropped an idle keep-alive connection.
        """
        self._request_under_way = False
        try:
            super().handle_one_request()
        except ConnectionError as exc:
            self.close_connection = True
            if self._request_under_way:
                self._note_client_gone(f"{type(exc).__name__}: {exc.strerror or exc}")

    def parse_request(self) -> bool:
        self._request_under_way = True
        return super().parse_request()

    def handle_expect_100(self) -> bool:
        """Send ``100 Continue`` now: the buffered writer would hold it until the final reply.

        A client that sent ``Expect: 100-continue`` (curl does for bodies over 1 KiB) waits
        for it before sending the body.
        """
        accepted = super().handle_expect_100()
        self.wfile.flush()
        return accepted

    def finish(self) -> None:
        """Close the streams; a reply still buffered for a client that is gone is dropped."""
        try:
            super().finish()
        except (ConnectionError, TimeoutError):
            with contextlib.suppress(OSError):
                self.rfile.close()

    def version_string(self) -> str:
        return self.server_version

    # routing -------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def do_OPTIONS(self) -> None:
        self._route("OPTIONS")

    def _route(self, method: str) -> None:
        path = urlsplit(self.path).path
        if path == HEALTH_PATH and method in ("GET", "HEAD"):
            self._discard_body()
            self._reply_health(include_body=method == "GET")
        elif path == INVOKE_PATH and method == "POST":
            self._reply_invoke()
        elif path in _ALLOWED_METHODS:
            self._discard_body()
            self._send_error(
                _ErrorReply(
                    HTTPStatus.METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    f"{method} is not allowed on {path}; use {_ALLOWED_METHODS[path]}",
                ),
                headers={"Allow": _ALLOWED_METHODS[path]},
                include_body=method != "HEAD",
            )
        else:
            self._discard_body()
            self._send_error(
                _ErrorReply(HTTPStatus.NOT_FOUND, "not_found", f"no such path: {path}"),
                include_body=method != "HEAD",
            )

    # handlers ------------------------------------------------------------------------------------

    def _reply_health(self, *, include_body: bool) -> None:
        workload = self.server.workload
        try:
            extra = workload.info()
        except NotReady as exc:
            body = {"status": "not_ready", "service": workload.name, "reason": str(exc)}
            self._send_json(HTTPStatus.SERVICE_UNAVAILABLE, body, include_body)
            return
        except Exception:
            self._log_exception("info()")
            self._send_error(
                _ErrorReply(HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error", "health check failed")
            )
            return
        self._send_json(HTTPStatus.OK, {"status": "ok", "service": workload.name, **extra}, include_body)

    def _reply_invoke(self) -> None:
        body = self._read_body()
        if body is None:
            return
        payload = _decode_payload(body)
        if isinstance(payload, _ErrorReply):
            self._send_error(payload)
            return
        try:
            result = self.server.workload.invoke(payload)
            encoded = _encode(result)
        except PayloadError as exc:
            self._send_error(
                _ErrorReply(HTTPStatus.UNPROCESSABLE_ENTITY, "invalid_payload", exc.message, exc.field)
            )
            return
        except Unavailable as exc:
            self._send_error(_ErrorReply(HTTPStatus.SERVICE_UNAVAILABLE, "unavailable", str(exc)))
            return
        except Exception as exc:
            self._log_exception("invoke()")
            self._send_error(
                _ErrorReply(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    "internal_error",
                    f"internal error ({type(exc).__name__})",
                )
            )
            return
        self._send_bytes(HTTPStatus.OK, encoded)

    # body ----------------------------------------------------------------------------------------

    def _content_length(self) -> int | None:
        """The declared body length; None (after replying) when it is missing or invalid."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._send_error(
                _ErrorReply(HTTPStatus.LENGTH_REQUIRED, "length_required", "chunked bodies are not accepted")
            )
            return None
        raw = self.headers.get("Content-Length")
        if raw is None:
            self._send_error(
                _ErrorReply(
                    HTTPStatus.LENGTH_REQUIRED, "length_required", "a Content-Length header is required"
                )
            )
            return None
        try:
            length = int(raw)
            if length < 0:
                raise ValueError(raw)
        except ValueError:
            self.close_connection = True
            self._send_error(
                _ErrorReply(HTTPStatus.BAD_REQUEST, "invalid_content_length", f"bad Content-Length: {raw!r}")
            )
            return None
        return length

    def _read_body(self) -> bytes | None:
        length = self._content_length()
        if length is None:
            return None
        if length > MAX_BODY_BYTES:
            # The body is left unread: the connection cannot be reused after this reply.
            self.close_connection = True
            self._send_error(
                _ErrorReply(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    "payload_too_large",
                    f"body of {length} bytes is over the limit of {MAX_BODY_BYTES} bytes",
                )
            )
            return None
        body = self.rfile.read(length)
        if len(body) != length:
            # The client closed its side early (an aborted upload); the reply reaches it only
            # if it still reads (a half-close), and is dropped quietly if not.
            self.close_connection = True
            self._note_client_gone(f"the body ended after {len(body)} of {length} bytes")
            self._send_error(_ErrorReply(HTTPStatus.BAD_REQUEST, "incomplete_body", "body ended early"))
            return None
        return body

    def _discard_body(self) -> None:
        """Read and drop a body the route does not use, so the connection stays usable."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self.close_connection = True
            return
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
        elif length:
            self.rfile.read(length)

    # replies -------------------------------------------------------------------------------------

    def _send_json(self, status: HTTPStatus, body: dict[str, Any], include_body: bool = True) -> None:
        self._send_bytes(status, _encode(body), include_body=include_body)

    def _send_error(
        self, reply: _ErrorReply, *, headers: dict[str, str] | None = None, include_body: bool = True
    ) -> None:
        self._send_bytes(reply.status, _encode(reply.body()), headers=headers, include_body=include_body)

    def _send_bytes(
        self,
        status: HTTPStatus,
        encoded: bytes,
        *,
        headers: dict[str, str] | None = None,
        include_body: bool = True,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(encoded)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if include_body:
            self.wfile.write(encoded)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors raised by the base class (bad request line, ...) as JSON too."""
        self.close_connection = True
        try:
            status = HTTPStatus(code)
        except ValueError:
            status = HTTPStatus.BAD_REQUEST
        text = message or status.phrase
        self._send_error(
            _ErrorReply(status, status.phrase.lower().replace(" ", "_").replace("-", "_"), text),
            include_body=getattr(self, "command", None) != "HEAD" and code >= 200 and code not in (204, 304),
        )
        self.wfile.flush()

    # logging -------------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        """Access logs stay quiet; the start line and tracebacks are what goes to stderr."""

    def _log_exception(self, where: str) -> None:
        sys.stderr.write(
            f"{self.server.workload.name}: unexpected error in {where}\n{traceback.format_exc()}"
        )
        sys.stderr.flush()

    def _note_client_gone(self, what: str) -> None:
        """One line on stderr for a request the client cut short (never a traceback)."""
        host, port = self.client_address[:2]
        command, path = getattr(self, "command", None), getattr(self, "path", None)
        request = f"{command} {urlsplit(path).path}" if command and path else "a request"
        sys.stderr.write(f"{self.server.workload.name}: {request} from {host}:{port} cut short: {what}\n")
        sys.stderr.flush()


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _decode_payload(body: bytes) -> dict[str, Any] | _ErrorReply:
    """The JSON object in ``body``, or the error reply for a body that is not one.

    An integer literal with more digits than ``int()`` reads (``sys.get_int_max_str_digits()``,
    4300 by default) makes ``json.loads`` fail like invalid JSON; the body is then parsed again
    with such integers kept as markers, so that the reply is a 422 naming the field.
    """
    markers = False
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except RecursionError as exc:
        return _ErrorReply(HTTPStatus.BAD_REQUEST, "invalid_json", f"body is not valid JSON: {exc}")
    except ValueError as exc:
        try:
            payload = json.loads(body, parse_constant=_reject_constant, parse_int=_int_or_too_long)
        except (ValueError, RecursionError):
            return _ErrorReply(HTTPStatus.BAD_REQUEST, "invalid_json", f"body is not valid JSON: {exc}")
        markers = True
    if not isinstance(payload, dict):
        return _ErrorReply(HTTPStatus.BAD_REQUEST, "invalid_body", "body must be a JSON object", "payload")
    found = _find_too_long_integer(payload) if markers else None
    if found is not None:
        field, marker = found
        return _ErrorReply(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "invalid_payload",
            f"number too large: an integer of {marker.digits} digits "
            f"(at most {sys.get_int_max_str_digits()} can be read)",
            field,
        )
    return payload


class _TooLongInteger:
    """Stands in for an integer literal with more digits than ``int()`` accepts."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _int_or_too_long(literal: str) -> int | _TooLongInteger:
    try:
        return int(literal)
    except ValueError:  # over sys.get_int_max_str_digits()
        return _TooLongInteger(len(literal.lstrip("-")))


def _find_too_long_integer(payload: dict[str, Any]) -> tuple[str, _TooLongInteger] | None:
    """The field path (``payload.values[3]``) and marker of the first too-long integer, if any."""
    stack: list[tuple[object, str]] = [(payload, "payload")]
    while stack:  # depth first, in document order, without recursion (the JSON may be deep)
        value, path = stack.pop()
        if isinstance(value, _TooLongInteger):
            return path, value
        if isinstance(value, dict):
            stack.extend((child, f"{path}.{key}") for key, child in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((value[i], f"{path}[{i}]") for i in reversed(range(len(value))))
    return None


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")


# --- process entry point -------------------------------------------------------------------------


def _parse_port(raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {raw!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0..65535: {port}")
    return port


def parse_args(name: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``--host`` (env MEC_WORKLOAD_HOST, default 127.0.0.1) and ``--port`` (env MEC_WORKLOAD_PORT)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m workloads.{name}", description=f"Run the {name} workload."
    )
    parser.add_argument(
        "--host",
        default=os.environ.get(HOST_ENV) or DEFAULT_HOST,
        help=f"address to bind (env {HOST_ENV}, default {DEFAULT_HOST})",
    )
    env_port = os.environ.get(PORT_ENV)
    parser.add_argument(
        "--port",
        type=_parse_port,
        default=env_port,
        required=not env_port,
        help=f"port to bind, 0 for any free port (env {PORT_ENV}; required one way or the other)",
    )
    return parser.parse_args(argv)


def serve(workload: Workload, host: str, port: int, stop: threading.Event) -> None:
    """Serve ``workload`` until ``stop`` is set, then close the listening socket."""
    server = WorkloadHTTPServer((host, port), workload)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"{workload.name}-http", daemon=True
    )
    thread.start()
    sys.stderr.write(f"{workload.name} listening on {server.url}\n")
    sys.stderr.flush()
    try:
        while not stop.wait(1.0):
            if not thread.is_alive():
                raise RuntimeError("the HTTP server thread stopped unexpectedly")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5.0)


def main(service_factory: Callable[[], Workload], argv: Sequence[str] | None = None) -> int:
    """Parse the command line, build the service, serve it; SIGTERM/SIGINT stop it with exit 0."""
    name = getattr(service_factory, "name", None) or getattr(service_factory, "__name__", "workload")
    args = parse_args(str(name), argv)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    # Build the service before binding, so /healthz only answers once the service is ready.
    try:
        workload = service_factory()
    except Exception as exc:
        sys.stderr.write(f"{name}: cannot start: {exc}\n")
        return 1
    try:
        serve(workload, args.host, args.port, stop)
    except OSError as exc:
        sys.stderr.write(f"{workload.name}: cannot serve on {args.host}:{args.port}: {exc}\n")
        return 1
    sys.stderr.write(f"{workload.name} stopped\n")
    return 0
