"""Bearer keys with scopes. `client` keys call services; `operator` keys also operate the site.

Routes declare the *action* they perform (`require("services.list")`, or the tool whose data
they show: `require("metrics_monitor")`); `agent.scopes` decides once which scope each action
needs, for REST and chat alike. The dependency answers the request's `Principal` (the key's id and
scopes, never the key); it is one object per action, so a route that declares it and takes the
principal as a parameter checks the key once. Every such route carries the `bearer` security
scheme in the OpenAPI, so `/docs` has an Authorize button.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, cast

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agent.errors import SiteError
from agent.scopes import Principal, Scope, key_id, scope_for


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


def write_private_json(path: Path, data: Mapping[str, str]) -> None:
    """Write keys as JSON readable by the owner only, whatever mode the file had before."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        json.dump(dict(data), out)


def generate_key(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(24)}"


_BEARER = {"WWW-Authenticate": "Bearer"}

bearer = HTTPBearer(
    scheme_name="bearer",
    description="An API key of this site: a client key calls services, an operator key also operates "
    "the site. Sent as `Authorization: Bearer <key>`.",
    auto_error=False,
)
"""The OpenAPI security scheme of every authenticated route. It only documents the header: the
checks below read it themselves, so a malformed one is a 401 `invalid_key`, not a missing key."""

Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


def _keys(request: Request) -> KeyRing:
    return cast(KeyRing, request.app.state.keys)


def authenticate(request: Request) -> Principal | None:
    """The request's principal from its bearer key; None without an Authorization header.

    A malformed header or an unknown key is a 401 (`SiteError`).
    """
    return bearer_principal(_keys(request), request.headers.get("authorization"))


async def optional_principal(request: Request, _: Credentials) -> Principal | None:
    """A FastAPI dependency for routes anyone may call that say more to a known key."""
    return authenticate(request)


def bearer_principal(keys: KeyRing, header: str | None) -> Principal | None:
    """The principal of an `Authorization: Bearer KEY` header value; None without one.

    A malformed header or an unknown key is a 401 (`SiteError`).
    """
    if not header:
        return None
    kind, _, key = header.partition(" ")
    if kind.lower() != "bearer" or not key.strip():
        raise SiteError(
            401,
            "invalid_key",
            "the Authorization header must be 'Bearer <key>'",
            "authorization",
            headers=_BEARER,
        )
    principal = keys.principal(key.strip())
    if principal is None:
        raise SiteError(401, "invalid_key", "unknown API key", "authorization", headers=_BEARER)
    return principal


@functools.cache
def require(action: str) -> Callable[[Request, HTTPAuthorizationCredentials | None], Awaitable[Principal]]:
    """A FastAPI dependency that lets a request through only with a key allowed to do `action`,
    and answers its principal.

    It is `async` on purpose: FastAPI runs plain `def` dependencies on a worker thread, which
    cost the cache-hit path about a third of its throughput.
    """
    scope = scope_for(action)

    async def check(request: Request, _: Credentials) -> Principal:
        principal = authenticate(request)
        if principal is None:
            raise SiteError(
                401,
                "missing_key",
                "send an API key as 'Authorization: Bearer <key>'",
                "authorization",
                headers=_BEARER,
            )
        if scope not in principal.scopes:
            raise SiteError(403, "forbidden", f"this key lacks the {scope!r} scope", "authorization")
        return principal

    return check
