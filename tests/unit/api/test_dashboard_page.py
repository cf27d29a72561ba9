"""The dashboard's page and assets as the site serves them (in process, the real app): the page
without a key, its assets, a policy that keeps it on its own origin, and no URL to anywhere else."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from api.routes.dashboard import DASHBOARD_DIR
from tests.support.inprocess import InProcessSite, in_process_site

OPERATOR = "operator-key-dash-0123456789"
ASSETS = ("index.html", "dashboard.js", "dashboard.css")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[InProcessSite]:
    async with in_process_site(tmp_path, ["client-key-dash-0123456789"], [OPERATOR]) as running:
        yield running


async def test_the_page_loads_without_a_key_and_keeps_to_its_own_origin(api: InProcessSite) -> None:
    page = await api.http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    assert '<script src="/static/dashboard/dashboard.js"' in page.text
    assert '<label for="key-input">' in page.text


@pytest.mark.parametrize(("name", "kind"), [("dashboard.js", "javascript"), ("dashboard.css", "text/css")])
async def test_the_assets_are_served_under_static_dashboard(api: InProcessSite, name: str, kind: str) -> None:
    asset = await api.http.get(f"/static/dashboard/{name}")
    assert asset.status_code == 200
    assert kind in asset.headers["content-type"]
    assert asset.content == (DASHBOARD_DIR / name).read_bytes()


async def test_the_page_is_not_part_of_the_api_schema(api: InProcessSite) -> None:
    paths = (await api.http.get("/openapi.json")).json()["paths"]
    assert "/" not in paths and not any(path.startswith("/static") for path in paths)
    assert "/v1/metrics/recent" in paths


def test_the_assets_name_no_other_origin_and_stay_small() -> None:
    total = 0
    for name in ASSETS:
        text = (DASHBOARD_DIR / name).read_text(encoding="utf-8")
        total += len(text.encode())
        assert not re.findall(r"(?i)(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), name
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "document.write" not in text
    assert total < 50 * 1024
