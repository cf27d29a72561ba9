"""The workloads over HTTP/1.1 with keep-alive: as real processes, and in-process where stderr is checked.

No assertion here depends on how fast anything is (that is ``bench/workload_bench.py``); waits
poll for a condition up to a generous deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from api.launcher import ChildProcess, http_ready
from tools.runtimes.base import free_port
from workloads import game_state, inference, sensor
from workloads.sensor import SensorService
from workloads.server import MAX_BODY_BYTES, PayloadError, WorkloadHTTPServer, WorkloadRequestHandler

REPO_ROOT = Path(__file__).resolve().parents[3]
START_TIMEOUT_S = 30.0

EXAMPLES: dict[str, dict[str, Any]] = {
    "inference": inference.EXAMPLE_PAYLOAD,
    "sensor": sensor.EXAMPLE_PAYLOAD,
    "game_state": game_state.EXAMPLE_PAYLOAD,
}
INVALID_FIELD: dict[str, tuple[dict[str, Any], str]] = {
    "inference": ({"text": 5}, "payload.text"),
    "sensor": ({"sensor_id": "s", "value": "hot"}, "payload.value"),
    "game_state": (
        {"session_id": "s", "player_id": "p", "seq": -4, "state": {"x": 1, "y": 1}},
        "payload.seq",
    ),
}


@dataclass
class RunningWorkload:
    name: str
    port: int
    process: ChildProcess
    stderr_path: Path

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def stderr(self) -> str:
        return self.stderr_path.read_text()


def _start(name: str, tmp_path: Path, *, port_by_env: bool = False) -> RunningWorkload:
    """`python -m workloads.NAME` on a free port, once its /healthz answers 200."""
    port = free_port()
    env = {**os.environ, "MEC_WORKLOAD_DEVICE": "python", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", f"workloads.{name}"]
    if port_by_env:
        env["MEC_WORKLOAD_PORT"] = str(port)
    else:
        command += ["--port", str(port)]
    stderr_path = tmp_path / f"{name}-{port}.stderr"
    process = ChildProcess(command, name=name, cwd=REPO_ROOT, env=env, log=stderr_path).start()
    process.wait_ready(lambda: http_ready(f"http://127.0.0.1:{port}/healthz"), START_TIMEOUT_S)
    return RunningWorkload(name, port, process, stderr_path)


@pytest.fixture(scope="module", params=sorted(EXAMPLES))
def workload(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningWorkload]:
    running = _start(request.param, tmp_path_factory.mktemp("workloads"))
    try:
        yield running
    finally:
        running.process.stop()


@pytest.fixture
def connection(workload: RunningWorkload) -> Iterator[http.client.HTTPConnection]:
    conn = workload.connect()
    try:
        yield conn
    finally:
        conn.close()


def _exchange(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
) -> tuple[http.client.HTTPResponse, dict[str, Any]]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    raw = response.read()
    assert response.getheader("Content-Type") == "application/json"
    assert int(response.getheader("Content-Length", "")) == len(raw)
    return response, json.loads(raw)


def _assert_error(body: dict[str, Any], code: str, field: str | None = None) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["code"] == code
    assert body["error"]["field"] == field
    assert "Traceback" not in body["error"]["message"]


def test_healthz_reports_ok_and_the_service_name(
    workload: RunningWorkload, connection: http.client.HTTPConnection
) -> None:
    response, body = _exchange(connection, "GET", "/healthz")

    assert response.status == 200
    assert body["status"] == "ok"
    assert body["service"] == workload.name


def test_two_invocations_share_one_keep_alive_connection(
    workload: RunningWorkload, connection: http.client.HTTPConnection
) -> None:
    payload = json.dumps(EXAMPLES[workload.name]).encode()

    first, first_body = _exchange(connection, "POST", "/invoke", payload)
    socket_after_first = connection.sock
    second, second_body = _exchange(connection, "POST", "/invoke", payload)

    assert (first.status, second.status) == (200, 200)
    assert not first.will_close
    assert connection.sock is socket_after_first is not None
    assert "error" not in first_body
    assert "error" not in second_body


@pytest.mark.parametrize("workload", ["inference"], indirect=True)
def test_inference_answers_with_a_label_over_http(connection: http.client.HTTPConnection) -> None:
    response, body = _exchange(
        connection, "POST", "/invoke", b'{"text": "navigate to the nearest gas station"}'
    )

    assert response.status == 200
    assert body["label"] == "navigation"
    assert body["device"] == "cpu"


@pytest.mark.parametrize("workload", ["sensor"], indirect=True)
def test_each_reply_on_a_keep_alive_connection_arrives_in_one_piece(workload: RunningWorkload) -> None:
    """A reply written in pieces would wait for the client's delayed ACK (≈ 40 ms) each time.

    One write of a few hundred bytes on loopback is one segment, which a single ``recv`` returns
    whole; how fast the replies come is measured by ``bench/workload_bench.py``.
    """
    with socket.create_connection(("127.0.0.1", workload.port), timeout=10) as raw:
        for value in range(5):
            body = json.dumps({"sensor_id": "one-piece", "value": value}).encode()
            raw.sendall(
                b"POST /invoke HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )

            reply = raw.recv(65536)

            head, _, rest = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 "), reply
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            assert len(rest) == length, reply
            assert json.loads(rest)["count"] == value + 1


@pytest.mark.parametrize("workload", ["sensor"], indirect=True)
def test_head_healthz_sends_headers_only(connection: http.client.HTTPConnection) -> None:
    connection.request("HEAD", "/healthz")
    response = connection.getresponse()

    assert response.status == 200
    assert int(response.getheader("Content-Length", "")) > 0
    assert response.read() == b""


def test_invalid_json_is_400_and_the_connection_stays_usable(
    workload: RunningWorkload, connection: http.client.HTTPConnection
) -> None:
    response, body = _exchange(connection, "POST", "/invoke", b'{"text": ')
    assert response.status == 400
    _assert_error(body, "invalid_json")

    again, _ = _exchange(connection, "POST", "/invoke", json.dumps(EXAMPLES[workload.name]).encode())
    assert again.status == 200


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"null", b"42"])
def test_body_that_is_not_an_object_is_400(connection: http.client.HTTPConnection, body: bytes) -> None:
    response, error = _exchange(connection, "POST", "/invoke", body)

    assert response.status == 400
    _assert_error(error, "invalid_body", "payload")


def test_non_finite_json_constants_are_400(connection: http.client.HTTPConnection) -> None:
    response, error = _exchange(connection, "POST", "/invoke", b'{"value": NaN}')

    assert response.status == 400
    _assert_error(error, "invalid_json")


def test_invalid_field_is_422_naming_the_field(
    workload: RunningWorkload, connection: http.client.HTTPConnection
) -> None:
    payload, field = INVALID_FIELD[workload.name]

    response, body = _exchange(connection, "POST", "/invoke", json.dumps(payload).encode())

    assert response.status == 422
    _assert_error(body, "invalid_payload", field)


HUGE = "1" + "0" * 400
"""An integer JSON parses, but too large for a float: ``float(10**400)`` raises OverflowError."""
UNREADABLE = "9" * 5000
"""An integer over Python's int max str digits limit (4300): ``json.loads`` refuses it."""
GAME = '{{"session_id": "s", "player_id": "p", "seq": {seq}, "state": {state}}}'


@pytest.mark.parametrize(
    ("workload", "body", "field"),
    [
        ("sensor", f'{{"sensor_id": "s", "value": {HUGE}}}', "payload.value"),
        ("sensor", f'{{"sensor_id": "s", "value": -{HUGE}}}', "payload.value"),
        ("sensor", f'{{"sensor_id": "s", "values": [1, 2.5, {HUGE}]}}', "payload.values[2]"),
        ("game_state", GAME.format(seq=HUGE, state='{"x": 1, "y": 1}'), "payload.seq"),
        ("game_state", GAME.format(seq=1, state=f'{{"x": {HUGE}, "y": 1}}'), "payload.state.x"),
        ("game_state", GAME.format(seq=1, state=f'{{"x": 1, "y": -{HUGE}}}'), "payload.state.y"),
        ("game_state", GAME.format(seq=1, state=f'{{"x": 1, "y": 1, "hp": {HUGE}}}'), "payload.state.hp"),
        (
            "game_state",
            GAME.format(seq=1, state=f'{{"x": 1, "y": 1, "score": {HUGE}}}'),
            "payload.state.score",
        ),
        ("inference", f'{{"text": {HUGE}}}', "payload.text"),
    ],
    indirect=["workload"],
)
def test_huge_integer_value_is_422_naming_the_field(
    workload: RunningWorkload, connection: http.client.HTTPConnection, body: str, field: str
) -> None:
    response, error = _exchange(connection, "POST", "/invoke", body.encode())

    assert response.status == 422
    _assert_error(error, "invalid_payload", field)
    again, _ = _exchange(connection, "POST", "/invoke", json.dumps(EXAMPLES[workload.name]).encode())
    assert again.status == 200


@pytest.mark.parametrize(
    ("workload", "body", "field"),
    [
        ("sensor", f'{{"sensor_id": "s", "value": {UNREADABLE}}}', "payload.value"),
        ("sensor", f'{{"sensor_id": "s", "values": [1, 2, -{UNREADABLE}]}}', "payload.values[2]"),
        ("game_state", GAME.format(seq=UNREADABLE, state='{"x": 1, "y": 1}'), "payload.seq"),
        (
            "game_state",
            GAME.format(seq=1, state=f'{{"x": 1, "y": 1, "score": {UNREADABLE}}}'),
            "payload.state.score",
        ),
        ("inference", f'{{"text": "hi", "extra": {{"n": [{UNREADABLE}]}}}}', "payload.extra.n[0]"),
    ],
    indirect=["workload"],
)
def test_integer_too_long_to_parse_is_422_naming_the_field(
    workload: RunningWorkload, connection: http.client.HTTPConnection, body: str, field: str
) -> None:
    response, error = _exchange(connection, "POST", "/invoke", body.encode())

    assert response.status == 422
    _assert_error(error, "invalid_payload", field)
    assert "number too large" in error["error"]["message"]
    again, _ = _exchange(connection, "POST", "/invoke", json.dumps(EXAMPLES[workload.name]).encode())
    assert again.status == 200


@pytest.mark.parametrize(
    ("workload", "body", "field"),
    [
        ("sensor", '{"sensor_id": "s", "value": 1e400}', "payload.value"),
        ("sensor", '{"sensor_id": "s", "values": [1, -1e400]}', "payload.values[1]"),
        ("game_state", GAME.format(seq=1, state='{"x": 1e400, "y": 1}'), "payload.state.x"),
    ],
    indirect=["workload"],
)
def test_float_literal_beyond_the_double_range_is_422_naming_the_field(
    connection: http.client.HTTPConnection, body: str, field: str
) -> None:
    response, error = _exchange(connection, "POST", "/invoke", body.encode())

    assert response.status == 422
    _assert_error(error, "invalid_payload", field)


@pytest.mark.parametrize("body", [f"[{UNREADABLE}]".encode(), UNREADABLE.encode()], ids=["list", "number"])
def test_too_long_integer_in_a_body_that_is_not_an_object_is_400(
    connection: http.client.HTTPConnection, body: bytes
) -> None:
    response, error = _exchange(connection, "POST", "/invoke", body)

    assert response.status == 400
    _assert_error(error, "invalid_body", "payload")


def test_unknown_path_is_404(connection: http.client.HTTPConnection) -> None:
    for method, body in (("GET", None), ("POST", b"{}")):
        response, error = _exchange(connection, method, "/v1/nothing-here", body)
        assert response.status == 404
        _assert_error(error, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("GET", "/invoke", "POST"), ("PUT", "/invoke", "POST"), ("POST", "/healthz", "GET, HEAD")],
)
def test_wrong_method_is_405_with_allow(
    connection: http.client.HTTPConnection, method: str, path: str, allow: str
) -> None:
    response, error = _exchange(connection, method, path, b"{}" if method != "GET" else None)

    assert response.status == 405
    assert response.getheader("Allow") == allow
    _assert_error(error, "method_not_allowed")


def test_body_over_one_mebibyte_is_413_without_being_read(connection: http.client.HTTPConnection) -> None:
    connection.putrequest("POST", "/invoke")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    connection.endheaders()  # the body is never sent: the reply must come from the header alone

    response = connection.getresponse()
    body = json.loads(response.read())

    assert response.status == 413
    assert response.will_close
    _assert_error(body, "payload_too_large")


def test_body_without_content_length_is_411(connection: http.client.HTTPConnection) -> None:
    connection.putrequest("POST", "/invoke")
    connection.endheaders()

    response = connection.getresponse()

    assert response.status == 411
    _assert_error(json.loads(response.read()), "length_required")


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_sigterm_stops_the_workload_with_exit_code_zero(name: str, tmp_path: Path) -> None:
    running = _start(name, tmp_path)
    try:
        idle = running.connect()
        idle.request("GET", "/healthz")
        idle.getresponse().read()  # an open keep-alive connection must not hold the shutdown

        os.kill(running.process.pid, signal.SIGTERM)

        assert running.process.wait(timeout=10) == 0
        idle.close()
        assert f"{name} listening on http://127.0.0.1:{running.port}" in running.stderr()
    finally:
        running.process.stop()


def test_port_can_come_from_the_environment(tmp_path: Path) -> None:
    running = _start("sensor", tmp_path, port_by_env=True)
    try:
        os.kill(running.process.pid, signal.SIGTERM)
        assert running.process.wait(timeout=10) == 0
    finally:
        running.process.stop()


def test_missing_port_is_a_usage_error() -> None:
    env = {key: value for key, value in os.environ.items() if key != "MEC_WORKLOAD_PORT"}

    completed = subprocess.run(
        [sys.executable, "-m", "workloads.sensor"], cwd=REPO_ROOT, env=env, capture_output=True, timeout=60
    )

    assert completed.returncode == 2
    assert b"--port" in completed.stderr


def test_service_that_cannot_be_built_exits_with_code_one() -> None:
    env = {**os.environ, "MEC_WORKLOAD_DEVICE": "abacus"}

    completed = subprocess.run(
        [sys.executable, "-m", "workloads.inference", "--port", str(free_port())],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )

    assert completed.returncode == 1
    assert b"inference: cannot start" in completed.stderr
    assert b"MEC_WORKLOAD_DEVICE" in completed.stderr


class _BrokenWorkload:
    """A real workload whose invoke fails the way a bug would."""

    name = "broken"

    def info(self) -> dict[str, Any]:
        return {"flavour": "broken"}

    def invoke(self, payload: dict[str, Any]) -> dict[str, Any]:
        if payload.get("bad"):
            raise PayloadError("bad is not allowed", "payload.bad")
        return {"ratio": 1 / payload.get("divisor", 0)}


def test_unexpected_exception_is_500_with_the_traceback_only_on_stderr(
    capfd: pytest.CaptureFixture[str],
) -> None:
    server = WorkloadHTTPServer(("127.0.0.1", 0), _BrokenWorkload())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    try:
        health, health_body = _exchange(conn, "GET", "/healthz")
        failed, failed_body = _exchange(conn, "POST", "/invoke", b"{}")
        refused, refused_body = _exchange(conn, "POST", "/invoke", b'{"bad": true}')
        fine, fine_body = _exchange(conn, "POST", "/invoke", b'{"divisor": 4}')
    finally:
        conn.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    assert (health.status, health_body) == (200, {"status": "ok", "service": "broken", "flavour": "broken"})
    assert failed.status == 500
    _assert_error(failed_body, "internal_error")
    assert refused.status == 422
    _assert_error(refused_body, "invalid_payload", "payload.bad")
    assert (fine.status, fine_body) == (200, {"ratio": 0.25})
    logged = capfd.readouterr().err
    assert "Traceback" in logged
    assert "ZeroDivisionError" in logged


# --- clients that go away: in-process servers, raw sockets, stderr captured ----------------------------

ABORTED_HEAD = (
    b"POST /invoke HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100000\r\nExpect: 100-continue\r\n\r\n"
)
"""Headers of an upload that will never be complete. ``Expect: 100-continue`` makes the server
answer ``100 Continue`` once it has parsed them: the signal that it is about to read the body."""
PARTIAL_BODY = b'{"sensor_id": "s", "values": [1, 2, 3'
THREADS_END_TIMEOUT_S = 30.0


@contextlib.contextmanager
def _serving(workload: Any) -> Iterator[int]:
    """``workload`` served in this process on a free port; yields the port.

    On the way out the server is shut down and every thread started meanwhile (the request
    threads too) has ended, so that everything they wrote to stderr is there to be read.
    """
    before = set(threading.enumerate())
    server = WorkloadHTTPServer(("127.0.0.1", 0), workload)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        deadline = time.monotonic() + THREADS_END_TIMEOUT_S
        while running := [t for t in threading.enumerate() if t not in before and t.is_alive()]:
            assert time.monotonic() < deadline, f"threads still running: {running}"
            time.sleep(0.01)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def _reset(raw: socket.socket) -> None:
    """Close with a TCP reset (RST) instead of an orderly FIN, as a crashed or impatient client does."""
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()


def _start_aborted_upload(port: int) -> socket.socket:
    """A connection on which the server is reading a body that only partly came."""
    raw = _connect(port)
    raw.sendall(ABORTED_HEAD)
    assert raw.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n")
    raw.sendall(PARTIAL_BODY)
    return raw


def _example_status(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        response, body = _exchange(conn, "POST", "/invoke", json.dumps(sensor.EXAMPLE_PAYLOAD).encode())
        assert "error" not in body
        return response.status
    finally:
        conn.close()


@pytest.mark.parametrize("ending", ["close", "reset"])
def test_aborted_upload_leaves_no_traceback_and_the_server_keeps_serving(
    capfd: pytest.CaptureFixture[str], ending: str
) -> None:
    with _serving(SensorService()) as port:
        raw = _start_aborted_upload(port)
        if ending == "reset":
            _reset(raw)
        else:
            raw.close()
        status = _example_status(port)

    logged = capfd.readouterr().err
    assert status == 200
    assert "Traceback" not in logged
    assert len(logged.splitlines()) <= 1, logged


def test_client_resetting_an_idle_keep_alive_connection_logs_nothing(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with _serving(SensorService()) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        response, _ = _exchange(conn, "POST", "/invoke", json.dumps(sensor.EXAMPLE_PAYLOAD).encode())
        assert response.status == 200 and not response.will_close
        assert conn.sock is not None
        _reset(conn.sock)  # the server is waiting for the next request on this connection
        conn.sock = None
        status = _example_status(port)

    assert status == 200
    assert capfd.readouterr().err == ""


class _LargeReplyWorkload:
    """A real workload whose reply (16 MiB) is more than the socket buffers of both ends hold."""

    name = "large"

    def info(self) -> dict[str, Any]:
        return {}

    def invoke(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"blob": "x" * (16 * 1024 * 1024), **payload}


def test_client_resetting_while_a_reply_is_written_leaves_no_traceback(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with _serving(_LargeReplyWorkload()) as port:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(30)
        raw.connect(("127.0.0.1", port))
        raw.sendall(b"POST /invoke HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n\r\n{}")
        assert raw.recv(1024).startswith(b"HTTP/1.1 200 ")  # the server is writing the reply
        _reset(raw)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            health, _ = _exchange(conn, "GET", "/healthz")
        finally:
            conn.close()

    logged = capfd.readouterr().err
    assert health.status == 200
    assert "Traceback" not in logged
    assert len(logged.splitlines()) <= 1, logged


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /invoke HTTP/1.1\r\nHost: test\r\n", ABORTED_HEAD],
    ids=["idle", "stalled-headers", "stalled-body"],
)
def test_stalled_client_is_disconnected_quietly_after_the_idle_timeout(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, sent: bytes
) -> None:
    monkeypatch.setattr(WorkloadRequestHandler, "timeout", 0.5)
    with _serving(SensorService()) as port:
        with _connect(port) as raw:
            raw.sendall(sent)
            if sent == ABORTED_HEAD:
                assert raw.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n")
                raw.sendall(PARTIAL_BODY)
            closed = raw.recv(1024)  # blocks until the server gives up on this client
        monkeypatch.undo()  # the next connection gets the usual timeout
        status = _example_status(port)

    assert closed == b""
    assert status == 200
    assert "Traceback" not in capfd.readouterr().err


def test_client_events_reaching_handle_error_print_no_traceback_but_bugs_do(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """socketserver's last resort for exceptions that escape a handler (setup, finish)."""
    server = WorkloadHTTPServer(("127.0.0.1", 0), SensorService())
    client_events: list[OSError] = [
        ConnectionResetError(104, "Connection reset by peer"),
        BrokenPipeError(32, "Broken pipe"),
        TimeoutError("timed out"),
    ]
    try:
        for event in client_events:
            try:
                raise event
            except OSError:
                server.handle_error(None, ("127.0.0.1", 40000))
        quiet = capfd.readouterr().err
        try:
            raise ZeroDivisionError("a bug")
        except ZeroDivisionError:
            server.handle_error(None, ("127.0.0.1", 40000))
        loud = capfd.readouterr().err
    finally:
        server.server_close()

    assert quiet == ""
    assert "Traceback" in loud
    assert "ZeroDivisionError" in loud


def test_expect_100_continue_is_answered_before_the_body_is_sent() -> None:
    with _serving(SensorService()) as port, _connect(port) as raw:
        body = json.dumps(sensor.EXAMPLE_PAYLOAD).encode()
        raw.sendall(
            b"POST /invoke HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )

        interim = raw.recv(1024)
        raw.sendall(body)
        final = raw.recv(65536)

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 200 ")
