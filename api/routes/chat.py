"""`POST /v1/chat`: operators talk to the site's agent (JSON, or SSE with `Accept: text/event-stream`)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, ServerSentEvent, format_sse_event

from agent.chat import ChatReply
from agent.errors import SiteError
from api.deps import ChatCaller, SiteDep
from api.schemas import ChatRequest, ChatResponse, error_responses

router = APIRouter(prefix="/v1", tags=["chat"])

KEEPALIVE_S = 15.0
"""An SSE stream with nothing to say for this long sends a comment, so proxies keep it open."""

_EVENTS_DOC = (
    "With `Accept: text/event-stream`, a stream of events: `session` (`{session_id}`), `text` "
    "(`{delta}`), `tool_start` / `tool_end` (a tool call), then `done` (the JSON answer) or `error` "
    "(`{error, status}`); comments keep an idle stream open."
)


_NOT_BLANK = re.compile(r"[^\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]")
"""The schema's `pattern` of `message` (a non-blank character) as JSON Schema reads it: an ECMA-262
regex, whose whitespace differs from Python's (U+001C-U+001F and U+0085 are not blank there)."""


def _checked_message(body: ChatRequest, limit: int) -> str:
    """The message, or a 422 for what the schema's `pattern` and `maxLength` say."""
    if not _NOT_BLANK.search(body.message):
        raise SiteError(422, "invalid_field", "message: must not be blank", "message")
    if len(body.message) > limit:
        raise SiteError(422, "invalid_field", f"message: longer than {limit} characters", "message")
    return body.message.strip() or body.message


@router.post(
    "/chat",
    response_model=ChatResponse,
    responses={
        **error_responses(400, 401, 403, 404, 409, 413, 422, 429, 502, 503, 504),
        200: {"content": {"text/event-stream": {}}, "description": _EVENTS_DOC},
    },
    summary="Talk to the site's operator agent",
)
async def chat(body: ChatRequest, request: Request, site: SiteDep, caller: ChatCaller) -> Response:
    """Run one turn of the operator agent: it answers from real data by calling the site's tools.

    Changing actions need an operator key; destructive ones (stop, scale to 0, flush) also need
    `confirm: true`, otherwise the agent asks back. Every tool call is listed in the answer.
    """
    message = _checked_message(body, site.settings.chat_max_message_chars)
    turn = site.chat.stream(message, caller, body.session_id, body.confirm)
    if "text/event-stream" not in request.headers.get("accept", ""):
        reply: ChatReply | None = None
        async for kind, payload in turn:
            if kind == "done":
                reply = payload
        assert reply is not None
        return JSONResponse(reply.to_dict())
    # The turn runs in a task of its own, feeding a queue the response drains: strands keeps
    # tracing context across the turn, which must stay in one task. The first item comes before
    # the answer starts, so a refused turn (rate, busy, unknown session) is still a plain 4xx/5xx.
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    producer = asyncio.get_running_loop().create_task(_produce(turn, queue))
    kind, first = await queue.get()
    if kind == "error":
        raise first
    return EventSourceResponse(
        _event_stream(ServerSentEvent(event=kind, data={"session_id": first}), queue, producer),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _produce(turn: AsyncIterator[tuple[str, Any]], queue: asyncio.Queue[tuple[str, Any]]) -> None:
    try:
        async for item in turn:
            await queue.put(item)
    except SiteError as exc:
        await queue.put(("error", exc))
    finally:
        await queue.put(("end", None))


def _event(kind: str, payload: Any) -> ServerSentEvent:
    """One item of the turn as its SSE event (the event names are the item kinds)."""
    if kind == "text":
        return ServerSentEvent(event="text", data={"delta": payload})
    if kind == "done":
        return ServerSentEvent(event="done", data=payload.to_dict())
    if kind == "error":
        return ServerSentEvent(event="error", data={**payload.body(), "status": payload.status})
    return ServerSentEvent(event=kind, data=payload)


def _encode(event: ServerSentEvent) -> bytes:
    data = json.dumps(event.data, separators=(",", ":"), default=str)
    return format_sse_event(data_str=data, event=event.event)


async def _event_stream(
    first: ServerSentEvent, queue: asyncio.Queue[tuple[str, Any]], producer: asyncio.Task[None]
) -> AsyncIterator[bytes]:
    yield _encode(first)
    try:
        while True:
            try:
                kind, payload = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                yield KEEPALIVE_COMMENT
                continue
            if kind == "end":
                break
            yield _encode(_event(kind, payload))
    finally:
        if not producer.done():
            producer.cancel()
