"""The front door: clocks from arrival, AIMD on the queue before the dispatcher, and refusals
answered by the HTTP protocol itself (a real uvicorn server on a loopback port)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI, Request

from agent.admission import LoopLag
from api.door import CLOCK_KEY, FrontDoor
from api.server import build_server
from config.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _door(**extra: Any) -> FrontDoor:
    return FrontDoor(LoopLag(), "site-t", **extra)


def _interval(door: FrontDoor, clock: Clock, waits_ms: list[float], missed: int = 0) -> None:
    """Requests that waited `waits_ms` before the dispatcher (`missed` of them then failed their
    budget), then the interval ends."""
    clocks = [door.admit(clock.now) for _ in waits_ms]
    for request, waited in zip(clocks, waits_ms, strict=True):
        assert request is not None
        door.entered(waited)
        request.entered = True
    for index, request in enumerate(clocks):
        assert request is not None
        request.note(504 if index < missed else 200)
        request.close()
    clock.now += door.interval_ms / 1000
    closing = door.admit(clock.now)
    assert closing is not None
    door.entered(0.0)  # the first request of the next interval closes the last one


def test_a_queue_that_stands_above_the_target_for_an_interval_shrinks_the_limit() -> None:
    clock = Clock()
    door = _door(queue_target_ms=5.0, limit=64.0, clock=clock)
    _interval(door, clock, [20.0, 9.0, 30.0])
    assert door.limit == pytest.approx(64 * 0.8)
    assert door.standing == 1


def test_a_burst_that_drains_within_the_interval_is_not_a_standing_queue() -> None:
    clock = Clock()
    door = _door(queue_target_ms=5.0, limit=64.0, clock=clock)
    _interval(door, clock, [20.0, 30.0, 1.0])  # one request went through quickly: not standing
    assert door.limit == 64.0 and door.standing == 0


def test_admitted_work_that_misses_its_budget_shrinks_the_limit() -> None:
    clock = Clock()
    door = _door(limit=64.0, clock=clock)
    _interval(door, clock, [0.5] * 40, missed=4)  # 10 % of what it let in failed
    assert door.limit == pytest.approx(64 * 0.8) and door.failing == 1


def test_a_few_misses_within_the_tolerance_do_not_close_the_door() -> None:
    clock = Clock()
    door = _door(limit=64.0, clock=clock)
    _interval(door, clock, [0.5] * 40, missed=1)
    assert door.limit >= 64.0 and door.failing == 0


def test_a_limit_in_use_without_a_standing_queue_grows() -> None:
    clock = Clock()
    door = _door(queue_target_ms=5.0, limit=8.0, max_limit=9, clock=clock)
    _interval(door, clock, [1.0] * 6)
    assert door.limit == 9.0


def test_the_door_refuses_above_its_limit_and_above_the_inflight_cap() -> None:
    door = _door(limit=2.0, min_limit=1)
    first, second = door.admit(0.0), door.admit(0.0)
    assert first is not None and second is not None
    assert door.admit(0.0) is None and door.refused == 1
    first.enter()
    first.enter()  # entering twice counts once
    assert door.waiting == 1 and door.admit(0.0) is not None
    capped = _door(max_inflight=1)
    held = capped.admit(0.0)
    assert held is not None
    held.enter()
    assert capped.admit(0.0) is None
    held.close()
    held.close()
    assert capped.active == 0 and capped.admit(0.0) is not None


@pytest.fixture
async def held_site() -> AsyncIterator[tuple[int, FrontDoor, dict[str, Any]]]:
    """A real uvicorn server (the site's protocol) whose fast-path route waits to be released."""
    door = _door(limit=1.0, min_limit=1)
    app = FastAPI()
    seen: dict[str, Any] = {"requests": 0, "arrived": [], "release": asyncio.Event()}

    @app.post("/v1/requests")
    async def serve(request: Request) -> dict[str, bool]:
        seen["requests"] += 1
        seen["arrived"].append(request.scope["state"][CLOCK_KEY].arrived)
        await seen["release"].wait()
        return {"ok": True}

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    server = build_server(app, Settings(port=0), "warning", door=door)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and not task.done(), "server did not start"
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield port, door, seen
    finally:
        seen["release"].set()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)


def _post(body: bytes = b'{"service":"x"}') -> bytes:
    return (
        b"POST /v1/requests HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 20)
    return int(lines[0].split()[1]), headers, body


async def test_a_refused_request_is_answered_by_the_protocol_and_the_connection_stays_usable(
    held_site: tuple[int, FrontDoor, dict[str, Any]],
) -> None:
    port, door, seen = held_site
    _, first = await asyncio.open_connection("127.0.0.1", port)
    first.write(_post())
    deadline = time.monotonic() + 20
    while seen["requests"] < 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_post(b'{"service":"sensor","payload":{"big":"' + b"x" * 4000 + b'"}}'))
    status, headers, body = await _answer(reader)
    assert status == 503 and headers["retry-after"] == "1"
    error = json.loads(body)
    assert error["error"]["code"] == "overloaded" and error["route"]["tier"] == "reject"
    assert seen["requests"] == 1 and door.refused == 1
    writer.write(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")  # the same connection, after the refusal
    status, _, body = await _answer(reader)
    assert (status, json.loads(body)) == (200, {"ok": True})
    writer.close()
    first.close()


async def test_an_admitted_request_carries_the_clock_stamped_at_its_first_byte(
    held_site: tuple[int, FrontDoor, dict[str, Any]],
) -> None:
    port, _, seen = held_site
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = _post()
    before = time.perf_counter()
    writer.write(request[:20])  # the first bytes now, the rest after the server has read them
    await writer.drain()
    for _ in range(50):  # the server runs on this loop: let it read what arrived
        await asyncio.sleep(0)
    rest_sent = time.perf_counter()
    writer.write(request[20:])
    seen["release"].set()
    status, _, _ = await _answer(reader)
    assert status == 200
    (arrived,) = seen["arrived"]
    assert before <= arrived < rest_sent  # stamped on the first bytes, not when the rest came
    writer.close()
