"""`swarm.gossip.Gossip` between real sites: uvicorn servers on loopback ports, each mounting the
peer load route (the signature dependency and `Gossip.receive`), each gossiping to the other
through a real `UpstreamPool`. And the pool's `headers` parameter the signatures travel in.

Nothing is mocked and nothing sleeps a fixed time before a check: every wait polls a condition
with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated

import pytest
import uvicorn
from fastapi import Depends, FastAPI, Request, Response

from agent.errors import SiteError
from agent.upstream import UpstreamPool
from api.errors import install_error_handlers
from swarm.gossip import LOAD_PATH, Gossip
from swarm.load_table import LoadTable, ServiceLoad, SiteLoad
from swarm.peers import PeerAddress, PeerCall, PeerSigner, parse_peers, peer_call
from tests.support.polling import eventually

SECRET = "gossip-test-shared-secret"
INTERVAL_S = 0.05
STALE_S = 0.6
HOST = "127.0.0.1"


def _signer(request: Request) -> PeerSigner | None:
    signer: PeerSigner | None = request.app.state.peer_signer
    return signer


VerifiedCall = Annotated[PeerCall, Depends(peer_call(_signer))]


def peer_app() -> FastAPI:
    """The peer route as a site mounts it: verify the signature, hand the body to the gossip."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post(LOAD_PATH)
    async def load(request: Request, call: VerifiedCall) -> Response:
        gossip: Gossip = request.app.state.gossip
        return Response(gossip.receive(call, await request.body()), media_type="application/json")

    return app


class Site:
    """One site: a real HTTP server for the peer API, its load table, its gossip and its pool."""

    def __init__(self, site_id: str, predicted_ms: float, secret: str = SECRET) -> None:
        self.site_id = site_id
        self.predicted_ms = predicted_ms
        self.secret = secret
        self.app = peer_app()
        self.port = 0
        self.reports = itertools.count()
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None
        self.pool = UpstreamPool(connect_timeout_s=0.2)
        self.gossip: Gossip | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def load(self) -> SiteLoad:
        """This site's report (the `load_source`)."""
        next(self.reports)
        service = ServiceLoad(ready=1, inflight=0, predicted_ms=self.predicted_ms, has_room=True)
        return SiteLoad(
            site_id=self.site_id,
            url=self.url,
            sent_at=time.time(),
            services={"sensor": service},
            cpu_percent=5.0,
        )

    async def serve(self) -> None:
        config = uvicorn.Config(self.app, host=HOST, port=self.port, log_level="warning", lifespan="off")
        self.server = server = uvicorn.Server(config)
        self.task = asyncio.create_task(server.serve())
        await eventually(
            lambda: server.started or self.task is None or self.task.done(), "the server started"
        )
        assert server.started, "the server did not start"
        self.port = server.servers[0].sockets[0].getsockname()[1]

    def join(self, peers: dict[str, PeerAddress]) -> Gossip:
        signer = PeerSigner(self.site_id, self.secret, set(peers))
        table = LoadTable(self.site_id, peers, STALE_S)
        self.gossip = Gossip(self.site_id, peers, signer, self.load, table, INTERVAL_S, self.pool)
        self.app.state.peer_signer = signer
        self.app.state.gossip = self.gossip
        return self.gossip

    async def stop_server(self) -> None:
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 15)
        self.server = self.task = None

    async def close(self) -> None:
        if self.gossip is not None:
            await self.gossip.stop()
        await self.stop_server()
        await self.pool.close()


@pytest.fixture
async def two_sites() -> AsyncIterator[tuple[Site, Site]]:
    a, b = Site("site-a", predicted_ms=3.0), Site("site-b", predicted_ms=7.0)
    try:
        await a.serve()
        await b.serve()
        a.join(parse_peers([f"site-b={b.url}"], self_id="site-a"))
        b.join(parse_peers([f"site-a={a.url}"], self_id="site-b"))
        yield a, b
    finally:
        await a.close()
        await b.close()


def fresh_ids(site: Site) -> list[str]:
    assert site.gossip is not None
    return [entry.site_id for entry in site.gossip.table.fresh()]


@pytest.mark.timeout(60)
async def test_two_sites_fill_each_others_tables_measure_rtt_and_a_stopped_peer_goes_stale(
    two_sites: tuple[Site, Site],
) -> None:
    a, b = two_sites
    assert a.gossip is not None and b.gossip is not None
    ga, gb = a.gossip, b.gossip
    ga.start()
    gb.start()
    await eventually(lambda: fresh_ids(a) == ["site-b"] and fresh_ids(b) == ["site-a"], "both tables filled")
    await eventually(
        lambda: ga.table.rtt_ms("site-b") is not None and gb.table.rtt_ms("site-a") is not None,
        "both sites measured a round trip",
    )
    (seen_b,) = ga.table.fresh()
    assert seen_b.url == b.url and seen_b.load.services["sensor"].predicted_ms == 7.0
    assert seen_b.rtt_ms is not None and 0 < seen_b.rtt_ms < 1000
    (seen_a,) = gb.table.fresh()
    assert seen_a.load.services["sensor"].predicted_ms == 3.0
    assert ga.links["site-b"].ok > 0 and ga.links["site-b"].last_error is None

    # site-b stops gossiping but still answers: site-a's exchanges alone keep both tables fresh.
    await gb.stop()
    ok = ga.links["site-b"].ok
    await eventually(lambda: ga.links["site-b"].ok > ok + 5, "site-a keeps exchanging")
    assert fresh_ids(a) == ["site-b"] and fresh_ids(b) == ["site-a"]

    # site-b goes away altogether: site-a's loop goes on, and site-b drops out of its table.
    await b.stop_server()
    await eventually(lambda: fresh_ids(a) == [], "site-b went stale at site-a", timeout_s=10)
    assert ga.running and ga.links["site-b"].last_error is not None
    failed = ga.links["site-b"].failed
    await eventually(lambda: ga.links["site-b"].failed > failed + 2, "site-a still tries")

    # site-b comes back on its port: site-a sees it again without being told.
    await b.serve()
    await eventually(lambda: fresh_ids(a) == ["site-b"], "site-b fresh again at site-a", timeout_s=10)
    assert ga.links["site-b"].last_error is None


@pytest.mark.timeout(60)
async def test_a_peer_with_another_secret_is_refused_both_ways_and_stays_stale() -> None:
    a, b = Site("site-a", 3.0), Site("site-b", 7.0, secret="not-the-same-secret-at-all")
    try:
        await a.serve()
        await b.serve()
        ga = a.join(parse_peers([f"site-b={b.url}"]))
        gb = b.join(parse_peers([f"site-a={a.url}"]))
        ga.start()
        gb.start()
        await eventually(
            lambda: ga.links["site-b"].failed >= 3 and gb.links["site-a"].failed >= 3,
            "both sites tried a few times",
        )
        assert fresh_ids(a) == [] and fresh_ids(b) == []
        error = ga.links["site-b"].last_error or ""
        assert "401" in error and "invalid_peer_signature" in error
    finally:
        await a.close()
        await b.close()


async def answer_with(body: Callable[[], bytes]) -> tuple[asyncio.Server, int]:
    """A bare HTTP server that answers every request 200 with `body()`: a peer that does not sign."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                data = body()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(data), data))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.timeout(60)
async def test_an_unsigned_or_garbled_answer_is_not_believed_and_the_loop_goes_on() -> None:
    impostor = Site("site-b", 1.0)
    answers = itertools.cycle([lambda: impostor.load().to_json(), lambda: b"{not json", lambda: b""])
    server, port = await answer_with(lambda: next(answers)())
    a = Site("site-a", 3.0)
    try:
        gossip = a.join(parse_peers([f"site-b=http://{HOST}:{port}"]))
        gossip.start()
        await eventually(lambda: gossip.links["site-b"].failed >= 6, "several exchanges answered")
        assert gossip.running and gossip.links["site-b"].ok == 0 and fresh_ids(a) == []
        assert gossip.table.rtt_ms("site-b") is None  # nothing believed, not even the round trip
    finally:
        await a.close()
        server.close()
        await server.wait_closed()


async def test_a_round_survives_a_failing_load_source_and_unreachable_peers() -> None:
    site = Site("site-a", 3.0)
    calls = itertools.count()

    def flaky() -> SiteLoad:
        if next(calls) == 0:
            raise RuntimeError("no figures yet")
        return site.load()

    peers = parse_peers([f"site-b=http://{HOST}:1", f"site-c=http://{HOST}:2"])
    gossip = Gossip(
        "site-a",
        peers,
        PeerSigner("site-a", SECRET),
        flaky,
        LoadTable("site-a", peers, STALE_S),
        0.2,
        site.pool,
    )
    try:
        await gossip.round()  # the source fails: nothing sent, nothing raised
        assert gossip.links["site-b"].failed == 0
        await gossip.round()  # both peers refuse the connection
        assert gossip.links["site-b"].failed == 1 and gossip.links["site-c"].failed == 1
        assert "UpstreamConnectError" in (gossip.links["site-b"].last_error or "")
    finally:
        await site.pool.close()


def test_gossip_refuses_https_peers_and_a_timeout_beyond_the_interval() -> None:
    peers = parse_peers(["site-b=https://10.0.0.2:8443"])
    table = LoadTable("site-a", peers, STALE_S)
    signer = PeerSigner("site-a", SECRET)
    with pytest.raises(ValueError, match="plain HTTP"):
        Gossip("site-a", peers, signer, Site("site-a", 1.0).load, table, 0.2, UpstreamPool())
    plain = parse_peers(["site-b=http://10.0.0.2:8080"])
    table = LoadTable("site-a", plain, STALE_S)
    with pytest.raises(ValueError, match="timeout_s"):
        Gossip("site-a", plain, signer, Site("site-a", 1.0).load, table, 0.2, UpstreamPool(), timeout_s=0.5)
    with pytest.raises(ValueError, match="this site's"):
        Gossip("site-x", plain, signer, Site("site-a", 1.0).load, table, 0.2, UpstreamPool())


def test_receive_refuses_a_load_that_is_not_the_senders_or_from_a_stranger() -> None:
    site = Site("site-a", 3.0)
    peers = parse_peers(["site-b=http://10.0.0.2:8080"])
    gossip = Gossip(
        "site-a",
        peers,
        PeerSigner("site-a", SECRET),
        site.load,
        LoadTable("site-a", peers, STALE_S),
        0.2,
        site.pool,
    )
    from_b = PeerCall("site-b", "0" * 32)
    cases = [
        (from_b, b"{}", 400, "invalid_peer_load"),
        (from_b, Site("site-c", 1.0).load().to_json(), 400, "invalid_peer_load"),
        (PeerCall("site-c", "0" * 32), Site("site-c", 1.0).load().to_json(), 403, "unknown_peer"),
    ]
    for call, body, status, code in cases:
        with pytest.raises(SiteError) as excinfo:
            gossip.receive(call, body)
        assert (excinfo.value.status, excinfo.value.code) == (status, code)
    answer = gossip.receive(from_b, Site("site-b", 1.0).load().to_json())
    opened = PeerSigner("site-b", SECRET).open_answer(answer, "site-a", "0" * 32)
    assert SiteLoad.from_json(opened).site_id == "site-a"
    assert [entry.site_id for entry in gossip.table.fresh()] == ["site-b"]


# -- agent.upstream's headers: what the signatures travel in ----------------------------------


@pytest.fixture
async def echo_heads() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A bare HTTP server that records each request's head and answers 200 with its body."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                heads.append(head)
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1], heads
    finally:
        server.close()
        await server.wait_closed()


async def test_the_pool_sends_extra_headers_and_only_on_the_request_that_names_them(
    echo_heads: tuple[int, list[bytes]],
) -> None:
    port, heads = echo_heads
    pool = UpstreamPool()
    try:
        signed = await pool.post(
            HOST, port, "/p", b"one", 5.0, headers={"X-Mec-Peer": "site-a", "X-Two": "2"}
        )
        plain = await pool.post(HOST, port, "/p", b"two!", 5.0)  # the same connection, no headers
        assert (signed.status, signed.body, plain.body) == (200, b"one", b"two!")
        assert pool.stats()["reused"] == 1
        first, second = heads
        assert first.startswith(b"POST /p HTTP/1.1\r\nHost: ")
        assert b"\r\nX-Mec-Peer: site-a\r\nX-Two: 2\r\nContent-Length: 3\r\n\r\n" in first
        assert b"X-Mec-Peer" not in second and b"Content-Length: 4\r\n" in second
    finally:
        await pool.close()


@pytest.mark.parametrize(
    "headers",
    [
        {"X Bad": "1"},
        {"X-Bad:": "1"},
        {"": "1"},
        {"X-Über": "1"},
        {"X-Split": "a\r\nInjected: yes"},
        {"X-Nul": "a\x00"},
        {"X-Uni": "é"},
        {"Host": "elsewhere"},
        {"content-length": "0"},
        {"Transfer-Encoding": "chunked"},
        {"Connection": "close"},
        {"Content-Type": "text/plain"},
    ],
)
async def test_the_pool_refuses_headers_that_could_split_or_contradict_the_request(
    headers: dict[str, str],
) -> None:
    pool = UpstreamPool()
    try:
        with pytest.raises(ValueError):
            pool.request(HOST, 9, "/p", b"", 1.0, headers=headers)
        assert pool.stats()["open"] == 0
    finally:
        await pool.close()
