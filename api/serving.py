"""The parts of `mec serve` that one process and a supervisor with workers share: running the
HTTP server until it stops, what the operator is told, and the site file `mec chat` reads."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path

from api.server import GuardedServer
from api.site import KEYS_FILE
from config.settings import Settings

SITE_FILE = "site.json"
"""Written to the data dir by a serving site (its URL and pid); `mec chat` finds the site by it."""


def configure_logging(level: str, tag: str = "") -> None:
    """Log records to stderr; `tag` (e.g. "[worker 1] ") marks the lines of one process."""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


def run_event_loop(main: Coroutine[None, None, int]) -> int:
    """Run on uvloop when it is installed (uvicorn[standard] brings it), else on asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def write_site_file(data_dir: Path, url: str, site_id: str) -> Path:
    path = data_dir / SITE_FILE
    path.write_text(json.dumps({"url": url, "pid": os.getpid(), "site_id": site_id}))
    return path


def remove_site_file(path: Path) -> None:
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def report_start_failure(settings: Settings, reason: object) -> None:
    """What `mec serve` prints before it exits 1 because the site cannot start."""
    print(f"mec serve: site {settings.site_id} cannot start: {reason}", file=sys.stderr, flush=True)
    if not settings.allow_degraded:
        print("(fix the cause, or pass --allow-degraded to serve without it)", file=sys.stderr)


def announce(
    settings: Settings,
    url: str,
    generated_keys: dict[str, str],
    missing: list[str],
    start_errors: dict[str, str],
) -> Path:
    """Print the generated keys and `ready on URL` (or why it is `degraded on URL`), and write the
    site file; its path, to remove when the site stops."""
    if generated_keys:
        print(f"client key:   {generated_keys['client']}", flush=True)
        print(f"operator key: {generated_keys['operator']}", flush=True)
        print(f"(keys kept in {settings.data_dir / KEYS_FILE}, mode 0600)", flush=True)
    site_file = write_site_file(settings.data_dir, url, settings.site_id)
    if missing:
        reasons = "; ".join(f"{name}: {start_errors.get(name, 'no ready instance')}" for name in missing)
        print(f"degraded: {reasons}", flush=True)
        print(f"degraded on {url}", flush=True)
    else:
        print(f"ready on {url}", flush=True)
    return site_file


async def run_server(
    server: GuardedServer, on_listening: Callable[[int], None], sockets: list[socket.socket] | None = None
) -> bool:
    """Serve until uvicorn stops (on SIGINT/SIGTERM), calling `on_listening(port)` once it accepts
    connections; False when it never got to listen."""
    task = asyncio.create_task(server.serve(sockets=sockets))
    while not server.started and not task.done():  # noqa: ASYNC110 (uvicorn exposes only a flag)
        await asyncio.sleep(0.02)
    if not server.started:
        with contextlib.suppress(SystemExit):
            await task
        return False
    # Everything imported and built so far lives as long as the process: keep it out of the
    # collector's full passes, which otherwise pause the loop for 40-70 ms.
    gc.collect()
    gc.freeze()
    on_listening(server.servers[0].sockets[0].getsockname()[1])
    await task
    return True
