"""The FastAPI app factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response, install_error_handlers
from api.fastlane import FastLane, replay_body
from api.routes import alerts, chat, client_requests, ops, peers, services, sites
from api.routes.dashboard import install_dashboard
from api.schemas import ServiceRequest, site_request_rules
from api.site import Site
from config.settings import Settings

DRAIN_BYTES = 16 * 1024 * 1024
"""How much of an oversize body the site reads and drops before answering 413."""


class BodyLimit:
    """Pure ASGI middleware: 413 for a body over `limit` bytes, that the client gets to read.

    Kept instead of Starlette's `RequestBodyLimitMiddleware` (FastAPI's `max_body_size`): that one
    answers a plain-text 413 without reading the rest of the body, so a client that sends its
    whole body first sees a reset connection instead of the JSON error.

    A declared Content-Length is checked up front; a chunked body is read here up to the limit,
    then replayed to the app. Most HTTP clients (Python's urllib, mobile stacks) send the whole
    body before reading the answer, and closing on unread data makes the kernel reset the
    connection under them: so the rest of the body, up to `DRAIN_BYTES`, is read and dropped
    before the 413 is sent. A client that sent `Expect: 100-continue` is answered at once, and a
    body larger than the drain allowance gets the 413 with `Connection: close`.
    """

    def __init__(self, app: ASGIApp, limit: int, drain_bytes: int = DRAIN_BYTES) -> None:
        self.app = app
        self.limit = limit
        self.drain_bytes = drain_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        expects_continue = False
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                declared = int(value)
            elif name == b"expect" and value.lower() == b"100-continue":
                expects_continue = True
        if declared is not None:
            if declared <= self.limit:
                await self.app(scope, receive, send)
                return
            drained = not expects_continue and declared <= self.limit + self.drain_bytes
            if drained:
                await self._drain(receive, 0)
            await self._reject(scope, receive, send, keep_alive=drained)
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = bool(message.get("more_body", False))
            if size > self.limit:
                drained = not more or await self._drain(receive, size - self.limit)
                await self._reject(scope, receive, send, keep_alive=drained)
                return
            chunks.append(chunk)
            if not more:
                break
        await self.app(scope, replay_body(b"".join(chunks), receive), send)

    async def _drain(self, receive: Receive, already: int) -> bool:
        """Read and drop the rest of the body; False when it runs past the drain allowance."""
        dropped = already
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False
            dropped += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
            if dropped > self.drain_bytes:
                return False

    async def _reject(self, scope: Scope, receive: Receive, send: Send, keep_alive: bool) -> None:
        response = error_response(
            413,
            "too_large",
            f"the body exceeds the {self.limit}-byte limit",
            "body",
            None if keep_alive else {"Connection": "close"},
        )
        await response(scope, receive, send)


def _site_openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The generated schema, plus what it cannot know by itself: the request model the fast-path
    route parses itself, and the limits this site's settings put on fields."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        body = ServiceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        body["allOf"] = site_request_rules(settings.services)
        components["ServiceRequest"] = body
        components["ChatRequest"]["properties"]["message"]["maxLength"] = settings.chat_max_message_chars
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(settings: Settings, site: Site | None = None) -> FastAPI:
    """Build the API for one site. The site starts and stops with the app's lifespan."""
    site = site or Site.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await site.start()  # nothing to do when `mec serve` started it before listening
        try:
            yield
        finally:
            await site.stop()

    # FastAPIOffline: `/docs` and `/redoc` load Swagger UI and ReDoc from the site itself, no CDN.
    app = FastAPIOffline(
        title="mec-orchestrator",
        summary="One MEC site: a deterministic fast path for clients, tools for operators.",
        version="0.1.0",
        lifespan=lifespan,
        telemetry=None
        if settings.http_telemetry
        else {"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.site = site
    app.openapi = lambda: _site_openapi(app, settings)  # type: ignore[method-assign]
    app.state.keys = site.keys
    install_error_handlers(app)
    app.include_router(client_requests.router)
    app.include_router(services.router)
    app.include_router(chat.router)
    app.include_router(ops.router)
    app.include_router(sites.router)
    app.include_router(peers.router)
    app.include_router(alerts.router)
    install_dashboard(app)  # GET / and /static/dashboard/...: the operator's page, no CDN
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    # Outermost: the clock starts first, and the fast path skips the layers below (api.fastlane).
    app.add_middleware(FastLane, site=site, max_body_bytes=settings.max_body_bytes)
    return app
