"""A stand-in cloud compute endpoint: a real HTTP server in a process of its own, implementing the
cloud endpoint contract (`swarm.cloud`), with latency and failures set while it runs.

Run it as `python -m tests.support.cloud_endpoint --port P [--token T]` (stdlib only, so it
starts in a fraction of a second), or drive it from a test or a benchmark with `CloudEndpoint`
(start, stop, restart on the same port, `control`, `stats`); the `cloud_endpoint` fixture of
`tests/conftest.py` gives a started one.

* `POST <any other path>`: the contract. The envelope must be
  `{"service", "client": {"kind", "id"}, "payload", "latency_budget_ms"}` (else 400 with the
  field); with `--token`, `Authorization: Bearer <token>` must match (else 401). The answer is
  200 `{"result": {"service", "payload", "digest", "budget_ms"}}`, where `digest` is the first
  16 hex digits of the SHA-256 of the payload's canonical JSON (deterministic: `digest()`); a
  payload `{"reject": true}` is refused with a 422 naming the field `reject`.
* `POST /_control {"latency_ms": 20, "fail": "none", "reset": false}`: from now on every
  request waits `latency_ms` before it is answered, and `fail` is `none`; `close` (the
  connection is closed before any answer); `hang` (no answer, up to `HANG_MAX_S`, then
  closed); `not_json` (a 200 whose body is not JSON); or an HTTP status from 400 to 599 to
  answer with (with a JSON error; 429 carries `Retry-After: 2`). Fields left out keep their
  value; `reset` zeroes the counters. A change wakes the requests already waiting: they are
  answered at once, as the new `fail` says.
* `GET /_stats`: `requests` (contract requests received), `completed` (answered 200),
  the current `latency_ms` and `fail`, and `last` (the latest request's path, envelope and
  `Authorization` and `X-Mec-Site` headers).
* `GET /healthz`: 200.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from api.launcher import ChildProcess, StopsOnExit, http_ready
from tools.runtimes.base import free_port

HANG_MAX_S = 60.0
"""The longest a `hang` (or a latency) holds a request before it is answered or closed."""
MAX_BODY_BYTES = 4 * 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


class _State:
    """What the endpoint is told to do, and what it has seen; shared by its handler threads."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.lock = threading.Lock()
        self.latency_ms = 0.0
        self.fail = "none"
        self.changed = threading.Event()
        """Set (and replaced) on each change, waking the requests that wait."""
        self.requests = 0
        self.completed = 0
        self.last: dict[str, Any] | None = None

    def control(self, update: dict[str, Any]) -> dict[str, Any]:
        latency = update.get("latency_ms", self.latency_ms)
        fail = str(update.get("fail", self.fail))
        if not isinstance(latency, int | float) or not 0 <= latency <= HANG_MAX_S * 1000:
            raise ValueError(f"latency_ms must be a number from 0 to {HANG_MAX_S * 1000:g}")
        if fail not in ("none", "close", "hang", "not_json") and not (
            fail.isdigit() and 400 <= int(fail) <= 599
        ):
            raise ValueError("fail must be none, close, hang, not_json or an HTTP status from 400 to 599")
        with self.lock:
            self.latency_ms, self.fail = float(latency), fail
            if update.get("reset"):
                self.requests = self.completed = 0
                self.last = None
            woken, self.changed = self.changed, threading.Event()
        woken.set()
        return self.stats()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "completed": self.completed,
                "latency_ms": self.latency_ms,
                "fail": self.fail,
                "last": self.last,
            }


def _digest(payload: Any) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _envelope_error(envelope: Any) -> str | None:
    """The first field of the envelope that breaks the contract, or None."""
    if not isinstance(envelope, dict):
        return "body"
    if not isinstance(envelope.get("service"), str):
        return "service"
    client = envelope.get("client")
    if not isinstance(client, dict) or not isinstance(client.get("kind"), str) or "id" not in client:
        return "client"
    if "payload" not in envelope:
        return "payload"
    budget = envelope.get("latency_budget_ms")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        return "latency_budget_ms"
    return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    """Headers and body go out in two writes: with Nagle on, the body waits for the client's
    delayed ACK of the headers (40 ms on Linux), which no real endpoint adds."""
    state: _State  # set on the subclass `serve` builds

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str, field: str | None = None) -> None:
        self._answer(status, {"error": {"code": code, "message": message, "field": field}})

    def _hang_up(self) -> None:
        """Close the connection without a byte of answer."""
        self.close_connection = True

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._answer(200, {"status": "ok"})
        elif self.path == "/_stats":
            self._answer(200, self.state.stats())
        else:
            self._error(404, "not_found", f"no {self.path}")

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY_BYTES:
            self._error(413, "too_large", "the body is too large")
            self.close_connection = True
            return
        body = self.rfile.read(length)
        if self.path == "/_control":
            try:
                update = json.loads(body or b"{}")
                if not isinstance(update, dict):
                    raise ValueError("the control body must be a JSON object")
                self._answer(200, self.state.control(update))
            except ValueError as exc:
                self._error(400, "invalid_control", str(exc))
            return
        self._invoke(body)

    def _invoke(self, body: bytes) -> None:
        state = self.state
        try:
            envelope = json.loads(body)
        except ValueError:
            envelope = None
        with state.lock:
            state.requests += 1
            state.last = {
                "path": self.path,
                "envelope": envelope,
                "authorization": self.headers.get("authorization"),
                "site": self.headers.get("x-mec-site"),
            }
            latency_ms, fail, changed = state.latency_ms, state.fail, state.changed
        if fail == "close":
            self._hang_up()
            return
        if fail == "hang" or latency_ms > 0:
            woken = changed.wait(HANG_MAX_S if fail == "hang" else latency_ms / 1000)
            if woken:  # told something new while waiting: answer as it now says
                with state.lock:
                    fail = state.fail
            if fail in ("hang", "close"):
                self._hang_up()
                return
        if fail == "not_json":
            data = b"all good"
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if fail != "none":
            status = int(fail)
            headers = {"retry-after": "2"} if status == 429 else None
            self._answer(
                status,
                {"error": {"code": f"injected_{status}", "message": "injected failure", "field": None}},
                headers,
            )
            return
        if state.token is not None and self.headers.get("authorization") != f"Bearer {state.token}":
            self._error(401, "unauthorized", "a valid bearer token is needed")
            return
        field = _envelope_error(envelope)
        if field is not None:
            self._error(400, "invalid_envelope", f"the envelope's {field} breaks the contract", field)
            return
        assert isinstance(envelope, dict)
        payload = envelope["payload"]
        if isinstance(payload, dict) and payload.get("reject"):
            self._error(422, "invalid_payload", "the payload asks to be rejected", "reject")
            return
        result = {
            "service": envelope["service"],
            "payload": payload,
            "digest": _digest(payload),
            "budget_ms": envelope["latency_budget_ms"],
        }
        self._answer(200, {"result": result})
        with state.lock:
            state.completed += 1


def serve(host: str, port: int, token: str | None) -> None:
    handler = type("Handler", (_Handler,), {"state": _State(token)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    print(f"cloud endpoint listening on http://{host}:{port}", flush=True)
    server.serve_forever()


def digest(payload: Any) -> str:
    """The `digest` the stand-in puts in its result for `payload`."""
    return _digest(payload)


class CloudEndpoint(StopsOnExit):
    """The stand-in as a child process on a fixed loopback port: start, stop, restart, control.

    `port` defaults to a free one, kept across restarts."""

    def __init__(self, port: int | None = None, token: str | None = None, log: Path | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.token = token
        self.log = log
        self._proc: ChildProcess | None = None

    def url(self, path: str = "/invoke") -> str:
        """The contract's URL, as a service's `cloud_url`."""
        return f"http://{self.host}:{self.port}{path}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.running

    def start(self, timeout_s: float = 15.0) -> Self:
        self.stop()
        args = [sys.executable, "-m", "tests.support.cloud_endpoint", "--host", self.host]
        args += ["--port", str(self.port)] + (["--token", self.token] if self.token else [])
        self._proc = ChildProcess(args, name="cloud-endpoint", cwd=ROOT, log=self.log).start()
        self._proc.wait_ready(lambda: http_ready(self.url("/healthz")), timeout_s=timeout_s)
        return self

    def stop(self) -> None:
        """Stop the process (by pid); its port is free for `start()` again."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.stop()

    def restart(self) -> Self:
        return self.start()

    def control(
        self, latency_ms: float | None = None, fail: str | None = None, reset: bool = False
    ) -> dict[str, Any]:
        """Change what it does from now on (None: keep); returns its stats."""
        update: dict[str, Any] = {"reset": reset}
        if latency_ms is not None:
            update["latency_ms"] = latency_ms
        if fail is not None:
            update["fail"] = fail
        return self._call("POST", "/_control", update)

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_stats")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"content-type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
            if response.status != 200:
                raise RuntimeError(f"{method} {path} answered {response.status}: {answer}")
            return dict(answer)
        finally:
            conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", default=None)
    args = parser.parse_args()
    serve(args.host, args.port, args.token)


if __name__ == "__main__":
    main()
