"""The webhook sink against a real HTTP receiver on a loopback port that goes down and comes back."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from monitoring.webhook import (
    CORRUPT_DIR,
    EXPIRED_DIR,
    SpoolInUseError,
    WebhookSink,
    sign,
    verify_signature,
)
from tests.support.polling import eventually
from tests.support.webhook_receiver import HANG, Received, WebhookReceiver
from tools.runtimes.base import free_port

pytestmark = pytest.mark.timeout(60)

SECRET = "webhook-secret-0123456789"
FAST = {"timeout_s": 2.0, "backoff_initial_s": 0.02, "backoff_max_s": 0.2}
"""Backoff small enough that a test sees several retries in well under a second."""

MakeSink = Callable[..., WebhookSink]


def alert(n: int) -> dict[str, Any]:
    return {"kind": "alert.fired", "alert": {"name": f"cpu-high-{n}", "value": 97.5, "site": "edge-é"}}


def signed(request: Received) -> bool:
    return verify_signature(SECRET, request.timestamp, request.body, request.signature)


def pending_files(spool: Path) -> list[Path]:
    return sorted(spool.glob("*.json"))


def names_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    """A receiver on a free port, not started: each test decides when it is up."""
    receiver = WebhookReceiver(free_port())
    yield receiver
    await receiver.stop()


@pytest.fixture
async def make_sink() -> AsyncIterator[MakeSink]:
    """Builds sinks with fast backoff and stops every one of them afterwards."""
    made: list[WebhookSink] = []

    def make(url: str, spool: Path, **options: Any) -> WebhookSink:
        sink = WebhookSink(url, SECRET, spool, **(FAST | options))
        made.append(sink)
        return sink

    yield make
    for sink in made:
        await sink.stop()


async def test_an_event_arrives_once_signed_with_its_delivery_id(
    receiver: WebhookReceiver, make_sink: MakeSink, tmp_path: Path
) -> None:
    await receiver.start()
    sink = make_sink(receiver.url, tmp_path)
    await sink.start()
    delivery_id = await sink.submit(alert(1))

    [request] = await eventually(lambda: receiver.accepted, "the event arrives")
    assert request.delivery_id == delivery_id
    assert request.content_type == "application/json"
    assert json.loads(request.body) == alert(1)
    assert verify_signature(SECRET, request.timestamp, request.body, request.signature, max_skew_s=300)
    # The scheme as the module documents it, computed here without the module's help.
    message = request.timestamp.encode() + b"." + request.body
    assert request.signature == "sha256=" + hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
    await eventually(lambda: not pending_files(tmp_path), "the delivered event's file is deleted")
    status = sink.status()
    assert (status["pending"], status["delivered"], status["attempts"], status["failures"]) == (0, 1, 1, 0)
    assert status["next_attempt_in_s"] is None
    assert len(receiver.received) == 1


async def test_events_sent_while_the_receiver_is_down_all_arrive_in_order_when_it_returns(
    receiver: WebhookReceiver, make_sink: MakeSink, tmp_path: Path
) -> None:
    sink = make_sink(receiver.url, tmp_path)
    await sink.start()
    ids = [await sink.submit(alert(n)) for n in range(6)]
    await eventually(lambda: sink.status()["failures"] >= 3, "the sink retries the receiver that is down")
    assert sink.status()["pending"] == 6
    assert len(pending_files(tmp_path)) == 6
    assert sink.status()["last_error"]

    await receiver.start()
    await eventually(lambda: len({r.delivery_id for r in receiver.accepted}) == 6, "all six arrive")
    first_arrivals = list(dict.fromkeys(r.delivery_id for r in receiver.accepted))
    assert first_arrivals == ids
    assert all(signed(r) for r in receiver.received)
    assert [json.loads(r.body) for r in receiver.accepted] == [alert(n) for n in range(6)]
    duplicates = len(receiver.accepted) - len(first_arrivals)
    assert duplicates == 0  # a receiver that answers every request it reads gets each event once
    await eventually(lambda: sink.status()["pending"] == 0, "nothing is pending")
    await eventually(lambda: not pending_files(tmp_path), "the spool is empty")
    assert sink.status()["dropped"] == sink.status()["expired"] == 0


async def test_a_5xx_answer_is_retried_until_a_2xx_each_retry_signed_afresh(
    make_sink: MakeSink, tmp_path: Path
) -> None:
    receiver = WebhookReceiver(free_port(), answers=[500, 503, 200])
    await receiver.start()
    try:
        sink = make_sink(receiver.url, tmp_path)
        await sink.start()
        delivery_id = await sink.submit(alert(1))
        await eventually(lambda: receiver.accepted, "the third attempt is accepted")
        assert [(r.delivery_id, r.status) for r in receiver.received] == [
            (delivery_id, 500),
            (delivery_id, 503),
            (delivery_id, 200),
        ]
        assert all(signed(r) for r in receiver.received)
        status = sink.status()
        assert (status["attempts"], status["failures"], status["delivered"]) == (3, 2, 1)
        assert status["last_error"] == "HTTP 503"
    finally:
        await receiver.stop()


async def test_a_receiver_that_does_not_answer_in_time_is_retried(
    make_sink: MakeSink, tmp_path: Path
) -> None:
    receiver = WebhookReceiver(free_port(), answers=[HANG, 200])
    await receiver.start()
    try:
        sink = make_sink(receiver.url, tmp_path, timeout_s=1.0)
        await sink.start()
        delivery_id = await sink.submit(alert(1))
        [request] = await eventually(lambda: receiver.accepted, "the retry after the timeout arrives")
        assert request.delivery_id == delivery_id
        assert [r.delivery_id for r in receiver.received] == [delivery_id, delivery_id]
        assert "Timeout" in (sink.status()["last_error"] or "")
    finally:
        await receiver.stop()


async def test_a_new_sink_on_the_same_spool_delivers_what_a_stopped_one_left(
    receiver: WebhookReceiver, make_sink: MakeSink, tmp_path: Path
) -> None:
    first = make_sink(receiver.url, tmp_path)
    await first.start()
    left = [await first.submit(alert(n)) for n in range(3)]
    await eventually(lambda: first.status()["failures"] >= 1, "the first sink fails to deliver")
    await first.stop()
    await first.stop()  # idempotent
    assert len(pending_files(tmp_path)) == 3

    second = make_sink(receiver.url, tmp_path)
    await second.start()
    assert second.status()["pending"] == 3
    added = await second.submit(alert(3))
    await receiver.start()
    await eventually(lambda: len(receiver.accepted) == 4, "the left events and the new one arrive")
    assert [r.delivery_id for r in receiver.accepted] == [*left, added]
    assert all(signed(r) for r in receiver.accepted)


async def test_two_sinks_cannot_share_a_spool(make_sink: MakeSink, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    await make_sink(url, tmp_path).start()
    with pytest.raises(SpoolInUseError):
        await make_sink(url, tmp_path).start()


async def test_an_event_past_its_retry_window_moves_to_expired_and_is_counted(
    receiver: WebhookReceiver, make_sink: MakeSink, tmp_path: Path
) -> None:
    now = [1_700_000_000.0]
    sink = make_sink(receiver.url, tmp_path, retry_window_s=60.0, clock=lambda: now[0])
    await sink.start()
    delivery_id = await sink.submit(alert(1))
    await eventually(lambda: sink.status()["failures"] >= 2, "the sink retries within the window")
    assert sink.status()["expired"] == 0
    assert len(pending_files(tmp_path)) == 1

    now[0] += 61.0
    await eventually(lambda: sink.status()["expired"] == 1, "the event expires")
    [expired] = names_in(tmp_path / EXPIRED_DIR)
    assert delivery_id in expired
    assert json.loads((tmp_path / EXPIRED_DIR / expired).read_bytes()) == alert(1)
    assert sink.status()["pending"] == 0
    assert not pending_files(tmp_path)

    await receiver.start()
    later = await sink.submit(alert(2))
    [request] = await eventually(lambda: receiver.accepted, "a later event is still delivered")
    assert request.delivery_id == later


async def test_expired_keeps_only_the_newest_max_spooled_files(
    receiver: WebhookReceiver, make_sink: MakeSink, tmp_path: Path
) -> None:
    now = [1_700_000_000.0]
    sink = make_sink(receiver.url, tmp_path, retry_window_s=60.0, max_spooled=2, clock=lambda: now[0])
    await sink.start()
    ids = []
    for n in range(3):
        ids.append(await sink.submit(alert(n)))
        now[0] += 61.0
        await eventually(lambda n=n: sink.status()["expired"] == n + 1, f"event {n} expires")
    kept = names_in(tmp_path / EXPIRED_DIR)
    assert [name.rsplit("-", 1)[1].removesuffix(".json") for name in kept] == ids[1:]


async def test_a_full_spool_drops_the_oldest_and_delivers_the_newest(
    receiver: WebhookReceiver, make_sink: MakeSink, tmp_path: Path
) -> None:
    sink = make_sink(receiver.url, tmp_path, max_spooled=3)
    await sink.start()
    ids = [await sink.submit(alert(n)) for n in range(5)]
    status = sink.status()
    assert (status["pending"], status["dropped"]) == (3, 2)
    assert len(pending_files(tmp_path)) == 3

    await receiver.start()
    await eventually(lambda: len(receiver.accepted) == 3, "the three kept events arrive")
    assert [r.delivery_id for r in receiver.accepted] == ids[2:]
    assert not any(r.delivery_id in ids[:2] for r in receiver.received)


async def test_corrupt_files_are_set_aside_and_counted_and_delivery_goes_on(
    receiver: WebhookReceiver, make_sink: MakeSink, tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("not an event")
    broken = tmp_path / f"{1:020d}-{int(time.time() * 1000)}-{'a' * 32}.json"
    broken.write_bytes(b'{"kind": "alert.fi')
    leftover = tmp_path / f".2-{'b' * 32}.tmp"
    leftover.write_bytes(b"{")
    await receiver.start()
    sink = make_sink(receiver.url, tmp_path)
    await sink.start()
    delivery_id = await sink.submit(alert(1))

    [request] = await eventually(lambda: receiver.accepted, "the good event arrives")
    assert request.delivery_id == delivery_id
    assert sink.status()["corrupt"] == 2
    assert names_in(tmp_path / CORRUPT_DIR) == sorted([broken.name, "notes.txt"])
    assert not leftover.exists()
    assert all(r.delivery_id != "a" * 32 for r in receiver.received)


async def test_submit_refuses_what_is_not_json_or_too_large_and_spools_nothing(
    make_sink: MakeSink, tmp_path: Path
) -> None:
    sink = make_sink(f"http://127.0.0.1:{free_port()}/", tmp_path, max_event_bytes=1024)
    with pytest.raises(TypeError):
        await sink.submit({"kind": "alert.fired", "alert": object()})
    with pytest.raises(ValueError):
        await sink.submit({"kind": "alert.fired", "value": float("nan")})
    with pytest.raises(ValueError, match="max_event_bytes"):
        await sink.submit({"kind": "alert.fired", "text": "x" * 2048})
    assert names_in(tmp_path) == []
    assert sink.status()["pending"] == 0


async def test_submit_to_a_spool_that_cannot_be_written_raises_oserror(
    make_sink: MakeSink, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    sink = make_sink(f"http://127.0.0.1:{free_port()}/", tmp_path / "file" / "spool")
    with pytest.raises(OSError):
        await sink.submit(alert(1))


def test_verify_signature_accepts_the_signed_request_and_nothing_else() -> None:
    body = json.dumps(alert(1)).encode()
    header = sign(SECRET, 1_700_000_000, body)
    assert header.startswith("sha256=")
    assert verify_signature(SECRET, "1700000000", body, header)
    assert not verify_signature(SECRET, "1700000000", body.replace(b"97.5", b"12.5"), header)
    assert not verify_signature(SECRET, "1700000001", body, header)
    assert not verify_signature("another-secret-0123456789", "1700000000", body, header)
    assert not verify_signature(SECRET, "1700000000", body, header.removeprefix("sha256="))
    assert not verify_signature(SECRET, "17e8", body, sign(SECRET, "17e8", body))
    assert verify_signature(SECRET, "1700000000", body, header, max_skew_s=300, now=1_700_000_100)
    assert not verify_signature(SECRET, "1700000000", body, header, max_skew_s=300, now=1_700_000_400)
