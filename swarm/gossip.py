"""Heartbeats between sites: every interval, this site's load to each peer and the peer's load back.

`Gossip` POSTs this site's `SiteLoad` to every peer's `/v1/peer/load` each `interval_s`, signed
(`swarm.peers.PeerSigner`), all peers at once, each exchange bounded by `timeout_s`. The peer
answers with its own load (`receive`, which the peer route calls), signed for this request, so one
exchange refreshes both sides' tables; the round trip of the POST is this site's RTT sample for
that peer. Nothing here raises out of the loop: a peer that does not answer, answers garbage or
answers unsigned is logged (once per change of state) and simply goes stale in the table.

It speaks plain HTTP through the site's `agent.upstream.UpstreamPool`; an `https` peer is refused
at construction (the pool has no TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.errors import SiteError
from agent.upstream import UpstreamError, UpstreamPool
from swarm.load_table import LoadTable, SiteLoad, UnknownPeer
from swarm.peers import PEER_NONCE, PeerAddress, PeerCall, PeerSigner

log = logging.getLogger(__name__)

LOAD_PATH = "/v1/peer/load"
MAX_TIMEOUT_S = 1.0
"""The longest one exchange may take by default, however long the interval."""


@dataclass(slots=True)
class PeerLink:
    """What this site saw of its last exchanges with one peer."""

    ok: int = 0
    failed: int = 0
    last_error: str | None = None
    """Why the last exchange failed; None while they succeed."""
    last_rtt_ms: float | None = None


class Gossip:
    """The heartbeat loop of one site (`start` / `stop`) and its answer to the peers' (`receive`).

    `load_source` makes this site's report when asked (once per round, and once per received
    heartbeat); `table` gets the peers' reports; `clock` is the table's monotonic clock and
    `wall` the unix clock requests are signed with.
    """

    def __init__(
        self,
        self_id: str,
        peers: Mapping[str, PeerAddress],
        signer: PeerSigner,
        load_source: Callable[[], SiteLoad],
        table: LoadTable,
        interval_s: float,
        pool: UpstreamPool,
        *,
        timeout_s: float | None = None,
        path: str = LOAD_PATH,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        if signer.site_id != self_id or table.self_id != self_id:
            raise ValueError("the signer and the table must be this site's")
        https = [peer.site_id for peer in peers.values() if peer.scheme != "http"]
        if https:
            raise ValueError(f"gossip speaks plain HTTP (agent.upstream has no TLS): {', '.join(https)}")
        self.self_id = self_id
        self.peers = dict(peers)
        self.signer = signer
        self.load_source = load_source
        self.table = table
        self.interval_s = interval_s
        self.timeout_s = timeout_s if timeout_s is not None else min(interval_s, MAX_TIMEOUT_S)
        if not 0 < self.timeout_s <= interval_s:
            raise ValueError("timeout_s must be positive and at most interval_s")
        self.pool = pool
        self.path = path
        self.wall = wall
        self.links = {site_id: PeerLink() for site_id in self.peers}
        self.rounds = 0
        self._task: asyncio.Task[None] | None = None

    # -- the loop ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop on the running event loop (again after `stop`); idempotent."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"gossip-{self.self_id}")

    async def stop(self) -> None:
        """Stop the loop and abort the exchanges in flight."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:  # never out of the loop: the next round tries again
                log.exception("gossip round failed")
            next_at += self.interval_s
            now = loop.time()
            if next_at < now:  # a round overran (a stalled loop): keep the cadence, skip the missed
                next_at = now
            await asyncio.sleep(next_at - now)

    async def round(self) -> None:
        """One exchange with every peer at once; returns when all are over (within `timeout_s`)."""
        self.rounds += 1
        try:
            body = self.load_source().to_json()
        except Exception:
            log.exception("gossip: this site's load could not be made; nothing sent this round")
            return
        if self.peers:
            await asyncio.gather(*(self._exchange(peer, body) for peer in self.peers.values()))

    async def _exchange(self, peer: PeerAddress, body: bytes) -> None:
        loop = asyncio.get_running_loop()
        link = self.links[peer.site_id]
        headers = self.signer.sign("POST", self.path, body, self.wall(), to=peer.site_id)
        started = loop.time()
        try:
            response = await self.pool.request(
                peer.host, peer.port, self.path, body, self.timeout_s, headers=headers
            )
            rtt_ms = (loop.time() - started) * 1000
            if response.status != 200:
                raise ValueError(f"answered {response.status}: {response.body[:200]!r}")
            payload = self.signer.open_answer(response.body, peer.site_id, headers[PEER_NONCE])
            load = SiteLoad.from_json(payload)
            if load.site_id != peer.site_id:
                raise ValueError(f"answered with the load of {load.site_id!r}")
            self.table.update(load, rtt_ms=rtt_ms)
        except (UpstreamError, ValueError) as exc:  # UnknownPeer and pydantic's errors are ValueErrors
            self._failed(peer.site_id, link, f"{type(exc).__name__}: {exc}")
            return
        except Exception as exc:  # a bug, not the peer: said in full, and the loop goes on
            log.exception("gossip: the exchange with %s failed", peer.site_id)
            self._failed(peer.site_id, link, f"{type(exc).__name__}: {exc}")
            return
        if link.last_error is not None:
            log.info("gossip: %s answers again (%.1f ms)", peer.site_id, rtt_ms)
        link.ok += 1
        link.last_error = None
        link.last_rtt_ms = rtt_ms

    def _failed(self, site_id: str, link: PeerLink, error: str) -> None:
        if link.last_error is None:
            log.warning("gossip: no load from %s: %s", site_id, error)
        link.failed += 1
        link.last_error = error

    # -- the answer --------------------------------------------------------------------------

    def receive(self, call: PeerCall, body: bytes) -> bytes:
        """A peer's heartbeat, verified (`call`, from `swarm.peers.peer_call`), and its raw body:
        its load goes into the table and the answer is this site's load, signed for that request.

        A `SiteError`: 400 `invalid_peer_load` for a body that is not a `SiteLoad` of the sender,
        403 `unknown_peer` for a sender this site does not list.
        """
        try:
            load = SiteLoad.from_json(body)
        except ValueError as exc:
            raise SiteError(400, "invalid_peer_load", f"not a load report: {exc}") from None
        if load.site_id != call.sender:
            raise SiteError(400, "invalid_peer_load", f"{call.sender} sent the load of {load.site_id}")
        try:
            self.table.update(load)
        except UnknownPeer as exc:
            raise SiteError(403, "unknown_peer", str(exc)) from None
        return self.signer.sign_answer(call, self.load_source().to_json())

    def stats(self) -> dict[str, dict[str, object]]:
        """Per peer: exchanges that succeeded and failed, the last error and the average RTT."""
        return {
            site_id: {
                "ok": link.ok,
                "failed": link.failed,
                "last_error": link.last_error,
                "rtt_ms": self.table.rtt_ms(site_id),
            }
            for site_id, link in self.links.items()
        }
