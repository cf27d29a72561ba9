"""A webhook receiver for tests: a plain asyncio HTTP/1.1 server on a fixed 127.0.0.1 port.

It records every POST it reads (headers that matter, body, the status it answered) and can be
stopped and started again on the same port, to play a receiver that goes down and comes back.
Answers come from `answers` in turn (a status, or HANG: read the request, never answer), then 200.
Each connection serves one request and is closed (`Connection: close`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

HANG = 0
"""An answer that is none: the request is read and the connection held until the client gives up."""


@dataclass(frozen=True)
class Received:
    """One request as the receiver read it."""

    delivery_id: str
    timestamp: str
    signature: str
    content_type: str
    body: bytes
    status: int


class WebhookReceiver:
    def __init__(self, port: int, answers: Iterable[int] = ()) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hooks/alerts"
        self.received: list[Received] = []
        self._answers = deque(answers)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def accepted(self) -> list[Received]:
        """The requests answered 2xx, in arrival order."""
        return [request for request in self.received if 200 <= request.status < 300]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def stop(self) -> None:
        """Stop listening and close every open connection; start() may follow on the same port."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._writers):
            writer.close()
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            status = self._answers.popleft() if self._answers else 200
            self.received.append(
                Received(
                    delivery_id=headers.get("x-mec-delivery", ""),
                    timestamp=headers.get("x-mec-timestamp", ""),
                    signature=headers.get("x-mec-signature", ""),
                    content_type=headers.get("content-type", ""),
                    body=body,
                    status=status,
                )
            )
            if status == HANG:
                await reader.read()  # until the client closes the connection
                return
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
