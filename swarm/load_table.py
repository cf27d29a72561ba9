"""What this site knows of its peers' load: their last reports, how old those are, and the RTT to each.

Sites send each other a `SiteLoad` every gossip interval (`swarm.gossip`). The table keeps the
latest report of each configured peer, stamped with this site's own monotonic clock when it
arrived (a peer's clock is never trusted for freshness), and `fresh(now)` answers only those
younger than `stale_s`: a peer that stops answering drops out of routing by itself. Reports come
from the network, so `SiteLoad` is parsed strictly (pydantic, unknown fields refused, bounded).

The table also counts the forwards this site has in flight to each peer since that peer's last
report (`forward_started` / `Forward.done`): the report cannot include them yet, and the default
balancer adds them so that this site does not keep sending to a peer its stale report shows idle.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from agent.view import IDLE, InstanceLoad
from config.settings import OverloadState
from swarm.peers import PeerAddress
from tools.runtimes.base import Instance

MAX_LOAD_BYTES = 64 * 1024
"""A load report longer than this is refused unread."""
MAX_SERVICES = 256
RTT_EWMA_ALPHA = 0.3
"""Weight of a new RTT sample in the per-peer average."""

SiteId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
ServiceName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,64}$")]
Percent = Annotated[float, Field(ge=0, le=100)]
Millis = Annotated[float, Field(ge=0, le=3_600_000)]
Count = Annotated[int, Field(ge=0, le=1_000_000)]

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class ServiceLoad(BaseModel):
    """One service's load at a site."""

    model_config = _STRICT

    ready: Count
    """Instances that passed their health check."""
    inflight: Count
    """Requests in flight or queued at those instances (their gates' `outstanding`)."""
    predicted_ms: Millis
    """When the soonest instance with room would answer a request sent now (ms from now)."""
    has_room: bool
    """Whether any ready instance would take one more request."""
    p99_ms: Millis | None = None
    """The service's recent 99th percentile latency at the site, if measured."""

    @classmethod
    def of(
        cls, instances: Sequence[Instance], loads: Mapping[str, InstanceLoad], p99_ms: float | None = None
    ) -> ServiceLoad:
        """The load of one service from its ready instances and their gates (missing: idle).

        `predicted_ms` is the soonest of the instances with room, else the soonest of all; 0 with
        no instance (then `has_room` is False and balancers skip the service).
        """
        figures = [loads.get(inst.id, IDLE) for inst in instances]
        roomy = [load.predicted_ms for load in figures if load.has_room]
        predicted = min(roomy or [load.predicted_ms for load in figures] or [0.0])
        return cls(
            ready=len(instances),
            inflight=sum(load.outstanding for load in figures),
            predicted_ms=min(max(0.0, predicted), 3_600_000.0) if math.isfinite(predicted) else 3_600_000.0,
            has_room=bool(roomy),
            p99_ms=p99_ms,
        )


class SiteLoad(BaseModel):
    """A site's load report: what it sends its peers every gossip interval."""

    model_config = _STRICT

    site_id: SiteId
    url: Annotated[str, StringConstraints(max_length=512)]
    """The URL the site believes it answers at (informational: peers route to their configured URL)."""
    sent_at: Annotated[float, Field(ge=0)]
    """Unix seconds on the sender's clock when the report was made (orders reports, never ages them)."""
    services: Annotated[dict[ServiceName, ServiceLoad], Field(max_length=MAX_SERVICES)]
    cpu_percent: Percent
    """The host's CPU use, 0-100 (all cores)."""
    gpu_util: Percent | None = None
    """The busiest GPU's utilisation, 0-100; None without a GPU."""
    overload: OverloadState = "normal"
    """The sender's overload state: a peer that is shedding or offloading gets forwards only when no
    normal peer can answer in time."""

    def to_json(self) -> bytes:
        """The report as compact JSON."""
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> SiteLoad:
        """Parse a report from the network; ValueError (pydantic's ValidationError is one) if it is
        not exactly a valid `SiteLoad` or is longer than `MAX_LOAD_BYTES`."""
        if len(data) > MAX_LOAD_BYTES:
            raise ValueError(f"a load report is at most {MAX_LOAD_BYTES} bytes")
        return cls.model_validate_json(data)


class UnknownPeer(ValueError):
    """A load report from a site that is not a configured peer (or from this site itself)."""


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """One peer as the balancers see it: its last report and what this site adds to it."""

    site_id: str
    url: str
    """The peer's configured URL (not the one it reports)."""
    load: SiteLoad
    age_s: float
    """How long ago the report arrived, on this site's clock."""
    rtt_ms: float | None
    """The average round trip of this site's gossip exchanges with the peer; None before the first."""
    local_inflight: Mapping[str, int] = field(default_factory=dict)
    """Per service: forwards this site has in flight to the peer that it sent after the report."""


@dataclass(slots=True)
class _Peer:
    url: str
    load: SiteLoad | None = None
    received_at: float = -math.inf
    rtt_ms: float | None = None
    epoch: int = 0
    """How many reports have arrived: a forward counts against the report it was sent after."""
    sent: dict[str, int] = field(default_factory=dict)


class Forward:
    """One forward in flight to a peer, counted by the table until `done()` or the peer's next report."""

    __slots__ = ("_done", "_epoch", "_peer", "service", "site_id")

    def __init__(self, peer: _Peer, site_id: str, service: str) -> None:
        self._peer = peer
        self._epoch = peer.epoch
        self._done = False
        self.site_id = site_id
        self.service = service

    def done(self) -> None:
        """The forward is over (answered, failed or given up); calling it again does nothing."""
        if self._done:
            return
        self._done = True
        peer = self._peer
        if peer.epoch == self._epoch:
            left = peer.sent.get(self.service, 0) - 1
            if left > 0:
                peer.sent[self.service] = left
            else:
                peer.sent.pop(self.service, None)


class LoadTable:
    """The latest load of each configured peer, with its age and RTT.

    `peers` maps each configured peer's id to its URL or `PeerAddress` (`parse_peers`' result): the
    table holds those and nothing else, so it is bounded by the configuration and a report from
    any other site is refused (`UnknownPeer`). `clock` is monotonic seconds; `stale_s` is how old
    a report may be and still route requests. One event loop or thread uses it at a time.
    """

    def __init__(
        self,
        self_id: str,
        peers: Mapping[str, str | PeerAddress],
        stale_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if stale_s <= 0:
            raise ValueError("stale_s must be positive")
        if self_id in peers:
            raise ValueError(f"{self_id} cannot be its own peer")
        self.self_id = self_id
        self.stale_s = stale_s
        self.clock = clock
        self._peers = {site_id: _Peer(url=_url_of(peer)) for site_id, peer in peers.items()}

    @property
    def peer_ids(self) -> list[str]:
        return list(self._peers)

    def _peer(self, site_id: str) -> _Peer:
        peer = self._peers.get(site_id)
        if peer is None:
            raise UnknownPeer(f"{site_id!r} is not a peer of {self.self_id}")
        return peer

    def update(self, load: SiteLoad, received_at: float | None = None, rtt_ms: float | None = None) -> bool:
        """Take a peer's report, received at `received_at` (default: now), with the round trip
        that brought it if this site measured one. UnknownPeer for a site not configured.

        A report older (by its `sent_at`) than the one held is ignored but for its RTT: an answer
        that overtook an earlier one must not undo it. True if the report was taken.
        """
        peer = self._peer(load.site_id)
        if rtt_ms is not None:
            self.record_rtt(load.site_id, rtt_ms)
        if peer.load is not None and load.sent_at < peer.load.sent_at:
            return False
        peer.load = load
        peer.received_at = self.clock() if received_at is None else received_at
        peer.epoch += 1
        peer.sent.clear()
        return True

    def record_rtt(self, site_id: str, rtt_ms: float) -> None:
        """Fold one measured round trip to a peer into its average (EWMA, `RTT_EWMA_ALPHA`)."""
        if not math.isfinite(rtt_ms) or rtt_ms < 0:
            raise ValueError(f"not a round trip: {rtt_ms!r}")
        peer = self._peer(site_id)
        peer.rtt_ms = rtt_ms if peer.rtt_ms is None else peer.rtt_ms + (rtt_ms - peer.rtt_ms) * RTT_EWMA_ALPHA

    def forward_started(self, site_id: str, service: str) -> Forward:
        """Count one forward this site sends `site_id` now; call `done()` on the answer when it ends."""
        peer = self._peer(site_id)
        peer.sent[service] = peer.sent.get(service, 0) + 1
        return Forward(peer, site_id, service)

    def rtt_ms(self, site_id: str) -> float | None:
        return self._peer(site_id).rtt_ms

    def fresh(self, now: float | None = None) -> list[PeerEntry]:
        """The peers whose last report arrived less than `stale_s` before `now` (default: the
        clock), in configuration order. The others are left out: they are unavailable."""
        now = self.clock() if now is None else now
        entries = []
        for site_id, peer in self._peers.items():
            age = now - peer.received_at
            if peer.load is None or age >= self.stale_s:
                continue
            entries.append(
                PeerEntry(
                    site_id=site_id,
                    url=peer.url,
                    load=peer.load,
                    age_s=max(0.0, age),
                    rtt_ms=peer.rtt_ms,
                    local_inflight=dict(peer.sent),
                )
            )
        return entries


def _url_of(peer: str | PeerAddress) -> str:
    return peer if isinstance(peer, str) else peer.url
