"""The balancing policies the simulator compares.

Every policy runs the same site code: `agent.router.plan()` decides local vs. peer vs. cloud vs.
reject, with the spill share of the site's overload state; the policy is only the `policy` argument of
`swarm.balancer.choose_peer`, i.e. which peer gets a request that plan() (or a gate that refused
it) hands on. That is exactly what `MEC_BALANCER` changes on a real site.
"""

from __future__ import annotations

from dataclasses import dataclass

from swarm.balancer import Policy


@dataclass(frozen=True, slots=True)
class PolicySpec:
    name: str
    balancer: Policy
    summary: str


POLICIES: dict[str, PolicySpec] = {
    spec.name: spec
    for spec in (
        PolicySpec(
            "default",
            "default",
            "the project's default: power of two choices over the load table, each peer's predicted "
            "answer and in-flight corrected by this site's own forwards since that peer's last report",
        ),
        PolicySpec(
            "p2c",
            "p2c",
            "power of two choices over the load table as last gossiped (two random qualifying peers, "
            "the lower predicted answer + RTT wins)",
        ),
        PolicySpec(
            "least-loaded",
            "least-loaded",
            "the qualifying peer with the lowest predicted answer + RTT in the load table as last "
            "gossiped (stale by up to one gossip interval)",
        ),
        PolicySpec(
            "round-robin",
            "round-robin",
            "the next qualifying peer after the last one chosen, in id order",
        ),
    )
}
"""By name, in the order tables and plots show them."""


def parse_policies(text: str | None) -> list[PolicySpec]:
    """`default,p2c,...` (None or empty: all of them). ValueError for an unknown name."""
    if not text:
        return list(POLICIES.values())
    chosen = []
    for name in (part.strip() for part in text.split(",")):
        if name not in POLICIES:
            raise ValueError(f"unknown policy {name!r} (known: {', '.join(POLICIES)})")
        chosen.append(POLICIES[name])
    return chosen
