"""Scenario files are validated strictly; the bundled ones load."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sim.scenario import Scenario, bundled_scenarios, load_scenario

MINIMAL = {
    "name": "t",
    "services": {"inference": {"budget_ms": 200, "cpu_ms": 3}},
    "profiles": {"mobile": {"service": "inference", "share": 1, "rate_per_device": 0.1}},
}


def test_the_bundled_heavy_scenario_loads_with_the_sites_defaults() -> None:
    assert "heavy" in bundled_scenarios()
    heavy = load_scenario("heavy")
    assert heavy.name == "heavy"
    assert heavy.swarm.gossip_interval_s == 0.2
    assert heavy.swarm.peer_spill_share == 0.25


def test_a_scenario_file_by_path_loads(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\nservices: {s: {budget_ms: 50, cpu_ms: 1}}\nprofiles: {iot: {service: s, share: 1, rate_per_device: 1}}\n"
    )
    assert load_scenario(str(path)).name == "mine"


def test_an_unknown_key_is_refused() -> None:
    with pytest.raises(ValidationError, match="extra"):
        Scenario.model_validate({**MINIMAL, "sitez": 3})


def test_a_profile_of_an_unknown_service_is_refused() -> None:
    bad = {**MINIMAL, "profiles": {"iot": {"service": "sensor", "share": 1, "rate_per_device": 1}}}
    with pytest.raises(ValidationError, match="unknown service"):
        Scenario.model_validate(bad)


def test_profile_shares_must_add_up_to_one() -> None:
    bad = {**MINIMAL, "profiles": {"mobile": {"service": "inference", "share": 0.5, "rate_per_device": 1}}}
    with pytest.raises(ValidationError, match="add up to 1"):
        Scenario.model_validate(bad)


def test_an_unknown_bundled_name_says_which_exist() -> None:
    with pytest.raises(ValueError, match="heavy"):
        load_scenario("nope")


def test_overriding_the_sites_keeps_the_devices_per_site() -> None:
    heavy = load_scenario("heavy")
    small = heavy.with_overrides(sites=3)
    assert small.devices * heavy.sites == heavy.devices * 3
