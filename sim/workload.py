"""Device workloads, aggregated per site: one arrival process per (site, device kind).

A site's devices of one kind send `devices × rate_per_device` requests per second in all. That
mean is modulated by a diurnal swing (a sine over `period_s`) and, for `bursty` profiles, by an
on-off state (a two-state MMPP: exponential on and off periods; the on rate is `on_factor` × the
mean, the off rate what keeps the mean); `periodic` ones are evenly spaced. Arrivals are drawn by thinning a Poisson process at the
peak rate, so a rate that changes with time stays exact.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from sim.scenario import ProfileSpec


@dataclass(frozen=True, slots=True)
class Stream:
    """The requests of one kind of device at one site."""

    site: int
    kind: str
    service: str
    budget_ms: float
    devices: int
    rate: float
    """Mean requests per second (all of the site's devices of this kind)."""
    profile: ProfileSpec


def devices_per_site(total: int, weights: list[float]) -> list[int]:
    """`total` devices split over sites by weight (largest remainders, so they add up to `total`)."""
    exact = [total * w for w in weights]
    counts = [math.floor(e) for e in exact]
    left = total - sum(counts)
    order = sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))
    for i in order[:left]:
        counts[i] += 1
    return counts


def arrivals(stream: Stream, rng: random.Random, until_s: float) -> Iterator[float]:
    """Arrival instants of `stream` (seconds, increasing) up to `until_s`."""
    profile = stream.profile
    if stream.rate <= 0:
        return
    if profile.arrivals == "periodic":
        start = rng.uniform(0, 1 / stream.rate)
        for n in range(math.ceil((until_s - start) * stream.rate)):
            yield start + n / stream.rate
        return
    amplitude = profile.diurnal.amplitude
    period = profile.diurnal.period_s
    phase = rng.uniform(0, 2 * math.pi) if amplitude > 0 else 0.0
    bursty = profile.arrivals == "bursty"
    burst = profile.burst
    duty = burst.on_s / (burst.on_s + burst.off_s)
    on_factor = min(burst.on_factor, 1 / duty) if bursty else 1.0
    off_factor = (1 - duty * on_factor) / (1 - duty) if bursty else 1.0
    peak = stream.rate * (1 + amplitude) * (on_factor if bursty else 1.0)
    on = rng.random() < duty
    switch_at = rng.expovariate(1 / (burst.on_s if on else burst.off_s)) if bursty else math.inf
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        while t >= switch_at:
            on = not on
            switch_at += rng.expovariate(1 / (burst.on_s if on else burst.off_s))
        if t >= until_s:
            return
        rate = stream.rate * (1 + amplitude * math.sin(2 * math.pi * t / period + phase))
        if bursty:
            rate *= on_factor if on else off_factor
        if rng.random() * peak < rate:
            yield t
