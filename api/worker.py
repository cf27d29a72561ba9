"""One front-door process of `mec serve --workers N`: `python -m api.worker`, started by the
supervisor (`api.supervisor`), never by hand.

It reads its `WorkerBootstrap` as one JSON line on stdin — its settings with the site's keys, the
runtime socket and its token — so none of that is in its argv, environment or a file. It builds
a normal `Site` over a `RemoteRuntime` and the shared load counters, serves the site's port with
the site's own HTTP server, and writes `{"listening": PORT}` on stdout (its control pipe: every
other output goes to stderr) once it accepts connections. SIGTERM stops it gracefully.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel, ConfigDict, Field

from agent.inflight import SharedLoadCounters
from api.app import create_app
from api.server import build_server
from api.serving import configure_logging, run_event_loop, run_server
from api.site import AlertChannel, Site, SiteStartError, workload_specs
from api.workers import bind_listener
from config.settings import Settings
from tools.runtimes.remote import RemoteRuntime

MAX_BOOTSTRAP_BYTES = 1024 * 1024


class WorkerBootstrap(BaseModel):
    """Everything a worker is told at start, by the supervisor, on its stdin."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0)
    count: int = Field(ge=1)
    supervisor_pid: int
    settings: dict[str, Any] = Field(description="`Settings` resolved once by the supervisor, keys included.")
    max_connections: int = Field(ge=1, description="This worker's share of the site's connection cap.")
    start_errors: dict[str, str] = Field(default_factory=dict)
    runtime_socket: str
    runtime_token: str
    alerts_socket: str | None = Field(
        default=None, description="The first worker's alert channel (it listens, the others call it)."
    )
    alerts_token: str = ""
    change_timeout_s: float = Field(gt=0, description="How long a start/stop/scale call may take.")
    counters_name: str
    counter_slots: int = Field(ge=1)
    listen_fd: int | None = Field(default=None, description="The supervisor's listening socket (shared).")
    listen_host: str = ""
    listen_port: int = 0
    log_level: str = "info"


async def _listening_socket(boot: WorkerBootstrap) -> socket.socket:
    if boot.listen_fd is not None:
        return socket.socket(fileno=boot.listen_fd)
    return await bind_listener(boot.listen_host, boot.listen_port, "reuseport")


async def serve(boot: WorkerBootstrap, control: TextIO) -> int:
    settings = Settings.model_validate(boot.settings).model_copy(
        update={"max_connections": boot.max_connections}
    )
    runtime = RemoteRuntime(
        workload_specs(settings),
        set(settings.image_allowlist),
        settings.site_id,
        Path(boot.runtime_socket),
        boot.runtime_token,
        worker=str(boot.index),
        change_timeout_s=boot.change_timeout_s,
    )
    counters = SharedLoadCounters.attach(
        boot.counters_name, boot.count, boot.counter_slots, boot.index, runtime.slot_of
    )
    channel = (
        AlertChannel(Path(boot.alerts_socket), boot.alerts_token) if boot.alerts_socket is not None else None
    )
    site = Site.build(
        settings, runtime=runtime, counters=counters, worker=(boot.index, boot.count), alert_channel=channel
    )
    site.start_errors = dict(boot.start_errors)

    def listening(port: int) -> None:
        control.write(json.dumps({"listening": port, "pid": os.getpid()}) + "\n")
        control.flush()

    try:
        await site.start()
        server = build_server(create_app(settings, site), settings, boot.log_level, door=site.door)
        return 0 if await run_server(server, listening, [await _listening_socket(boot)]) else 1
    except SiteStartError as exc:
        print(f"mec worker {boot.index}: cannot start: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        await site.stop()
        counters.close()


def main() -> int:
    boot = WorkerBootstrap.model_validate_json(sys.stdin.buffer.readline(MAX_BOOTSTRAP_BYTES))
    sys.stdin.close()
    # stdout is the control pipe to the supervisor: keep it for the one line, send the rest to stderr.
    control = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    configure_logging(boot.log_level, f"[worker {boot.index}] ")
    if os.getppid() != boot.supervisor_pid:
        return 1  # the supervisor died before this process could ask to die with it
    return run_event_loop(serve(boot, control))


if __name__ == "__main__":
    raise SystemExit(main())
