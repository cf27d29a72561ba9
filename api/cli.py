"""The `mec` command line: `mec serve` runs one site."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path

from pydantic import ValidationError

from api.app import create_app
from api.server import build_server
from api.site import KEYS_FILE, Site, SiteStartError
from config.settings import Settings, load_settings

log = logging.getLogger("mec")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mec", description="mec-orchestrator: one MEC site.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run this site's API and its services")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1, env MEC_HOST)")
    serve.add_argument(
        "--port", type=int, help="port to bind (default 8080, env MEC_PORT; 0 picks a free one)"
    )
    serve.add_argument("--config", type=Path, help="YAML settings file (env MEC_CONFIG)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--allow-degraded",
        action="store_const",
        const=True,
        help="serve even when a service has no ready instance (env MEC_ALLOW_DEGRADED)",
    )
    chat = sub.add_parser("chat", help="talk to a running site's operator agent")
    chat.add_argument(
        "message", nargs="*", help="one message to send; without it, read lines from the terminal"
    )
    chat.add_argument("--url", help="the site's URL (default: the one `mec serve` wrote in the data dir)")
    chat.add_argument("--key", help="API key (default: MEC_OPERATOR_KEYS, else the site's generated key)")
    chat.add_argument("--config", type=Path, help="YAML settings file (env MEC_CONFIG)")
    images = sub.add_parser(
        "images",
        help="build the workload images for MEC_RUNTIME=docker (offline; see `mec images -- --help`)",
    )
    images.add_argument("options", nargs=argparse.REMAINDER, help="options of tools.runtimes.images")
    return parser


SITE_FILE = "site.json"
"""Written to the data dir by a serving site (its URL and pid); `mec chat` finds the site by it."""


def _write_site_file(data_dir: Path, url: str, site_id: str) -> Path:
    path = data_dir / SITE_FILE
    path.write_text(json.dumps({"url": url, "pid": os.getpid(), "site_id": site_id}))
    return path


def _remove_site_file(path: Path) -> None:
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


async def _serve(settings: Settings, log_level: str) -> int:
    # SIGINT/SIGTERM while the services start: stop them and exit (uvicorn handles the signals
    # itself once it serves).
    loop = asyncio.get_running_loop()
    starting = asyncio.current_task()
    assert starting is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, starting.cancel)
    site = Site.build(settings)
    try:
        await site.start()
    except SiteStartError as exc:
        print(f"mec serve: site {settings.site_id} cannot start: {exc}", file=sys.stderr, flush=True)
        if not settings.allow_degraded:
            print("(fix the cause, or pass --allow-degraded to serve without it)", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        await site.stop()
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    app = create_app(settings, site)
    server = build_server(app, settings, log_level, door=site.door)
    task = asyncio.create_task(server.serve())
    site_file: Path | None = None
    try:
        while not server.started and not task.done():  # noqa: ASYNC110 (uvicorn exposes only a flag)
            await asyncio.sleep(0.02)
        if not server.started:
            with contextlib.suppress(SystemExit):
                await task
            print(f"mec serve: could not listen on {settings.host}:{settings.port}", file=sys.stderr)
            return 1
        # Everything imported and built so far lives as long as the process: keep it out of the
        # collector's full passes, which otherwise pause the loop for 40-70 ms.
        gc.collect()
        gc.freeze()
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://{settings.host}:{port}"
        if site.generated_keys:
            print(f"client key:   {site.generated_keys['client']}", flush=True)
            print(f"operator key: {site.generated_keys['operator']}", flush=True)
            print(f"(keys kept in {settings.data_dir / KEYS_FILE}, mode 0600)", flush=True)
        site_file = _write_site_file(settings.data_dir, url, settings.site_id)
        missing = site.unready_services()
        if missing:
            reasons = "; ".join(
                f"{name}: {site.start_errors.get(name, 'no ready instance')}" for name in missing
            )
            print(f"degraded: {reasons}", flush=True)
            print(f"degraded on {url}", flush=True)
        else:
            print(f"ready on {url}", flush=True)
        await task
        return 0
    finally:
        if site_file is not None:
            _remove_site_file(site_file)
        await site.stop()


def _run_event_loop(main: Coroutine[None, None, int]) -> int:
    """Run on uvloop when it is installed (uvicorn[standard] brings it), else on asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _chat(args: argparse.Namespace) -> int:
    from api.chat_client import default_key, run_chat, site_url

    settings = load_settings(args.config)
    url = args.url or site_url(settings.data_dir / SITE_FILE)
    if url is None:
        print(
            f"mec chat: no running site found in {settings.data_dir} (no {SITE_FILE} written by "
            "`mec serve`); pass --url http://HOST:PORT",
            file=sys.stderr,
        )
        return 2
    key = args.key or default_key(settings.data_dir, settings.operator_keys)
    if key is None:
        print("mec chat: no API key: pass --key or set MEC_OPERATOR_KEYS", file=sys.stderr)
        return 2
    if args.message:
        return run_chat(url, key, [" ".join(args.message)], prompt=False)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {url} (type 'exit' to leave)\n> ", end="", flush=True)
    return run_chat(url, key, sys.stdin, prompt=interactive)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, getattr(args, "log_level", "info").upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.command == "serve":
        try:
            settings = load_settings(
                args.config, host=args.host, port=args.port, allow_degraded=args.allow_degraded
            )
        except (ValidationError, ValueError) as exc:
            print(f"mec: invalid settings: {exc}", file=sys.stderr)
            return 2
        try:
            return _run_event_loop(_serve(settings, args.log_level))
        except KeyboardInterrupt:
            return 130
    if args.command == "chat":
        return _chat(args)
    if args.command == "images":
        from tools.runtimes.images import main as build_images

        return build_images([opt for opt in args.options if opt != "--"])
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
