"""The operator dashboard (`GET /`) in a real headless browser — Debian's chromium driven by its
chromedriver through Selenium — over a real 3-site swarm of `mec serve` processes.

The page must list every site and mark the leader, refuse a wrong key and ask again, list the
requests the site answered, and show an alert raised after it loaded, live over its SSE stream
and without a reload, then acknowledge it with its button.

The alert is raised by the test, not by a clock: site-1 has one rule, on sensor's p99 over its
budget with a threshold of 0, which any sensor request in the window breaches; the test sends
that request only once the page's stream is live and its alert list is empty.

With MEC_DASHBOARD_SCREENSHOT=PATH the page is saved there as a PNG once the alert shows, after
a minute of light traffic has filled the chart (how docs/dashboard.png is made).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import OPERATOR_KEY
from tests.support.swarm import CLIENT, Swarm, eventually, running_swarms

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 90
"""The longest any one condition on the page is waited for (a busy 2-core machine, three sites
and a browser)."""

PROBE_RULE = {
    "name": "dashboard_probe",
    "metric": "p99_budget_ratio",
    "subject": "sensor",
    "high": 0,
    "for_s": 2,
    "clear_s": 600,
    "severity": "critical",
}
"""Fires two seconds after a sensor request (any: its p99 is then above 0) and stays active for
the rest of the test."""

SWARM_ENV = {"MEC_SERVICES__INFERENCE__REPLICAS": "0"}  # the model's workload is not needed here


def _require_browser() -> None:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} missing (apt-get install chromium chromium-driver)")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless chromium; Selenium Manager is never asked for anything (both paths are given)."""
    _require_browser()
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, read at the end
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--window-size=1280,1400",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(argument)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()  # ends the browser, then stops chromedriver by its process


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[Swarm]:
    _require_browser()  # before three sites are started for nothing
    with running_swarms(tmp_path) as start:
        yield start(3, SWARM_ENV, {"site-1": {"MEC_ALERT_RULES": json.dumps([PROBE_RULE])}})


def _wait(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(
        driver, WAIT_S, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException]
    )
    return wait.until(condition, f"the dashboard never showed {what}")


def _enter_key(driver: Any, key: str) -> None:
    from selenium.webdriver.common.by import By

    field = _wait(driver, lambda d: d.find_element(By.ID, "key-input"), "the key form")
    _wait(driver, lambda d: field.is_displayed(), "the key form")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()


def _sites_shown(driver: Any) -> dict[str, bool]:
    """Site id -> marked as leader, as the sites table shows them."""
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#sites-table tbody tr[data-site-id]")
    return {row.get_attribute("data-site-id"): row.get_attribute("data-leader") == "true" for row in rows}


def _alert_item(driver: Any, rule: str) -> Any:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, f'#alerts-list li[data-rule="{rule}"]')
    return found[0] if found else None


def _request(swarm: Swarm, service: str, kind: str, payload: dict[str, Any]) -> bool:
    body = {"service": service, "payload": payload, "client": {"kind": kind, "id": "dashboard-test"}}
    answer = httpx.post(f"{swarm.url('site-1')}/v1/requests", json=body, headers=CLIENT, timeout=10)
    return answer.status_code == 200


def _sensor_request(swarm: Swarm) -> bool:
    return _request(swarm, "sensor", "iot", {"sensor_id": "dash-1", "value": 21.5})


def _save_screenshot(driver: Any, swarm: Swarm, path: str) -> None:
    """The page after a minute of a few requests a second (the README's picture)."""
    seq = itertools.count(1)

    def a_minute_of_traffic(d: Any) -> bool:
        _sensor_request(swarm)
        game = {"session_id": "m1", "player_id": "p1", "seq": next(seq), "state": {"x": 1, "y": 2}}
        _request(swarm, "game-state", "gaming", game)
        return int(d.find_element("id", "load-chart").get_attribute("data-span-s") or 0) >= 60

    _wait(driver, a_minute_of_traffic, "a minute of history in the chart")
    driver.save_screenshot(path)


def test_the_dashboard_shows_the_swarm_and_an_alert_raised_after_it_loaded(
    browser: Any, swarm: Swarm
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    leader = swarm.leader()
    driver.get(f"{swarm.url('site-1')}/")

    _enter_key(driver, "not-the-operator-key-0123456789")  # refused: the form comes back with why
    _wait(driver, lambda d: "refused the key (401)" in d.find_element(By.ID, "key-error").text, "the 401")
    assert driver.execute_script("return sessionStorage.length") == 0

    _enter_key(driver, OPERATOR_KEY)
    driver.execute_script("window.loadedOnce = true")  # gone if the page ever reloads
    _wait(
        driver,
        lambda d: _sites_shown(d) == {sid: sid == leader for sid in ("site-1", "site-2", "site-3")},
        f"all three sites with {leader} marked leader",
    )
    _wait(
        driver,
        lambda d: d.find_element(By.ID, "stream-state").get_attribute("data-state") == "live",
        "a live stream",
    )
    _wait(
        driver,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#load-legend li[data-site-id]")) == 3,
        "a chart legend entry per site",
    )
    assert _alert_item(driver, PROBE_RULE["name"]) is None  # nothing has breached the rule yet

    eventually(lambda: _sensor_request(swarm), 60, "a sensor request served through site-1")
    item = _wait(driver, lambda d: _alert_item(d, PROBE_RULE["name"]), "the alert raised after it loaded")
    assert "critical" in item.text.lower() and "dashboard_probe on sensor" in item.text
    assert item.get_attribute("data-acknowledged") == "false"
    _wait(
        driver,
        lambda d: (
            "sensor"
            in [r.text for r in d.find_elements(By.CSS_SELECTOR, "#recent-table tbody td:nth-child(2)")]
        ),
        "the sensor request in the last requests",
    )
    screenshot = os.environ.get("MEC_DASHBOARD_SCREENSHOT")
    if screenshot:
        _save_screenshot(driver, swarm, screenshot)

    item.find_element(By.CSS_SELECTOR, "button.ack").click()
    acked = _wait(
        driver,
        lambda d: (
            (found := _alert_item(d, PROBE_RULE["name"])) is not None
            and found.get_attribute("data-acknowledged") == "true"
            and found
        ),
        "the alert acknowledged",
    )
    assert "acknowledged by" in acked.text
    assert driver.execute_script("return window.loadedOnce === true")  # the same page all along
    listed = swarm.get("site-1", "/v1/alerts?state=active").json()["active"]
    assert [(a["rule"], a["acknowledged_at"] is not None) for a in listed] == [(PROBE_RULE["name"], True)]
    console = [entry["message"] for entry in driver.get_log("browser")]
    broken = [m for m in console if "Uncaught" in m or "Content Security Policy" in m]
    assert not broken, broken  # no script error, nothing the page's CSP had to block
