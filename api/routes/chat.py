"""`POST /v1/chat`: operators talk to the site's agent (JSON, or SSE with `Accept: text/event-stream`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from agent.chat import ChatError, ChatReply
from api.auth import require
from api.errors import ApiError, error_body
from api.schemas import ERROR_RESPONSES, ChatRequest, ChatResponse

router = APIRouter(prefix="/v1", tags=["chat"], dependencies=[Depends(require("chat.turn"))])


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def chat_api_error(exc: ChatError) -> ApiError:
    """A chat failure as the API's error, with `Retry-After` when the turn was refused for load."""
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    return ApiError(exc.status, exc.code, exc.message, exc.field, headers)


def _checked_message(request: Request, body: ChatRequest) -> str:
    limit = request.app.state.site.settings.chat_max_message_chars
    message = body.message.strip()
    if not message:
        raise ApiError(422, "invalid_field", "message: must not be blank", "message")
    if len(message) > limit:
        raise ApiError(422, "invalid_field", f"message: longer than {limit} characters", "message")
    return message


@router.post(
    "/chat",
    response_model=ChatResponse,
    responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}},
    summary="Talk to the site's operator agent",
)
async def chat(body: ChatRequest, request: Request) -> Response:
    """Run one turn of the operator agent: it answers from real data by calling the site's tools.

    Changing actions need an operator key; destructive ones (stop, scale to 0, flush) also need
    `confirm: true`, otherwise the agent asks back. Every tool call is listed in the answer.
    """
    site = request.app.state.site
    message = _checked_message(request, body)
    turn = site.chat.stream(message, request.state.principal, body.session_id, body.confirm)
    if "text/event-stream" not in request.headers.get("accept", ""):
        reply: ChatReply | None = None
        try:
            async for kind, payload in turn:
                if kind == "done":
                    reply = payload
        except ChatError as exc:
            raise chat_api_error(exc) from None
        assert reply is not None
        return JSONResponse(reply.to_dict())
    # The turn runs in a task of its own, feeding a queue the response drains: strands keeps
    # tracing context across the turn, which must stay in one task.
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    producer = asyncio.get_running_loop().create_task(_produce(turn, queue))
    kind, first = await queue.get()
    if kind == "error":
        raise chat_api_error(first)
    return StreamingResponse(_event_stream(kind, first, queue, producer), media_type="text/event-stream")


async def _produce(turn: AsyncIterator[tuple[str, Any]], queue: asyncio.Queue[tuple[str, Any]]) -> None:
    try:
        async for item in turn:
            await queue.put(item)
    except ChatError as exc:
        await queue.put(("error", exc))
    finally:
        await queue.put(("end", None))


async def _event_stream(
    kind: str, first: Any, queue: asyncio.Queue[tuple[str, Any]], producer: asyncio.Task[None]
) -> AsyncIterator[bytes]:
    yield _sse(kind, {"session_id": first})
    try:
        while True:
            kind, payload = await queue.get()
            if kind == "end":
                break
            if kind == "text":
                yield _sse("text", {"delta": payload})
            elif kind == "done":
                yield _sse("done", payload.to_dict())
            elif kind == "error":
                yield _sse(
                    "error",
                    {**error_body(payload.code, payload.message, payload.field), "status": payload.status},
                )
            else:
                yield _sse(kind, payload)
    finally:
        if not producer.done():
            producer.cancel()
