"""`swarm.load_table`: strict load reports, expiry on this site's clock, unknown senders, RTT and
the forwards counted since a peer's last report."""

from __future__ import annotations

import json

import pytest

from agent.view import LoadFigures
from swarm.load_table import LoadTable, ServiceLoad, SiteLoad, UnknownPeer
from swarm.peers import parse_peers
from tools.runtimes.base import Instance


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def report(site_id: str, sent_at: float = 1.0, predicted_ms: float = 5.0, inflight: int = 0) -> SiteLoad:
    return SiteLoad(
        site_id=site_id,
        url=f"http://{site_id}:8080",
        sent_at=sent_at,
        services={
            "sensor": ServiceLoad(ready=2, inflight=inflight, predicted_ms=predicted_ms, has_room=True)
        },
        cpu_percent=12.5,
        gpu_util=None,
    )


def table(clock: Clock, stale_s: float = 1.5) -> LoadTable:
    peers = parse_peers(["site-2=http://10.0.0.2:8080", "site-3=http://10.0.0.3:8080"])
    return LoadTable("site-1", peers, stale_s, clock)


def test_a_report_round_trips_through_json() -> None:
    load = report("site-2")
    load = load.model_copy(update={"gpu_util": 40.0})
    assert SiteLoad.from_json(load.to_json()) == load
    assert SiteLoad.from_json(load.to_json().decode()) == load


GOOD = json.loads(report("site-2").to_json())


def _with(path: tuple[str, ...], value: object) -> bytes:
    data = json.loads(json.dumps(GOOD))
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        _with(("site_id",), "Site 2"),
        _with(("site_id",), KeyError),
        _with(("extra",), 1),
        _with(("cpu_percent",), "12"),
        _with(("cpu_percent",), 101),
        _with(("cpu_percent",), -1),
        _with(("gpu_util",), 150),
        _with(("sent_at",), -1),
        _with(("services", "sensor", "ready"), -1),
        _with(("services", "sensor", "ready"), 1.5),
        _with(("services", "sensor", "has_room"), 1),
        _with(("services", "sensor", "predicted_ms"), "5"),
        _with(("services", "sensor", "predicted_ms"), -5),
        _with(("services", "sensor", "surprise"), 1),
        _with(("services", "Not A Name"), GOOD["services"]["sensor"]),
        _with(("services",), {f"s{i}": GOOD["services"]["sensor"] for i in range(257)}),
        b'{"site_id":"site-2","url":"u","sent_at":1,"services":{},"cpu_percent":NaN}',
        b'{"site_id":"site-2","url":"u","sent_at":1,"services":{},"cpu_percent":1,"pad":"'
        + b"x" * 70_000
        + b'"}',
    ],
)
def test_a_malformed_report_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        SiteLoad.from_json(raw)


def test_service_load_of_reads_the_instances_gates() -> None:
    instances = [
        Instance(f"sensor-{i}", "sensor", "127.0.0.1", 9000 + i, "mec/sensor", gpu=False) for i in range(3)
    ]
    loads = {
        "sensor-0": LoadFigures(predicted_ms=3.0, has_room=False, outstanding=9),
        "sensor-1": LoadFigures(predicted_ms=7.0, has_room=True, outstanding=2),
    }  # sensor-2 is missing: idle
    load = ServiceLoad.of(instances, loads, p99_ms=20.0)
    assert load == ServiceLoad(ready=3, inflight=11, predicted_ms=0.0, has_room=True, p99_ms=20.0)
    full = ServiceLoad.of(instances[:1], loads)
    assert (full.has_room, full.predicted_ms, full.inflight) == (False, 3.0, 9)
    assert ServiceLoad.of([], loads) == ServiceLoad(ready=0, inflight=0, predicted_ms=0.0, has_room=False)


def test_reports_expire_on_this_sites_clock_not_the_senders() -> None:
    clock = Clock()
    loads = table(clock)
    assert loads.fresh() == []
    loads.update(report("site-2", sent_at=5.0))  # the sender's clock says nothing about freshness
    clock.now += 1.0
    loads.update(report("site-3", sent_at=1_000_000.0), received_at=clock.now)
    assert [(e.site_id, e.age_s) for e in loads.fresh()] == [("site-2", 1.0), ("site-3", 0.0)]
    assert loads.fresh()[0].url == "http://10.0.0.2:8080"  # the configured URL, not the reported one
    clock.now += 0.5  # site-2's report is now 1.5 s old: stale
    assert [e.site_id for e in loads.fresh()] == ["site-3"]
    assert [e.site_id for e in loads.fresh(clock.now - 1.0)] == ["site-2", "site-3"]
    clock.now += 10
    assert loads.fresh() == []
    loads.update(report("site-2", sent_at=6.0))
    assert [e.site_id for e in loads.fresh()] == ["site-2"]


def test_an_unknown_sender_or_the_site_itself_is_refused_and_the_table_stays_bounded() -> None:
    clock = Clock()
    loads = table(clock)
    for stranger in ("site-4", "site-1"):
        with pytest.raises(UnknownPeer):
            loads.update(report(stranger))
        with pytest.raises(UnknownPeer):
            loads.record_rtt(stranger, 1.0)
        with pytest.raises(UnknownPeer):
            loads.forward_started(stranger, "sensor")
    assert loads.peer_ids == ["site-2", "site-3"] and loads.fresh() == []
    with pytest.raises(ValueError):
        LoadTable("site-2", parse_peers(["site-2=http://10.0.0.2:8080"]), 1.0, clock)


def test_an_older_report_does_not_undo_a_newer_one_but_its_rtt_counts() -> None:
    clock = Clock()
    loads = table(clock)
    assert loads.update(report("site-2", sent_at=10.0, predicted_ms=1.0), rtt_ms=10.0)
    assert not loads.update(report("site-2", sent_at=9.0, predicted_ms=99.0), rtt_ms=20.0)
    (entry,) = loads.fresh()
    assert entry.load.services["sensor"].predicted_ms == 1.0
    assert entry.rtt_ms == pytest.approx(10.0 + (20.0 - 10.0) * 0.3)


def test_rtt_is_an_ewma_of_the_measured_round_trips() -> None:
    clock = Clock()
    loads = table(clock)
    loads.update(report("site-2"))
    assert loads.fresh()[0].rtt_ms is None  # a report that came to us: no round trip of ours yet
    for sample in (10.0, 10.0, 40.0):
        loads.record_rtt("site-2", sample)
    assert loads.rtt_ms("site-2") == pytest.approx(10.0 + 30.0 * 0.3)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            loads.record_rtt("site-2", bad)


def test_forwards_count_until_they_end_or_the_next_report_includes_them() -> None:
    clock = Clock()
    loads = table(clock)
    loads.update(report("site-2", sent_at=1.0))
    first = loads.forward_started("site-2", "sensor")
    second = loads.forward_started("site-2", "sensor")
    other = loads.forward_started("site-2", "inference")
    assert loads.fresh()[0].local_inflight == {"sensor": 2, "inference": 1}
    first.done()
    first.done()  # twice: once
    assert loads.fresh()[0].local_inflight == {"sensor": 1, "inference": 1}
    loads.update(report("site-2", sent_at=2.0))  # the peer's report now counts what is still running
    assert loads.fresh()[0].local_inflight == {}
    second.done()  # sent before that report: already in it, nothing to take back
    other.done()
    third = loads.forward_started("site-2", "sensor")
    assert loads.fresh()[0].local_inflight == {"sensor": 1}
    third.done()
    assert loads.fresh()[0].local_inflight == {}
