"""The baseline for `site_bench.py`: a bare FastAPI app that answers a POST with the JSON it got.

One route, no middleware, no auth. The body is parsed into a `dict` by FastAPI and returned as a
JSONResponse, which is the least a FastAPI JSON endpoint does. Run it the way the site runs:

    python -m uvicorn echo_app:app --app-dir bench --host 127.0.0.1 --port N \
        --workers 1 --no-access-log

(uvicorn's defaults pick uvloop and httptools when they are installed, as they are for the site.)
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

app = FastAPI(title="echo", docs_url=None, redoc_url=None, openapi_url=None)


@app.post("/echo")
async def echo(body: dict[str, Any]) -> dict[str, Any]:
    """Return the request's JSON object unchanged."""
    return body
