"""Which peer gets a request this site cannot serve within its budget: pure, given an injected RNG.

`choose_peer(service, budget_ms, entries, policy, rng, rr_state)` reads the fresh entries of the
load table (`swarm.load_table.LoadTable.fresh`) and nothing else: no I/O, no clock, the same
inputs and RNG state give the same choice.

The budget is a hard filter, before any policy: a peer qualifies only with a ready instance of
the service that has room and `rtt_ms + predicted_ms + overhead_ms <= budget_ms` (a peer with no
measured RTT yet does not qualify: its cost is unknown). Among those:

* `p2c`: two candidates drawn at random, the lower score wins (score = predicted_ms + rtt_ms,
  ties by the peer's in-flight, then by id).
* `least-loaded`: the lowest score of all. The baseline, with its known flaw: every site reads
  the same stale reports between two gossip rounds, so every site sends everything to the same
  peer until the next report shows it swamped (herding).
* `round-robin`: the next qualifying peer after the last one chosen, in id order. The other baseline.
* `default`: `p2c` over reports corrected by this site's own forwards since each report.

What `default` takes from Envoy and Netflix. From Envoy's `LEAST_REQUEST` balancer (equal
weights): the power of two choices itself, two random healthy hosts and the one with fewer active
requests, where each proxy counts the requests it has itself in flight (proxies share no state).
From Netflix's "Rethinking Netflix's Edge Load Balancing" (Zuul, 2018): join-the-shortest-queue
on one balancer's own view herds across a cluster of balancers, and the fix is choice-of-2 over
a score that mixes the server-reported utilisation (stale, but the only view of the load other
balancers put there) with the balancer's own in-flight count (exact and current). Here the
reported part is the peer's `predicted_ms`, `inflight` and RTT from gossip, and the own part is
`PeerEntry.local_inflight`: the forwards this site has in flight to the peer that its last report
cannot include yet. They raise the peer's predicted answer (`corrected`) and in-flight, so one
site's burst between two reports spreads over its peers instead of piling on the one that looked
idle, and two sites drawing different pairs do not dogpile the same one. Not taken: Envoy's
weights and slow start, Netflix's probation and error-rate decay (a peer that fails is left to go
stale or be excluded by the caller).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from swarm.load_table import PeerEntry, ServiceLoad

Policy = Literal["default", "p2c", "least-loaded", "round-robin"]
"""The `balancer` setting."""

FORWARD_OVERHEAD_MS = 2.0
"""What a forward adds to the peer's answer besides the RTT: signing, the peer's admission, the
proxy's copy of the body both ways. A guess to refine with the forwarding bench."""


@dataclass(frozen=True, slots=True)
class BalancerPick:
    """The peer the balancer picked for one request, and why: by URL, before the site resolves it
    to the address it forwards to (`agent.view.PeerChoice`)."""

    site_id: str
    url: str
    score_ms: float
    """Predicted answer at the peer plus the RTT to it (without the overhead)."""
    reason: str


@dataclass(slots=True)
class RoundRobinState:
    """Where round-robin is in its cycle, per service: the last peer it chose."""

    last: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Candidate:
    site_id: str
    url: str
    score_ms: float
    inflight: int

    def key(self) -> tuple[float, int, str]:
        return (self.score_ms, self.inflight, self.site_id)


def corrected(service: ServiceLoad, local_inflight: int) -> tuple[float, int]:
    """The service's `predicted_ms` and in-flight with `local_inflight` more requests sent to it.

    A report's `predicted_ms` is the soonest instance's wait with its queue as it was; the
    `inflight` requests are spread over `ready` instances, so each extra request adds about
    `predicted_ms / (inflight + ready)` (the per-request share of that wait): predicted grows by
    the factor `(inflight + ready + k) / (inflight + ready)` for `k` extra requests.
    """
    if local_inflight <= 0:
        return service.predicted_ms, service.inflight
    base = service.inflight + max(1, service.ready)
    return service.predicted_ms * (base + local_inflight) / base, service.inflight + local_inflight


def _candidates(
    service: str, budget_ms: float, entries: Sequence[PeerEntry], count_local: bool, overhead_ms: float
) -> tuple[list[_Candidate], int]:
    """The peers that pass the hard filter, in id order, and how many had the service at all."""
    passed: list[_Candidate] = []
    offered = 0
    for entry in entries:
        load = entry.load.services.get(service)
        if load is None or load.ready <= 0:
            continue
        offered += 1
        if not load.has_room or entry.rtt_ms is None:
            continue
        local = entry.local_inflight.get(service, 0) if count_local else 0
        predicted, inflight = corrected(load, local)
        score = predicted + entry.rtt_ms
        if score + overhead_ms <= budget_ms:
            passed.append(_Candidate(entry.site_id, entry.url, score, inflight))
    passed.sort(key=lambda c: c.site_id)
    return passed, offered


def choose_peer(
    service: str,
    budget_ms: float,
    entries: Sequence[PeerEntry],
    policy: Policy,
    rng: random.Random,
    rr_state: RoundRobinState | None = None,
    overhead_ms: float = FORWARD_OVERHEAD_MS,
) -> BalancerPick | None:
    """The peer to forward a request for `service` to, with `budget_ms` left; None if no peer can
    answer within it. `entries` are the load table's fresh entries (their order does not matter);
    `rng` is used by `p2c` and `default` only, `rr_state` by `round-robin` (required there)."""
    # Peers that report themselves normal first; a peer that is shedding its own work or
    # offloading to the cloud only when no normal one can answer in time (it may still have room).
    calm = [entry for entry in entries if entry.load.overload == "normal"]
    passed, offered = _candidates(service, budget_ms, calm, policy == "default", overhead_ms)
    if not passed:
        hot = [entry for entry in entries if entry.load.overload != "normal"]
        passed, offered = _candidates(service, budget_ms, hot, policy == "default", overhead_ms)
    if not passed:
        return None
    within = f"of {len(passed)}/{offered} peers within the {budget_ms:.0f} ms budget"
    if policy == "round-robin":
        if rr_state is None:
            raise ValueError("round-robin needs its RoundRobinState")
        last = rr_state.last.get(service)
        chosen = next((c for c in passed if last is None or c.site_id > last), passed[0])
        rr_state.last[service] = chosen.site_id
        return _choice(chosen, f"round-robin: next after {last or 'none'} {within}")
    if policy == "least-loaded":
        chosen = min(passed, key=_Candidate.key)
        return _choice(chosen, f"least-loaded: lowest score {within}")
    if policy not in ("p2c", "default"):
        raise ValueError(f"unknown balancer policy {policy!r}")
    label = "p2c" if policy == "p2c" else "p2c with this site's forwards since each report"
    if len(passed) == 1:
        return _choice(passed[0], f"{label}: the only one {within}")
    first, second = rng.sample(passed, 2)
    chosen, other = (first, second) if first.key() <= second.key() else (second, first)
    return _choice(
        chosen, f"{label}: {chosen.score_ms:.1f} ms over {other.site_id}'s {other.score_ms:.1f} ms {within}"
    )


def _choice(candidate: _Candidate, reason: str) -> BalancerPick:
    return BalancerPick(
        candidate.site_id, candidate.url, candidate.score_ms, f"{candidate.site_id}: {reason}"
    )
