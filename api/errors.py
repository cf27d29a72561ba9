"""Every error leaves the API as `{"error": {"code", "message", "field"}}` with a 4xx/5xx status.

The site raises one error type, `agent.errors.SiteError`; the handlers here render it, and turn
FastAPI's and Starlette's own errors (validation, 404, 405) into the same shape."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent.errors import SiteError, error_body

log = logging.getLogger(__name__)


def error_response(
    status: int, code: str, message: str, field: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message, field), status_code=status, headers=headers)


def site_error_response(error: SiteError) -> JSONResponse:
    """The answer to a `SiteError`: its status, its JSON body, `Retry-After` and its other headers."""
    return JSONResponse(error.body(), status_code=error.status, headers=error.response_headers())


def _field_path(loc: Sequence[int | str]) -> str | None:
    parts = [str(part) for part in loc if part not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


_STATUS_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SiteError)
    async def _site_error(_: Request, exc: SiteError) -> JSONResponse:
        return site_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        kind = first.get("type", "")
        field = _field_path(first.get("loc", ()))
        if kind == "json_invalid":
            return error_response(
                400, "invalid_json", f"the body is not valid JSON: {first.get('msg')}", "body"
            )
        if kind == "missing" and field is None:
            return error_response(400, "missing_body", "a JSON body is required", "body")
        if kind in ("model_type", "model_attributes_type") and field is None:
            return error_response(400, "invalid_body", "the body must be a JSON object", "body")
        message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
        return error_response(422, "invalid_field", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "the site failed to handle this request")
