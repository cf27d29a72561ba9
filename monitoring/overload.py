"""The site's overload state: `normal → shedding → cloud` and back, with hysteresis.

`OverloadMachine.step(hot, peers_have_room, now)` runs once per metrics sample. Its inputs are
already debounced: `hot` is "an overload alert is firing here" (the alert rules' `for_s` and
`clear_s` and their high/low thresholds did the first filtering), `peers_have_room` is "some
fresh peer reports itself normal".

* **normal → shedding** as soon as the site is hot: it hands work to its peers earlier (the
  site lowers its spill share) and tells them it is shedding (its load report), so they stop
  sending it theirs.
* **shedding → cloud** when it has stayed hot with no peer able to take work for `cloud_after_s`:
  the whole swarm near it is saturated, so its excess goes to the cloud (the site commits its
  cloud-fallback mode through consensus, so every site agrees who is offloading).
* **cloud → shedding** once some peer has had room again for `calm_s` (while still hot).
* **shedding or cloud → normal** once it has not been hot for `calm_s`.

And every state is held for at least `min_dwell_s` before any change, so a load that swings
around a threshold moves the state at most once per dwell time: with the alert's own hysteresis,
one breach gives at most two transitions up and two down. The machine is pure and synchronous
(no clock of its own, no I/O); `transitions` counts changes (the no-flapping figure).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from config.settings import OverloadState


def handoff_hot(
    alert_hot: bool,
    requests: int,
    handed: int,
    state: OverloadState,
    handoff_share: float,
    release_share: float,
) -> bool:
    """Whether a site is hot this sample: the `hot` input of `OverloadMachine.step`.

    Hot when an overload alert is firing (`alert_hot`), or when the site did not serve more than a
    share of its recent `requests` (the request log's window, 10 s) itself (`handed`: the requests
    it handed to a peer or the cloud, tiers `peer` and `cloud`, plus those it refused for want of
    capacity, the request log's `rejected`: forwards from peers included, so a site its peers
    overload turns hot too): `handoff_share` to become hot while `normal`
    (a site that cannot serve what it is offered is overloaded, whatever its own figures say: its
    adaptive limits keep them in bounds), `release_share` to stay hot while shedding or in cloud
    mode (shedding lowers the very figures that made it hot, so the site steps back when its own
    instances could take the load again, not as soon as the handing-off has worked). No requests:
    not hot (unless an alert says so).
    """
    if alert_hot:
        return True
    share = handoff_share if state == "normal" else release_share
    return requests > 0 and handed / requests > share


@dataclass(frozen=True, slots=True)
class OverloadChange:
    """One change of state, and why."""

    before: OverloadState
    after: OverloadState
    at: float
    reason: str


@dataclass
class OverloadMachine:
    cloud_after_s: float = 5.0
    calm_s: float = 30.0
    min_dwell_s: float = 10.0
    state: OverloadState = "normal"
    since: float = 0.0
    """When the current state began."""
    transitions: int = 0
    history: list[OverloadChange] = field(default_factory=list)
    """The last `MAX_HISTORY` changes, oldest first."""
    _hot_since: float | None = field(default=None, init=False)
    _calm_since: float | None = field(default=None, init=False)
    _saturated_since: float | None = field(default=None, init=False)
    _room_since: float | None = field(default=None, init=False)

    MAX_HISTORY = 50

    def step(self, hot: bool, peers_have_room: bool, now: float) -> OverloadChange | None:
        """Take one sample; the change it made, if any."""
        self._hot_since = (self._hot_since if self._hot_since is not None else now) if hot else None
        self._calm_since = None if hot else (self._calm_since if self._calm_since is not None else now)
        saturated = hot and not peers_have_room
        self._saturated_since = (
            (self._saturated_since if self._saturated_since is not None else now) if saturated else None
        )
        self._room_since = (
            (self._room_since if self._room_since is not None else now) if peers_have_room else None
        )
        if now - self.since < self.min_dwell_s and self.transitions > 0:
            return None
        if self.state == "normal":
            if hot:
                return self._go("shedding", now, "an overload alert is firing")
            return None
        if not hot and self._held(self._calm_since, self.calm_s, now):
            return self._go("normal", now, f"no overload alert for {self.calm_s:g} s")
        if self.state == "shedding" and self._held(self._saturated_since, self.cloud_after_s, now):
            return self._go("cloud", now, f"hot with no peer that has room for {self.cloud_after_s:g} s")
        if self.state == "cloud" and hot and self._held(self._room_since, self.calm_s, now):
            return self._go("shedding", now, f"a peer has had room for {self.calm_s:g} s")
        return None

    @staticmethod
    def _held(since: float | None, for_s: float, now: float) -> bool:
        return since is not None and now - since >= for_s

    def _go(self, state: OverloadState, now: float, reason: str) -> OverloadChange:
        change = OverloadChange(self.state, state, now, reason)
        self.state, self.since = state, now
        self.transitions += 1
        self.history.append(change)
        del self.history[: -self.MAX_HISTORY]
        return change

    def report(self) -> dict[str, object]:
        return {
            "state": self.state,
            "since": self.since,
            "transitions": self.transitions,
            "history": [
                {"from": c.before, "to": c.after, "at": c.at, "reason": c.reason} for c in self.history[-10:]
            ],
        }
