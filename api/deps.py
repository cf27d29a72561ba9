"""Typed FastAPI dependencies of the routes: the site, and the caller of each kind of action.

A route takes `site: SiteDep` and, where it acts for a key, `caller: CallerOf[...]`-style
aliases, so no route reads `request.app.state` untyped.
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request, Security

from agent.scopes import Principal
from api.auth import optional_principal, require
from api.site import Site


async def get_site(request: Request) -> Site:
    """The site this app serves (set by `create_app`). `async`: FastAPI runs a plain `def`
    dependency on a worker thread."""
    return cast(Site, request.app.state.site)


SiteDep = Annotated[Site, Depends(get_site)]
"""The site this app serves."""

ClientCaller = Annotated[Principal, Security(require("requests.serve"))]
"""A key allowed to send requests to services (client or operator)."""
ChatCaller = Annotated[Principal, Security(require("chat.turn"))]
"""A key allowed to talk to the operator agent (its tool calls are checked one by one)."""
MaybeCaller = Annotated[Principal | None, Depends(optional_principal)]
"""The key's principal when one is sent, else None; an unknown key is still a 401."""
