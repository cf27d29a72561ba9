"""Child processes started, watched and stopped by pid: `ChildProcess` for any program, and
`SiteProcess` for `mec serve` on top of it.

Tests and benchmarks use them to run real servers (a site, a workload, redis-server, an LLM
server) on loopback, and a launcher that starts several sites as child processes can use them
too. A child's output never fills a pipe nor this process's memory: it is read as it comes
(from a pipe, or from the log file the child writes when one is given) into a bounded buffer
of its last lines. A child is ready when a line it prints, or a check such as an HTTP probe, says so, polled up to
a deadline; one that exits first fails at once with its output tail. Stopping is SIGTERM by
pid, SIGKILL after a grace period, and SIGKILL to its whole process group when it was started
in a session of its own.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, NoReturn, Self
from urllib.parse import urlsplit

POLL_S = 0.05
"""How often a wait looks again (for a check, a line, or the child's exit)."""
TAIL_LINES = 1000
"""Output lines a child keeps in memory by default (the last ones)."""
MAX_LINE_BYTES = 8192
"""Longer lines are kept in pieces of this size, so one endless line is bounded too."""
DRAIN_S = 2.0
"""After the child exits, how long to wait for the rest of its output (a grandchild that
inherited the pipe may hold it open longer)."""
TAIL_CHARS = 4000
READY_PREFIX = "ready on "
DEGRADED_PREFIX = "degraded on "
"""What `mec serve` prints once it serves: `ready on URL`, or `degraded on URL` with
`--allow-degraded` when a service has no ready instance."""

Prefixes = str | tuple[str, ...]


class NotReadyError(RuntimeError):
    """A child that exited, or was not ready in time (it has been stopped); the message ends with
    its output tail."""

    def __init__(self, message: str, returncode: int | None, tail: str) -> None:
        super().__init__(f"{message}; its output ends with:\n{tail}" if tail else message)
        self.returncode = returncode
        self.tail = tail


class StopsOnExit:
    """A `with` block stops it on the way out."""

    def stop(self) -> int | None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ChildProcess(StopsOnExit):
    """One child process: `start()` it, `wait_line`/`wait_ready` for it, read `lines()`/`tail()`,
    `stop()` it.

    Output: by default stdout and stderr go through a pipe into the last `tail_lines` lines kept
    in memory. With `log`, the child writes both straight into that file (appended), and the
    lines are read from it as it grows. With `pipe_stdout`, stdout is left to the caller
    (`stdout`, `communicate()`) and stderr goes to `log`, or to this process's stderr.
    """

    def __init__(
        self,
        args: Sequence[str | Path],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        log: Path | None = None,
        pipe_stdout: bool = False,
        stdin: bool = False,
        new_session: bool = False,
        preexec_fn: Callable[[], None] | None = None,
        tail_lines: int = TAIL_LINES,
    ) -> None:
        self.args = [str(arg) for arg in args]
        self.name = name or Path(self.args[0]).name
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.log = log
        self.pipe_stdout = pipe_stdout
        self.stdin_pipe = stdin
        self.new_session = new_session
        self.preexec_fn = preexec_fn
        self._popen: subprocess.Popen[bytes] | None = None
        self._lines: deque[str] = deque(maxlen=tail_lines)
        self._count = 0
        self._eof = False
        self._changed = threading.Condition()
        self._pump: threading.Thread | None = None
        self._stopped = False
        self._log_start = 0

    # --- starting ------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the child (stdin from /dev/null unless `stdin`); returns self."""
        if self._popen is not None:
            raise RuntimeError(f"{self.name} was started already")
        log = self.log.open("ab") if self.log is not None else None
        try:
            self._log_start = log.tell() if log is not None else 0
            self._popen = subprocess.Popen(
                self.args,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.PIPE if self.stdin_pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.pipe_stdout or log is None else log,
                stderr=log if log is not None or self.pipe_stdout else subprocess.STDOUT,
                start_new_session=self.new_session,
                preexec_fn=self.preexec_fn,
            )
        finally:
            if log is not None:
                log.close()  # the child has its own copy
        if self.pipe_stdout:
            self._eof = True
            return self
        if self.log is not None:
            reader = threading.Thread(target=self._follow_log, args=(self.log,), daemon=True)
        else:
            assert self._popen.stdout is not None
            reader = threading.Thread(target=self._read_pipe, args=(self._popen.stdout,), daemon=True)
        reader.name = f"{self.name}-output"
        self._pump = reader
        reader.start()
        return self

    def _add(self, chunk: bytes) -> None:
        with self._changed:
            self._lines.append(chunk.decode(errors="replace").rstrip("\r\n"))
            self._count += 1
            self._changed.notify_all()

    def _done(self) -> None:
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def _read_pipe(self, stream: IO[bytes]) -> None:
        try:
            while chunk := stream.readline(MAX_LINE_BYTES):
                self._add(chunk)
        except (OSError, ValueError):
            pass
        finally:
            self._done()
            stream.close()

    def _follow_log(self, path: Path) -> None:
        """Read the lines the child appends to its log (`tail -f`), until it has exited."""
        try:
            with path.open("rb") as log:
                log.seek(self._log_start)
                partial, exited = b"", False
                while True:
                    chunk = log.readline(MAX_LINE_BYTES - len(partial))
                    if chunk:
                        partial += chunk
                        if partial.endswith(b"\n") or len(partial) >= MAX_LINE_BYTES:
                            self._add(partial)
                            partial = b""
                    elif exited:  # read to the end once more after the exit
                        if partial:
                            self._add(partial)
                        return
                    else:
                        exited = self._exited()
                        if not exited:
                            time.sleep(POLL_S)
        except OSError:
            pass
        finally:
            self._done()

    # --- the running child --------------------------------------------------------------------

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the child has exited (and been reaped), else None."""
        return self.popen.poll()

    @property
    def running(self) -> bool:
        return self._popen is not None and not self._exited()

    @property
    def stdin(self) -> IO[bytes]:
        assert self.popen.stdin is not None, f"{self.name} was started without stdin=True"
        return self.popen.stdin

    @property
    def stdout(self) -> IO[bytes]:
        """The child's stdout, for a child started with `pipe_stdout`."""
        assert self.pipe_stdout and self.popen.stdout is not None, f"{self.name}'s stdout is captured"
        return self.popen.stdout

    def communicate(self, timeout: float | None = None) -> bytes:
        """All of stdout once the child has exited (`pipe_stdout` only); TimeoutExpired after `timeout`."""
        assert self.pipe_stdout, f"{self.name}'s stdout is captured, not piped"
        out, _ = self.popen.communicate(timeout=timeout)
        return out or b""

    def send_signal(self, signum: int) -> None:
        """Send `signum` by pid, unless the child has already exited."""
        self.popen.send_signal(signum)

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the child exits (TimeoutExpired after `timeout`); then its output is complete
        (`lines()`, `tail()`, the log), unless a grandchild still holds its pipe."""
        code = self.popen.wait(timeout)
        self._drain()
        return code

    def lines(self) -> list[str]:
        """The last `tail_lines` lines of captured output, oldest first (no line ends)."""
        with self._changed:
            return list(self._lines)

    def tail(self, chars: int = TAIL_CHARS) -> str:
        """The end of the child's output (of its log, when it has one, from this start on)."""
        if self.log is not None:
            try:
                with self.log.open("rb") as log:
                    log.seek(max(self._log_start, log.seek(0, os.SEEK_END) - chars))
                    return log.read().decode(errors="replace")
            except OSError:
                return ""
        return "\n".join(self.lines())[-chars:]

    # --- waiting ------------------------------------------------------------------------------

    def wait_line(self, prefixes: Prefixes, timeout_s: float) -> str:
        """The first captured line that starts with `prefixes` (one or a tuple), waited for up to
        `timeout_s`. Raises NotReadyError when the child exits (or closes its output) first or the
        time runs out, once it has stopped the child."""
        deadline = time.monotonic() + timeout_s
        scanned = 0
        exited_at: float | None = None
        with self._changed:
            while True:
                fresh = min(self._count - scanned, len(self._lines))
                for line in itertools.islice(self._lines, len(self._lines) - fresh, None):
                    if line.startswith(prefixes):
                        return line
                scanned = self._count
                now = time.monotonic()
                if exited_at is None and self._exited():
                    exited_at = now
                if self._eof or now >= deadline or (exited_at is not None and now - exited_at > DRAIN_S):
                    break
                self._changed.wait(min(deadline - now, POLL_S))
        if exited_at is not None or self._eof:
            self._fail(f"{self.name} exited before it printed a line starting with {prefixes!r}")
        self._fail(f"{self.name} printed no line starting with {prefixes!r} within {timeout_s:g} s")

    def wait_ready(self, check: Callable[[], object], timeout_s: float, interval_s: float = POLL_S) -> float:
        """Poll `check()` until it returns something true (an OSError counts as not yet); return the
        seconds it took. Raises NotReadyError when the child exits first or the time runs out, once
        it has stopped the child."""
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            if self._exited():
                self._fail(f"{self.name} exited before it was ready")
            with contextlib.suppress(OSError):
                if check():
                    return time.monotonic() - started
            if time.monotonic() >= deadline:
                self._fail(f"{self.name} was not ready within {timeout_s:g} s")
            time.sleep(interval_s)

    def _fail(self, message: str) -> NoReturn:
        self.stop()
        code = self.popen.returncode
        raise NotReadyError(f"{message} (exit code {code})", code, self.tail())

    # --- stopping -------------------------------------------------------------------------------

    def stop(self, grace_s: float = 5.0) -> int | None:
        """SIGTERM by pid; SIGKILL when the child still runs after `grace_s`; with `new_session`,
        SIGKILL to its whole process group (what it left behind); then reap it. Stopping again
        does nothing. Returns the exit code (None when it was never started)."""
        popen = self._popen
        if popen is None:
            return None
        if not self._stopped:
            self._stopped = True
            if not self._exited():
                self._signal(signal.SIGTERM)
                if not self._exited(grace_s):
                    self._signal(signal.SIGKILL)
            if self.new_session:
                # the group's id is the child's pid: not reused while the child is unreaped (as
                # here, unless `wait` or `kill` reaped it) or any member of the group lives
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
            self._drain()
            if popen.stdin is not None:
                with contextlib.suppress(OSError):
                    popen.stdin.close()
        return popen.returncode

    def kill(self) -> None:
        """SIGKILL by pid and reap: the abrupt failure a test inflicts. `stop()` still cleans up."""
        popen = self.popen
        if popen.poll() is None:
            self._signal(signal.SIGKILL)
            popen.wait()

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.popen.pid, signum)

    def _exited(self, within_s: float = 0.0) -> bool:
        """Whether the child has exited (now, or within `within_s`), without reaping it."""
        popen = self.popen
        deadline = time.monotonic() + within_s
        while True:
            if popen.returncode is not None:
                return True
            try:
                if os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    return True
            except ChildProcessError:  # reaped by someone else
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(POLL_S, within_s))

    def _drain(self) -> None:
        if self._pump is not None:
            self._pump.join(DRAIN_S)


def http_ready(url: str, timeout_s: float = 1.0) -> bool:
    """Whether a GET of `url` (plain http) answers 200 now."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout_s)
    try:
        conn.request("GET", parts.path or "/")
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def generated_key(role: str) -> str:
    return f"{role}_{secrets.token_urlsafe(18)}"


class SiteProcess(StopsOnExit):
    """`mec serve` as a child process, ready when it prints `ready on URL` (it picks a free port
    itself with `port=0`, the default), stopped by pid.

    The site gets `data_dir` as MEC_DATA_DIR, `client_key` and `operator_key` (generated when not
    given) as its keys, then `env` on top. With `embedded_defaults` every MEC_* variable of this
    process is left out of its environment, so that the site runs on its built-in settings.
    `args` are extra `mec serve` flags; `command` replaces the whole command line. Its stdout and
    stderr are written to `log` (default `data_dir/site.log`, appended); its last lines since this
    start are in `output`.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        client_key: str | None = None,
        operator_key: str | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        embedded_defaults: bool = False,
        command: Sequence[str] | None = None,
        cwd: Path | None = None,
        log: Path | None = None,
        new_session: bool = False,
        name: str = "site",
    ) -> None:
        self.data_dir = data_dir
        self.client_key = client_key if client_key is not None else generated_key("client")
        self.operator_key = operator_key if operator_key is not None else generated_key("operator")
        inherited = {
            name: value
            for name, value in os.environ.items()
            if not (embedded_defaults and name.startswith("MEC_"))
        }
        self.env = {
            **inherited,
            "MEC_DATA_DIR": str(data_dir),
            "MEC_CLIENT_KEYS": self.client_key,
            "MEC_OPERATOR_KEYS": self.operator_key,
            **(env or {}),
        }
        serve = [sys.executable, "-m", "api.cli", "serve", "--host", host, "--port", str(port), *args]
        self.command = list(command) if command is not None else serve
        self.cwd = cwd
        self.log = log if log is not None else data_dir / "site.log"
        self.new_session = new_session
        self.name = name
        self.proc: ChildProcess | None = None
        self.url = ""
        self.port = 0
        self.ready_line = ""

    @property
    def output(self) -> list[str]:
        """The last lines the site printed since it started (its keys, `ready on URL`, its log)."""
        return self.proc.lines() if self.proc is not None else []

    def launch(self) -> ChildProcess:
        """Start the process without waiting for it (see `wait_ready`); returns it (also `proc`)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = ChildProcess(
            self.command,
            name=self.name,
            env=self.env,
            cwd=self.cwd,
            log=self.log,
            new_session=self.new_session,
        ).start()
        return self.proc

    def wait_ready(self, timeout_s: float = 60.0, prefixes: Prefixes = READY_PREFIX) -> float:
        """Wait for the line that says the site serves (`prefixes`: default `ready on `); set
        `ready_line`, `url` and `port` from it; return the seconds it took. NotReadyError (the site
        stopped) else."""
        started = time.monotonic()
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not started")
        line = self.ready_line = self.proc.wait_line(prefixes, timeout_s)
        options = (prefixes,) if isinstance(prefixes, str) else prefixes
        self.url = line.removeprefix(next(p for p in options if line.startswith(p))).strip()
        self.port = urlsplit(self.url).port or 0
        return time.monotonic() - started

    def start(self, timeout_s: float = 60.0, ready_prefix: Prefixes = READY_PREFIX) -> Self:
        """`launch()`, then `wait_ready()`."""
        self.launch()
        self.wait_ready(timeout_s, ready_prefix)
        return self

    def headers(self, key: str | None = None) -> dict[str, str]:
        """An Authorization header with `key` (default: the client key)."""
        return {"Authorization": f"Bearer {key if key is not None else self.client_key}"}

    def stop(self, grace_s: float = 15.0) -> int | None:
        """Stop the site by pid (see `ChildProcess.stop`); nothing when it was never started."""
        return self.proc.stop(grace_s) if self.proc is not None else None
