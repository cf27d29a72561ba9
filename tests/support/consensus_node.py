"""One consensus node as a process, for the multi-process consensus tests and the benchmark.

    python -m tests.support.consensus_node --backend embedded --id a --raft 127.0.0.1:7001 \\
        --partner b=127.0.0.1:7002 --partner c=127.0.0.1:7003 --data-dir DIR \\
        --http-port 8001 --password SECRET
    python -m tests.support.consensus_node --backend etcd --id a --data-dir DIR --http-port 8001 \\
        --etcd-endpoints http://127.0.0.1:2379,http://127.0.0.1:22379 --etcd-lease-ttl 1

It runs one backend node (`build_backend`) on an asyncio loop with two state machines fed by the
same applier. The applied log, kept in memory and appended to `DIR/applied.log` (one JSON line per
entry, flushed; the previous start's file is kept as `applied.prev.log`, since a restarted node
applies its whole log again). Each entry is `{"index", "id", "type", "command", "duplicate",
"applied_at"}`: `duplicate` says a command with that id was applied before (the state machine's
dedupe: a retry that committed twice), `applied_at` is `time.time()` when it was applied. And the
swarm's own `SwarmState`. With `--max-entries N` the backend gets the `SwarmState`'s snapshotter
and bounds its log to about N entries: a node restored from a snapshot then has only the entries
after it in its applied log, while its `SwarmState` is whole.

A loopback-only HTTP/1.1 control API (keep-alive, JSON bodies):

* `POST /propose` `{"text": str, "id"?: str, "timeout_s"?: float}` proposes a `Note` (with the
  given id: a retry) and answers `{"index", "id"}`, or 503 `{"error", "id", "leader"}`;
* `GET /status`: the backend's `ConsensusStatus` (plus `pid`);
* `GET /applied?after=N&wait_s=S`: `{"entries": [...], "applied_index"}` with the entries after
  index N, waiting up to S seconds (at most 30) for one when there is none yet;
* `GET /state`: `{"export": SwarmState.export(), "restores": n}` (`restores`: snapshots restored).

It prints `ready <node id> http://127.0.0.1:<port>` once it serves, and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from operator import itemgetter
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

from swarm.commands import Command, Note, to_json
from swarm.consensus.base import Applier, Consensus, ConsensusError, NotLeaderError, Snapshotter
from swarm.state import StateSnapshotter, SwarmState

HOST = "127.0.0.1"
MAX_BODY = 1 << 20
MAX_HEADERS = 100
MAX_WAIT_S = 30.0
DEFAULT_PROPOSE_TIMEOUT_S = 3.0
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


# --- backends -------------------------------------------------------------------------------------


def _embedded(args: argparse.Namespace, applier: Applier, snapshotter: Snapshotter | None) -> Consensus:
    from swarm.consensus.embedded import EmbeddedConsensus

    if not args.raft or not args.password:
        raise SystemExit("--backend embedded needs --raft and --password")
    low, _, high = args.election_timeout.partition(",")
    return EmbeddedConsensus(
        args.id,
        args.raft,
        dict(args.partner),
        Path(args.data_dir),
        args.password,
        applier,
        election_timeout_s=(float(low), float(high)),
        compaction_entries=args.compaction_entries,
        keepalive_s=args.keepalive or None,
        snapshotter=snapshotter,
        max_entries=args.max_entries or 1000,
    )


def _etcd(args: argparse.Namespace, applier: Applier, snapshotter: Snapshotter | None) -> Consensus:
    from swarm.consensus.etcd import EtcdConsensus

    endpoints = [url.strip() for url in args.etcd_endpoints.split(",") if url.strip()]
    if not endpoints:
        raise SystemExit("--backend etcd needs --etcd-endpoints")
    return EtcdConsensus(
        args.id,
        endpoints,
        applier,
        prefix=args.etcd_prefix,
        lease_ttl_s=args.etcd_lease_ttl,
        snapshotter=snapshotter,
        max_entries=args.max_entries or 1000,
    )


BACKENDS: dict[str, Callable[[argparse.Namespace, Applier, Snapshotter | None], Consensus]] = {
    "embedded": _embedded,
    "etcd": _etcd,
}
"""Backend name -> builder from the parsed flags (add one here, with its flags in `parser()`)."""


def build_backend(
    args: argparse.Namespace, applier: Applier, snapshotter: Snapshotter | None = None
) -> Consensus:
    """The consensus node the flags describe, delivering to `applier` (and, with `--max-entries`,
    compacting its log with `snapshotter`)."""
    return BACKENDS[args.backend](args, applier, snapshotter if args.max_entries else None)


def _partner(text: str) -> tuple[str, str]:
    node, sep, address = text.partition("=")
    if not sep or not node or not address:
        raise argparse.ArgumentTypeError(f"a partner is ID=HOST:PORT, not {text!r}")
    return node, address


def parser() -> argparse.ArgumentParser:
    """The node's command line."""
    p = argparse.ArgumentParser(
        prog="python -m tests.support.consensus_node", description=__doc__.split("\n")[0]
    )
    p.add_argument("--backend", choices=sorted(BACKENDS), default="embedded")
    p.add_argument("--id", required=True, help="this node's id")
    p.add_argument("--data-dir", required=True, type=Path)
    p.add_argument("--http-port", type=int, default=0, help="the control API's port (0: any free one)")
    p.add_argument("--raft", help="embedded: this node's Raft address HOST:PORT")
    p.add_argument("--partner", action="append", type=_partner, default=[], help="embedded: ID=HOST:PORT")
    p.add_argument("--password", help="embedded: the cluster's shared secret")
    p.add_argument("--election-timeout", default="0.3,0.6", help="embedded: MIN,MAX seconds")
    p.add_argument(
        "--compaction-entries", type=int, default=5000, help="embedded: compact the log this often"
    )
    p.add_argument("--keepalive", type=float, default=0.25, help="embedded: link keepalive period (0: off)")
    p.add_argument(
        "--max-entries",
        type=int,
        default=0,
        help="bound the log to about this many entries with snapshots (0: off)",
    )
    p.add_argument("--etcd-endpoints", default="", help="etcd: comma-separated etcd client URLs")
    p.add_argument("--etcd-prefix", default="/mec", help="etcd: the swarm's key prefix")
    p.add_argument("--etcd-lease-ttl", type=int, default=2, help="etcd: the node's lease TTL in seconds")
    return p


# --- the state machine ------------------------------------------------------------------------------


class AppliedLog:
    """The node's state machine: every applied entry in order, in memory and in `applied.log`."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / "applied.log"
        if path.exists():
            path.replace(data_dir / "applied.prev.log")
        self._file: IO[str] = path.open("a", encoding="utf-8")
        self.entries: list[dict[str, Any]] = []
        self.ids: set[str] = set()
        self.changed = asyncio.Event()

    def apply(self, index: int, command: Command) -> None:
        """The `Applier`: record the entry (a command id seen before is marked `duplicate`)."""
        entry = {
            "index": index,
            "id": command.id,
            "type": command.type,
            "command": to_json(command),
            "duplicate": command.id in self.ids,
            "applied_at": time.time(),
        }
        self.ids.add(command.id)
        self.entries.append(entry)
        self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self._file.flush()
        self.changed.set()
        self.changed = asyncio.Event()

    def after(self, index: int) -> list[dict[str, Any]]:
        """The entries with an index above `index`."""
        return self.entries[bisect.bisect_right(self.entries, index, key=itemgetter("index")) :]

    def close(self) -> None:
        self._file.close()


# --- the control API --------------------------------------------------------------------------------


class CountedSnapshotter(StateSnapshotter):
    """The swarm state's snapshotter, counting the restores."""

    def __init__(self, state: SwarmState) -> None:
        super().__init__(state)
        self.restores = 0

    def restore(self, index: int, data: bytes) -> None:
        super().restore(index, data)
        self.restores += 1


class ControlApi:
    """The HTTP handlers over one backend node, its applied log and its swarm state."""

    def __init__(self, backend: Consensus, log: AppliedLog, snapshots: CountedSnapshotter) -> None:
        self.backend = backend
        self.log = log
        self.snapshots = snapshots

    async def route(self, method: str, target: str, body: bytes) -> tuple[int, dict[str, Any]]:
        url = urlsplit(target)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        routes = {
            "/propose": ("POST", self.propose),
            "/status": ("GET", self.status),
            "/applied": ("GET", self.applied),
            "/state": ("GET", self.state),
        }
        if url.path not in routes:
            return 404, {"error": f"no route {url.path}"}
        wanted, handler = routes[url.path]
        if method != wanted:
            return 405, {"error": f"{url.path} takes {wanted}"}
        try:
            return await handler(query, body)
        except (ValueError, TypeError, KeyError) as exc:
            return 400, {"error": f"bad request: {exc}"}

    async def propose(self, query: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        data = json.loads(body or b"{}")
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            raise ValueError('the body is {"text": str, "id"?: str, "timeout_s"?: float}')
        command = Note(text=data["text"], id=str(data["id"])) if data.get("id") else Note(text=data["text"])
        timeout_s = min(float(data.get("timeout_s", DEFAULT_PROPOSE_TIMEOUT_S)), MAX_WAIT_S)
        try:
            index = await self.backend.propose(command, timeout_s)
        except ConsensusError as exc:
            leader = exc.leader if isinstance(exc, NotLeaderError) else self.backend.leader()
            return 503, {"error": str(exc), "id": command.id, "leader": leader}
        return 200, {"index": index, "id": command.id}

    async def status(self, query: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        return 200, {**asdict(self.backend.status()), "pid": os.getpid()}

    async def applied(self, query: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        after = int(query.get("after", "0"))
        wait_s = min(float(query.get("wait_s", "0")), MAX_WAIT_S)
        deadline = time.monotonic() + wait_s
        entries = self.log.after(after)
        while not entries and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.log.changed.wait(), left)
            entries = self.log.after(after)
        last = self.log.entries[-1]["index"] if self.log.entries else 0
        return 200, {"entries": entries, "applied_index": last}

    async def state(self, query: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        return 200, {"export": self.snapshots.state.export(), "restores": self.snapshots.restores}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One HTTP/1.1 connection: requests in turn until the client closes (or asks to)."""
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, version = line.decode("latin-1").split()
                headers: dict[str, str] = {}
                for _ in range(MAX_HEADERS + 1):
                    header = await reader.readline()
                    if header in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = header.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                else:
                    return
                length = int(headers.get("content-length", "0"))
                if not 0 <= length <= MAX_BODY:
                    return
                body = await reader.readexactly(length) if length else b""
                status, payload = await self.route(method, target, body)
                data = json.dumps(payload, separators=(",", ":")).encode()
                close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
                head = f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
                head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                head += "Connection: close\r\n\r\n" if close else "\r\n"
                writer.write(head.encode("latin-1") + data)
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def run(args: argparse.Namespace) -> None:
    """Start the node and its API, print the ready line, serve until SIGTERM/SIGINT."""
    log = AppliedLog(Path(args.data_dir))
    state = SwarmState()
    snapshots = CountedSnapshotter(state)

    def apply(index: int, command: Command) -> None:
        log.apply(index, command)
        state.apply(index, command)

    backend = build_backend(args, apply, snapshots)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, done.set)
    api = ControlApi(backend, log, snapshots)
    await backend.start()
    try:
        server = await asyncio.start_server(api.serve, HOST, args.http_port)
        async with server:
            port = server.sockets[0].getsockname()[1]
            print(f"ready {args.id} http://{HOST}:{port}", flush=True)
            await done.wait()
    finally:
        await backend.stop()
        log.close()


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    asyncio.run(run(args))


if __name__ == "__main__":
    main(sys.argv[1:])
