"""The webhook sink for alerts: each event is spooled to disk, then POSTed, signed, until a 2xx.

The alert engine hands `WebhookSink.submit` plain JSON-able dicts (`{"kind": "alert.fired", ...}`);
the sink writes each to its own file before `submit` returns, and one background task POSTs the
files in submission order to the receiver's URL, retrying with backoff while the receiver is down.

The request
    `POST <url>` with the event as compact UTF-8 JSON (`json.loads(body) == event`) and the headers
        Content-Type: application/json
        X-Mec-Delivery: <delivery id: 32 lower-case hex digits, the same on every retry>
        X-Mec-Timestamp: <unix seconds of this attempt, a decimal integer>
        X-Mec-Signature: sha256=<hex of HMAC-SHA256(key=secret as UTF-8, msg=timestamp + "." + body)>
    The message signed is the timestamp header's ASCII digits, one ".", then the body's exact bytes;
    the key is the shared secret itself (no derivation), so a receiver in any language can check it.
    The timestamp is signed with the body, so a captured request replayed under a new timestamp
    fails the check; a receiver that refuses timestamps older than a few minutes
    (`verify_signature(..., max_skew_s=300)`) refuses old replays too. Each retry is signed afresh.
    Redirects are not followed; the response body is never read.

Guarantees
    * Durable: `submit` returns (with the delivery id) only after the event's file is written,
      flushed, fsynced and renamed into place and the directory fsynced. It raises only for an event
      that is not JSON (TypeError, ValueError: NaN, non-str keys...), one larger than
      `max_event_bytes` (ValueError), or a spool that cannot be written or is held by another sink
      (OSError, `SpoolInUseError`) - never because the receiver is down.
    * At least once: a file is deleted only after a 2xx answer. A crash or `stop()` between the
      answer and the delete sends the event again, with the same X-Mec-Delivery; receivers dedupe on
      it.
    * In order: one delivery at a time, oldest first (file names sort by a sequence number that goes
      on across restarts). An event the receiver keeps refusing holds up the ones behind it until it
      succeeds or expires: alerts are not reordered.
    * Retries: any answer but 2xx, a timeout or a connection error is retried after a delay drawn
      uniformly from [0, min(backoff_max_s, backoff_initial_s * 2^(n-1))] ("full jitter"), n being
      the failures in a row; the first success resets n. Submitting wakes an idle sink at once.
    * Restart: a new sink on the same `spool_dir` delivers what an earlier one left, in order.

Bounds
    * At most `max_spooled` events pending. A submit past that deletes the OLDEST pending event
      (counted in `dropped`, logged as a warning): while the receiver is down the newest alerts win.
      (One dropped while its POST is under way may still arrive; it then counts as delivered too.)
    * An event still undelivered `retry_window_s` after it was submitted (by `clock`) is moved to
      `expired/`, counted in `expired` and logged, never delivered and never silently lost.
    * `expired/` and `corrupt/` each keep at most `max_spooled` files; the oldest go first.
    * Events are at most `max_event_bytes` of JSON, so the spool is bounded on disk too.

Files in `spool_dir`
    `<seq, 20 digits>-<submitted, unix ms>-<delivery id>.json`  a pending event: the exact body sent
    `.<seq>-<delivery id>.tmp`  a file being written; one left by a crash is deleted at start
    `.lock`                     flock-ed by the sink that owns the spool (one sink per directory)
    `expired/`                  events whose retry window ran out, under their pending names
    `corrupt/`                  files that were not a pending event (unknown name, unreadable, not
                                JSON), moved aside at start or when their turn came, and counted

The spool is opened (locked and scanned) by `start()` or the first `submit()`, and released by
`stop()`; a `submit()` after `stop()` still spools its event and holds the spool until the next
`stop()`. `status()` reports the counters; all of them count since this object was built.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import random
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger(__name__)

DELIVERY_HEADER = "X-Mec-Delivery"
TIMESTAMP_HEADER = "X-Mec-Timestamp"
SIGNATURE_HEADER = "X-Mec-Signature"
SIGNATURE_PREFIX = "sha256="
EXPIRED_DIR = "expired"
CORRUPT_DIR = "corrupt"
LOCK_FILE = ".lock"
MAX_EVENT_BYTES = 64 * 1024

_PENDING_NAME = re.compile(r"(?P<seq>\d{20})-(?P<ms>\d{1,20})-(?P<id>[0-9a-f]{32})\.json")


class SpoolInUseError(OSError):
    """Another sink (in this process or another) holds the spool directory."""


def sign(secret: str, timestamp: str | int, body: bytes) -> str:
    """The X-Mec-Signature value of `body` sent at `timestamp`: `sha256=<hex HMAC>`."""
    message = str(timestamp).encode("ascii") + b"." + body
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str,
    timestamp: str | int,
    body: bytes,
    header: str,
    *,
    max_skew_s: float | None = None,
    now: float | None = None,
) -> bool:
    """Whether `header` (X-Mec-Signature) signs `body` at `timestamp` (X-Mec-Timestamp) with `secret`.

    Compares in constant time. With `max_skew_s`, a timestamp further than that from `now` (default:
    the current time) is refused too, which is what turns the signed timestamp into replay protection.
    """
    text = str(timestamp)
    if not (text.isascii() and text.isdigit()) or not header.startswith(SIGNATURE_PREFIX):
        return False
    if max_skew_s is not None and abs((time.time() if now is None else now) - int(text)) > max_skew_s:
        return False
    return hmac.compare_digest(sign(secret, text, body).encode(), header.encode())


def encode_event(event: Mapping[str, Any]) -> bytes:
    """The body sent for `event`: compact UTF-8 JSON. TypeError/ValueError if it is not JSON."""
    return json.dumps(dict(event), separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@dataclass
class _Spooled:
    """One pending event: its file and what its name says."""

    seq: int
    delivery_id: str
    submitted: float
    path: Path
    removed: bool = False
    """Dropped from the spool (by the bound) while the delivery loop may be sending it."""


@dataclass
class _Scan:
    """What opening the spool found (read off the event loop)."""

    lock_fd: int
    pending: list[_Spooled]
    expired: list[str]
    corrupt: list[str]
    next_seq: int
    set_aside: int
    dropped: int


@dataclass
class _Counters:
    delivered: int = 0
    attempts: int = 0
    failures: int = 0
    dropped: int = 0
    expired: int = 0
    corrupt: int = 0
    last_error: str | None = None
    failures_in_row: int = 0
    """Failed attempts in a row (the backoff's n); 0 while the receiver answers."""


class WebhookSink:
    """Delivers alert events to one webhook URL, at least once, in order, kept on disk meanwhile.

    See the module docstring for the request, the signature, the guarantees and the files.
    `clock` gives unix seconds: the submission time (for `retry_window_s`) and X-Mec-Timestamp.
    """

    def __init__(
        self,
        url: str,
        secret: str,
        spool_dir: Path,
        *,
        timeout_s: float = 5.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        retry_window_s: float = 86400.0,
        max_spooled: int = 10_000,
        max_event_bytes: int = MAX_EVENT_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"the webhook URL must be http(s)://HOST/...: {url!r}")
        if len(secret) < 16:
            raise ValueError("the webhook secret must be at least 16 characters long")
        if timeout_s <= 0 or retry_window_s <= 0:
            raise ValueError("timeout_s and retry_window_s must be > 0")
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError("backoff needs 0 < backoff_initial_s <= backoff_max_s")
        if max_spooled < 1 or max_event_bytes < 1:
            raise ValueError("max_spooled and max_event_bytes must be >= 1")
        self.url = url
        self.spool_dir = Path(spool_dir)
        self._secret = secret
        self._timeout_s = timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._retry_window_s = retry_window_s
        self._max_spooled = max_spooled
        self._max_event_bytes = max_event_bytes
        self._clock = clock
        self._receiver = f"{parsed.scheme}://{parsed.host}" + (f":{parsed.port}" if parsed.port else "")
        """The URL without path or query (which may hold a token), for the logs."""
        self._rng = random.Random()
        self._counters = _Counters()
        self._pending: deque[_Spooled] = deque()
        self._expired: deque[str] = deque()
        self._corrupt: deque[str] = deque()
        self._next_seq = 1
        self._lock_fd: int | None = None
        self._spool_lock = asyncio.Lock()
        """Held while the spool is opened, closed or written, so that seq order is file order."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._next_attempt_at: float | None = None
        """time.monotonic() of the next attempt while backing off; None otherwise."""

    # ---- the caller's side

    async def start(self) -> None:
        """Open the spool (once: SpoolInUseError if another sink holds it) and start delivering."""
        async with self._spool_lock:
            await self._open()
        if self._task is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout_s,
                trust_env=False,  # the URL says where alerts go; no proxy from the environment
                follow_redirects=False,
                limits=httpx.Limits(max_connections=1),
            )
            self._task = asyncio.get_running_loop().create_task(self._deliver(), name="webhook-sink")

    async def stop(self) -> None:
        """Stop delivering and release the spool; pending events stay on disk. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        self._next_attempt_at = None
        async with self._spool_lock:  # after a submit that is writing; the next open scans afresh
            lock_fd, self._lock_fd = self._lock_fd, None
            if lock_fd is not None:
                await asyncio.to_thread(os.close, lock_fd)  # closing the descriptor drops the flock

    async def submit(self, event: Mapping[str, Any]) -> str:
        """Spool `event` durably and return its delivery id (X-Mec-Delivery).

        Raises TypeError/ValueError for an event that is not JSON or is too large, OSError when the
        spool cannot be written; never because of the receiver. When `max_spooled` events are
        already pending, the oldest pending one is deleted (counted in `dropped`)."""
        body = encode_event(event)
        if len(body) > self._max_event_bytes:
            raise ValueError(f"event of {len(body)} bytes exceeds max_event_bytes ({self._max_event_bytes})")
        async with self._spool_lock:
            await self._open()
            seq, self._next_seq = self._next_seq, self._next_seq + 1
            delivery_id = uuid.uuid4().hex
            submitted_ms = int(self._clock() * 1000)
            path = self.spool_dir / f"{seq:020d}-{submitted_ms}-{delivery_id}.json"
            await asyncio.to_thread(_write_durably, path, body, f".{seq}-{delivery_id}.tmp")
            self._pending.append(_Spooled(seq, delivery_id, submitted_ms / 1000, path))
            while len(self._pending) > self._max_spooled:
                oldest = self._pending.popleft()
                oldest.removed = True
                self._counters.dropped += 1
                log.warning(
                    "webhook spool full (%d pending): dropped the oldest event %s",
                    self._max_spooled,
                    oldest.delivery_id,
                )
                try:
                    await asyncio.to_thread(oldest.path.unlink, missing_ok=True)
                except OSError:
                    log.exception("could not delete dropped webhook event %s", oldest.path)
            self._wake.set()
        return delivery_id

    def status(self) -> dict[str, Any]:
        """Counters and state for operators: pending, delivered, attempts, failures, dropped, expired,
        corrupt, last_error, next_attempt_in_s (None when nothing is pending or the sink is stopped,
        0 when due now), oldest_pending_age_s and running. After stop() the pending figures are those
        the sink last knew; the files stay on disk."""
        counters = self._counters
        next_in: float | None = None
        if self._pending and self._task is not None:
            at = self._next_attempt_at
            next_in = 0.0 if at is None else max(0.0, at - time.monotonic())
        return {
            "pending": len(self._pending),
            "delivered": counters.delivered,
            "attempts": counters.attempts,
            "failures": counters.failures,
            "dropped": counters.dropped,
            "expired": counters.expired,
            "corrupt": counters.corrupt,
            "last_error": counters.last_error,
            "next_attempt_in_s": next_in,
            "oldest_pending_age_s": (self._clock() - self._pending[0].submitted) if self._pending else None,
            "running": self._task is not None,
        }

    # ---- the spool

    async def _open(self) -> None:
        """Lock and scan the spool unless this sink holds it already; the caller holds _spool_lock."""
        if self._lock_fd is not None:
            return
        scan = await asyncio.to_thread(_scan, self.spool_dir, self._max_spooled)
        self._lock_fd = scan.lock_fd
        self._pending = deque(scan.pending)
        self._expired = deque(scan.expired)
        self._corrupt = deque(scan.corrupt)
        self._next_seq = max(self._next_seq, scan.next_seq)
        self._counters.corrupt += scan.set_aside
        self._counters.dropped += scan.dropped
        if scan.set_aside:
            log.warning("webhook spool: moved %d unreadable files to %s/", scan.set_aside, CORRUPT_DIR)
        if scan.dropped:
            log.warning("webhook spool: dropped the %d oldest events past max_spooled", scan.dropped)
        if self._pending:
            self._wake.set()

    async def _move_aside(self, entry: _Spooled, folder: str, kept: deque[str]) -> None:
        """Move `entry`'s file to `folder` (expired/, corrupt/) and prune that folder to the bound."""
        name = await asyncio.to_thread(_move_into, entry.path, self.spool_dir / folder)
        if name is not None:
            kept.append(name)
        while len(kept) > self._max_spooled:
            oldest = kept.popleft()
            await asyncio.to_thread((self.spool_dir / folder / oldest).unlink, missing_ok=True)

    # ---- delivery

    async def _deliver(self) -> None:
        """The delivery loop: the oldest pending event, until a 2xx, its expiry or stop()."""
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                sent = await self._attempt(self._pending[0])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug or a disk error, not the receiver: keep the loop alive
                log.exception("webhook delivery failed unexpectedly")
                self._counters.failures += 1
                self._counters.last_error = f"{type(exc).__name__}: {exc}"
                self._counters.failures_in_row += 1
                sent = False
            if sent is False:
                delay = self._backoff(self._counters.failures_in_row)
                self._next_attempt_at = time.monotonic() + delay
                try:
                    await asyncio.sleep(delay)
                finally:
                    self._next_attempt_at = None

    def _backoff(self, failures_in_row: int) -> float:
        ceiling = self._backoff_initial_s * 2.0 ** min(max(failures_in_row, 1) - 1, 60)
        return self._rng.uniform(0.0, min(self._backoff_max_s, ceiling))

    async def _attempt(self, entry: _Spooled) -> bool | None:
        """One try at the head event: True when delivered, False when it failed (back off), None when
        it left the queue another way (expired, set aside, dropped)."""
        counters = self._counters
        if self._clock() - entry.submitted > self._retry_window_s:
            self._pending.popleft()
            counters.expired += 1
            log.warning(
                "webhook event %s undelivered after %g s: moved to %s/ (last error: %s)",
                entry.delivery_id,
                self._retry_window_s,
                EXPIRED_DIR,
                counters.last_error,
            )
            await self._move_aside(entry, EXPIRED_DIR, self._expired)
            return None
        try:
            body = await asyncio.to_thread(entry.path.read_bytes)
            json.loads(body)
        except (OSError, ValueError) as exc:
            if entry.removed:
                return None
            self._pending.popleft()
            counters.corrupt += 1
            log.warning("webhook event file %s unreadable (%s): moved to %s/", entry.path, exc, CORRUPT_DIR)
            await self._move_aside(entry, CORRUPT_DIR, self._corrupt)
            return None
        if entry.removed:
            return None
        assert self._client is not None  # the loop runs between start() and stop()
        timestamp = str(int(self._clock()))
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: entry.delivery_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        counters.attempts += 1
        try:
            async with self._client.stream("POST", self.url, content=body, headers=headers) as response:
                status = response.status_code  # the body is never read: a receiver cannot flood us
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        else:
            if 200 <= status < 300:
                self._delivered(entry)
                await _unlink_quietly(entry.path)
                return True
            error = f"HTTP {status}"
        counters.failures += 1
        counters.last_error = error
        counters.failures_in_row += 1
        if counters.failures_in_row == 1:
            log.warning("webhook receiver %s failing (%s); retrying with backoff", self._receiver, error)
        return False

    def _delivered(self, entry: _Spooled) -> None:
        counters = self._counters
        counters.delivered += 1
        if not entry.removed:
            self._pending.popleft()
        if counters.failures_in_row:
            log.info(
                "webhook receiver %s back after %d failed attempts", self._receiver, counters.failures_in_row
            )
            counters.failures_in_row = 0


# ---- blocking file work, run in threads


def _write_durably(path: Path, body: bytes, temp_name: str) -> None:
    """Write `body` to `path` atomically and durably: temp file, fsync, rename, fsync the directory."""
    temp = path.with_name(temp_name)
    try:
        with open(temp, "wb") as file:
            file.write(body)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _unlink_quietly(path: Path) -> None:
    """Delete a delivered event's file; a failure only means it is sent again after a restart."""
    try:
        await asyncio.to_thread(path.unlink, missing_ok=True)
    except OSError:
        log.exception("could not delete delivered webhook event %s (it will be sent again)", path)


def _move_into(source: Path, folder: Path) -> str | None:
    """Move `source` into `folder` under a name not taken there; the name, or None if it vanished."""
    name = source.name
    if (folder / name).exists():
        name = f"{name}.{uuid.uuid4().hex[:8]}"
    try:
        os.replace(source, folder / name)
    except FileNotFoundError:
        return None
    _fsync_dir(folder)
    return name


def _oldest_first(folder: Path) -> list[str]:
    """The files in `folder`, oldest first: by the sequence of their names, else by mtime."""

    def key(entry: os.DirEntry[str]) -> tuple[int, float, str]:
        match = _PENDING_NAME.match(entry.name)
        return (int(match["seq"]) if match else -1, entry.stat().st_mtime, entry.name)

    with os.scandir(folder) as entries:
        files = [entry for entry in entries if entry.is_file()]
    return [entry.name for entry in sorted(files, key=key)]


def _prune(folder: Path, keep: int) -> list[str]:
    """Delete all but the `keep` newest files of `folder`; the names kept, oldest first."""
    names = _oldest_first(folder)
    for name in names[: max(0, len(names) - keep)]:
        (folder / name).unlink(missing_ok=True)
    return names[max(0, len(names) - keep) :]


def _max_seq(names: Iterable[str]) -> int:
    return max((int(m["seq"]) for name in names if (m := _PENDING_NAME.match(name))), default=0)


def _scan(spool_dir: Path, max_spooled: int) -> _Scan:
    """Lock the spool and read it: pending events in order, leftovers cleaned, strays set aside."""
    for folder in (spool_dir, spool_dir / EXPIRED_DIR, spool_dir / CORRUPT_DIR):
        folder.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(spool_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SpoolInUseError(f"another webhook sink holds the spool {spool_dir}") from None
        pending: list[_Spooled] = []
        strays: list[Path] = []
        with os.scandir(spool_dir) as entries:
            for entry in entries:
                if not entry.is_file(follow_symlinks=False):
                    if not entry.is_dir(follow_symlinks=False):
                        strays.append(Path(entry.path))
                    continue
                if entry.name.startswith("."):
                    if entry.name.endswith(".tmp"):  # a write cut off by a crash: never acknowledged
                        Path(entry.path).unlink(missing_ok=True)
                    continue
                match = _PENDING_NAME.fullmatch(entry.name)
                if match is None:
                    strays.append(Path(entry.path))
                    continue
                seq, ms = int(match["seq"]), int(match["ms"])
                pending.append(_Spooled(seq, match["id"], ms / 1000, Path(entry.path)))
        pending.sort(key=lambda spooled: spooled.seq)
        corrupt_dir = spool_dir / CORRUPT_DIR
        for stray in strays:
            _move_into(stray, corrupt_dir)
        expired = _prune(spool_dir / EXPIRED_DIR, max_spooled)
        corrupt = _prune(corrupt_dir, max_spooled)
        surplus = max(0, len(pending) - max_spooled)
        for spooled in pending[:surplus]:
            spooled.path.unlink(missing_ok=True)
        next_seq = max(_max_seq(expired), _max_seq(corrupt), max((p.seq for p in pending), default=0)) + 1
        return _Scan(lock_fd, pending[surplus:], expired, corrupt, next_seq, len(strays), surplus)
    except BaseException:
        os.close(lock_fd)
        raise
