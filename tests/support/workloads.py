"""Real HTTP workloads inside the test process, and a runtime over them.

`ScriptedWorkload` is an asyncio HTTP/1.1 server on a free loopback port whose `POST /invoke`
does what the payload's `mode` says (echo, wait, fail, reject, hang), so dispatcher and API tests
can drive every branch over real sockets. `StaticRuntime` is a `Runtime` over such instances: it
starts nothing, and records the failures reported to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from tools.runtimes.base import Instance, InstanceStats, Runtime, free_port


class ScriptedWorkload:
    """`POST /invoke` with `{"mode": ...}`: echo (default), wait (`ms`), fail (500), reject (400)."""

    def __init__(self, name: str = "svc-1") -> None:
        self.name = name
        self.port = 0
        self.calls = 0
        self.release = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedWorkload:
        self.port = free_port()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.release.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                status, reply = await self._invoke(json.loads(body or b"{}"))
                data = json.dumps(reply).encode()
                writer.write(
                    f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _invoke(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.calls += 1
        mode = payload.get("mode", "echo")
        if mode == "wait":
            await asyncio.sleep(float(payload.get("ms", 0)) / 1000)
        elif mode == "hold":
            await self.release.wait()
        elif mode == "fail":
            return 500, {"error": {"code": "internal_error", "message": "boom", "field": None}}
        elif mode == "reject":
            return 422, {
                "error": {"code": "invalid_payload", "message": "must be a number", "field": "value"}
            }
        return 200, {"echo": payload, "served_by": self.name, "call": self.calls}


class StaticRuntime(Runtime):
    """A runtime over instances that are already running; it only records reported failures."""

    name = "static"

    def __init__(self, instances: list[Instance]) -> None:
        super().__init__({}, set(), "test")
        self._instances = instances
        self.reported: list[str] = []

    def instances(self, service: str | None = None) -> list[Instance]:
        return [i for i in self._instances if service is None or i.service == service]

    def report_failure(self, instance_id: str) -> None:
        self.reported.append(instance_id)
        for inst in self._instances:
            if inst.id == instance_id:
                inst.state = "unhealthy"

    async def start(self, service: str, count: int = 1, image: str | None = None) -> list[Instance]:
        raise NotImplementedError("a static runtime starts nothing")

    async def stop(self, instance_id: str) -> Instance:
        raise NotImplementedError("a static runtime stops nothing")

    async def restart(self, instance_id: str) -> Instance:
        raise NotImplementedError("a static runtime restarts nothing")

    async def scale(self, service: str, replicas: int) -> list[Instance]:
        return self.instances(service)

    async def logs(self, instance_id: str, tail: int = 100) -> str:
        return ""

    async def inspect(self, instance_id: str) -> dict[str, Any]:
        return {}

    async def stats(self) -> list[InstanceStats]:
        return []

    async def close(self, stop_instances: bool = True) -> None:
        return None


def instance_for(workload: ScriptedWorkload | int, service: str, instance_id: str) -> Instance:
    """A running instance record for a workload (or for a bare port nothing listens on)."""
    port = workload if isinstance(workload, int) else workload.port
    return Instance(instance_id, service, "127.0.0.1", port, "img", gpu=False, state="running")
