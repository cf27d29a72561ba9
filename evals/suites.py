"""The evaluation suites: versioned YAML files under `evals/suites/`, validated by pydantic.

*chat* (`ChatSuite`): operator messages and what a correct operator agent does with each one —
the tool calls it makes, in order, with constraints on their arguments (`expect.calls`), or that
it calls nothing (`expect.no_tool`: small talk, off-topic text, injections) or asks back before it
changes anything (`expect.ask_back`: ambiguous or unconfirmed destructive requests) — plus the
state the real site must be in after the turn (`end_state`) and what must be set up before it
(`setup`).

*routing* (`RoutingSuite`): one client request and a hand-described site and swarm state, and the
tier and target class `agent.router.plan()` must pick.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

ChatCategory = Literal[
    "status", "metrics", "scale", "restart", "logs", "cache", "alerts", "swarm", "irrelevance", "adversarial"
]
CHAT_CATEGORIES: tuple[str, ...] = ChatCategory.__args__  # type: ignore[attr-defined]

_STRICT = ConfigDict(extra="forbid", frozen=True)


class ArgConstraint(BaseModel):
    """One constraint on one argument of a tool call; exactly one of its fields is set.

    `equals`: the argument is this value. `contains`: a string argument contains this text
    (case-insensitive), a list argument holds this item. `one_of`: the argument is one of these.
    `absent`: the call does not give the argument (or gives null).
    """

    model_config = _STRICT

    equals: Any = None
    contains: Any = None
    one_of: list[Any] | None = None
    absent: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _scalar_is_equals(cls, value: Any) -> Any:
        """A bare value in YAML (`action: list`) means `equals`."""
        if not isinstance(value, dict):
            return {"equals": value}
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> ArgConstraint:
        given = [
            name for name in ("equals", "contains", "one_of", "absent") if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"an argument constraint sets exactly one of equals/contains/one_of/absent, not {given}"
            )
        return self


class ExpectedCall(BaseModel):
    """One tool call of the expected trajectory: the tool's name and constraints on its arguments."""

    model_config = _STRICT

    tool: str
    args: dict[str, ArgConstraint] = Field(default_factory=dict)


class ChatExpectation(BaseModel):
    """What a correct agent does: `calls` (in order; `match` says how strictly), or `no_tool`, or
    `ask_back`. `reply_contains`: words the reply must hold (any one of them, case-insensitive)."""

    model_config = _STRICT

    calls: list[ExpectedCall] = Field(default_factory=list)
    match: Literal["exact", "in_order"] = "in_order"
    no_tool: bool = False
    ask_back: bool = False
    reply_contains: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_kind(self) -> ChatExpectation:
        kinds = [bool(self.calls), self.no_tool, self.ask_back]
        if sum(kinds) != 1:
            raise ValueError("an expectation has exactly one of: calls, no_tool: true, ask_back: true")
        return self

    @property
    def kind(self) -> Literal["calls", "no_tool", "ask_back"]:
        if self.no_tool:
            return "no_tool"
        return "ask_back" if self.ask_back else "calls"


class InstancesState(BaseModel):
    """`service` has exactly `running` instances in state running (and, if given, none from `image`)."""

    model_config = _STRICT

    service: str
    running: int | None = None
    no_image: str | None = None


class CacheState(BaseModel):
    """The entry `key` in `namespace` is present (or absent) in the site's cache."""

    model_config = _STRICT

    namespace: str
    key: str
    present: bool


class EndState(BaseModel):
    """One check on the real site after the turn: exactly one of `instances`, `cache`."""

    model_config = _STRICT

    instances: InstancesState | None = None
    cache: CacheState | None = None

    @model_validator(mode="after")
    def _one(self) -> EndState:
        if (self.instances is None) == (self.cache is None):
            raise ValueError("an end-state check is exactly one of: instances, cache")
        return self


class Setup(BaseModel):
    """What is done to the site before the turn: scale a service, store a cache entry."""

    model_config = _STRICT

    scale: dict[str, int] = Field(default_factory=dict)
    cache: list[dict[str, Any]] = Field(default_factory=list)
    """Entries `{namespace, key, value}`."""


class ChatCase(BaseModel):
    model_config = _STRICT

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    category: ChatCategory
    message: str = Field(min_length=1)
    confirm: bool = False
    requires: list[str] = Field(default_factory=list)
    """Tools the case needs the agent to have (`swarm_ops`: only a site in a swarm); without them
    the case is skipped."""
    without: list[str] = Field(default_factory=list)
    """Tools whose presence skips the case (the lone-site variant of a swarm question)."""
    setup: Setup = Field(default_factory=Setup)
    expect: ChatExpectation
    end_state: list[EndState] = Field(default_factory=list)
    note: str = ""


class ChatSuite(BaseModel):
    model_config = _STRICT

    suite: Literal["chat"]
    version: int = Field(ge=1)
    cases: list[ChatCase]

    @model_validator(mode="after")
    def _unique_ids(self) -> ChatSuite:
        ids = [case.id for case in self.cases]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate case ids: {duplicates}")
        return self


# -- routing ------------------------------------------------------------------------------------

TargetClass = Literal["cache", "local-gpu", "local-cpu", "peer", "cloud-endpoint", "none"]
"""What kind of target a plan serves from: the cache, a local instance on the GPU or not, a peer
site, the service's cloud endpoint, or nothing (a reject)."""


class RoutedRequest(BaseModel):
    model_config = _STRICT

    service: str
    cached: bool = False
    affinity: str | None = None
    exclude: list[str] = Field(default_factory=list)
    budget_ms: float = Field(gt=0)
    forwarded: bool = False


class LocalInstance(BaseModel):
    """One ready local instance and its load (an `agent.view.LoadFigures`)."""

    model_config = _STRICT

    id: str
    gpu: bool = False
    predicted_ms: float = 0.0
    has_room: bool = True
    outstanding: int = 0


class PeerState(BaseModel):
    """One peer's last load report for the request's service, and the RTT to it."""

    model_config = _STRICT

    site_id: str
    rtt_ms: float | None
    ready: int = 1
    predicted_ms: float = 0.0
    has_room: bool = True
    inflight: int = 0
    overload: Literal["normal", "shedding", "cloud"] = "normal"
    age_s: float = 0.0
    """How old the report is; one older than the table's `stale_s` (1 s) is not used."""


class CloudState(BaseModel):
    """The request's service has a cloud endpoint: its measured answer time, its breaker."""

    model_config = _STRICT

    expected_ms: float = 50.0
    breaker: Literal["closed", "open"] = "closed"


class SiteState(BaseModel):
    model_config = _STRICT

    instances: list[LocalInstance] = Field(default_factory=list)
    gpu_busy: bool = False
    spill_share: float = 1.0
    cloud_spill: bool = False
    peers: list[PeerState] | None = None
    """None: a site on its own (no balancer); a list (maybe empty): a site in a swarm."""
    balancer: Literal["default", "p2c", "least-loaded", "round-robin"] = "least-loaded"
    cloud: CloudState | None = None


class RoutingExpectation(BaseModel):
    model_config = _STRICT

    tier: Literal["cache", "local", "peer", "cloud", "reject"]
    target_class: TargetClass
    target: str | None = None
    """The exact target (`Plan.target`: an instance id, a site id), when it matters."""
    status: int | None = None
    code: str | None = None


class RoutingCase(BaseModel):
    model_config = _STRICT

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    category: str
    request: RoutedRequest
    site: SiteState
    expect: RoutingExpectation
    note: str = ""


class RoutingSuite(BaseModel):
    model_config = _STRICT

    suite: Literal["routing"]
    version: int = Field(ge=1)
    cases: list[RoutingCase]


SuiteName = Literal["chat", "routing"]


def _read(name: str) -> Any:
    text = resources.files("evals").joinpath("suites", f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


@cache
def load_chat_suite() -> ChatSuite:
    """The bundled chat suite, validated."""
    return ChatSuite.model_validate(_read("chat"))


@cache
def load_routing_suite() -> RoutingSuite:
    """The bundled routing suite, validated."""
    return RoutingSuite.model_validate(_read("routing"))
