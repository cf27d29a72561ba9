from __future__ import annotations

import pytest
from pydantic import ValidationError

from config.settings import AlertRule
from monitoring.alerts import AlertEngine, AlertEvent, Reading

CPU = AlertRule(name="cpu_high", metric="cpu_percent", high=90, low=75, for_s=10, clear_s=30, fold_s=300)


def _feed(
    engine: AlertEngine, values: list[float], start: float = 0.0, step: float = 1.0
) -> list[AlertEvent]:
    """One host CPU reading per `step` seconds from `start`; every event in order."""
    events: list[AlertEvent] = []
    for n, value in enumerate(values):
        events.extend(engine.evaluate([Reading("cpu_percent", "host", value)], start + n * step))
    return events


def test_a_spike_shorter_than_for_s_never_fires() -> None:
    engine = AlertEngine([CPU])
    assert _feed(engine, [50, 95, 99, 97, 80, 95, 96, 50]) == []
    assert engine.active() == []


def test_a_breach_held_for_for_s_fires_once_from_its_first_crossing_with_its_peak() -> None:
    engine = AlertEngine([CPU])
    events = _feed(engine, [50] + [95] * 5 + [99] + [95] * 10)
    assert [e.kind for e in events] == ["fired"]
    alert = events[0].alert
    assert (alert["started_at"], alert["fired_at"], alert["state"]) == (1.0, 11.0, "firing")
    assert alert["peak"] == 99 and alert["threshold"] == 90 and alert["severity"] == "warning"
    assert [a.id for a in engine.active()] == [alert["id"]]


def test_a_value_hovering_between_low_and_high_does_not_flap() -> None:
    engine = AlertEngine([CPU])
    hovering = [95] * 11 + [89, 91, 80, 92, 76, 95, 88] * 20
    events = _feed(engine, hovering)
    assert [e.kind for e in events] == ["fired"]
    assert engine.transitions == 2  # ok -> pending -> firing, nothing after


def test_it_resolves_only_after_clear_s_below_low_and_a_bounce_restarts_the_wait() -> None:
    engine = AlertEngine([CPU])
    fired = _feed(engine, [95] * 11)
    assert [e.kind for e in fired] == ["fired"]
    # 20 s below low, a bounce to 80 (above low), then 30 s below low
    events = _feed(engine, [50] * 20 + [80] + [50] * 31, start=11)
    assert [e.kind for e in events] == ["resolved"]
    resolved = events[0].alert
    assert resolved["id"] == fired[0].alert["id"] and resolved["ended_at"] == 11 + 21 + 30
    assert engine.active() == [] and [a.id for a in engine.resolved()] == [resolved["id"]]


def test_a_repeat_within_fold_s_reopens_the_same_alert_and_a_later_one_is_new() -> None:
    engine = AlertEngine([CPU])
    first = _feed(engine, [95] * 11 + [50] * 31)  # fires at 10, resolves at 41
    again = _feed(engine, [95] * 11 + [50] * 31, start=100)  # within 300 s of the end
    later = _feed(engine, [95] * 11, start=1000)
    assert [e.kind for e in first] == ["fired", "resolved"]
    assert [e.kind for e in again] == ["refired", "resolved"]
    assert again[0].alert["id"] == first[0].alert["id"] and again[0].alert["fired"] == 2
    assert [e.kind for e in later] == ["fired"] and later[0].alert["id"] != first[0].alert["id"]


def test_an_acknowledgement_is_kept_through_folded_repeats() -> None:
    engine = AlertEngine([CPU])
    alert_id = _feed(engine, [95] * 11)[0].alert["id"]
    acked = engine.ack(alert_id, "key-1", now=12)
    assert acked is not None and acked[1] is not None and acked[1].kind == "acknowledged"
    assert (acked[1].alert["acknowledged_at"], acked[1].alert["acknowledged_by"]) == (12, "key-1")
    again = engine.ack(alert_id, "key-2", now=13)
    assert again is not None and again[1] is None and again[0].acknowledged_by == "key-1"
    _feed(engine, [50] * 31 + [95] * 11, start=12)
    refired = engine.get(alert_id)
    assert refired is not None and refired.fired == 2 and refired.acknowledged_by == "key-1"
    assert engine.ack("no-such-alert", "key-1", now=99) is None


def test_each_subject_has_its_own_alert_and_a_subject_filter_limits_a_rule() -> None:
    inflight = AlertRule(name="inflight", metric="inflight", high=10, for_s=0, clear_s=0)
    only_sensor = AlertRule(name="sensor_err", metric="error_rate", high=0.1, for_s=0, subject="sensor")
    engine = AlertEngine([inflight, only_sensor])
    events = engine.evaluate(
        [
            Reading("inflight", "sensor", 20),
            Reading("inflight", "inference", 30),
            Reading("error_rate", "inference", 0.5),
            Reading("error_rate", "sensor", 0.5),
        ],
        now=0,
    )
    assert events == []  # for_s 0: pending now, firing at the next look
    events = engine.evaluate(
        [
            Reading("inflight", "sensor", 20),
            Reading("inflight", "inference", 5),
            Reading("error_rate", "inference", 0.5),
            Reading("error_rate", "sensor", 0.5),
        ],
        now=1,
    )
    assert sorted((e.alert["rule"], e.alert["subject"]) for e in events) == [
        ("inflight", "sensor"),
        ("sensor_err", "sensor"),
    ]


def test_resolved_alerts_are_bounded_oldest_first() -> None:
    rule = AlertRule(name="inflight", metric="inflight", high=1, for_s=0, clear_s=0, fold_s=0)
    engine = AlertEngine([rule], max_resolved=3)
    for n in range(5):
        subject = f"svc{n}"
        for t, value in enumerate((5, 5, 0, 0)):
            engine.evaluate([Reading("inflight", subject, value)], now=n * 10 + t)
    assert [a.subject for a in engine.resolved()] == ["svc4", "svc3", "svc2"]


def test_a_restarted_engine_restores_alerts_without_announcing_them_again() -> None:
    engine = AlertEngine([CPU])
    alert_id = _feed(engine, [95] * 11)[0].alert["id"]
    kept = [a.to_dict() for a in engine.active()]
    restarted = AlertEngine([CPU])
    assert restarted.restore(kept) == 1
    assert _feed(restarted, [95] * 5, start=20) == []  # still firing, no second "fired"
    resolved = _feed(restarted, [50] * 31, start=25)
    assert [(e.kind, e.alert["id"]) for e in resolved] == [("resolved", alert_id)]


def test_rules_with_low_above_high_or_a_duplicate_name_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"low .* is above high"):
        AlertRule(name="bad", metric="cpu_percent", high=50, low=60)
    with pytest.raises(ValueError, match="unique"):
        AlertEngine([CPU, CPU])
