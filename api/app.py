"""The FastAPI app factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response, install_error_handlers
from api.routes import ops, requests, services
from api.site import Site
from config.settings import Settings


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Pure ASGI middleware: 413 for a body over `limit` bytes, by Content-Length or as it streams."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_large = int(value) > self.limit
                except ValueError:
                    too_large = False
                if too_large:
                    await self._reject(scope, receive, send)
                    return
                break
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "too_large", f"the body exceeds the {self.limit}-byte limit", "body")
        await response(scope, receive, send)


def create_app(settings: Settings, site: Site | None = None) -> FastAPI:
    """Build the API for one site. The site starts and stops with the app's lifespan."""
    site = site or Site.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await site.start()
        try:
            yield
        finally:
            await site.stop()

    app = FastAPI(
        title="mec-orchestrator",
        summary="One MEC site: a deterministic fast path for clients, tools for operators.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.site = site
    app.state.keys = site.keys
    install_error_handlers(app)
    app.include_router(requests.router)
    app.include_router(services.router)
    app.include_router(ops.router)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app
