"""Alerts: threshold rules with hysteresis and minimum durations, folded repeats, acknowledgement.

A rule (`config.settings.AlertRule`) watches one metric, for every subject it has (the host, a
service, a GPU, a peer, a dependency). `AlertEngine.evaluate(readings, now)` is fed one batch of
readings per sample (twice a second on a site) and walks a small state machine per
(rule, subject), in the manner of Prometheus' `for:` clause with Alertmanager's resolve:

* **ok → pending** when the value rises above `high`;
* **pending → firing** once it has stayed above `high` for `for_s` (a dip back to `high` or below
  returns it to ok: a spike shorter than `for_s` never fires);
* **firing → resolving** when the value falls below `low` (not merely below `high`: the gap
  between the two is the hysteresis that stops a value hovering at the threshold from flapping);
* **resolving → ok** once it has stayed below `low` for `clear_s`, and the alert is resolved; a
  rise to `low` or above before then returns it to firing, with no new event.

An alert has an id, its start (when the value first crossed `high`), its end, its peak value and
how many times it fired. **Repeats fold into one**: the same rule and subject firing again
within `fold_s` of its resolution reopens the same alert (`fired` + 1, `event = "refired"`)
instead of opening a new one, as Alertmanager keeps one alert per label set. An operator may
**acknowledge** an alert (`ack`); the acknowledgement stays with the alert through folded
repeats. A subject that stops reporting (a peer that left, a service removed) keeps its state
until it reports again; an alert on it can still be acknowledged and read.

The engine is pure and synchronous (no I/O, no clock of its own): it returns the `AlertEvent`s
of each evaluation, and the caller (`monitoring.alert_service.AlertService`) hands them to the
sinks. Everything it keeps is bounded: active alerts by the rules × subjects that exist, resolved
ones by `max_resolved` (oldest first out).
"""

from __future__ import annotations

import itertools
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from config.settings import AlertMetric, AlertRule, AlertSeverity

Phase = Literal["ok", "pending", "firing", "resolving"]
EventKind = Literal["fired", "refired", "resolved", "acknowledged"]

MAX_RESOLVED = 500
"""Resolved alerts kept for `GET /v1/alerts` (the archive keeps the rest)."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one metric for one subject (`"host"`, a service, `"gpu0"`, a peer id, ...)."""

    metric: AlertMetric
    subject: str
    value: float


@dataclass(slots=True)
class Alert:
    """An alert as operators see it (`to_dict` is its JSON)."""

    id: str
    rule: str
    metric: AlertMetric
    subject: str
    severity: AlertSeverity
    state: Literal["firing", "resolved"]
    started_at: float
    """When the value first crossed `high` (the start of the pending time)."""
    fired_at: float
    value: float
    peak: float
    threshold: float
    """The rule's `high`."""
    fired: int = 1
    """How many times it fired (repeats within `fold_s` of the end fold into this alert)."""
    ended_at: float | None = None
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None
    summary: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """What changed: an alert fired, fired again (folded), resolved or was acknowledged."""

    kind: EventKind
    alert: dict[str, Any]
    at: float

    def to_dict(self) -> dict[str, Any]:
        return {"kind": f"alert.{self.kind}", "at": self.at, "alert": self.alert}


@dataclass(slots=True)
class _Track:
    """The state machine of one rule for one subject."""

    phase: Phase = "ok"
    since: float = 0.0
    """When the current phase's condition started (above `high` / below `low`)."""
    peak: float = 0.0
    alert: Alert | None = None
    """The alert this track fired, kept after it resolves for folding."""


@dataclass
class AlertEngine:
    """Evaluates rules over readings; keeps active and recently resolved alerts (see module doc)."""

    rules: Sequence[AlertRule]
    max_resolved: int = MAX_RESOLVED
    _tracks: dict[tuple[str, str], _Track] = field(default_factory=dict, init=False)
    _active: dict[str, Alert] = field(default_factory=dict, init=False)
    _resolved: OrderedDict[str, Alert] = field(default_factory=OrderedDict, init=False)
    _seq: Iterator[int] = field(default_factory=lambda: itertools.count(1), init=False)
    evaluations: int = field(default=0, init=False)
    transitions: int = field(default=0, init=False)
    """Phase changes so far, all tracks together (the no-flapping figure)."""

    def __post_init__(self) -> None:
        names = [rule.name for rule in self.rules]
        if len(set(names)) != len(names):
            raise ValueError("alert rule names must be unique")
        self._by_metric: dict[str, list[AlertRule]] = {}
        for rule in self.rules:
            self._by_metric.setdefault(rule.metric, []).append(rule)
        self._prefix = secrets.token_hex(3)

    # -- evaluation --

    def evaluate(self, readings: Iterable[Reading], now: float) -> list[AlertEvent]:
        """Advance every (rule, subject) that has a reading; the events of this evaluation."""
        self.evaluations += 1
        events: list[AlertEvent] = []
        for reading in readings:
            for rule in self._by_metric.get(reading.metric, ()):
                if rule.subject is not None and rule.subject != reading.subject:
                    continue
                track = self._tracks.setdefault((rule.name, reading.subject), _Track())
                event = self._step(rule, reading, track, now)
                if event is not None:
                    events.append(event)
        return events

    def _step(self, rule: AlertRule, reading: Reading, track: _Track, now: float) -> AlertEvent | None:
        value = reading.value
        phase = track.phase
        if phase == "ok":
            if value > rule.high:
                self._move(track, "pending", now)
                track.peak = value
            return None
        track.peak = max(track.peak, value)
        if phase == "pending":
            if value <= rule.high:
                self._move(track, "ok", now)
            elif now - track.since >= rule.for_s:
                return self._fire(rule, reading, track, now)
            return None
        alert = track.alert
        assert alert is not None
        alert.value = value
        alert.peak = max(alert.peak, value)
        if phase == "firing":
            if value < rule.resolve_below:
                self._move(track, "resolving", now)
            return None
        # resolving
        if value >= rule.resolve_below:
            self._move(track, "firing", now)
        elif now - track.since >= rule.clear_s:
            return self._resolve(track, alert, now)
        return None

    def _move(self, track: _Track, phase: Phase, now: float) -> None:
        track.phase, track.since = phase, now
        self.transitions += 1

    def _fire(self, rule: AlertRule, reading: Reading, track: _Track, now: float) -> AlertEvent:
        started = track.since
        self._move(track, "firing", now)
        previous = track.alert
        if (
            previous is not None
            and previous.ended_at is not None
            and now - previous.ended_at <= rule.fold_s
            and previous.id in self._resolved
        ):
            del self._resolved[previous.id]
            previous.state, previous.ended_at = "firing", None
            previous.fired += 1
            previous.fired_at, previous.value = now, reading.value
            previous.peak = max(previous.peak, track.peak)
            previous.summary = _summary(rule, reading.subject, track.peak)
            self._active[previous.id] = previous
            return AlertEvent("refired", previous.to_dict(), now)
        alert = Alert(
            id=f"{self._prefix}-{next(self._seq)}",
            rule=rule.name,
            metric=rule.metric,
            subject=reading.subject,
            severity=rule.severity,
            state="firing",
            started_at=started,
            fired_at=now,
            value=reading.value,
            peak=track.peak,
            threshold=rule.high,
            summary=_summary(rule, reading.subject, track.peak),
        )
        track.alert = alert
        self._active[alert.id] = alert
        return AlertEvent("fired", alert.to_dict(), now)

    def _resolve(self, track: _Track, alert: Alert, now: float) -> AlertEvent:
        self._move(track, "ok", now)
        alert.state, alert.ended_at = "resolved", now
        self._active.pop(alert.id, None)
        self._resolved[alert.id] = alert
        while len(self._resolved) > self.max_resolved:
            self._resolved.popitem(last=False)
        return AlertEvent("resolved", alert.to_dict(), now)

    # -- reads and acknowledgement --

    def active(self) -> list[Alert]:
        """Firing alerts, most severe first, then oldest first."""
        order = {"critical": 0, "warning": 1, "info": 2}
        return sorted(self._active.values(), key=lambda a: (order[a.severity], a.started_at, a.id))

    def resolved(self) -> list[Alert]:
        """Recently resolved alerts, newest first."""
        return list(reversed(self._resolved.values()))

    def get(self, alert_id: str) -> Alert | None:
        return self._active.get(alert_id) or self._resolved.get(alert_id)

    def firing(self, metric: AlertMetric | None = None) -> list[Alert]:
        """Active alerts, optionally of one metric (what the overload state machine reads)."""
        return [a for a in self._active.values() if metric is None or a.metric == metric]

    def ack(self, alert_id: str, by: str, now: float) -> tuple[Alert, AlertEvent | None] | None:
        """Acknowledge an alert (active or resolved): the alert and the event to publish; None when
        there is no such alert. Acknowledging twice keeps the first acknowledgement (no event)."""
        alert = self.get(alert_id)
        if alert is None:
            return None
        if alert.acknowledged_at is not None:
            return alert, None
        alert.acknowledged_at, alert.acknowledged_by = now, by
        return alert, AlertEvent("acknowledged", alert.to_dict(), now)

    def restore(self, alerts: Iterable[dict[str, Any]]) -> int:
        """Load alerts kept elsewhere (Redis) at start: resolved ones for reading, active ones as
        firing with their tracks, so a restarted site neither forgets nor re-announces them."""
        count = 0
        for data in alerts:
            try:
                alert = Alert(**data)
            except TypeError:
                continue
            rules = {rule.name: rule for rule in self.rules}
            if alert.rule not in rules or self.get(alert.id) is not None:
                continue
            count += 1
            track = self._tracks.setdefault((alert.rule, alert.subject), _Track())
            track.alert = alert
            if alert.state == "firing":
                track.phase, track.since, track.peak = "firing", alert.fired_at, alert.peak
                self._active[alert.id] = alert
            else:
                self._resolved[alert.id] = alert
        while len(self._resolved) > self.max_resolved:
            self._resolved.popitem(last=False)
        return count

    def phases(self) -> dict[str, str]:
        """Each track's phase, `rule/subject` → phase (for tests and the dashboard)."""
        return {f"{rule}/{subject}": track.phase for (rule, subject), track in self._tracks.items()}


def _summary(rule: AlertRule, subject: str, peak: float) -> str:
    return f"{rule.metric} of {subject} above {rule.high:g} for {rule.for_s:g} s (peak {peak:.4g})"
