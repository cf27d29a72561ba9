"""The fast lane: `POST /v1/requests` served in one ASGI call, without the framework's router.

On this kind of machine FastAPI's middleware, routing and dependency layers cost a cache hit or a
workload call as much CPU as everything the site itself does for it (a profile of sensor misses
at 3,500 req/s: ≈ 35 % of the process in framework layers, ≈ 35 % in the route and dispatcher).
Past capacity that is the difference between holding goodput and not: every request the site
refuses after reading its body costs the same layers too.

`FastLane` is pure ASGI middleware, outermost, for the fast path only:

* Every fast-path request gets its `RequestClock` here when the HTTP protocol has not stamped one
  (in-process servers, tests); without room at the `FrontDoor` it is refused with the door's 503.
* The common case — a Content-Length body within the limit, a valid key with the scope of
  `requests.serve`, a body that validates and names a service — is served here: the same
  `ServiceRequest` model, the same `client_call`, dispatcher and `render_outcome` as the route.
* Anything else (no or bad key, invalid body, chunked or oversize bodies, `Expect`, requests for
  the agent) falls through, body replayed, to the FastAPI route, which answers it exactly as it
  always has — so each error has one implementation, and `/docs` documents the one route.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.errors import SiteError
from agent.scopes import scope_for
from api.auth import bearer_principal
from api.door import CLOCK_KEY, FAST_PATH, FrontDoor, RequestClock
from api.routes.client_requests import client_call, needs_the_agent, new_request_id, render_outcome
from api.schemas import ServiceRequest

if TYPE_CHECKING:
    from api.site import Site

_SCOPE = scope_for("requests.serve")


class FastLane:
    """Serves the common fast-path request itself; everything else goes on to `app`."""

    def __init__(self, app: ASGIApp, site: Site, max_body_bytes: int) -> None:
        self.app = app
        self.site = site
        self.door: FrontDoor = site.door
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != FAST_PATH:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        clock: RequestClock | None = state.get(CLOCK_KEY)
        if clock is None:
            clock = self.door.admit(time.perf_counter())
            if clock is None:
                await _refuse(send, self.door)
                return
            state[CLOCK_KEY] = clock
        try:
            onward: Receive | None = receive
            if scope["method"] == "POST":
                onward = await self._serve(scope, receive, send, clock)
            if onward is not None:
                await self.app(scope, onward, send)
        finally:
            clock.close()

    async def _serve(self, scope: Scope, receive: Receive, send: Send, clock: RequestClock) -> Receive | None:
        """Serve the request; None when done, else the `receive` to hand the route (body replayed)."""
        length = authorization = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"authorization":
                authorization = value
            elif name == b"expect" or name == b"transfer-encoding":
                return receive
        if length is None or not length.isdigit() or int(length) > self.max_body_bytes:
            return receive
        body = await _read(receive, int(length))
        if body is None:
            return receive
        replay = replay_body(body, receive)
        try:
            principal = bearer_principal(
                self.site.keys, authorization.decode("latin-1") if authorization else None
            )
        except SiteError:
            return replay
        if principal is None or _SCOPE not in principal.scopes:
            return replay
        try:
            request = ServiceRequest.model_validate_json(body)
        except ValidationError:
            return replay
        if needs_the_agent(request, self.site.services):
            return replay
        clock.enter()
        outcome = await self.site.dispatcher.serve(client_call(request, principal, clock))
        clock.note(outcome.status)
        status, headers, content = render_outcome(outcome, self.site.settings.site_id, new_request_id())
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})
        return None


async def _read(receive: Receive, length: int) -> bytes | None:
    """The whole body (`length` bytes as declared); None when the client went away."""
    message = await receive()
    if message["type"] != "http.request":
        return None
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > length:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives a body already read once, then the client's own events."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(send: Send, door: FrontDoor) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(door.refusal_body)).encode()),
        (b"retry-after", str(door.retry_after_s).encode()),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": door.refusal_body})
