"""`RuntimeServer` over a real runtime and `RemoteRuntime` over a real Unix socket."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from tests.support.polling import eventually
from tests.support.workloads import StaticRuntime
from tools.runtimes.base import (
    Instance,
    NotAllowedError,
    Runtime,
    StartError,
    UnknownInstanceError,
    WorkloadRuntimeError,
    WorkloadSpec,
)
from tools.runtimes.local import LocalRuntime
from tools.runtimes.remote import RemoteRuntime, RuntimeServer, _error, _raise

TOKEN = "t0ken-for-this-test-run"
IMAGE = "mec-workloads:0.1"
SPECS = {
    "sensor": WorkloadSpec(name="sensor", module="workloads.sensor", image=IMAGE),
    "broken": WorkloadSpec(
        name="broken", module="workloads.no_such_workload", image=IMAGE, start_timeout_s=3.0
    ),
}


def _remote(path: Path, token: str = TOKEN) -> RemoteRuntime:
    return RemoteRuntime({}, set(), "t", path, token, worker="0", reconnect_max_s=0.2)


def _static(*ids: str) -> StaticRuntime:
    return StaticRuntime(
        [
            Instance(i, "svc", "127.0.0.1", 1000 + n, IMAGE, gpu=False, state="running")
            for n, i in enumerate(ids)
        ]
    )


@pytest.fixture
async def local() -> AsyncIterator[LocalRuntime]:
    runtime = LocalRuntime(SPECS, {IMAGE}, site_id="t", supervise_interval_s=0.2)
    try:
        yield runtime
    finally:
        pids = [inst.pid for inst in runtime.instances() if inst.pid]
        await runtime.close()
        for pid in pids:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


class Pair:
    """A started server over `runtime` and a connected remote, both closed by the fixture."""

    def __init__(self, runtime: Runtime, path: Path, cleared: list[int] | None = None) -> None:
        clear_slot = cleared.append if cleared is not None else None
        self.server = RuntimeServer(runtime, path, TOKEN, slots=8, clear_slot=clear_slot)
        self.remote = _remote(path)

    async def __aenter__(self) -> Pair:
        await self.server.start()
        await self.remote.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.remote.close()
        await self.server.close()


async def test_instances_are_pushed_and_follow_scale_and_stop(local: LocalRuntime, tmp_path: Path) -> None:
    await local.scale("sensor", 1)
    async with Pair(local, tmp_path / "rt.sock") as pair:
        remote = pair.remote
        assert remote.name == "local" and remote.connected
        assert [i.id for i in remote.ready_instances("sensor")] == ["sensor-1"]
        assert not remote.owns_instances

        scaled = await remote.scale("sensor", 2)
        # The change is pushed before the call answers: the copy already has it.
        assert sorted(i.id for i in scaled) == sorted(i.id for i in remote.instances("sensor"))
        assert len(remote.ready_instances("sensor")) == 2
        slots = {remote.slot_of(i.id) for i in remote.instances("sensor")}
        assert len(slots) == 2 and slots == {pair.server.slot_of(i.id) for i in local.instances()}

        stopped = await remote.stop("sensor-2")
        assert stopped.state == "stopped"
        assert [i.id for i in remote.instances()] == ["sensor-1"]

        # A change made in the supervisor itself reaches the worker by a push.
        await local.scale("sensor", 0)
        await eventually(lambda: remote.instances() == [], "the worker saw the scale to 0")


async def test_calls_answer_what_the_runtime_answers(local: LocalRuntime, tmp_path: Path) -> None:
    async with Pair(local, tmp_path / "rt.sock") as pair:
        [started] = await pair.remote.start("sensor")
        assert started is pair.remote.instances("sensor")[0]
        assert "listening" in await pair.remote.logs(started.id, tail=5)
        details = await pair.remote.inspect(started.id)
        assert details["id"] == started.id and details["alive"] is True
        stats = await pair.remote.stats()
        assert [s.instance_id for s in stats] == [started.id]
        restarted = await pair.remote.restart(started.id)
        assert restarted.restarts == 1 and restarted.ready


async def test_errors_come_back_as_the_same_types_with_their_messages(
    local: LocalRuntime, tmp_path: Path
) -> None:
    async with Pair(local, tmp_path / "rt.sock") as pair:
        remote = pair.remote
        with pytest.raises(NotAllowedError) as direct:
            await local.scale("nope", 1)
        with pytest.raises(NotAllowedError) as remotely:
            await remote.scale("nope", 1)
        assert str(remotely.value) == str(direct.value)
        with pytest.raises(UnknownInstanceError, match="no instance 'sensor-9'"):
            await remote.stop("sensor-9")
        with pytest.raises(StartError, match="did not become healthy"):
            await remote.start("broken")
        with pytest.raises(ValueError, match="replicas must be 0 or more"):
            await remote.scale("sensor", -1)
        with pytest.raises(UnknownInstanceError):
            remote.slot_of("sensor-9")
        assert remote.connected  # errors are answers, not broken connections


def test_the_runtime_error_crosses_the_wire_by_its_class_name_and_unknown_names_decode_as_it() -> None:
    assert not issubclass(WorkloadRuntimeError, RuntimeError)  # the site's own, not the builtin
    wire = json.loads(json.dumps(_error(WorkloadRuntimeError("engine gone"))))
    assert wire == {"type": "WorkloadRuntimeError", "message": "engine gone"}
    assert type(_raise(wire)) is WorkloadRuntimeError
    # Any other exception travels as the base class, its own type in the message.
    assert _error(KeyError("k")) == {"type": "WorkloadRuntimeError", "message": "KeyError: 'k'"}
    # A peer from before the rename sends the base class as "RuntimeError_": still the base class here.
    old = _raise({"type": "RuntimeError_", "message": "engine gone"})
    assert type(old) is WorkloadRuntimeError and str(old) == "engine gone"


async def test_a_wrong_token_is_refused_and_the_socket_is_private(tmp_path: Path) -> None:
    path = tmp_path / "rt.sock"
    server = RuntimeServer(_static("svc-1"), path, TOKEN)
    await server.start()
    intruder = _remote(path, token="not-the-token")
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with pytest.raises(WorkloadRuntimeError, match="refused: wrong or missing token"):
            await intruder.open()
        assert intruder.instances() == [] and server.peers == 0
    finally:
        await intruder.close()
        await server.close()
    assert not path.exists()


async def test_an_oversized_message_ends_the_connection(tmp_path: Path) -> None:
    path = tmp_path / "rt.sock"
    server = RuntimeServer(_static("svc-1"), path, TOKEN, max_message_bytes=1024)
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(json.dumps({"op": "hello", "token": TOKEN}).encode() + b"\n")
        welcome = json.loads(await reader.readline())
        assert welcome["op"] == "welcome" and welcome["instances"][0]["id"] == "svc-1"
        await eventually(lambda: server.peers == 1, "the raw client is a peer")
        writer.write(b'{"op": "failure", "instance_id": "' + b"x" * 4096 + b'"}\n')
        assert await reader.read() == b""  # closed by the server
        await eventually(lambda: server.peers == 0, "the server dropped it")
        writer.close()
    finally:
        await server.close()


async def test_report_failure_marks_the_copy_at_once_and_reaches_the_server(tmp_path: Path) -> None:
    static = _static("svc-1", "svc-2")
    async with Pair(static, tmp_path / "rt.sock") as pair:
        pair.remote.report_failure("svc-1")
        assert [i.id for i in pair.remote.ready_instances("svc")] == ["svc-2"]
        await eventually(lambda: static.reported == ["svc-1"], "the runtime got the report")
        assert pair.server.failures_reported == 1
        # The runtime brings it back (here by hand); the push puts it back in the worker's view.
        static.instances()[0].state = "running"
        await eventually(
            lambda: len(pair.remote.ready_instances("svc")) == 2,
            "svc-1 is back in the view",
        )


async def test_a_failure_the_runtime_ignores_is_undone_in_the_reporters_copy(tmp_path: Path) -> None:
    class Ignoring(StaticRuntime):
        def report_failure(self, instance_id: str) -> None:
            self.reported.append(instance_id)  # records it, changes nothing

    runtime = Ignoring(_static("svc-1").instances())
    async with Pair(runtime, tmp_path / "rt.sock") as pair:
        pair.remote.report_failure("svc-1")
        assert pair.remote.ready_instances("svc") == []
        await eventually(
            lambda: len(pair.remote.ready_instances("svc")) == 1,
            "the mark is undone",
        )
        assert runtime.reported == ["svc-1"]


async def test_slots_are_not_reused_while_their_id_lives_and_are_cleared_first(tmp_path: Path) -> None:
    static = _static("a", "b")
    cleared: list[int] = []
    async with Pair(static, tmp_path / "rt.sock", cleared) as pair:
        remote = pair.remote
        assert (remote.slot_of("a"), remote.slot_of("b")) == (0, 1)
        static._instances.pop(0)
        static._instances.append(Instance("c", "svc", "127.0.0.1", 2000, IMAGE, gpu=False, state="running"))
        await eventually(
            lambda: [i.id for i in remote.instances()] == ["b", "c"],
            "a went and c came",
        )
        assert remote.slot_of("c") == 2  # a's slot goes back at the end of the free list
        assert remote.slot_of("b") == 1
        assert cleared == [0, 1, 2]


async def test_the_worker_keeps_its_copy_and_reconnects_after_the_server_restarts(tmp_path: Path) -> None:
    path = tmp_path / "rt.sock"
    first = RuntimeServer(_static("svc-1"), path, TOKEN)
    await first.start()
    remote = _remote(path)
    second: RuntimeServer | None = None
    try:
        await remote.open()
        assert [i.id for i in remote.ready_instances("svc")] == ["svc-1"]
        await first.close()
        await eventually(lambda: not remote.connected, "the worker noticed")
        assert [i.id for i in remote.ready_instances("svc")] == ["svc-1"]  # still serving from it
        with pytest.raises(WorkloadRuntimeError, match="not connected"):
            await remote.logs("svc-1")
        assert await remote.stats() == []  # the last figures, so the worker's sampler goes on

        second = RuntimeServer(_static("svc-1", "svc-2"), path, TOKEN)
        await second.start()
        await eventually(
            lambda: remote.connected and len(remote.instances()) == 2,
            "reconnected to the new server",
        )
        assert remote.reconnects == 1 and second.peers == 1
    finally:
        await remote.close()
        if second is not None:
            await second.close()
        await first.close()
