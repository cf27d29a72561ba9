"""One runtime seen from several processes: the supervisor's `RuntimeServer`, each worker's
`RemoteRuntime`.

With `mec serve --workers N` one supervisor process owns the real runtime (`LocalRuntime` or
`DockerRuntime`) and N front-door processes serve the clients. A worker needs the instances on
its fast path (`ready_instances()` per request, no I/O) and acts on them now and then
(`container_ops`). So the supervisor serves its runtime on a Unix socket (mode 0600, and a
per-run token each worker presents first), and each worker keeps a local copy of every instance
that the supervisor keeps current by pushing changes (it polls `runtime.instances()` every
`POLL_INTERVAL_S` and sends what changed; right after each call it acts on, and right after a
reported failure, too). Everything else is a call with a timeout whose error comes back as the
same exception type, with the same message.

Wire: newline-delimited JSON objects, each at most `MAX_MESSAGE_BYTES`; nothing is unpickled.

    worker → supervisor   {"op": "hello", "token": T, "worker": "0"}             first
                          {"op": "call", "id": 7, "method": "scale", "args": {...}}
                          {"op": "failure", "instance_id": "sensor-1"}          no answer
    supervisor → worker   {"op": "welcome", "runtime": "local", "instances": [...]}
                          {"op": "refused", "message": "..."}                   then it closes
                          {"op": "update", "upsert": [...], "remove": ["sensor-2"]}
                          {"op": "result", "id": 7, "value": ...}
                          {"op": "result", "id": 7, "error": {"type": "NotAllowedError", "message": "..."}}

An instance travels as its `Instance` fields plus `slot`: the supervisor's number for that id in
the site's shared load counters. A slot is not reused while its id exists; freed slots are handed
out again oldest-freed first, each cleared (`clear_slot`) just before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import os
import random
import socket
import stat
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.runtimes.base import (
    Instance,
    InstanceStats,
    NotAllowedError,
    Runtime,
    StartError,
    UnknownInstanceError,
    WorkloadRuntimeError,
    WorkloadSpec,
)

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Longest line either end accepts (and sends); a longer one ends the connection."""
MAX_UNSENT_BYTES = 16 * 1024 * 1024
"""Bytes queued for a peer that does not read; past this its connection is dropped."""
MAX_CALLS_PER_CONNECTION = 32
HELLO_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.05

_FIELDS = tuple(f.name for f in dataclasses.fields(Instance))
_STATS_FIELDS = tuple(f.name for f in dataclasses.fields(InstanceStats))
_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (NotAllowedError, UnknownInstanceError, StartError, WorkloadRuntimeError, ValueError)
}
"""Exception types that cross the socket as themselves; any other arrives as `WorkloadRuntimeError`.

An error's wire `type` is its class name. A name this end does not know arrives as
`WorkloadRuntimeError` too, so a peer from before that class was renamed (it sent and read
"RuntimeError_") still gets the same base class across the socket."""


class ProtocolError(WorkloadRuntimeError):
    """The other end sent something that is not this protocol (or too much of it)."""


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


async def _read(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message; None at the end of the stream."""
    try:
        line = await reader.readline()
    except ValueError as exc:  # the stream's limit: a line over MAX_MESSAGE_BYTES
        raise ProtocolError(f"a message over the limit ({exc})") from exc
    if not line.endswith(b"\n"):
        return None
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise ProtocolError("a message that is not JSON") from exc
    if not isinstance(message, dict):
        raise ProtocolError("a message that is not a JSON object")
    return message


def _write(writer: asyncio.StreamWriter, line: bytes, limit: int) -> bool:
    """Queue `line` unless the peer already has `limit` bytes unread (then drop it): False."""
    transport = writer.transport
    if transport.is_closing():
        return False
    if transport.get_write_buffer_size() + len(line) > limit:
        log.warning(
            "runtime peer does not read (%d bytes unsent); dropping it", transport.get_write_buffer_size()
        )
        transport.abort()
        return False
    writer.write(line)
    return True


def _fields(instance: Instance) -> dict[str, Any]:
    return {name: getattr(instance, name) for name in _FIELDS}


def _instance(data: Any) -> Instance:
    if not isinstance(data, dict):
        raise ProtocolError("an instance that is not an object")
    try:
        instance = Instance(**{name: data[name] for name in _FIELDS})
    except (KeyError, TypeError) as exc:
        raise ProtocolError(f"an instance without {exc}") from exc
    if not isinstance(instance.id, str) or not isinstance(instance.port, int):
        raise ProtocolError("an instance with a malformed id or port")
    return instance


def _error(exc: BaseException) -> dict[str, str]:
    for cls in type(exc).__mro__:
        if _ERRORS.get(cls.__name__) is cls:
            return {"type": cls.__name__, "message": str(exc)}
    return {"type": WorkloadRuntimeError.__name__, "message": f"{type(exc).__name__}: {exc}"}


def _raise(error: Any) -> Exception:
    if not isinstance(error, dict):
        return ProtocolError("a malformed error")
    cls = _ERRORS.get(str(error.get("type")), WorkloadRuntimeError)
    return cls(str(error.get("message", "")))


def _str(args: dict[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str):
        raise ValueError(f"argument {name!r} must be a string")
    return value


def _int(args: dict[str, Any], name: str, default: int) -> int:
    value = args.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"argument {name!r} must be an integer")
    return value


def bind_private_socket(path: Path, backlog: int = 64) -> socket.socket:
    """A listening Unix socket at `path` that only this user may connect to.

    The mode is set between `bind` and `listen`, so no one can connect while it is still wider.
    A socket left at `path` by an earlier run is replaced; any other file there is an error.
    """
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise OSError(f"{path} exists and is not a socket")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(eq=False)
class _Peer:
    """One connected worker."""

    writer: asyncio.StreamWriter
    name: str
    calls: set[asyncio.Task[None]] = field(default_factory=set)


class RuntimeServer:
    """Serves one runtime to the site's front-door workers over a Unix socket (see the module doc).

    `slots` is how many slot numbers there are; `clear_slot` is called with a slot number just
    before it is given to an instance id (the supervisor zeroes that slot of the shared counters).
    """

    def __init__(
        self,
        runtime: Runtime,
        path: Path,
        token: str,
        *,
        slots: int = 256,
        clear_slot: Callable[[int], None] | None = None,
        poll_interval_s: float = POLL_INTERVAL_S,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_unsent_bytes: int = MAX_UNSENT_BYTES,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.runtime = runtime
        self.path = path
        self._token = token.encode()
        self._clear_slot = clear_slot
        self.poll_interval_s = poll_interval_s
        self.max_message_bytes = max_message_bytes
        self.max_unsent_bytes = max_unsent_bytes
        self._free: deque[int] = deque(range(slots))
        self._slots: dict[str, int] = {}
        self._table: dict[str, dict[str, Any]] = {}
        """What every connected worker was last told, by instance id."""
        self._peers: set[_Peer] = set()
        self._calls: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._poller: asyncio.Task[None] | None = None
        self._out_of_slots = False
        self.failures_reported = 0
        """Failures workers reported (a counter for tests and logs)."""

    @property
    def peers(self) -> int:
        """Workers connected now."""
        return len(self._peers)

    def slot_of(self, instance_id: str) -> int | None:
        """The slot number given to a live instance id."""
        return self._slots.get(instance_id)

    async def start(self) -> None:
        """Listen on `path` (mode 0600) and start pushing changes."""
        sock = bind_private_socket(self.path)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=self.max_message_bytes)
        self._sync()
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def close(self) -> None:
        """Stop listening, drop every worker, cancel the calls still running and remove the
        socket. The runtime is left as it is."""
        for task in list(self._calls):
            task.cancel()
        if self._calls:
            await asyncio.wait(list(self._calls), timeout=5.0)
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._server is not None:
            self._server.close()
            for peer in list(self._peers):
                peer.writer.transport.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    # -- the table of instances ------------------------------------------------------------

    def _slot_for(self, instance_id: str) -> int | None:
        slot = self._slots.get(instance_id)
        if slot is None and self._free:
            slot = self._free.popleft()
            if self._clear_slot is not None:
                self._clear_slot(slot)
            self._slots[instance_id] = slot
        elif slot is None and not self._out_of_slots:
            self._out_of_slots = True
            log.error("no free load-counter slot for %s: it is routed without a shared count", instance_id)
        return slot

    def _sync(self, reporter: _Peer | None = None, reported: str | None = None) -> None:
        """Tell every worker what changed since the last push.

        A worker that reported a failure of `reported` marked it unhealthy on its own; if the
        runtime's record did not change, that worker is sent the record again to undo its mark.
        """
        table: dict[str, dict[str, Any]] = {}
        for instance in self.runtime.instances():
            entry = _fields(instance)
            entry["slot"] = self._slot_for(instance.id)
            table[instance.id] = entry
        previous = self._table
        upsert = [entry for iid, entry in table.items() if previous.get(iid) != entry]
        removed = [iid for iid in previous if iid not in table]
        for iid in removed:
            slot = self._slots.pop(iid, None)
            if slot is not None:
                self._free.append(slot)
        self._table = table
        if upsert or removed:
            line = _line({"op": "update", "upsert": upsert, "remove": removed})
            for peer in list(self._peers):
                _write(peer.writer, line, self.max_unsent_bytes)
        if reporter is not None and reported in table and reported not in {e["id"] for e in upsert}:
            again = _line({"op": "update", "upsert": [table[reported]], "remove": []})
            _write(reporter.writer, again, self.max_unsent_bytes)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                self._sync()
            except Exception:
                log.exception("could not read the runtime's instances")

    # -- one worker's connection -----------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer: _Peer | None = None
        try:
            hello = await asyncio.wait_for(_read(reader), HELLO_TIMEOUT_S)
            token = hello.get("token") if hello is not None and hello.get("op") == "hello" else None
            if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self._token):
                log.warning("refused a runtime connection without the right token")
                writer.write(_line({"op": "refused", "message": "wrong or missing token"}))
                with contextlib.suppress(TimeoutError, ConnectionError):
                    await asyncio.wait_for(writer.drain(), 1.0)
                return
            assert hello is not None
            peer = _Peer(writer, str(hello.get("worker", "?"))[:32])
            self._sync()
            welcome = {"op": "welcome", "runtime": self.runtime.name, "instances": list(self._table.values())}
            if not _write(writer, _line(welcome), self.max_unsent_bytes):
                return
            self._peers.add(peer)
            log.debug("worker %s connected to the runtime", peer.name)
            while (message := await _read(reader)) is not None:
                self._handle(peer, message)
        except (ProtocolError, TimeoutError, OSError) as exc:
            # A worker that exits resets its connection: that is the pool's news, not this one's.
            level = logging.INFO if isinstance(exc, ConnectionError) else logging.WARNING
            log.log(
                level,
                "runtime connection of worker %s dropped: %s",
                peer.name if peer else "?",
                exc or type(exc).__name__,
            )
        finally:
            if peer is not None:
                self._peers.discard(peer)
            writer.transport.abort()

    def _handle(self, peer: _Peer, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "failure":
            instance_id = message.get("instance_id")
            if not isinstance(instance_id, str):
                raise ProtocolError("a failure report without an instance id")
            self.failures_reported += 1
            try:
                self.runtime.report_failure(instance_id)
            except Exception:
                log.exception("the runtime could not take a failure report of %s", instance_id)
            self._sync(peer, instance_id)  # every worker stops sending to it now
        elif op == "call":
            if len(peer.calls) >= MAX_CALLS_PER_CONNECTION:
                busy = WorkloadRuntimeError(f"more than {MAX_CALLS_PER_CONNECTION} runtime calls at once")
                reply = {"op": "result", "id": message.get("id"), "error": _error(busy)}
                _write(peer.writer, _line(reply), self.max_unsent_bytes)
                return
            task = asyncio.get_running_loop().create_task(self._call(peer, message))
            for owner in (peer.calls, self._calls):
                owner.add(task)
                task.add_done_callback(owner.discard)
        else:
            raise ProtocolError(f"unknown op {op!r}")

    async def _call(self, peer: _Peer, message: dict[str, Any]) -> None:
        call_id = message.get("id")
        try:
            value = await self._invoke(message.get("method"), message.get("args"))
            reply: dict[str, Any] = {"op": "result", "id": call_id, "value": value}
        except Exception as exc:
            if not isinstance(exc, WorkloadRuntimeError | ValueError):
                log.exception("runtime call %s failed", message.get("method"))
            reply = {"op": "result", "id": call_id, "error": _error(exc)}
        self._sync()  # the worker sees what the call changed before its answer
        line = _line(reply)
        if len(line) > self.max_message_bytes:
            too_big = WorkloadRuntimeError(
                f"the answer is {len(line)} bytes, over the {self.max_message_bytes} a runtime message may take"
            )
            line = _line({"op": "result", "id": call_id, "error": _error(too_big)})
        _write(peer.writer, line, self.max_unsent_bytes)

    async def _invoke(self, method: Any, args: Any) -> Any:
        if not isinstance(args, dict):
            raise ValueError("runtime call arguments must be an object")
        runtime = self.runtime
        if method == "start":
            image = args.get("image")
            if image is not None and not isinstance(image, str):
                raise ValueError("argument 'image' must be a string")
            started = await runtime.start(_str(args, "service"), _int(args, "count", 1), image)
            return [_fields(i) for i in started]
        if method == "scale":
            return [
                _fields(i) for i in await runtime.scale(_str(args, "service"), _int(args, "replicas", -1))
            ]
        if method == "stop":
            return _fields(await runtime.stop(_str(args, "instance_id")))
        if method == "restart":
            return _fields(await runtime.restart(_str(args, "instance_id")))
        if method == "logs":
            return await runtime.logs(_str(args, "instance_id"), _int(args, "tail", 100))
        if method == "inspect":
            return await runtime.inspect(_str(args, "instance_id"))
        if method == "stats":
            return [dataclasses.asdict(s) for s in await runtime.stats()]
        raise ValueError(f"unknown runtime method {method!r}")


class RemoteRuntime(Runtime):
    """A front-door worker's view of the runtime its supervisor owns (see the module doc).

    `instances()` and `ready_instances()` read the local copy; `report_failure()` marks the
    instance unhealthy in it at once and tells the supervisor; the other methods are calls that
    raise what the supervisor's runtime raised. When the connection drops the worker goes on with
    its last copy (`connected` is False, calls raise `WorkloadRuntimeError`) and reconnects with
    backoff; the supervisor then sends the whole table again. `close()` disconnects and stops nothing.
    """

    owns_instances = False

    def __init__(
        self,
        specs: dict[str, WorkloadSpec],
        image_allowlist: set[str],
        site_id: str,
        path: Path,
        token: str,
        *,
        worker: str = "",
        call_timeout_s: float = 10.0,
        change_timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        reconnect_max_s: float = 2.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_unsent_bytes: int = MAX_UNSENT_BYTES,
    ) -> None:
        super().__init__(specs, image_allowlist, site_id)
        self.name = "remote"
        """Becomes the supervisor's runtime name (`local`, `docker`) once connected."""
        self.path = path
        self._token = token
        self.worker = worker
        self.call_timeout_s = call_timeout_s
        self.change_timeout_s = change_timeout_s
        """Timeout of calls that start or stop instances (start, stop, restart, scale)."""
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_max_s = reconnect_max_s
        self.max_message_bytes = max_message_bytes
        self.max_unsent_bytes = max_unsent_bytes
        self.connected = False
        self.reconnects = 0
        self._instances: dict[str, Instance] = {}
        self._slot_by_id: dict[str, int] = {}
        self._id_by_slot: dict[int, str] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._task: asyncio.Task[None] | None = None
        self._last_stats: list[InstanceStats] = []

    # -- the connection --------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and receive the table of instances; `WorkloadRuntimeError` when that fails."""
        if self._task is not None:
            return
        try:
            reader = await self._connect()
        except (OSError, TimeoutError, WorkloadRuntimeError) as exc:
            raise WorkloadRuntimeError(f"cannot reach the site's runtime at {self.path}: {exc}") from exc
        self._task = asyncio.get_running_loop().create_task(self._run(reader))

    async def _connect(self) -> asyncio.StreamReader:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(self.path), limit=self.max_message_bytes), self.connect_timeout_s
        )
        try:
            writer.write(_line({"op": "hello", "token": self._token, "worker": self.worker}))
            welcome = await asyncio.wait_for(_read(reader), self.connect_timeout_s)
            if welcome is None:
                raise ProtocolError("the supervisor closed the connection")
            if welcome.get("op") == "refused":
                raise WorkloadRuntimeError(f"refused: {welcome.get('message')}")
            if welcome.get("op") != "welcome" or not isinstance(welcome.get("instances"), list):
                raise ProtocolError("no welcome from the supervisor")
            self.name = str(welcome.get("runtime") or self.name)
            entries = welcome["instances"]
            for entry in entries:
                self._upsert(entry)
            for gone in set(self._instances) - {entry["id"] for entry in entries}:
                self._remove(gone)
        except BaseException:
            writer.transport.abort()
            raise
        self._writer = writer
        self.connected = True
        return reader

    async def _run(self, reader: asyncio.StreamReader) -> None:
        """Apply what the supervisor sends; when the connection drops, reconnect with backoff."""
        while True:
            try:
                while (message := await _read(reader)) is not None:
                    self._handle(message)
                reason = "the supervisor closed the connection"
            except (ProtocolError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
            self._lost(reason)
            log.warning(
                "lost the connection to the site's runtime (%s); serving from the last known instances "
                "and reconnecting",
                reason,
            )
            backoff = 0.05
            while True:
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.reconnect_max_s)
                try:
                    reader = await self._connect()
                except (OSError, TimeoutError, WorkloadRuntimeError) as exc:
                    log.debug("reconnecting to the site's runtime: %s", exc)
                    continue
                self.reconnects += 1
                log.warning("reconnected to the site's runtime")
                break

    def _lost(self, reason: str) -> None:
        self.connected = False
        if self._writer is not None:
            self._writer.transport.abort()
            self._writer = None
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(
                    WorkloadRuntimeError(f"lost the connection to the site's runtime ({reason})")
                )

    def _handle(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "update":
            upsert, remove = message.get("upsert"), message.get("remove")
            if not isinstance(upsert, list) or not isinstance(remove, list):
                raise ProtocolError("a malformed update")
            for entry in upsert:
                self._upsert(entry)
            for instance_id in remove:
                self._remove(str(instance_id))
        elif op == "result":
            call_id = message.get("id")
            future = self._pending.pop(call_id, None) if isinstance(call_id, int) else None
            if future is not None and not future.done():
                future.set_result(message)
        else:
            raise ProtocolError(f"unknown op {op!r}")

    def _upsert(self, entry: Any) -> None:
        fresh = _instance(entry)
        known = self._instances.get(fresh.id)
        if known is None:
            self._instances[fresh.id] = fresh
        else:  # in place, as the owning runtime does: whoever holds the record sees the change
            for name in _FIELDS:
                setattr(known, name, getattr(fresh, name))
        slot = entry.get("slot")
        if isinstance(slot, int):
            previous = self._id_by_slot.get(slot)
            if previous is not None and previous != fresh.id:
                self._slot_by_id.pop(previous, None)
            self._slot_by_id[fresh.id] = slot
            self._id_by_slot[slot] = fresh.id

    def _remove(self, instance_id: str) -> None:
        # The slot stays known until the supervisor gives it to another id, so a request that
        # finishes after its instance went away can still count itself out.
        instance = self._instances.pop(instance_id, None)
        if instance is not None:
            instance.state = "stopped"

    async def close(self, stop_instances: bool = True) -> None:
        """Disconnect. Nothing is stopped, whatever `stop_instances` says: the supervisor owns them."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._lost("closed")

    # -- reads from the local copy ---------------------------------------------------------

    def instances(self, service: str | None = None) -> list[Instance]:
        return [i for i in self._instances.values() if service is None or i.service == service]

    def slot_of(self, instance_id: str) -> int:
        """The supervisor's slot number of an instance in the shared load counters."""
        slot = self._slot_by_id.get(instance_id)
        if slot is None:
            raise UnknownInstanceError(f"no load-counter slot for instance {instance_id!r}")
        return slot

    def report_failure(self, instance_id: str) -> None:
        instance = self._instances.get(instance_id)
        if instance is None or instance.state != "running":
            return
        instance.state = "unhealthy"
        if self.connected and self._writer is not None:
            line = _line({"op": "failure", "instance_id": instance_id})
            _write(self._writer, line, self.max_unsent_bytes)

    # -- calls -----------------------------------------------------------------------------

    async def _call(self, method: str, args: dict[str, Any], timeout_s: float) -> Any:
        writer = self._writer
        if not self.connected or writer is None:
            raise WorkloadRuntimeError(
                "the site's runtime is not connected (reconnecting); try again shortly"
            )
        self._next_id += 1
        call_id = self._next_id
        line = _line({"op": "call", "id": call_id, "method": method, "args": args})
        if len(line) > self.max_message_bytes:
            raise ValueError(f"runtime call {method} is over {self.max_message_bytes} bytes")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            if not _write(writer, line, self.max_unsent_bytes):
                raise WorkloadRuntimeError("the connection to the site's runtime is closing")
            reply = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise WorkloadRuntimeError(
                f"the site's runtime did not answer {method} within {timeout_s:g} s (it may still finish)"
            ) from None
        finally:
            self._pending.pop(call_id, None)
        if reply.get("error") is not None:
            raise _raise(reply["error"])
        return reply.get("value")

    def _known(self, data: Any) -> Instance:
        """The local record of an instance a call returned (already updated), else a fresh one."""
        fresh = _instance(data)
        return self._instances.get(fresh.id, fresh)

    def _known_list(self, data: Any) -> list[Instance]:
        if not isinstance(data, list):
            raise ProtocolError("expected a list of instances")
        return [self._known(entry) for entry in data]

    async def start(self, service: str, count: int = 1, image: str | None = None) -> list[Instance]:
        args = {"service": service, "count": count, "image": image}
        return self._known_list(await self._call("start", args, self.change_timeout_s))

    async def stop(self, instance_id: str) -> Instance:
        return self._known(await self._call("stop", {"instance_id": instance_id}, self.change_timeout_s))

    async def restart(self, instance_id: str) -> Instance:
        return self._known(await self._call("restart", {"instance_id": instance_id}, self.change_timeout_s))

    async def scale(self, service: str, replicas: int) -> list[Instance]:
        args = {"service": service, "replicas": replicas}
        return self._known_list(await self._call("scale", args, self.change_timeout_s))

    async def logs(self, instance_id: str, tail: int = 100) -> str:
        return str(await self._call("logs", {"instance_id": instance_id, "tail": tail}, self.call_timeout_s))

    async def inspect(self, instance_id: str) -> dict[str, Any]:
        value = await self._call("inspect", {"instance_id": instance_id}, self.call_timeout_s)
        if not isinstance(value, dict):
            raise ProtocolError("expected an object from inspect")
        return value

    async def stats(self) -> list[InstanceStats]:
        """The instances' resource use; while disconnected, the last figures received (so the
        worker's metrics sampler goes on sampling the host instead of failing every time)."""
        if not self.connected:
            return list(self._last_stats)
        value = await self._call("stats", {}, self.call_timeout_s)
        if not isinstance(value, list):
            raise ProtocolError("expected a list from stats")
        try:
            self._last_stats = [
                InstanceStats(**{name: entry[name] for name in _STATS_FIELDS}) for entry in value
            ]
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"malformed stats: {exc}") from exc
        return list(self._last_stats)
