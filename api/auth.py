"""Bearer keys with scopes. `client` keys call services; `operator` keys also operate the site.

Routes declare the *action* they perform (`require("services.list")`, or the tool whose data
they show: `require("metrics_monitor")`); `agent.scopes` decides once which scope each action
needs, for REST and chat alike. A request that passes carries its
`Principal` (the key's id and scopes, never the key) in `request.state.principal`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from fastapi import Request

from agent.scopes import Principal, Scope, key_id, scope_for
from api.errors import ApiError


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class KeyRing:
    """Known keys, stored as SHA-256 digests mapped to the principal they authenticate."""

    principals_by_digest: dict[bytes, Principal]

    @classmethod
    def build(cls, client_keys: Iterable[str], operator_keys: Iterable[str]) -> KeyRing:
        table: dict[bytes, Principal] = {}
        for key in client_keys:
            table[_digest(key)] = Principal(key_id(key), frozenset({"client"}))
        for key in operator_keys:
            table[_digest(key)] = Principal(key_id(key), frozenset({"client", "operator"}))
        return cls(table)

    def principal(self, key: str) -> Principal | None:
        return self.principals_by_digest.get(_digest(key))

    def scopes(self, key: str) -> frozenset[Scope] | None:
        principal = self.principal(key)
        return None if principal is None else principal.scopes


def generate_key(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(24)}"


_BEARER = {"WWW-Authenticate": "Bearer"}


def authenticate(request: Request) -> Principal | None:
    """The request's principal from its bearer key; None without an Authorization header.

    A malformed header or an unknown key is a 401 (`ApiError`).
    """
    return bearer_principal(request.app.state.keys, request.headers.get("authorization"))


def bearer_principal(keys: KeyRing, header: str | None) -> Principal | None:
    """The principal of an `Authorization: Bearer KEY` header value; None without one.

    A malformed header or an unknown key is a 401 (`ApiError`).
    """
    if not header:
        return None
    kind, _, key = header.partition(" ")
    if kind.lower() != "bearer" or not key.strip():
        raise ApiError(
            401, "invalid_key", "the Authorization header must be 'Bearer <key>'", "authorization", _BEARER
        )
    principal = keys.principal(key.strip())
    if principal is None:
        raise ApiError(401, "invalid_key", "unknown API key", "authorization", _BEARER)
    return principal


def require(action: str) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency that lets a request through only with a key allowed to do `action`.

    It is `async` on purpose: FastAPI runs plain `def` dependencies on a worker thread, which
    cost the cache-hit path about a third of its throughput.
    """
    scope = scope_for(action)

    async def check(request: Request) -> Principal:
        principal = authenticate(request)
        if principal is None:
            raise ApiError(
                401,
                "missing_key",
                "send an API key as 'Authorization: Bearer <key>'",
                "authorization",
                _BEARER,
            )
        if scope not in principal.scopes:
            raise ApiError(403, "forbidden", f"this key lacks the {scope!r} scope", "authorization")
        request.state.principal = principal
        return principal

    return check
