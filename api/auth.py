"""Bearer keys with scopes. `client` keys call services; `operator` keys also operate the site."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from fastapi import Request

from api.errors import ApiError

Scope = Literal["client", "operator"]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class KeyRing:
    """Known keys, stored as SHA-256 digests mapped to their scopes."""

    scopes_by_digest: dict[bytes, frozenset[Scope]]

    @classmethod
    def build(cls, client_keys: Iterable[str], operator_keys: Iterable[str]) -> KeyRing:
        table: dict[bytes, frozenset[Scope]] = {}
        for key in client_keys:
            table[_digest(key)] = frozenset({"client"})
        for key in operator_keys:
            table[_digest(key)] = frozenset({"client", "operator"})
        return cls(table)

    def scopes(self, key: str) -> frozenset[Scope] | None:
        return self.scopes_by_digest.get(_digest(key))


def generate_key(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(24)}"


def require(scope: Scope) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency that lets a request through only with a key holding `scope`.

    It is `async` on purpose: FastAPI runs plain `def` dependencies on a worker thread, which
    cost the cache-hit path about a third of its throughput.
    """

    async def check(request: Request) -> None:
        header = request.headers.get("authorization")
        if not header:
            raise ApiError(
                401,
                "missing_key",
                "send an API key as 'Authorization: Bearer <key>'",
                "authorization",
                {"WWW-Authenticate": "Bearer"},
            )
        kind, _, key = header.partition(" ")
        if kind.lower() != "bearer" or not key.strip():
            raise ApiError(
                401,
                "invalid_key",
                "the Authorization header must be 'Bearer <key>'",
                "authorization",
                {"WWW-Authenticate": "Bearer"},
            )
        keys: KeyRing = request.app.state.keys
        scopes = keys.scopes(key.strip())
        if scopes is None:
            raise ApiError(
                401, "invalid_key", "unknown API key", "authorization", {"WWW-Authenticate": "Bearer"}
            )
        if scope not in scopes:
            raise ApiError(403, "forbidden", f"this key lacks the {scope!r} scope", "authorization")
        request.state.scopes = scopes

    return check
