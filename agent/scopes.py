"""Who may do what: API key scopes, the caller's identity, and the scope of every action.

One table decides the scope of each action, whichever path it comes by: a REST route, a chat
tool call, or (later) a peer. `/v1/metrics/snapshot` and the `metrics_monitor` tool read the same
data, so they need the same scope; a client key gets no operator data through any path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Scope = Literal["client", "operator"]

ACTION_SCOPES: Mapping[str, Scope] = {
    # The fast path and what a client needs to call it.
    "requests.serve": "client",
    "services.list": "client",
    "chat.turn": "client",
    # Site data and changes. A REST route that shows a tool's data names the tool as its action
    # (`/v1/metrics/snapshot` and `/metrics` are `metrics_monitor`), so the two cannot drift apart.
    "metrics_monitor": "operator",
    "container_ops": "operator",
    "cache_manager": "operator",
    "swarm_ops": "operator",
    "alert_ops": "operator",
    "site.health_detail": "operator",
}
"""The scope of each action. A tool's entry covers all of its actions (reads included): every
one of them returns operator data (host figures, instance logs, cache contents, the swarm's sites,
placements and load)."""

SAME_AS_TOOL: Mapping[str, str] = {
    "sites.list": "swarm_ops",  # GET /v1/sites shows the swarm's sites, as swarm_ops "sites" does
    "services.scale": "swarm_ops",  # POST /v1/services/{name}/scale|move: swarm_ops "scale"/"move"
    "alerts.list": "alert_ops",  # GET /v1/alerts and its stream: alert_ops "list"
    "alerts.ack": "alert_ops",  # POST /v1/alerts/{id}/ack: alert_ops "ack"
}
"""REST actions with a name of their own that show a tool's data: each takes its tool's scope
from the one entry above, so the route and the tool cannot drift apart."""

UNKNOWN_ACTION_SCOPE: Scope = "operator"
"""Anything the table does not name needs the operator scope."""


def scope_for(action: str) -> Scope:
    """The scope an action needs: a REST action (`services.list`) or a tool name (`container_ops`)."""
    return ACTION_SCOPES.get(SAME_AS_TOOL.get(action, action), UNKNOWN_ACTION_SCOPE)


def key_id(key: str) -> str:
    """A stable, non-secret id for an API key (a digest): what logs, sessions and limits use."""
    return hashlib.blake2b(key.encode(), digest_size=8, person=b"mec-key-id").hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request: its key's id (never the key) and the scopes the key holds."""

    key_id: str
    scopes: frozenset[Scope]
    tenant: str = field(init=False)
    """What names this caller's own space in stored names (cache keys): a digest of its key id,
    computed once per key rather than per request."""

    def __post_init__(self) -> None:
        digest = hashlib.blake2b(self.key_id.encode(), digest_size=8, person=b"mec-tenant").hexdigest()
        object.__setattr__(self, "tenant", digest)

    def may(self, action: str) -> bool:
        return scope_for(action) in self.scopes

    @property
    def is_operator(self) -> bool:
        return "operator" in self.scopes

    def tenant_tag(self) -> str:
        """The caller's own space in stored names (see `tenant`)."""
        return self.tenant

    def to_log(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "scopes": sorted(self.scopes)}
