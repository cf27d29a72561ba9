"""Arrival processes and the spread of devices over sites."""

from __future__ import annotations

import itertools
import random

from sim.scenario import ProfileSpec
from sim.workload import Stream, arrivals, devices_per_site


def _stream(arrivals_kind: str, rate: float = 50.0) -> Stream:
    profile = ProfileSpec.model_validate(
        {"service": "s", "share": 1, "rate_per_device": 1, "arrivals": arrivals_kind}
    )
    return Stream(0, "iot", "s", 100.0, int(rate), rate, profile)


def test_devices_per_site_add_up_to_the_total() -> None:
    counts = devices_per_site(1000, [0.5, 0.3, 0.2 - 1e-9, 1e-9])
    assert sum(counts) == 1000
    assert counts[0] == 500


def test_periodic_arrivals_are_evenly_spaced_at_the_rate() -> None:
    times = list(arrivals(_stream("periodic"), random.Random(1), 10.0))
    assert len(times) in (499, 500)
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(times)}
    assert gaps == {0.02}


def test_bursty_arrivals_keep_the_mean_rate_but_vary_more_than_poisson() -> None:
    def per_second(kind: str) -> list[int]:
        counts = [0] * 200
        for t in arrivals(_stream(kind), random.Random(7), 200.0):
            counts[int(t)] += 1
        return counts

    def variance(xs: list[int]) -> float:
        mean = sum(xs) / len(xs)
        return sum((x - mean) ** 2 for x in xs) / len(xs)

    poisson, bursty = per_second("poisson"), per_second("bursty")
    assert 40 < sum(bursty) / 200 < 60
    assert variance(bursty) > 3 * variance(poisson)
