"""The `mec` command line: `mec serve` runs one site."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from api.app import create_app
from api.site import Site
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
    chat = sub.add_parser("chat", help="talk to a running site's operator agent")
    chat.add_argument(
        "message", nargs="*", help="one message to send; without it, read lines from the terminal"
    )
    chat.add_argument("--url", help="the site's URL (default http://MEC_HOST:MEC_PORT)")
    chat.add_argument("--key", help="API key (default: MEC_OPERATOR_KEYS, else the site's generated key)")
    chat.add_argument("--config", type=Path, help="YAML settings file (env MEC_CONFIG)")
    images = sub.add_parser(
        "images",
        help="build the workload images for MEC_RUNTIME=docker (offline; see `mec images -- --help`)",
    )
    images.add_argument("options", nargs=argparse.REMAINDER, help="options of tools.runtimes.images")
    return parser


async def _serve(settings: Settings, log_level: str) -> None:
    site = Site.build(settings)
    app = create_app(settings, site)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level if log_level == "debug" else "warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():  # noqa: ASYNC110 (uvicorn exposes only a flag)
        await asyncio.sleep(0.02)
    if server.started:
        # Everything imported and built so far lives as long as the process: keep it out of the
        # collector's full passes, which otherwise pause the loop for 40-70 ms.
        gc.collect()
        gc.freeze()
        port = server.servers[0].sockets[0].getsockname()[1]
        if site.generated_keys:
            print(f"client key:   {site.generated_keys['client']}", flush=True)
            print(f"operator key: {site.generated_keys['operator']}", flush=True)
            print(f"(keys also written to {settings.data_dir / 'api-keys.json'})", flush=True)
        print(f"ready on http://{settings.host}:{port}", flush=True)
    await task


def _run_event_loop(main: Coroutine[None, None, None]) -> None:
    """Run on uvloop when it is installed (uvicorn[standard] brings it), else on asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _chat(args: argparse.Namespace) -> int:
    from api.chat_client import default_key, run_chat

    settings = load_settings(args.config)
    url = args.url or f"http://{settings.host}:{settings.port}"
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
            settings = load_settings(args.config, host=args.host, port=args.port)
        except (ValidationError, ValueError) as exc:
            print(f"mec: invalid settings: {exc}", file=sys.stderr)
            return 2
        with contextlib.suppress(KeyboardInterrupt):
            _run_event_loop(_serve(settings, args.log_level))
        return 0
    if args.command == "chat":
        return _chat(args)
    if args.command == "images":
        from tools.runtimes.images import main as build_images

        return build_images([opt for opt in args.options if opt != "--"])
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
