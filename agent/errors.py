"""The site's one error type: what went wrong, as the API answers it.

Every failure a caller can see — a refused key, an invalid field, a refused chat turn, a request
the fast path could not serve — is a `SiteError` carrying the HTTP status, a stable
machine-readable `code`, a human `message` and the `field` it is about. It is raised where the
failure is found (the agent, the routes, the auth dependency) and rendered once, by the API, as
`{"error": {"code", "message", "field"}}`; the fast path keeps one in its `Outcome` instead of
raising it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class SiteError(Exception):
    """A failure with the HTTP status to answer it with.

    `retry_after_s` becomes a `Retry-After` header (load refusals: 429, 503); `headers` are any
    others the answer must carry (e.g. `WWW-Authenticate` on a 401, `Connection: close`).
    """

    __slots__ = ("code", "field", "headers", "message", "retry_after_s", "status")

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        *,
        retry_after_s: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s
        self.headers = headers

    def __repr__(self) -> str:
        return f"SiteError({self.status}, {self.code!r}, {self.message!r}, field={self.field!r})"

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer: `{"error": {"code", "message", "field"}}`."""
        return error_body(self.code, self.message, self.field)

    def response_headers(self) -> dict[str, str] | None:
        """The headers the answer carries, `Retry-After` included; None when there are none."""
        if self.retry_after_s is None and not self.headers:
            return None
        headers = dict(self.headers or {})
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    """`{"error": {"code", "message", "field"}}`: the shape of every error the site answers."""
    return {"error": {"code": code, "message": message, "field": field}}
