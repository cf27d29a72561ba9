"""Authoritative game-state merge, called through the service class."""

from __future__ import annotations

import math
from typing import Any

import pytest

from workloads.game_state import (
    EXAMPLE_PAYLOAD,
    HP_MAX,
    INT_MAX,
    INT_MIN,
    MAX_SEQ,
    MAX_SPEED_PER_SEQ,
    WORLD_MAX,
    GameStateService,
)
from workloads.server import PayloadError


def _update(
    service: GameStateService,
    seq: int,
    x: float,
    y: float,
    *,
    player: str = "p1",
    session: str = "s1",
    **extra: object,
) -> dict[str, Any]:
    state = {"x": x, "y": y, **extra}
    return service.invoke({"session_id": session, "player_id": player, "seq": seq, "state": state})


def test_example_payload_is_accepted() -> None:
    result = GameStateService().invoke(EXAMPLE_PAYLOAD)

    assert result["accepted"] is True
    assert result["tick"] == 1


def test_first_update_spawns_the_player_where_asked() -> None:
    result = _update(GameStateService(), 0, 120.0, 80.0)

    assert result == {
        "session_id": "s1",
        "tick": 1,
        "accepted": True,
        "reason": None,
        "player": {"x": 120.0, "y": 80.0, "hp": HP_MAX, "score": 0, "seq": 0},
        "players": {"p1": {"x": 120.0, "y": 80.0, "hp": HP_MAX, "score": 0, "seq": 0}},
    }


def test_move_within_the_speed_limit_is_taken_as_sent() -> None:
    service = GameStateService()
    _update(service, 1, 100.0, 100.0)

    result = _update(service, 2, 130.0, 140.0)

    assert result["accepted"] is True
    assert result["reason"] is None
    assert (result["player"]["x"], result["player"]["y"]) == (130.0, 140.0)
    assert result["tick"] == 2


def test_stale_or_repeated_seq_is_rejected_but_returns_the_snapshot() -> None:
    service = GameStateService()
    _update(service, 5, 10.0, 10.0)
    _update(service, 1, 500.0, 500.0, player="p2")

    for seq in (5, 3):
        result = _update(service, seq, 40.0, 40.0, hp=1)
        assert result["accepted"] is False
        assert "stale" in result["reason"]
        assert result["tick"] == 2
        assert result["player"] == {"x": 10.0, "y": 10.0, "hp": HP_MAX, "score": 0, "seq": 5}
        assert set(result["players"]) == {"p1", "p2"}


def test_move_faster_than_the_max_speed_is_clamped_toward_the_target() -> None:
    service = GameStateService()
    _update(service, 1, 0.0, 0.0)

    result = _update(service, 2, 300.0, 400.0)

    assert result["accepted"] is True
    assert "speed" in result["reason"]
    assert result["player"]["x"] == pytest.approx(30.0)
    assert result["player"]["y"] == pytest.approx(40.0)
    assert math.hypot(result["player"]["x"], result["player"]["y"]) == pytest.approx(MAX_SPEED_PER_SEQ)


def test_allowed_distance_grows_with_the_seq_gap() -> None:
    service = GameStateService()
    _update(service, 1, 0.0, 0.0)

    result = _update(service, 4, 300.0, 400.0)

    assert result["player"]["x"] == pytest.approx(90.0)
    assert result["player"]["y"] == pytest.approx(120.0)


def test_positions_are_clamped_to_the_world() -> None:
    result = _update(GameStateService(), 0, -25.0, 1e6)

    assert (result["player"]["x"], result["player"]["y"]) == (0.0, WORLD_MAX)
    assert "bounds" in result["reason"]


def test_hp_is_clamped_and_score_cannot_go_negative() -> None:
    service = GameStateService()

    high = _update(service, 0, 5.0, 5.0, hp=150, score=-3)
    low = _update(service, 1, 5.0, 5.0, hp=-20)

    assert high["player"]["hp"] == HP_MAX
    assert high["player"]["score"] == 0
    assert "hp" in high["reason"]
    assert "score" in high["reason"]
    assert low["player"]["hp"] == 0


def test_fields_left_out_keep_their_value_and_unknown_fields_are_ignored() -> None:
    service = GameStateService()
    _update(service, 0, 5.0, 5.0, hp=70, score=12)

    result = _update(service, 1, 6.0, 6.0, weapon="railgun", god_mode=True)

    assert result["player"] == {"x": 6.0, "y": 6.0, "hp": 70, "score": 12, "seq": 1}


def test_snapshot_lists_every_player_of_the_session_only() -> None:
    service = GameStateService()
    _update(service, 0, 1.0, 1.0, player="alice")
    _update(service, 0, 2.0, 2.0, player="bob")
    _update(service, 0, 3.0, 3.0, player="carol", session="other")

    result = _update(service, 1, 4.0, 4.0, player="alice")

    assert set(result["players"]) == {"alice", "bob"}
    assert result["players"]["bob"]["x"] == 2.0
    assert result["tick"] == 3


def test_players_beyond_the_session_bound_are_refused() -> None:
    service = GameStateService(max_players_per_session=2)
    _update(service, 0, 1.0, 1.0, player="a")
    _update(service, 0, 1.0, 1.0, player="b")

    result = _update(service, 0, 1.0, 1.0, player="c")

    assert result["accepted"] is False
    assert "full" in result["reason"]
    assert result["player"] is None
    assert set(result["players"]) == {"a", "b"}
    assert result["tick"] == 2


def test_least_recently_updated_session_is_evicted_beyond_the_bound() -> None:
    service = GameStateService(max_sessions=2)
    _update(service, 0, 1.0, 1.0, session="s1")
    _update(service, 0, 1.0, 1.0, session="s2")
    _update(service, 1, 2.0, 2.0, session="s1")

    _update(service, 0, 1.0, 1.0, session="s3")

    assert service.sessions() == ["s1", "s3"]
    assert service.info()["evicted_sessions"] == 1
    restarted = _update(service, 0, 1.0, 1.0, session="s2")
    assert restarted["accepted"] is True
    assert restarted["tick"] == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"player_id": "p", "seq": 0, "state": {"x": 1, "y": 1}}, "payload.session_id"),
        ({"session_id": "s", "seq": 0, "state": {"x": 1, "y": 1}}, "payload.player_id"),
        (
            {"session_id": "s", "player_id": "x" * 129, "seq": 0, "state": {"x": 1, "y": 1}},
            "payload.player_id",
        ),
        ({"session_id": "s", "player_id": "p", "state": {"x": 1, "y": 1}}, "payload.seq"),
        ({"session_id": "s", "player_id": "p", "seq": -1, "state": {"x": 1, "y": 1}}, "payload.seq"),
        ({"session_id": "s", "player_id": "p", "seq": 1.5, "state": {"x": 1, "y": 1}}, "payload.seq"),
        ({"session_id": "s", "player_id": "p", "seq": True, "state": {"x": 1, "y": 1}}, "payload.seq"),
        ({"session_id": "s", "player_id": "p", "seq": 0}, "payload.state"),
        ({"session_id": "s", "player_id": "p", "seq": 0, "state": [1, 1]}, "payload.state"),
        ({"session_id": "s", "player_id": "p", "seq": 0, "state": {"y": 1}}, "payload.state.x"),
        ({"session_id": "s", "player_id": "p", "seq": 0, "state": {"x": 1, "y": "1"}}, "payload.state.y"),
        (
            {"session_id": "s", "player_id": "p", "seq": 0, "state": {"x": math.nan, "y": 1}},
            "payload.state.x",
        ),
        (
            {"session_id": "s", "player_id": "p", "seq": 0, "state": {"x": 1, "y": 1, "hp": 5.5}},
            "payload.state.hp",
        ),
        (
            {"session_id": "s", "player_id": "p", "seq": 0, "state": {"x": 1, "y": 1, "score": "9"}},
            "payload.state.score",
        ),
    ],
)
def test_invalid_payload_is_refused_naming_the_field(payload: dict[str, object], field: str) -> None:
    service = GameStateService()

    with pytest.raises(PayloadError) as refused:
        service.invoke(payload)

    assert refused.value.field == field
    assert service.sessions() == []


@pytest.mark.parametrize(
    ("seq", "state", "field"),
    [
        (10**400, {"x": 1, "y": 1}, "payload.seq"),
        (0, {"x": 10**400, "y": 1}, "payload.state.x"),
        (0, {"x": 1, "y": -(10**400)}, "payload.state.y"),
        (0, {"x": 1, "y": 1, "hp": 10**400}, "payload.state.hp"),
        (0, {"x": 1, "y": 1, "hp": INT_MIN - 1}, "payload.state.hp"),
        (0, {"x": 1, "y": 1, "score": 10**400}, "payload.state.score"),
        (0, {"x": 1, "y": 1, "score": INT_MAX + 1}, "payload.state.score"),
    ],
    ids=["seq", "x", "y", "hp", "hp-below-64-bit", "score", "score-above-64-bit"],
)
def test_huge_integer_is_refused_naming_the_field(seq: int, state: dict[str, object], field: str) -> None:
    """`float(10**400)` overflows, and a 400-digit score would go to every player of the session."""
    service = GameStateService()

    with pytest.raises(PayloadError) as refused:
        service.invoke({"session_id": "s", "player_id": "p", "seq": seq, "state": state})

    assert refused.value.field == field
    assert service.sessions() == []


def test_integers_at_the_64_bit_bounds_are_accepted() -> None:
    service = GameStateService()

    high = _update(service, MAX_SEQ - 1, 1.0, 1.0, hp=INT_MAX, score=INT_MAX)
    low = _update(service, MAX_SEQ, 1.0, 1.0, hp=INT_MIN, score=INT_MIN)

    assert (high["accepted"], high["player"]["hp"], high["player"]["score"]) == (True, HP_MAX, INT_MAX)
    assert (low["accepted"], low["player"]["hp"], low["player"]["score"]) == (True, 0, 0)
    assert low["player"]["seq"] == MAX_SEQ


def test_huge_float_coordinates_are_clamped_to_the_world() -> None:
    result = _update(GameStateService(), 0, 1e308, -1e308)

    assert (result["player"]["x"], result["player"]["y"]) == (WORLD_MAX, 0.0)
    assert "bounds" in result["reason"]
