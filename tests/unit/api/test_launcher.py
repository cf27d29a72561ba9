"""`api.launcher`: real child processes (tiny `python -c` programs), started, waited for and
stopped by pid. No assertion depends on timing: waits are for a line or an exit, up to a
generous deadline; the short grace periods only decide when SIGKILL follows SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from api.launcher import MAX_LINE_BYTES, ChildProcess, NotReadyError, SiteProcess
from tests.support.polling import alive, until

DEADLINE_S = 60.0


def python(code: str, **options: Any) -> ChildProcess:
    return ChildProcess([sys.executable, "-c", code], name="child", **options)


def reaped(pid: int) -> bool:
    """Whether `pid` is no child of this process any more (exited and waited for)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


IGNORES_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: print('got SIGTERM, staying', flush=True))\n"
    "print('armed', flush=True)\n"
    "while True: time.sleep(1)\n"
)


def test_a_child_that_exits_early_fails_wait_ready_at_once_with_its_output_tail() -> None:
    child = python(
        "import sys; print('loading'); print('fatal: no config file', file=sys.stderr); sys.exit(3)"
    )
    child.start()

    with pytest.raises(NotReadyError) as caught:
        child.wait_ready(lambda: False, timeout_s=DEADLINE_S)

    assert caught.value.returncode == 3
    assert "fatal: no config file" in caught.value.tail and "loading" in caught.value.tail
    assert "exited before it was ready" in str(caught.value)
    assert "fatal: no config file" in str(caught.value)


def test_a_child_that_exits_before_its_ready_line_fails_wait_line_with_its_output_tail() -> None:
    child = python("import sys; print('starting'); sys.exit(2)").start()

    with pytest.raises(NotReadyError) as caught:
        child.wait_line("ready on ", timeout_s=DEADLINE_S)

    assert caught.value.returncode == 2
    assert "starting" in caught.value.tail


def test_wait_ready_past_its_deadline_stops_the_child() -> None:
    child = python("import time; print('up', flush=True); time.sleep(600)").start()
    child.wait_line("up", DEADLINE_S)

    with pytest.raises(NotReadyError, match="not ready within"):
        child.wait_ready(lambda: False, timeout_s=0.2)

    assert child.returncode == -signal.SIGTERM
    assert reaped(child.pid)


def test_wait_ready_counts_an_oserror_as_not_yet_and_returns_once_the_check_holds(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    child = python(f"import pathlib, time; pathlib.Path({str(flag)!r}).write_text('x'); time.sleep(600)")
    with child.start():
        child.wait_ready(lambda: flag.read_text() == "x", timeout_s=DEADLINE_S)  # FileNotFoundError first
        assert child.running


def test_wait_line_returns_the_first_matching_line_and_keeps_what_came_before() -> None:
    with python(
        "print('key: k1'); print('ready on http://127.0.0.1:5/', flush=True); import time; time.sleep(600)"
    ).start() as child:
        assert child.wait_line(("degraded on ", "ready on "), DEADLINE_S) == "ready on http://127.0.0.1:5/"
        assert child.lines()[0] == "key: k1"


def test_stop_kills_a_child_that_ignores_sigterm_and_reaps_it() -> None:
    child = python(IGNORES_SIGTERM).start()
    child.wait_line("armed", DEADLINE_S)

    code = child.stop(grace_s=0.2)

    assert code == -signal.SIGKILL
    assert reaped(child.pid)
    assert not child.running
    assert "got SIGTERM, staying" in child.lines()


def test_stop_is_idempotent() -> None:
    child = python("import time; print('up', flush=True); time.sleep(600)").start()
    child.wait_line("up", DEADLINE_S)

    assert child.stop() == -signal.SIGTERM
    assert child.stop() == -signal.SIGTERM
    with child:  # leaving the block stops it once more
        pass
    assert child.returncode == -signal.SIGTERM
    assert python("pass").stop() is None  # never started


def test_stop_after_the_child_exited_by_itself_keeps_its_exit_code() -> None:
    child = python("raise SystemExit(7)").start()
    assert child.wait(DEADLINE_S) == 7
    assert child.stop() == 7


def test_kill_is_abrupt_and_stop_still_cleans_up() -> None:
    child = python(IGNORES_SIGTERM).start()
    child.wait_line("armed", DEADLINE_S)

    child.kill()

    assert child.returncode == -signal.SIGKILL
    assert reaped(child.pid)
    assert child.stop() == -signal.SIGKILL


def test_stop_in_a_session_of_its_own_also_kills_what_the_child_left_behind() -> None:
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"  # exits, the grandchild left running
        "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(f'grandchild {grandchild.pid}', flush=True)\n"
        "while True: time.sleep(1)\n"
    )
    child = python(code, new_session=True).start()
    grandchild = int(child.wait_line("grandchild ", DEADLINE_S).split()[1])
    assert os.getpgid(grandchild) == child.pid

    assert child.stop() == 0

    until(lambda: not alive(grandchild), "the grandchild is killed with its process group", DEADLINE_S)


def test_the_output_buffer_stays_bounded_when_the_child_prints_a_lot() -> None:
    code = (
        "import sys\n"
        "for n in range(50_000): print(f'line {n}')\n"
        f"sys.stdout.write('x' * {5 * MAX_LINE_BYTES + 10})\n"  # one long line, no newline
    )
    child = python(code, tail_lines=100).start()

    assert child.wait(DEADLINE_S) == 0

    lines = child.lines()
    assert len(lines) == 100
    assert all(len(line) <= MAX_LINE_BYTES for line in lines)
    assert lines[-1] == "x" * 10 and lines[-2] == "x" * MAX_LINE_BYTES
    assert lines[-7] == "line 49999"
    assert child.tail(50).endswith("x" * 10)


def test_with_a_log_the_child_writes_it_and_the_lines_are_read_from_this_start_on(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    log.write_text("ready on http://127.0.0.1:1 (an earlier run)\n")
    code = (
        "import sys, time\n"
        "print('to stdout', flush=True)\n"
        "print('to stderr', file=sys.stderr, flush=True)\n"
        "print('ready on http://127.0.0.1:2', flush=True)\n"
        "time.sleep(600)\n"
    )
    with python(code, log=log).start() as child:
        assert child.wait_line("ready on ", DEADLINE_S) == "ready on http://127.0.0.1:2"
        assert child.lines() == ["to stdout", "to stderr", "ready on http://127.0.0.1:2"]
        assert "earlier run" not in child.tail()
    assert log.read_text().splitlines()[1:] == ["to stdout", "to stderr", "ready on http://127.0.0.1:2"]


def test_pipe_stdout_leaves_stdout_to_the_caller(tmp_path: Path) -> None:
    child = python("import sys; print(sys.stdin.readline().upper(), end='')", pipe_stdout=True, stdin=True)
    child.start()
    child.stdin.write(b"hello\n")
    child.stdin.flush()

    assert child.communicate(DEADLINE_S) == b"HELLO\n"
    assert child.stop() == 0


def test_site_process_reads_its_url_from_the_ready_line_and_sets_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEC_SOMETHING", "from the caller")
    code = (
        "import os, time\n"
        "print('client key:   ' + os.environ['MEC_CLIENT_KEYS'])\n"
        "print('caller: ' + os.environ.get('MEC_SOMETHING', '-'))\n"
        "print('extra: ' + os.environ['MEC_EXTRA'])\n"
        "print('ready on http://127.0.0.1:4321', flush=True)\n"
        "time.sleep(600)\n"
    )
    site = SiteProcess(
        tmp_path / "data",
        client_key="ck",
        env={"MEC_EXTRA": "x"},
        embedded_defaults=True,
        command=[sys.executable, "-c", code],
    )

    with site.start(DEADLINE_S):
        assert (site.url, site.port) == ("http://127.0.0.1:4321", 4321)
        assert site.output[:3] == ["client key:   ck", "caller: -", "extra: x"]
        assert site.headers() == {"Authorization": "Bearer ck"}
        assert site.env["MEC_DATA_DIR"] == str(tmp_path / "data")
        assert site.operator_key and site.env["MEC_OPERATOR_KEYS"] == site.operator_key
        assert (tmp_path / "data" / "site.log").exists()

    assert site.proc is not None and site.proc.returncode == -signal.SIGTERM
