"""The replicated log's entries: small typed records, one change each.

Every command carries an `id` chosen by its proposer, so a proposal retried after a timeout or a
leader change is applied at most once (the state machine remembers the ids it applied). Commands
travel as JSON (`to_json` / `command_from_json`), never pickled.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any, Literal


def new_command_id() -> str:
    """A random id for a new command (128 bits)."""
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class JoinSite:
    """A site joins the swarm, or says again where it is and what it has."""

    site_id: str
    url: str
    capabilities: dict[str, Any] = field(default_factory=dict)
    """What the site can run: e.g. `{"gpus": 1, "cpus": 16, "services": ["inference", ...]}`."""
    id: str = field(default_factory=new_command_id)
    type: Literal["join_site"] = "join_site"


@dataclass(frozen=True, slots=True)
class LeaveSite:
    """A site leaves the swarm: its placements move elsewhere."""

    site_id: str
    id: str = field(default_factory=new_command_id)
    type: Literal["leave_site"] = "leave_site"


@dataclass(frozen=True, slots=True)
class SetPlacement:
    """The desired replicas of one service on each site (sites not named run none)."""

    service: str
    replicas: dict[str, int]
    id: str = field(default_factory=new_command_id)
    type: Literal["set_placement"] = "set_placement"


@dataclass(frozen=True, slots=True)
class SetCloudFallback:
    """Whether a site sends its excess to the cloud (the overload issue's cloud mode)."""

    site_id: str
    enabled: bool
    id: str = field(default_factory=new_command_id)
    type: Literal["set_cloud_fallback"] = "set_cloud_fallback"


@dataclass(frozen=True, slots=True)
class Note:
    """A command that changes nothing but the log: for tests and benchmarks of the log itself."""

    text: str
    id: str = field(default_factory=new_command_id)
    type: Literal["note"] = "note"


Command = JoinSite | LeaveSite | SetPlacement | SetCloudFallback | Note
"""One entry of the replicated log."""

_TYPES: dict[str, type[Command]] = {
    "join_site": JoinSite,
    "leave_site": LeaveSite,
    "set_placement": SetPlacement,
    "set_cloud_fallback": SetCloudFallback,
    "note": Note,
}


def to_json(command: Command) -> str:
    """The command as compact JSON with its `type` and `id`."""
    return json.dumps(asdict(command), separators=(",", ":"), sort_keys=True)


def command_from_json(text: str | bytes) -> Command:
    """Parse one log entry; `ValueError` for anything that is not a known command."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"a log entry is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("a log entry must be a JSON object")
    kind = _TYPES.get(str(data.get("type")))
    if kind is None:
        raise ValueError(f"unknown command type {data.get('type')!r}")
    try:
        return kind(**data)
    except TypeError as exc:
        raise ValueError(f"invalid {data['type']} command: {exc}") from None
