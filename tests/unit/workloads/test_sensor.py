"""Per-sensor rolling statistics and anomaly flags, called through the service class."""

from __future__ import annotations

import math
import random
import statistics
import threading

import pytest

from workloads.sensor import (
    EWMA_ALPHA,
    EXAMPLE_PAYLOAD,
    MAX_BATCH,
    WINDOW_SIZE,
    SensorService,
)
from workloads.server import PayloadError


def _ewma(values: list[float]) -> float:
    average = values[0]
    for value in values[1:]:
        average = EWMA_ALPHA * value + (1.0 - EWMA_ALPHA) * average
    return average


def _feed(service: SensorService, sensor_id: str, values: list[float]) -> list[dict[str, object]]:
    return [service.invoke({"sensor_id": sensor_id, "value": value}) for value in values]


def test_example_payload_is_accepted() -> None:
    result = SensorService().invoke(EXAMPLE_PAYLOAD)

    assert result["sensor_id"] == EXAMPLE_PAYLOAD["sensor_id"]
    assert result["count"] == 1
    assert result["last"] == EXAMPLE_PAYLOAD["value"]


def test_statistics_match_the_statistics_module() -> None:
    rng = random.Random(7)
    values = [rng.uniform(-50.0, 120.0) for _ in range(60)]

    result = _feed(SensorService(), "boiler", values)[-1]

    assert result["count"] == len(values)
    assert result["mean"] == pytest.approx(statistics.fmean(values), rel=1e-12)
    assert result["std"] == pytest.approx(statistics.pstdev(values), rel=1e-12)
    assert result["min"] == min(values)
    assert result["max"] == max(values)
    assert result["ewma"] == pytest.approx(_ewma(values), rel=1e-12)
    assert result["last"] == values[-1]


def test_zscore_is_measured_against_the_window_before_the_value() -> None:
    rng = random.Random(11)
    history = [rng.gauss(20.0, 2.0) for _ in range(30)]
    service = SensorService()
    _feed(service, "s", history)

    result = service.invoke({"sensor_id": "s", "value": 25.0})

    expected = (25.0 - statistics.fmean(history)) / statistics.pstdev(history)
    assert result["zscore"] == pytest.approx(expected, rel=1e-9)


def test_window_keeps_only_the_latest_readings_but_ewma_sees_all() -> None:
    values = [float(i % 37) * 1.5 for i in range(WINDOW_SIZE + 300)]

    result = _feed(SensorService(), "s", values)[-1]

    window = values[-WINDOW_SIZE:]
    assert result["count"] == WINDOW_SIZE
    assert result["mean"] == pytest.approx(statistics.fmean(window), rel=1e-12)
    assert result["std"] == pytest.approx(statistics.pstdev(window), rel=1e-12)
    assert result["min"] == min(window)
    assert result["max"] == max(window)
    assert result["ewma"] == pytest.approx(_ewma(values), rel=1e-12)


def test_zscores_stay_accurate_for_large_values_with_small_spread() -> None:
    rng = random.Random(3)
    values = [1e9 + rng.uniform(-0.5, 0.5) for _ in range(700)]
    service = SensorService()
    _feed(service, "meter", values[:-1])

    result = service.invoke({"sensor_id": "meter", "value": values[-1]})

    window = values[-WINDOW_SIZE - 1 : -1]
    expected = (values[-1] - statistics.fmean(window)) / statistics.pstdev(window)
    assert result["zscore"] == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_a_batch_gives_the_same_state_as_single_readings() -> None:
    values = [float(v) for v in (3, 5, 4, 6, 5, 4, 5, 6, 5, 4, 5, 40, 5)]
    one_by_one = _feed(SensorService(), "s", values)[-1]

    batch = SensorService().invoke({"sensor_id": "s", "values": values})

    assert batch["anomalies"] == 1
    assert {k: v for k, v in batch.items() if k != "anomalies"} == {
        k: v for k, v in one_by_one.items() if k != "anomalies"
    }


def test_outlier_after_enough_history_is_an_anomaly() -> None:
    rng = random.Random(5)
    service = SensorService()
    _feed(service, "s", [rng.uniform(19.0, 21.0) for _ in range(20)])

    result = service.invoke({"sensor_id": "s", "value": 35.0})

    assert result["anomaly"] is True
    assert result["zscore"] > 3.0
    assert result["anomalies"] == 1


def test_normal_values_are_never_anomalies() -> None:
    rng = random.Random(9)

    results = _feed(SensorService(), "s", [rng.uniform(19.0, 21.0) for _ in range(400)])

    assert not any(result["anomaly"] for result in results)


def test_outlier_is_not_flagged_before_ten_prior_readings() -> None:
    service = SensorService()
    _feed(service, "s", [20.0, 20.5, 19.5, 20.2, 19.8, 20.1, 19.9, 20.0, 20.3])

    result = service.invoke({"sensor_id": "s", "value": 500.0})

    assert result["zscore"] > 3.0
    assert result["anomaly"] is False


def test_change_after_a_constant_signal_is_an_anomaly_without_a_zscore() -> None:
    service = SensorService()
    steady = _feed(service, "s", [0.1] * 12)

    result = service.invoke({"sensor_id": "s", "value": 0.2})

    assert not any(reading["anomaly"] for reading in steady)
    assert steady[-1]["zscore"] == 0.0
    assert result["zscore"] is None
    assert result["anomaly"] is True


def test_sensors_are_tracked_separately() -> None:
    service = SensorService()
    _feed(service, "a", [1.0, 2.0, 3.0])

    result = service.invoke({"sensor_id": "b", "value": 10.0})

    assert result["count"] == 1
    assert result["mean"] == 10.0


def test_least_recently_updated_sensor_is_evicted_beyond_the_bound() -> None:
    service = SensorService(max_sensors=3)
    for sensor_id in ("a", "b", "c"):
        _feed(service, sensor_id, [1.0, 2.0])
    service.invoke({"sensor_id": "a", "value": 3.0})

    service.invoke({"sensor_id": "d", "value": 4.0})

    assert service.tracked() == ["c", "a", "d"]
    assert service.info()["evicted"] == 1
    assert service.invoke({"sensor_id": "b", "value": 5.0})["count"] == 1


def test_concurrent_updates_of_one_sensor_lose_nothing() -> None:
    service = SensorService()
    values = [float(i) for i in range(25)]

    def feed() -> None:
        _feed(service, "shared", values)

    threads = [threading.Thread(target=feed) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    result = service.invoke({"sensor_id": "shared", "values": [0.0]})
    assert result["count"] == 8 * len(values) + 1
    assert result["mean"] == pytest.approx(statistics.fmean(values * 8 + [0.0]))


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"value": 1.0}, "payload.sensor_id"),
        ({"sensor_id": "", "value": 1.0}, "payload.sensor_id"),
        ({"sensor_id": "x" * 129, "value": 1.0}, "payload.sensor_id"),
        ({"sensor_id": 7, "value": 1.0}, "payload.sensor_id"),
        ({"sensor_id": "s"}, "payload.value"),
        ({"sensor_id": "s", "value": "12"}, "payload.value"),
        ({"sensor_id": "s", "value": True}, "payload.value"),
        ({"sensor_id": "s", "value": math.inf}, "payload.value"),
        ({"sensor_id": "s", "value": math.nan}, "payload.value"),
        ({"sensor_id": "s", "value": 1e300}, "payload.value"),
        ({"sensor_id": "s", "value": 1.0, "values": [1.0]}, "payload.values"),
        ({"sensor_id": "s", "values": 3.0}, "payload.values"),
        ({"sensor_id": "s", "values": []}, "payload.values"),
        ({"sensor_id": "s", "values": [1.0] * (MAX_BATCH + 1)}, "payload.values"),
        ({"sensor_id": "s", "values": [1.0, 2.0, None]}, "payload.values[2]"),
    ],
)
def test_invalid_payload_is_refused_naming_the_field(payload: dict[str, object], field: str) -> None:
    service = SensorService()

    with pytest.raises(PayloadError) as refused:
        service.invoke(payload)

    assert refused.value.field == field
    assert service.tracked() == []


def test_longest_sensor_id_and_largest_batch_are_accepted() -> None:
    result = SensorService().invoke({"sensor_id": "x" * 128, "values": [2.0] * MAX_BATCH})

    assert result["count"] == WINDOW_SIZE
    assert result["std"] == 0.0


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"sensor_id": "s", "value": 10**400}, "payload.value"),
        ({"sensor_id": "s", "value": -(10**400)}, "payload.value"),
        ({"sensor_id": "s", "value": 10**16}, "payload.value"),
        ({"sensor_id": "s", "values": [1.0, 2, 10**400]}, "payload.values[2]"),
    ],
    ids=["huge", "huge-negative", "over-the-bound", "huge-in-a-batch"],
)
def test_huge_integer_reading_is_refused_naming_the_field(payload: dict[str, object], field: str) -> None:
    """`float(10**400)` overflows: such a reading is bad input, not a crash of the service."""
    service = SensorService()

    with pytest.raises(PayloadError) as refused:
        service.invoke(payload)

    assert refused.value.field == field
    assert service.tracked() == []


def test_integer_readings_at_the_bound_are_accepted_exactly() -> None:
    result = SensorService().invoke({"sensor_id": "s", "values": [-(10**15), 10**15]})

    assert (result["min"], result["max"]) == (-1e15, 1e15)
