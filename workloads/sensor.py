"""Rolling statistics with an anomaly flag for IoT sensors, served over HTTP.

``POST /invoke`` takes one reading, ``{"sensor_id": str (1..128 chars), "value": number}``, or
a batch in arrival order, ``{"sensor_id": str, "values": [number, ...]}`` (1..1000 finite
numbers), and answers with the sensor's state after the reading(s)::

    {"sensor_id": "pump-7", "count": 42, "mean": 20.1, "std": 0.4, "min": 19.2, "max": 21.0,
     "ewma": 20.3, "last": 20.5, "zscore": 1.02, "anomaly": false, "anomalies": 0}

* ``count``, ``mean``, ``std`` (population standard deviation), ``min`` and ``max`` describe
  the sensor's window: its last :data:`WINDOW_SIZE` readings.
* ``ewma`` is the exponentially weighted moving average (alpha :data:`EWMA_ALPHA`) of every
  reading the sensor has sent.
* ``zscore`` is the latest value's distance from the mean of the window *before* it was added,
  in standard deviations of that window; null while fewer than 2 readings preceded it or when
  those readings were all equal.
* ``anomaly`` flags the latest value: at least :data:`MIN_HISTORY` readings preceded it and
  ``|zscore| >`` :data:`ANOMALY_Z` (or the window was constant and the value differs from it).
  ``anomalies`` counts the flagged readings of this request (useful for batches).

A reading must be a finite number within ±:data:`MAX_ABS_VALUE`; anything else (a string,
``true``, ``1e400``, an integer of 400 digits) is refused with a 422 naming the field, e.g.
``payload.values[3]``, and the request changes nothing.

At most :data:`MAX_SENSORS` sensors are tracked; the least recently updated one is forgotten
first. Run it with ``python -m workloads.sensor --port N``.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from workloads.server import PayloadError, as_finite_number, field_path, main, require_str

SERVICE_NAME = "sensor"
WINDOW_SIZE = 256
MAX_SENSORS = 10_000
MAX_BATCH = 1000
MAX_SENSOR_ID_CHARS = 128
EWMA_ALPHA = 0.2
ANOMALY_Z = 3.0
MIN_HISTORY = 10
MAX_ABS_VALUE = 1e15
"""Readings beyond ±1e15 are refused: their squares would lose all precision."""

EXAMPLE_PAYLOAD: dict[str, Any] = {"sensor_id": "pump-7/temperature", "value": 21.5}


@dataclass
class SensorWindow:
    """The last readings of one sensor, with running sums for O(1) z-scores.

    The sums are of ``value - shift``: keeping them near zero avoids the cancellation of a
    naive sum of squares, and they are recomputed exactly every :data:`WINDOW_SIZE` updates so
    that rounding cannot drift.
    """

    values: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW_SIZE))
    shift: float = 0.0
    shifted_sum: float = 0.0
    shifted_sq_sum: float = 0.0
    ewma: float | None = None
    updates_since_exact: int = 0

    def mean_and_std(self) -> tuple[float, float]:
        """Mean and population standard deviation of the window (running sums)."""
        count = len(self.values)
        mean_offset = self.shifted_sum / count
        variance = max(self.shifted_sq_sum / count - mean_offset * mean_offset, 0.0)
        return self.shift + mean_offset, math.sqrt(variance)

    def add(self, value: float) -> tuple[float | None, bool]:
        """Add one reading; its z-score against the window before it, and the anomaly flag."""
        zscore: float | None = None
        anomaly = False
        prior = len(self.values)
        if prior >= 2:
            mean, std = self.mean_and_std()
            if std > 0.0:
                zscore = (value - mean) / std
                anomaly = prior >= MIN_HISTORY and abs(zscore) > ANOMALY_Z
            else:
                same = math.isclose(value, mean, rel_tol=1e-12, abs_tol=1e-12)
                zscore = 0.0 if same else None
                anomaly = prior >= MIN_HISTORY and not same
        elif prior == 0:
            self.shift = value
        if len(self.values) == WINDOW_SIZE:
            dropped = self.values[0] - self.shift
            self.shifted_sum -= dropped
            self.shifted_sq_sum -= dropped * dropped
        self.values.append(value)
        offset = value - self.shift
        self.shifted_sum += offset
        self.shifted_sq_sum += offset * offset
        self.ewma = value if self.ewma is None else EWMA_ALPHA * value + (1.0 - EWMA_ALPHA) * self.ewma
        self.updates_since_exact += 1
        if self.updates_since_exact >= WINDOW_SIZE:
            self._recompute()
        return zscore, anomaly

    def _recompute(self) -> None:
        self.shift = math.fsum(self.values) / len(self.values)
        offsets = [value - self.shift for value in self.values]
        self.shifted_sum = math.fsum(offsets)
        self.shifted_sq_sum = math.fsum(offset * offset for offset in offsets)
        self.updates_since_exact = 0

    def summary(self) -> dict[str, float | int]:
        """Exact statistics of the window (two passes, compensated sums)."""
        count = len(self.values)
        mean = math.fsum(self.values) / count
        variance = math.fsum((value - mean) ** 2 for value in self.values) / count
        return {
            "count": count,
            "mean": mean,
            "std": math.sqrt(variance),
            "min": min(self.values),
            "max": max(self.values),
        }


def _readings(payload: dict[str, Any]) -> list[float]:
    has_value, has_values = "value" in payload, "values" in payload
    if has_value and has_values:
        raise PayloadError("give either 'value' or 'values', not both", field_path("values"))
    if has_value:
        return [_reading(payload["value"], field_path("value"))]
    if not has_values:
        raise PayloadError(
            "'value' (a number) or 'values' (a list of numbers) is required", field_path("value")
        )
    values = payload["values"]
    if not isinstance(values, list):
        raise PayloadError("'values' must be a list of numbers", field_path("values"))
    if not 1 <= len(values) <= MAX_BATCH:
        raise PayloadError(
            f"'values' must hold 1..{MAX_BATCH} numbers (got {len(values)})", field_path("values")
        )
    return [_reading(value, f"{field_path('values')}[{i}]") for i, value in enumerate(values)]


def _reading(value: object, field: str) -> float:
    return as_finite_number(value, field, max_abs=MAX_ABS_VALUE)


class SensorService:
    """Per-sensor rolling windows, bounded in number (least recently updated evicted first)."""

    name = SERVICE_NAME

    def __init__(self, max_sensors: int = MAX_SENSORS) -> None:
        if max_sensors < 1:
            raise ValueError("max_sensors must be at least 1")
        self.max_sensors = max_sensors
        self._sensors: OrderedDict[str, SensorWindow] = OrderedDict()
        self._lock = threading.Lock()
        self._evicted = 0

    def info(self) -> dict[str, Any]:
        with self._lock:
            tracked, evicted = len(self._sensors), self._evicted
        return {
            "sensors": tracked,
            "max_sensors": self.max_sensors,
            "evicted": evicted,
            "window": WINDOW_SIZE,
        }

    def tracked(self) -> list[str]:
        """Sensor ids currently tracked, least recently updated first."""
        with self._lock:
            return list(self._sensors)

    def invoke(self, payload: dict[str, Any]) -> dict[str, Any]:
        sensor_id = require_str(payload, "sensor_id", max_len=MAX_SENSOR_ID_CHARS)
        readings = _readings(payload)
        with self._lock:
            window = self._sensors.get(sensor_id)
            if window is None:
                window = SensorWindow()
                self._sensors[sensor_id] = window
                while len(self._sensors) > self.max_sensors:
                    self._sensors.popitem(last=False)
                    self._evicted += 1
            else:
                self._sensors.move_to_end(sensor_id)
            anomalies = 0
            zscore: float | None = None
            anomaly = False
            for reading in readings:
                zscore, anomaly = window.add(reading)
                anomalies += anomaly
            summary = window.summary()
            ewma = window.ewma
        return {
            "sensor_id": sensor_id,
            **summary,
            "ewma": ewma,
            "last": readings[-1],
            "zscore": zscore,
            "anomaly": anomaly,
            "anomalies": anomalies,
        }


if __name__ == "__main__":
    raise SystemExit(main(SensorService))
