"""The `mec` command line: `mec serve` runs one site."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from api.app import create_app
from api.server import build_server
from api.serving import (
    SITE_FILE,
    announce,
    configure_logging,
    remove_site_file,
    report_start_failure,
    run_event_loop,
    run_server,
)
from api.site import Site, SiteStartError
from config.settings import Settings, load_settings

log = logging.getLogger("mec")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


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
        "--workers",
        type=_positive,
        help="front-door processes sharing the port; with 2 or more, a supervisor process owns the "
        "services and restarts workers that die (env MEC_WORKERS; default: half the CPU cores this "
        "process may use, 1 to 8, so 1 on a 2-core machine)",
    )
    serve.add_argument(
        "--allow-degraded",
        action="store_const",
        const=True,
        help="serve even when a service has no ready instance (env MEC_ALLOW_DEGRADED)",
    )
    serve.add_argument("--site-id", help="this site's id in the swarm (env MEC_SITE_ID)")
    serve.add_argument(
        "--peers",
        help="the other sites of the swarm, ID=URL,... (env MEC_PEERS); needs MEC_PEER_SECRET",
    )
    serve.add_argument(
        "--consensus", choices=["embedded", "etcd"], help="the swarm's consensus (env MEC_CONSENSUS)"
    )
    serve.add_argument("--raft-port", type=int, help="the embedded Raft's port (default: API port + 1000)")
    up = sub.add_parser("up", help="run a swarm of sites on this machine, one process each")
    up.add_argument("--sites", type=_positive, default=3, help="how many sites (default 3)")
    up.add_argument("--base-port", type=int, default=8080, help="site i serves on base-port + i - 1")
    up.add_argument("--consensus", choices=["embedded", "etcd"], default="embedded")
    up.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
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
    sim = sub.add_parser("sim", help="simulate a swarm under each balancing policy (a table and a plot)")
    sim.add_argument(
        "sim_options", nargs=argparse.REMAINDER, help="options of the simulator (`mec sim --help`)"
    )
    sub.add_parser(
        "eval",
        help="score the operator agent or the router on the evaluation suites (see `mec eval --help`)",
        add_help=False,
    )
    return parser


async def _serve(settings: Settings, log_level: str) -> int:
    """One process: the site's runtime, its services and the HTTP server (`--workers 1`)."""
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
        report_start_failure(settings, exc)
        return 1
    except asyncio.CancelledError:
        await site.stop()
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    app = create_app(settings, site)
    server = build_server(app, settings, log_level, door=site.door)
    site_file: Path | None = None

    def listening(port: int) -> None:
        nonlocal site_file
        url = f"http://{settings.host}:{port}"
        missing = site.unready_services()
        site_file = announce(settings, url, site.generated_keys, missing, site.start_errors)

    try:
        if not await run_server(server, listening):
            print(f"mec serve: could not listen on {settings.host}:{settings.port}", file=sys.stderr)
            return 1
        return 0
    finally:
        if site_file is not None:
            remove_site_file(site_file)
        await site.stop()


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
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sim"]:  # its own parser (the simulator is imported only when asked for)
        from sim.cli import run as run_sim

        return run_sim(argv[1:])
    if argv[:1] == ["eval"]:
        # Its options are its own (evals.cli); imported only here, so `mec serve` never loads it.
        from evals.cli import main as run_eval

        return run_eval(argv[1:])
    args = _parser().parse_args(argv)
    configure_logging(getattr(args, "log_level", "info"))
    if args.command == "serve":
        try:
            settings = load_settings(
                args.config,
                host=args.host,
                port=args.port,
                allow_degraded=args.allow_degraded,
                workers=args.workers,
                site_id=args.site_id,
                peers=args.peers,
                consensus=args.consensus,
                raft_port=args.raft_port,
            )
        except (ValidationError, ValueError) as exc:
            print(f"mec: invalid settings: {exc}", file=sys.stderr)
            return 2
        if settings.peers and settings.workers > 1:
            # The swarm node (consensus, gossip, peer API) lives in one process for now.
            print("mec: a site with peers runs one front-door process; --workers is ignored", file=sys.stderr)
            settings = settings.model_copy(update={"workers": 1})
        if settings.workers > 1:
            from api.supervisor import serve_with_workers

            main_task = serve_with_workers(settings, args.log_level)
        else:
            main_task = _serve(settings, args.log_level)
        try:
            return run_event_loop(main_task)
        except KeyboardInterrupt:
            return 130
    if args.command == "up":
        from api.up import run_swarm

        try:
            parent = load_settings(None).data_dir
        except (ValidationError, ValueError) as exc:
            print(f"mec: invalid settings: {exc}", file=sys.stderr)
            return 2
        return run_swarm(args.sites, args.base_port, args.consensus, parent)
    if args.command == "chat":
        return _chat(args)
    if args.command == "images":
        from tools.runtimes.images import main as build_images

        return build_images([opt for opt in args.options if opt != "--"])
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
