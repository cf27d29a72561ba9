"""Forward a client request to a peer site, once, and take its answer as this site's.

A request this site cannot serve within its budget goes to the peer the balancer picked
(`agent.router.plan`, tier `peer`). It travels to the peer's `POST /v1/peer/requests` signed with
the swarm's secret (`swarm.peers.PeerSigner`), carrying the caller's identity (`X-Mec-Caller`: its
key id, tenant and scopes, never the key) so the same scope and the same cache space hold there,
and what is left of its budget as its `latency_budget_ms`. The peer serves it on its own fast
path but never forwards it again. Its answer comes back as `route.tier == "peer"` with the
peer's site id and instance.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from agent.dispatch import ClientCall, Outcome
from agent.errors import SiteError
from agent.upstream import UpstreamError, UpstreamPool, UpstreamTimeout
from agent.view import PeerChoice
from swarm.peers import PeerSigner, encode_caller

PEER_REQUESTS_PATH = "/v1/peer/requests"
HOP_HEADER = "X-Mec-Hop"
"""Marks a forwarded request (its value: the site that forwarded it)."""


def peer_request_body(call: ClientCall, budget_ms: int) -> bytes:
    """The forwarded request: the client's own fields, the payload as the bytes it arrived as."""
    head: dict[str, Any] = {
        "service": call.service,
        "client": {"kind": call.client_kind, "id": call.client_id},
        "latency_budget_ms": budget_ms,
    }
    if call.cache_key is not None:
        head["cache_key"] = call.cache_key
    if call.cache_ttl_s is not None:
        head["cache_ttl_s"] = call.cache_ttl_s
    prefix = json.dumps(head, separators=(",", ":"))[:-1].encode()
    return b"".join((prefix, b',"payload":', call.payload_json, b"}"))


class InFlight(Protocol):
    """One forward counted by the load table until it ends (`swarm.load_table.Forward`)."""

    def done(self) -> None: ...


class PeerForwarder:
    """Sends requests to peers over the site's upstream pool, signed; counts what is in flight.

    `track(site_id, service)` is told of each forward as it starts (the load table counts it
    until its `done()`, so the default balancer does not pile more onto that peer between two of
    its reports)."""

    def __init__(
        self,
        site_id: str,
        signer: PeerSigner,
        pool: UpstreamPool,
        track: Callable[[str, str], InFlight] | None = None,
    ) -> None:
        self.site_id = site_id
        self.signer = signer
        self.pool = pool
        self.track = track
        self.inflight: Counter[str] = Counter()
        """Requests this site has in flight to each peer (the default balancer reads it)."""
        self.sent: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    async def forward(self, call: ClientCall, peer: PeerChoice, deadline: float) -> Outcome:
        """The peer's answer as this site's outcome; 504 past `deadline`, 502 when the peer fails."""
        left_s = deadline - time.perf_counter()
        if left_s <= 0:
            return _timeout(call.service, peer.site_id)
        body = peer_request_body(call, max(1, math.floor(left_s * 1000)))
        caller = call.caller
        caller_header = (
            encode_caller(caller.tenant, caller.scopes, caller.key_id)
            if caller is not None
            else encode_caller(call.tenant, frozenset({"client"}), "")
        )
        headers = {
            **self.signer.sign(
                "POST", PEER_REQUESTS_PATH, body, time.time(), to=peer.site_id, caller=caller_header
            ),
            HOP_HEADER: self.site_id,
        }
        self.inflight[peer.site_id] += 1
        self.sent[peer.site_id] += 1
        counted = self.track(peer.site_id, call.service) if self.track is not None else None
        try:
            exchange = self.pool.request(
                peer.host, peer.port, PEER_REQUESTS_PATH, body, left_s, headers=headers
            )
            done, _ = await asyncio.wait((exchange,), timeout=left_s)
            if not done:
                exchange.cancel()
                return _timeout(call.service, peer.site_id)
            response = exchange.result()
        except UpstreamTimeout:
            return _timeout(call.service, peer.site_id)
        except UpstreamError as exc:
            self.failed[peer.site_id] += 1
            error = SiteError(502, "peer_failed", f"peer {peer.site_id} failed: {type(exc).__name__}")
            return Outcome.failed(error, call.service, "peer", peer.site_id)
        finally:
            self.inflight[peer.site_id] -= 1
            if counted is not None:
                counted.done()
        return _outcome(call.service, peer.site_id, response.status, response.body)


def _timeout(service: str, peer: str) -> Outcome:
    error = SiteError(504, "budget_exceeded", f"the latency budget ran out before peer {peer} answered")
    return Outcome.failed(error, service, "peer", peer)


def _outcome(service: str, peer: str, status: int, body: bytes) -> Outcome:
    """The peer's rendered answer (`api.routes.client_requests.render_outcome`) as an outcome."""
    try:
        answer = json.loads(body)
        route = answer.get("route") or {}
        site = str(route.get("site") or peer)
        target = str(route.get("target") or "")
    except (ValueError, AttributeError):
        error = SiteError(502, "peer_failed", f"peer {peer} answered {status} with a body that is not JSON")
        return Outcome.failed(error, service, "peer", peer)
    if status == 200 and "result" in answer:
        result = json.dumps(answer["result"], separators=(",", ":"), ensure_ascii=False).encode()
        return Outcome(
            200, service, "peer", target, result_json=result, cached=bool(answer.get("cached")), site=site
        )
    raw = answer.get("error") if isinstance(answer.get("error"), dict) else {}
    error = SiteError(
        status if 400 <= status < 600 else 502,
        str(raw.get("code", "peer_failed")),
        f"peer {site}: {raw.get('message', f'answered {status}')}",
        raw.get("field"),
    )
    outcome = Outcome.failed(error, service, "peer", target)
    outcome.site = site
    return outcome
