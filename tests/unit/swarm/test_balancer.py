"""`swarm.balancer.choose_peer`: the budget filter, each policy on seeded RNGs, and a small
simulation of two sites choosing among peers between gossip rounds (least-loaded herds, default
spreads)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest

from swarm.balancer import (
    FORWARD_OVERHEAD_MS,
    BalancerPick,
    Policy,
    RoundRobinState,
    choose_peer,
    corrected,
)
from swarm.load_table import LoadTable, PeerEntry, ServiceLoad, SiteLoad


def entry(
    site_id: str,
    predicted_ms: float = 5.0,
    rtt_ms: float | None = 1.0,
    *,
    has_room: bool = True,
    ready: int = 1,
    inflight: int = 0,
    local: int = 0,
    service: str = "sensor",
) -> PeerEntry:
    load = SiteLoad(
        site_id=site_id,
        url=f"http://{site_id}:8080",
        sent_at=1.0,
        services={
            service: ServiceLoad(ready=ready, inflight=inflight, predicted_ms=predicted_ms, has_room=has_room)
        },
        cpu_percent=10.0,
    )
    return PeerEntry(
        site_id=site_id,
        url=load.url,
        load=load,
        age_s=0.1,
        rtt_ms=rtt_ms,
        local_inflight={service: local} if local else {},
    )


POLICIES: list[Policy] = ["default", "p2c", "least-loaded", "round-robin"]


def choose(
    entries: list[PeerEntry], policy: Policy, budget_ms: float = 50.0, seed: int = 1, service: str = "sensor"
) -> BalancerPick | None:
    return choose_peer(service, budget_ms, entries, policy, random.Random(seed), RoundRobinState())


@pytest.mark.parametrize("policy", POLICIES)
def test_the_budget_room_readiness_and_a_known_rtt_are_hard_filters(policy: Policy) -> None:
    budget = 20.0
    fits = entry("fits", predicted_ms=budget - 1.0 - FORWARD_OVERHEAD_MS, rtt_ms=1.0)  # exactly the budget
    entries = [
        fits,
        entry("slow", predicted_ms=budget - 1.0 - FORWARD_OVERHEAD_MS + 0.1, rtt_ms=1.0),
        entry("far", predicted_ms=0.0, rtt_ms=budget),
        entry("full", predicted_ms=0.0, has_room=False),
        entry("empty", predicted_ms=0.0, ready=0),
        entry("unmeasured", predicted_ms=0.0, rtt_ms=None),
        entry("other", predicted_ms=0.0, service="inference"),
    ]
    for seed in range(20):
        choice = choose(entries, policy, budget, seed)
        assert choice is not None and choice.site_id == "fits" and choice.url == "http://fits:8080"
        assert choice.score_ms == pytest.approx(budget - FORWARD_OVERHEAD_MS)
    assert choose(entries[1:], policy, budget) is None
    assert choose(entries, policy, budget, service="unknown") is None
    assert choose([], policy, budget) is None


def test_p2c_picks_the_better_of_the_two_it_draws() -> None:
    entries = [entry(f"peer-{i}", predicted_ms=float(10 * i)) for i in range(5)]
    ranked = sorted(entries, key=lambda e: e.site_id)
    picks = Counter()
    for seed in range(200):
        choice = choose(entries, "p2c", budget_ms=1000.0, seed=seed)
        assert choice is not None
        first, second = random.Random(seed).sample(ranked, 2)  # the pair this seed draws
        better = min(first, second, key=lambda e: e.load.services["sensor"].predicted_ms)
        assert choice.site_id == better.site_id
        assert other_named_in(choice, first, second)
        picks[choice.site_id] += 1
    assert "peer-4" not in picks  # the worst never wins a pair
    assert picks["peer-0"] > picks["peer-1"] > picks["peer-2"] > picks["peer-3"] > 0
    only = choose(entries[:1], "p2c", budget_ms=1000.0)
    assert only is not None and "the only one" in only.reason


def other_named_in(choice: BalancerPick, first: PeerEntry, second: PeerEntry) -> bool:
    """The reason names the candidate that lost."""
    loser = second if choice.site_id == first.site_id else first
    return f"over {loser.site_id}'s" in choice.reason


def test_p2c_breaks_score_ties_by_in_flight_then_id() -> None:
    entries = [entry("busy", inflight=9), entry("quiet", inflight=1)]
    for seed in range(10):
        choice = choose(entries, "p2c", seed=seed)
        assert choice is not None and choice.site_id == "quiet"
    twins = [entry("b"), entry("a")]
    assert {getattr(choose(twins, "p2c", seed=s), "site_id", None) for s in range(10)} == {"a"}


def test_choices_are_deterministic_given_the_rng_whatever_the_entries_order() -> None:
    entries = [entry(f"peer-{i}", predicted_ms=float(i % 3)) for i in range(6)]
    shuffled = list(reversed(entries))
    for policy in POLICIES:
        a = [choose(entries, policy, seed=seed) for seed in range(30)]
        b = [choose(shuffled, policy, seed=seed) for seed in range(30)]
        assert a == b


def test_least_loaded_takes_the_lowest_score() -> None:
    entries = [entry("a", predicted_ms=9.0, rtt_ms=1.0), entry("b", predicted_ms=3.0, rtt_ms=8.0)]
    entries.append(entry("c", predicted_ms=5.0, rtt_ms=2.0))
    choice = choose(entries, "least-loaded")
    assert choice is not None and (choice.site_id, choice.score_ms) == ("c", 7.0)


def test_round_robin_cycles_among_the_peers_that_pass_the_filter() -> None:
    state = RoundRobinState()
    entries = [entry("c"), entry("a"), entry("b")]
    rng = random.Random(0)

    def next_id(entries: list[PeerEntry], service: str = "sensor") -> str | None:
        choice = choose_peer(service, 50.0, entries, "round-robin", rng, state)
        return None if choice is None else choice.site_id

    assert [next_id(entries) for _ in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]
    entries[0] = entry("c", has_room=False)  # c is full: the cycle goes on without it
    assert [next_id(entries) for _ in range(3)] == ["b", "a", "b"]
    other = [entry("a", service="inference"), entry("b", service="inference")]
    assert next_id(other, "inference") == "a"  # each service has its own cycle
    assert next_id(entries) == "a"
    with pytest.raises(ValueError):
        choose_peer("sensor", 50.0, entries, "round-robin", rng, None)
    with pytest.raises(ValueError):
        choose_peer("sensor", 50.0, entries, "fastest", rng, state)  # type: ignore[arg-type]


def test_default_counts_this_sites_forwards_since_the_report() -> None:
    load = ServiceLoad(ready=2, inflight=2, predicted_ms=8.0, has_room=True)
    assert corrected(load, 0) == (8.0, 2)
    assert corrected(load, 4) == (16.0, 6)  # 4 more over 2 instances with 2 in flight: twice the wait
    idle = ServiceLoad(ready=1, inflight=0, predicted_ms=2.0, has_room=True)
    assert corrected(idle, 3) == (8.0, 3)

    # The report shows "swamped" idle; this site has sent it 20 since: default goes elsewhere,
    # p2c (the report alone) still goes there, and the budget filter sees the corrected wait too.
    entries = [entry("swamped", predicted_ms=2.0, local=20), entry("steady", predicted_ms=6.0)]
    for seed in range(10):
        assert getattr(choose(entries, "default", seed=seed), "site_id", None) == "steady"
        assert getattr(choose(entries, "p2c", seed=seed), "site_id", None) == "swamped"
    assert choose(entries[:1], "default", budget_ms=30.0) is None  # 2 ms x 21 + 1 ms > 30 ms
    assert choose(entries[:1], "p2c", budget_ms=30.0) is not None


def simulate(policy: Policy, seeds: tuple[int, int], rounds: int = 6, sends: int = 20) -> int:
    """Two sites forward `sends` requests each between gossip rounds to four equal peers (one
    instance each, 2 ms a request, able to finish 20 a round); the reports they choose from are
    as of the last round, and site-a's reports a touch lower. Answers the largest queue any peer
    reached."""
    peers = {f"peer-{c}": f"http://peer-{c}:8080" for c in "abcd"}
    clock = [0.0]
    sites = {
        name: (LoadTable(name, peers, stale_s=10.0, clock=lambda: clock[0]), random.Random(seed))
        for name, seed in zip(("site-1", "site-2"), seeds, strict=True)
    }
    queues = dict.fromkeys(peers, 0)
    capacity = 20
    state = {name: RoundRobinState() for name in sites}
    peak = 0
    for round_ in range(rounds):
        clock[0] = float(round_)
        for loads, _ in sites.values():
            for peer, queue in queues.items():
                bias = 0.0 if peer == "peer-a" else 0.5
                service = ServiceLoad(
                    ready=1, inflight=queue, predicted_ms=(queue + 1) * 2.0 + bias, has_room=True
                )
                report = SiteLoad(
                    site_id=peer,
                    url=peers[peer],
                    sent_at=float(round_),
                    services={"sensor": service},
                    cpu_percent=50.0,
                )
                loads.update(report, rtt_ms=1.0)
        for _ in range(sends):
            for name, (loads, rng) in sites.items():
                choice = choose_peer("sensor", 1000.0, loads.fresh(), policy, rng, state[name])
                assert choice is not None
                loads.forward_started(choice.site_id, "sensor")
                queues[choice.site_id] += 1
                peak = max(peak, queues[choice.site_id])
        queues = {peer: max(0, queue - capacity) for peer, queue in queues.items()}
    return peak


def test_least_loaded_herds_on_stale_reports_while_default_spreads() -> None:
    """40 requests a round for four peers that serve 20 each: an even spread keeps every queue at
    10. Least-loaded sends all 40 to the one peer the last report showed lowest (and the next
    round to another, while the first still works off its pile); default stays near the even
    share, p2c on reports alone in between."""
    for seeds in ((1, 2), (3, 4), (5, 6)):
        herded = simulate("least-loaded", seeds)
        plain = simulate("p2c", seeds)
        spread = simulate("default", seeds)
        assert herded >= 40
        assert spread <= 16, spread
        assert spread < plain < herded
    assert simulate("round-robin", (1, 2)) == 10  # the other baseline: even here, but blind to load


def test_a_peer_that_reports_itself_shedding_gets_forwards_only_when_no_normal_peer_can_answer() -> None:
    calm, shedding = entry("site-2", predicted_ms=30.0), entry("site-3", predicted_ms=1.0)
    shedding = replace(shedding, load=shedding.load.model_copy(update={"overload": "shedding"}))
    for policy in ("default", "p2c", "least-loaded", "round-robin"):
        choice = choose_peer("sensor", 200.0, [calm, shedding], policy, random.Random(1), RoundRobinState())
        assert choice is not None and choice.site_id == "site-2", policy
        # the normal peer cannot answer within 20 ms; the shedding one still can
        choice = choose_peer("sensor", 20.0, [calm, shedding], policy, random.Random(1), RoundRobinState())
        assert choice is not None and choice.site_id == "site-3", policy
