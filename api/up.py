"""`mec up --sites N`: a swarm of N sites on this machine, one `mec serve` process each.

Site *i* (`site-1` … `site-N`) serves on `base_port + i - 1` (its embedded Raft on that port +
1000), keeps its state in `MEC_DATA_DIR/site-i`, and knows the others as its peers. The sites
share one client key, one operator key and one peer secret: `MEC_CLIENT_KEYS`,
`MEC_OPERATOR_KEYS` and `MEC_PEER_SECRET` when set, otherwise generated once and kept in
`MEC_DATA_DIR/swarm-keys.json` (mode 0600). It prints each site's `ready on URL` line as the site
says it, and stops every site (by pid) on Ctrl-C or SIGTERM, or when one of them exits.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from api.auth import generate_key, write_private_json
from api.launcher import READY_PREFIX, NotReadyError, SiteProcess

KEYS_FILE = "swarm-keys.json"
RAFT_PORT_OFFSET = 1000


@dataclass(frozen=True)
class SwarmKeys:
    client: str
    operator: str
    peer_secret: str


def swarm_keys(parent: Path, environ: dict[str, str]) -> SwarmKeys:
    """The keys every site shares: from the environment, else generated once in `parent`."""
    path = parent / KEYS_FILE
    stored: dict[str, str] = {}
    try:
        loaded = json.loads(path.read_text())
        if isinstance(loaded, dict):
            stored = {k: v for k, v in loaded.items() if isinstance(v, str) and len(v) >= 16}
    except (OSError, ValueError):
        pass
    keys = {
        "client": stored.get("client") or generate_key("mec_client"),
        "operator": stored.get("operator") or generate_key("mec_operator"),
        "peer_secret": stored.get("peer_secret") or secrets.token_urlsafe(32),
    }
    parent.mkdir(parents=True, exist_ok=True)
    write_private_json(path, keys)
    return SwarmKeys(
        client=environ.get("MEC_CLIENT_KEYS") or keys["client"],
        operator=environ.get("MEC_OPERATOR_KEYS") or keys["operator"],
        peer_secret=environ.get("MEC_PEER_SECRET") or keys["peer_secret"],
    )


def site_ids(count: int) -> list[str]:
    return [f"site-{i}" for i in range(1, count + 1)]


def peers_of(site_id: str, ports: dict[str, int], host: str) -> str:
    """The `--peers` value of one site: every other site as ID=URL."""
    return ",".join(f"{other}=http://{host}:{port}" for other, port in ports.items() if other != site_id)


def plan_sites(
    count: int,
    base_port: int,
    parent: Path,
    keys: SwarmKeys,
    consensus: str,
    host: str = "127.0.0.1",
    extra_env: dict[str, str] | None = None,
) -> list[SiteProcess]:
    """The N site processes of the swarm, not started."""
    ids = site_ids(count)
    ports = {site_id: base_port + index for index, site_id in enumerate(ids)}
    sites = []
    for site_id in ids:
        env = {
            "MEC_PEER_SECRET": keys.peer_secret,
            "MEC_CONSENSUS": consensus,
            "MEC_WORKERS": "1",
            **(extra_env or {}),
        }
        args = [
            "--site-id",
            site_id,
            "--peers",
            peers_of(site_id, ports, host),
            "--raft-port",
            str(ports[site_id] + RAFT_PORT_OFFSET),
        ]
        sites.append(
            SiteProcess(
                parent / site_id,
                client_key=keys.client,
                operator_key=keys.operator,
                env=env,
                args=args,
                host=host,
                port=ports[site_id],
                name=site_id,
            )
        )
    return sites


def run_swarm(count: int, base_port: int, consensus: str, parent: Path, timeout_s: float = 120.0) -> int:
    """Start the swarm, print each site's ready line, and hold it until a signal or a site exits."""
    keys = swarm_keys(parent, dict(os.environ))
    sites = plan_sites(count, base_port, parent, keys, consensus)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for site in sites:
            site.launch()
        print(f"client key:   {keys.client}\noperator key: {keys.operator}", flush=True)
        for site in sites:
            try:
                site.wait_ready(timeout_s, prefixes=(READY_PREFIX, "degraded on "))
            except NotReadyError as exc:
                print(f"mec up: {site.name} did not start: {exc}", file=sys.stderr, flush=True)
                return 1
            print(f"{site.name} {site.ready_line}", flush=True)
        while not stop.wait(0.5):
            for site in sites:
                if site.proc is not None and not site.proc.running:
                    print(f"mec up: {site.name} exited ({site.proc.returncode}); stopping", file=sys.stderr)
                    return 1
        return 0
    finally:
        for site in sites:
            site.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
