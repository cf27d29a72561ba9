from __future__ import annotations

from config.settings import OverloadState
from monitoring.overload import OverloadMachine, handoff_hot


def _run(machine: OverloadMachine, samples: list[tuple[bool, bool]], start: float = 0.0) -> list[str]:
    """One sample a second; the state after each change."""
    seen: list[str] = []
    for n, (hot, room) in enumerate(samples):
        change = machine.step(hot, room, start + n)
        if change is not None:
            seen.append(change.after)
    return seen


def test_a_hot_site_sheds_at_once_and_goes_to_the_cloud_only_when_no_peer_has_room() -> None:
    machine = OverloadMachine(cloud_after_s=5, calm_s=30, min_dwell_s=10)
    assert _run(machine, [(True, True)] * 30) == ["shedding"]  # peers have room: never the cloud
    machine = OverloadMachine(cloud_after_s=5, calm_s=30, min_dwell_s=10)
    assert _run(machine, [(True, False)] * 30) == ["shedding", "cloud"]
    assert machine.history[-1].at == 10  # saturated from 0, but shedding is held 10 s


def test_it_comes_back_to_normal_after_calm_s_without_an_alert() -> None:
    machine = OverloadMachine(cloud_after_s=5, calm_s=30, min_dwell_s=10)
    changes = _run(machine, [(True, False)] * 20 + [(False, True)] * 31)
    assert changes == ["shedding", "cloud", "normal"]
    assert machine.history[-1].at == 20 + 30


def test_a_load_swinging_around_the_threshold_moves_the_state_at_most_once_per_dwell() -> None:
    machine = OverloadMachine(cloud_after_s=5, calm_s=3, min_dwell_s=10)
    swinging = [(n % 4 < 2, True) for n in range(100)]  # hot two seconds, calm two, for 100 s
    changes = _run(machine, swinging)
    assert changes == ["shedding"]  # calm never lasts calm_s: it stays shedding, no flapping
    assert machine.transitions == 1


def test_cloud_mode_steps_back_to_shedding_once_a_peer_has_room_for_calm_s() -> None:
    machine = OverloadMachine(cloud_after_s=5, calm_s=10, min_dwell_s=5)
    changes = _run(machine, [(True, False)] * 12 + [(True, True)] * 11)
    assert changes == ["shedding", "cloud", "shedding"]


def test_a_site_handing_off_more_than_the_handoff_share_is_hot_while_normal() -> None:
    assert handoff_hot(False, 100, 26, "normal", 0.25, 0.05)
    assert not handoff_hot(False, 100, 25, "normal", 0.25, 0.05)


def test_once_shedding_it_stays_hot_down_to_the_release_share() -> None:
    states: tuple[OverloadState, ...] = ("shedding", "cloud")
    for state in states:
        assert handoff_hot(False, 100, 6, state, 0.25, 0.05)
        assert not handoff_hot(False, 100, 5, state, 0.25, 0.05)


def test_a_firing_alert_is_hot_and_no_requests_without_one_is_not() -> None:
    assert handoff_hot(True, 0, 0, "normal", 0.25, 0.05)
    assert not handoff_hot(False, 0, 0, "shedding", 0.25, 0.0)
