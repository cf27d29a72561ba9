"""The operator dashboard: `GET /` serves a static page, its assets are under `/static/dashboard/`.

The page itself needs no key (it holds no data); it asks for the operator key, keeps it in the
browser's session storage and sends it as `Authorization: Bearer` on every data call it makes
(`/v1/sites`, `/v1/metrics/snapshot`, `/v1/metrics/recent`, `/v1/alerts/stream`, acks). Plain
files, no build step and no external URL: the Content-Security-Policy lets the page reach its own
origin only.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

DASHBOARD_DIR = Path(__file__).resolve().parents[1] / "static" / "dashboard"
ASSETS_PATH = "/static/dashboard"

PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=FileResponse)
async def dashboard_page() -> FileResponse:
    return FileResponse(DASHBOARD_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


def install_dashboard(app: FastAPI) -> None:
    """`GET /` and the page's assets on `app`."""
    app.include_router(router)
    app.mount(ASSETS_PATH, StaticFiles(directory=DASHBOARD_DIR), name="dashboard")
