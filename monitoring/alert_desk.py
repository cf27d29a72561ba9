"""Where a site's alerts are read, acknowledged and followed: the same calls for every path (the
REST routes, the SSE stream, the `alert_ops` tool) in every front-door process.

* `LocalAlertDesk`: the process's own `AlertService` (a single-process site, and the first
  front-door process of `mec serve --workers N`, which evaluates the rules);
* `RemoteAlertDesk`: the other workers. They evaluate nothing; each call goes to the first worker
  over a private Unix socket (`AlertChannelServer`, mode 0600, per-run token from the supervisor),
  so every worker lists, acknowledges and streams the same alerts.

The channel speaks newline-delimited JSON, one request per connection:

    → {"token": T, "op": "alerts", "state": "active"}     ← {"ok": {"site", "active": [...], ...}}
    → {"token": T, "op": "ack", "alert_id": ID, "by": K}  ← {"ok": {...alert...} | null}
    → {"token": T, "op": "subscribe"}                     ← {"ok": {"active": [...]}}, then one
                                                            event per line until either end closes
    ← {"error": {"code": "...", "message": "..."}} instead of `ok` when refused

Lines are bounded (`MAX_LINE`); a stream whose reader falls behind loses its oldest events, as a
local subscriber does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from pathlib import Path
from typing import Any, Protocol

from monitoring.alert_service import AlertService, TooManySubscribersError
from tools.alert_ops import AlertDeskUnavailableError, AlertState
from tools.runtimes.remote import bind_private_socket

log = logging.getLogger(__name__)

MAX_LINE = 4 * 1024 * 1024
"""The longest line either end reads (500 resolved alerts fit many times over)."""
CALL_TIMEOUT_S = 5.0
STREAM_BACKLOG = 64 * 1024
"""Bytes a stream's socket may hold unread before its events are dropped instead of written."""


class AlertFeed(Protocol):
    """One live reader of alert events (the SSE stream)."""

    snapshot: list[dict[str, Any]]
    """The active alerts when the feed opened."""

    async def get(self, timeout_s: float) -> dict[str, Any] | None:
        """The next event, or None when none came within `timeout_s`."""
        ...

    def close(self) -> None: ...


class StreamRefusedError(Exception):
    """No stream can be opened now (every subscriber slot is taken)."""


class _LocalFeed:
    def __init__(self, service: AlertService) -> None:
        self._subscription = service.subscribe()
        self.snapshot = [alert.to_dict() for alert in service.engine.active()]

    async def get(self, timeout_s: float) -> dict[str, Any] | None:
        return await self._subscription.get(timeout_s)

    def close(self) -> None:
        self._subscription.close()


class LocalAlertDesk:
    """The alerts of this process's own engine."""

    def __init__(self, service: AlertService, site_id: str) -> None:
        self.service = service
        self.site_id = site_id

    async def alerts(self, state: AlertState) -> dict[str, Any]:
        engine = self.service.engine
        found: dict[str, Any] = {"site": self.site_id}
        if state in ("active", "all"):
            found["active"] = [alert.to_dict() for alert in engine.active()]
        if state in ("resolved", "all"):
            found["resolved"] = [alert.to_dict() for alert in engine.resolved()]
        return found

    async def ack(self, alert_id: str, by: str) -> dict[str, Any] | None:
        alert = self.service.ack(alert_id, by)
        return None if alert is None else alert.to_dict()

    async def subscribe(self) -> AlertFeed:
        try:
            return _LocalFeed(self.service)
        except TooManySubscribersError as exc:
            raise StreamRefusedError(str(exc)) from exc


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


class AlertChannelServer:
    """The first worker's side of the channel: answers the other workers from a `LocalAlertDesk`."""

    def __init__(self, desk: LocalAlertDesk, path: Path, token: str) -> None:
        self.desk = desk
        self.path = path
        self._token = token.encode()
        self._server: asyncio.Server | None = None
        self._streams: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        sock = bind_private_socket(self.path)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._streams):
            task.cancel()
        for task in list(self._streams):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                request = json.loads(await reader.readuntil(b"\n"))
            token = str(request.get("token", "")).encode() if isinstance(request, dict) else b""
            if not hmac.compare_digest(token, self._token):
                writer.write(_line({"error": {"code": "refused", "message": "wrong or missing token"}}))
                return
            op = request.get("op")
            if op == "subscribe":
                task = asyncio.current_task()
                assert task is not None
                self._streams.add(task)
                try:
                    await self._stream(reader, writer)
                finally:
                    self._streams.discard(task)
                return
            writer.write(_line(await self._answer(op, request)))
            await writer.drain()
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a caller that went away or sent garbage gets nothing more
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(self, op: Any, request: dict[str, Any]) -> dict[str, Any]:
        if op == "alerts":
            state = request.get("state", "all")
            if state not in ("active", "resolved", "all"):
                return {"error": {"code": "bad_request", "message": f"unknown state {state!r}"}}
            return {"ok": await self.desk.alerts(state)}
        if op == "ack":
            alert_id, by = request.get("alert_id"), request.get("by")
            if not isinstance(alert_id, str) or not isinstance(by, str):
                return {"error": {"code": "bad_request", "message": "ack needs alert_id and by"}}
            return {"ok": await self.desk.ack(alert_id, by)}
        return {"error": {"code": "bad_request", "message": f"unknown op {op!r}"}}

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            feed = await self.desk.subscribe()
        except StreamRefusedError as exc:
            writer.write(_line({"error": {"code": "too_many_streams", "message": str(exc)}}))
            await writer.drain()
            return
        gone = asyncio.ensure_future(reader.read(1))  # the reader closing (EOF) ends the stream
        try:
            writer.write(_line({"ok": {"active": feed.snapshot}}))
            await writer.drain()
            while not gone.done():
                event = await feed.get(1.0)
                if event is None:
                    continue
                transport = writer.transport
                if transport.get_write_buffer_size() > STREAM_BACKLOG:
                    continue  # a reader this far behind loses events rather than growing memory
                writer.write(_line(event))
        finally:
            gone.cancel()
            feed.close()


class _RemoteFeed:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, snapshot: list[dict[str, Any]]
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.snapshot = snapshot
        self._next: asyncio.Task[bytes] | None = None

    async def get(self, timeout_s: float) -> dict[str, Any] | None:
        if self._next is None:
            self._next = asyncio.ensure_future(self._reader.readuntil(b"\n"))
        done, _ = await asyncio.wait({self._next}, timeout=timeout_s)
        if not done:
            return None
        task, self._next = self._next, None
        try:
            event = json.loads(task.result())
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise AlertDeskUnavailableError(f"the alert stream from the first worker ended: {exc}") from exc
        return event if isinstance(event, dict) else None

    def close(self) -> None:
        if self._next is not None:
            self._next.cancel()
        self._writer.close()


class RemoteAlertDesk:
    """The alerts of the first worker, over its channel (see the module docstring)."""

    def __init__(self, path: Path, token: str, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.path = path
        self._token = token
        self.timeout_s = timeout_s

    async def _open(
        self, request: dict[str, Any]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any]]:
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = await asyncio.open_unix_connection(str(self.path), limit=MAX_LINE)
                try:
                    writer.write(_line({"token": self._token, **request}))
                    answer = json.loads(await reader.readuntil(b"\n"))
                except BaseException:
                    writer.close()
                    raise
        except (
            OSError,
            ValueError,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as exc:
            raise AlertDeskUnavailableError(
                f"the first worker, which keeps this site's alerts, did not answer: {exc}"
            ) from exc
        if not isinstance(answer, dict) or "ok" not in answer:
            writer.close()
            error = answer.get("error", {}) if isinstance(answer, dict) else {}
            if error.get("code") == "too_many_streams":
                raise StreamRefusedError(str(error.get("message", "too many alert streams")))
            raise AlertDeskUnavailableError(f"the first worker refused: {error.get('message', answer)}")
        return reader, writer, answer

    async def _call(self, request: dict[str, Any]) -> Any:
        _, writer, answer = await self._open(request)
        writer.close()
        return answer["ok"]

    async def alerts(self, state: AlertState) -> dict[str, Any]:
        found = await self._call({"op": "alerts", "state": state})
        if not isinstance(found, dict):
            raise AlertDeskUnavailableError("the first worker answered an alert list that is not an object")
        return found

    async def ack(self, alert_id: str, by: str) -> dict[str, Any] | None:
        alert = await self._call({"op": "ack", "alert_id": alert_id, "by": by})
        return alert if isinstance(alert, dict) else None

    async def subscribe(self) -> AlertFeed:
        reader, writer, answer = await self._open({"op": "subscribe"})
        snapshot = answer["ok"].get("active", []) if isinstance(answer["ok"], dict) else []
        return _RemoteFeed(reader, writer, list(snapshot))
