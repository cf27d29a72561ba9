"""Authoritative state merge for game sessions (gaming clients), served over HTTP.

``POST /invoke`` takes one player update::

    {"session_id": str, "player_id": str, "seq": int >= 0,
     "state": {"x": number, "y": number, "hp"?: int, "score"?: int}}

and answers with the authoritative view of the session after it::

    {"session_id": "match-1", "tick": 12, "accepted": true, "reason": null,
     "player": {"x": 50.0, "y": 10.0, "hp": 100, "score": 0, "seq": 3},
     "players": {"alice": {...}, "bob": {...}}}

The server is authoritative:

* an update whose ``seq`` is not above the player's last accepted one is stale: it changes
  nothing (``accepted`` false, ``reason`` says why) and the snapshot still comes back;
* only the known fields ``x``, ``y``, ``hp`` and ``score`` are merged (others are ignored);
  ``x`` and ``y`` are clamped to the world (:data:`WORLD_MIN`..:data:`WORLD_MAX`), ``hp`` to
  :data:`HP_MIN`..:data:`HP_MAX`, ``score`` to >= 0;
* a move longer than :data:`MAX_SPEED_PER_SEQ` units per ``seq`` step since the last accepted
  update stops at that distance along the way to the target (a player's first update spawns
  it at the clamped target);
* when something was corrected, ``reason`` lists it (``"corrected: speed, bounds"``); otherwise
  it is null for an accepted update.

Before any of that, the payload is checked: ``seq``, ``hp`` and ``score`` must be integers in
the signed 64-bit range (``seq`` also >= 0), ``x`` and ``y`` finite numbers a float can hold
(not ``1e400``, nor an integer of 400 digits). Anything else is refused with a 422 naming the
field (``payload.state.score``) and changes nothing.

Each session counts accepted updates in ``tick``. At most :data:`MAX_SESSIONS` sessions are
kept (the least recently updated is dropped first) and at most
:data:`MAX_PLAYERS_PER_SESSION` players join one session: a further player is refused
(``accepted`` false, ``player`` null). Run it with ``python -m workloads.game_state --port N``.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from workloads.server import PayloadError, as_finite_number, as_int, field_path, main, require_str

SERVICE_NAME = "game_state"
WORLD_MIN = 0.0
WORLD_MAX = 1000.0
HP_MIN = 0
HP_MAX = 100
MAX_SPEED_PER_SEQ = 50.0
MAX_SESSIONS = 5000
MAX_PLAYERS_PER_SESSION = 64
MAX_ID_CHARS = 128
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
"""Integers are kept to the signed 64-bit range, what JSON libraries outside Python read at
most: the results go back to clients, and a player's score to every player of the session."""
MAX_SEQ = INT_MAX

EXAMPLE_PAYLOAD: dict[str, Any] = {
    "session_id": "match-1",
    "player_id": "alice",
    "seq": 1,
    "state": {"x": 120.0, "y": 80.0, "hp": 100, "score": 0},
}


@dataclass
class PlayerState:
    x: float
    y: float
    hp: int = HP_MAX
    score: int = 0
    seq: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "hp": self.hp, "score": self.score, "seq": self.seq}


@dataclass
class Session:
    tick: int = 0
    players: dict[str, PlayerState] = field(default_factory=dict)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {player_id: player.snapshot() for player_id, player in self.players.items()}


@dataclass(frozen=True)
class Update:
    """A validated update: only the known fields, ``None`` where the client left one out."""

    session_id: str
    player_id: str
    seq: int
    x: float
    y: float
    hp: int | None
    score: int | None


def parse_update(payload: dict[str, Any]) -> Update:
    session_id = require_str(payload, "session_id", max_len=MAX_ID_CHARS)
    player_id = require_str(payload, "player_id", max_len=MAX_ID_CHARS)
    if "seq" not in payload:
        raise PayloadError("'seq' is required", field_path("seq"))
    seq = as_int(payload["seq"], field_path("seq"), minimum=0, maximum=MAX_SEQ)
    state = payload.get("state")
    if not isinstance(state, dict):
        raise PayloadError("'state' must be an object with at least 'x' and 'y'", field_path("state"))
    coordinates: list[float] = []
    for axis in ("x", "y"):
        if axis not in state:
            raise PayloadError(f"'state.{axis}' is required", field_path(f"state.{axis}"))
        coordinates.append(as_finite_number(state[axis], field_path(f"state.{axis}")))
    hp = _optional_int(state, "hp")
    score = _optional_int(state, "score")
    return Update(session_id, player_id, seq, coordinates[0], coordinates[1], hp, score)


def _optional_int(state: dict[str, Any], name: str) -> int | None:
    """``state[name]`` as a 64-bit integer, or None when it is left out (or null)."""
    if state.get(name) is None:
        return None
    return as_int(state[name], field_path(f"state.{name}"), minimum=INT_MIN, maximum=INT_MAX)


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _merge(player: PlayerState | None, update: Update) -> tuple[PlayerState, list[str]]:
    """The player's new state after ``update``, and what had to be corrected."""
    corrections: list[str] = []
    x = _clamp(update.x, WORLD_MIN, WORLD_MAX)
    y = _clamp(update.y, WORLD_MIN, WORLD_MAX)
    if (x, y) != (update.x, update.y):
        corrections.append("bounds")
    if player is not None:
        steps = update.seq - player.seq
        reach = MAX_SPEED_PER_SEQ * steps
        distance = math.hypot(x - player.x, y - player.y)
        if distance > reach:
            fraction = reach / distance
            x = player.x + (x - player.x) * fraction
            y = player.y + (y - player.y) * fraction
            corrections.append("speed")
    hp = player.hp if player is not None else HP_MAX
    if update.hp is not None:
        hp = int(_clamp(update.hp, HP_MIN, HP_MAX))
        if hp != update.hp:
            corrections.append("hp")
    score = player.score if player is not None else 0
    if update.score is not None:
        score = max(update.score, 0)
        if score != update.score:
            corrections.append("score")
    return PlayerState(x=x, y=y, hp=hp, score=score, seq=update.seq), corrections


class GameStateService:
    """Sessions of players, merged under one lock; bounded in sessions and players."""

    name = SERVICE_NAME

    def __init__(
        self, max_sessions: int = MAX_SESSIONS, max_players_per_session: int = MAX_PLAYERS_PER_SESSION
    ) -> None:
        if max_sessions < 1 or max_players_per_session < 1:
            raise ValueError("max_sessions and max_players_per_session must be at least 1")
        self.max_sessions = max_sessions
        self.max_players_per_session = max_players_per_session
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self._evicted = 0

    def info(self) -> dict[str, Any]:
        with self._lock:
            sessions, evicted = len(self._sessions), self._evicted
        return {
            "sessions": sessions,
            "max_sessions": self.max_sessions,
            "max_players_per_session": self.max_players_per_session,
            "evicted_sessions": evicted,
            "world": [WORLD_MIN, WORLD_MAX],
            "max_speed_per_seq": MAX_SPEED_PER_SEQ,
        }

    def sessions(self) -> list[str]:
        """Session ids currently kept, least recently updated first."""
        with self._lock:
            return list(self._sessions)

    def invoke(self, payload: dict[str, Any]) -> dict[str, Any]:
        update = parse_update(payload)
        with self._lock:
            session = self._session(update.session_id)
            player = session.players.get(update.player_id)
            reason: str | None
            if player is not None and update.seq <= player.seq:
                accepted = False
                reason = f"stale seq: {update.seq} <= last accepted {player.seq}"
            elif player is None and len(session.players) >= self.max_players_per_session:
                accepted = False
                reason = f"session full: {self.max_players_per_session} players"
            else:
                player, corrections = _merge(player, update)
                session.players[update.player_id] = player
                session.tick += 1
                accepted = True
                reason = f"corrected: {', '.join(corrections)}" if corrections else None
            return {
                "session_id": update.session_id,
                "tick": session.tick,
                "accepted": accepted,
                "reason": reason,
                "player": player.snapshot() if player is not None else None,
                "players": session.snapshot(),
            }

    def _session(self, session_id: str) -> Session:
        """The session (created when new), marked as the most recently used."""
        session = self._sessions.get(session_id)
        if session is not None:
            self._sessions.move_to_end(session_id)
            return session
        session = Session()
        self._sessions[session_id] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
            self._evicted += 1
        return session


if __name__ == "__main__":
    raise SystemExit(main(GameStateService))
