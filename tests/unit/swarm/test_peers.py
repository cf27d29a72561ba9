"""`swarm.peers`: the `peers` setting's entries, request signing and its refusals, the caller header,
signed answers, and the FastAPI dependency on a real app (over httpx's ASGI transport)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from starlette.datastructures import Headers

from agent.errors import SiteError
from agent.scopes import Principal
from api.errors import install_error_handlers
from swarm.peers import (
    CALLER,
    PEER,
    PEER_NONCE,
    PEER_SIGNATURE,
    PEER_TIME,
    PEER_TO,
    NonceMemory,
    PeerAddress,
    PeerCall,
    PeerSigner,
    decode_caller,
    encode_caller,
    parse_peers,
    peer_call,
    peer_caller,
    refuse_bearer,
)

SECRET = "the-swarm-shared-secret"
NOW = 1_800_000_000.0
BODY = b'{"hello":"peer"}'


def signers() -> tuple[PeerSigner, PeerSigner]:
    """site-1 (the sender) and site-2 (the recipient), sharing the secret."""
    return PeerSigner("site-1", SECRET, {"site-2"}), PeerSigner("site-2", SECRET, {"site-1", "site-3"})


def refusal(excinfo: pytest.ExceptionInfo[SiteError]) -> tuple[int, str]:
    return excinfo.value.status, excinfo.value.code


# -- parse_peers ---------------------------------------------------------------------------------


def test_parse_peers_reads_ids_urls_and_raft_addresses() -> None:
    peers = parse_peers(
        [
            "site-2=http://10.0.0.2:8080",
            " site-3 = https://edge-3.example:8443/ ",
            "site-4=http://10.0.0.4:8080@10.9.0.4:7000",
            "site-5=http://[fd00::5]:8080@[fd00::55]:7001",
        ],
        self_id="site-1",
    )
    assert list(peers) == ["site-2", "site-3", "site-4", "site-5"]
    assert peers["site-2"] == PeerAddress(
        "site-2", "http://10.0.0.2:8080", "http", "10.0.0.2", 8080, "10.0.0.2", 9080
    )
    assert peers["site-3"].url == "https://edge-3.example:8443" and peers["site-3"].raft_port == 9443
    assert (peers["site-4"].raft_host, peers["site-4"].raft_port) == ("10.9.0.4", 7000)
    assert (peers["site-5"].host, peers["site-5"].raft_host, peers["site-5"].raft_port) == (
        "fd00::5",
        "fd00::55",
        7001,
    )
    assert parse_peers([]) == {}


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["http://10.0.0.2:8080"], "must be ID=URL"),
        (["Site-2=http://10.0.0.2:8080"], "must be ID=URL"),
        (["site 2=http://10.0.0.2:8080"], "must be ID=URL"),
        (["=http://10.0.0.2:8080"], "must be ID=URL"),
        (["site-2=http://a:1", "site-2=http://b:2"], "listed twice"),
        (["site-2=http://a:1", "site-3=http://A:1"], "share the address"),
        (["site-2=http://a:1@r:7000", "site-3=http://b:2@r:7000"], "share the address"),
        (["site-2=ftp://10.0.0.2:21"], "not an http(s) URL"),
        (["site-2=10.0.0.2:8080"], "not an http(s) URL"),
        (["site-2=http://10.0.0.2"], "not a host:port"),
        (["site-2=http://10.0.0.2:0"], "not a host:port"),
        (["site-2=http://10.0.0.2:99999"], "not a host:port"),
        (["site-2=http://fd00::5:8080"], "not a host:port"),
        (["site-2=http://10.0.0.2:8080@raft"], "the Raft address 'raft' is not a host:port"),
        (["site-2=http://10.0.0.2:8080@raft:x"], "not a host:port"),
        (["site-2=http://10.0.0.2:65000"], "give the Raft address"),
        (["site-2=http://user:pw@10.0.0.2:8080"], "credentials"),
        (["site-2=http://10.0.0.2:8080/api"], "base URL"),
        (["site-2=http://10.0.0.2:8080?x=1"], "base URL"),
        (["site-1=http://10.0.0.1:8080"], "this site itself"),
    ],
)
def test_parse_peers_refuses_bad_entries_with_a_clear_message(entries: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_peers(entries, self_id="site-1")


# -- signing -------------------------------------------------------------------------------------


def test_a_signed_request_verifies_as_its_sender_and_carries_every_header() -> None:
    alice, bob = signers()
    headers = alice.sign("POST", "/v1/peer/load", BODY, NOW, to="site-2")
    assert set(headers) == {PEER, PEER_TO, PEER_TIME, PEER_NONCE, PEER_SIGNATURE}
    assert (headers[PEER], headers[PEER_TO], headers[PEER_TIME]) == ("site-1", "site-2", "1800000000")
    assert len(headers[PEER_NONCE]) == 32 and len(headers[PEER_SIGNATURE]) == 64
    assert bob.verify("POST", "/v1/peer/load", BODY, headers, NOW + 5) == "site-1"
    again = alice.sign("POST", "/v1/peer/load", BODY, NOW, to="site-2")
    assert again[PEER_NONCE] != headers[PEER_NONCE]
    lower = {name.lower(): value for name, value in again.items()}  # header names are case-insensitive
    assert bob.verify("post", "/v1/peer/load", BODY, lower, NOW - 5) == "site-1"


def test_the_caller_travels_signed_and_decodes_to_the_same_principal() -> None:
    alice, bob = signers()
    principal = Principal("0123456789abcdef", frozenset({"client"}))
    caller = encode_caller(principal.tenant, principal.scopes, principal.key_id)
    assert caller == f"key_id=0123456789abcdef;tenant={principal.tenant};scopes=client"
    headers = alice.sign("POST", "/v1/peer/requests", BODY, NOW, to="site-2", caller=caller)
    assert headers[CALLER] == caller
    call = bob.check("POST", "/v1/peer/requests", BODY, headers, NOW)
    assert call.sender == "site-1" and call.nonce == headers[PEER_NONCE]
    assert call.caller is not None and call.caller.principal() == principal
    operator = encode_caller("t-1", frozenset({"operator", "client"}), "k-1")
    assert operator.endswith("scopes=client,operator")
    assert decode_caller(operator).scopes == frozenset({"client", "operator"})


@pytest.mark.parametrize(
    "value",
    [
        "",
        "key_id=k;tenant=t",
        "key_id=k;tenant=t;scopes=",
        "key_id=k;tenant=t;scopes=root",
        "key_id=k;tenant=t;scopes=operator,client",  # not canonical (scopes sorted)
        "tenant=t;key_id=k;scopes=client",
        "key_id=k;tenant=t;scopes=client;scopes=client",
        "key_id=k k;tenant=t;scopes=client",
        "key_id=k;tenant=t\n;scopes=client",
    ],
)
def test_decode_caller_refuses_anything_but_the_canonical_form(value: str) -> None:
    with pytest.raises(ValueError):
        decode_caller(value)


def test_a_caller_whose_tenant_is_not_its_keys_is_no_principal() -> None:
    caller = decode_caller(encode_caller("not-the-tenant", frozenset({"client"}), "0123456789abcdef"))
    with pytest.raises(ValueError, match="tenant"):
        caller.principal()


CLIENT = encode_caller("t", frozenset({"client"}), "k")
OPERATOR = encode_caller("t", frozenset({"client", "operator"}), "k")


@pytest.mark.parametrize(
    ("method", "path", "body", "signed_caller", "change"),
    [
        ("POST", "/v1/peer/load", b'{"hello":"peeR"}', None, {}),
        ("POST", "/v1/peer/other", BODY, None, {}),
        ("POST", "/v1/peer/load?x=1", BODY, None, {}),
        ("PUT", "/v1/peer/load", BODY, None, {}),
        ("POST", "/v1/peer/load", BODY, None, {PEER: "site-3"}),
        ("POST", "/v1/peer/load", BODY, None, {PEER_TIME: str(int(NOW) + 1)}),
        ("POST", "/v1/peer/load", BODY, None, {PEER_NONCE: "0" * 32}),
        ("POST", "/v1/peer/load", BODY, None, {PEER_SIGNATURE: "0" * 64}),
        ("POST", "/v1/peer/load", BODY, None, {CALLER: CLIENT}),
        ("POST", "/v1/peer/load", BODY, CLIENT, {CALLER: OPERATOR}),
    ],
    ids=[
        "body",
        "path",
        "query",
        "method",
        "sender",
        "time",
        "nonce",
        "signature",
        "caller-added",
        "caller-changed",
    ],
)
def test_a_tampered_request_is_refused(
    method: str, path: str, body: bytes, signed_caller: str | None, change: dict[str, str]
) -> None:
    alice, bob = signers()
    headers = alice.sign("POST", "/v1/peer/load", BODY, NOW, to="site-2", caller=signed_caller) | change
    with pytest.raises(SiteError) as excinfo:
        bob.verify(method, path, body, headers, NOW)
    assert refusal(excinfo) == (401, "invalid_peer_signature")


def test_a_dropped_caller_header_breaks_the_signature() -> None:
    alice, bob = signers()
    caller = encode_caller("t", frozenset({"client"}), "k")
    headers = alice.sign("POST", "/v1/peer/requests", BODY, NOW, to="site-2", caller=caller)
    del headers[CALLER]
    with pytest.raises(SiteError) as excinfo:
        bob.verify("POST", "/v1/peer/requests", BODY, headers, NOW)
    assert refusal(excinfo) == (401, "invalid_peer_signature")


def test_requests_signed_for_another_site_by_another_secret_or_missing_headers_are_refused() -> None:
    alice, bob = signers()
    for_site_3 = alice.sign("POST", "/p", BODY, NOW, to="site-3")
    foreign = PeerSigner("site-1", "another-secret-entirely").sign("POST", "/p", BODY, NOW, to="site-2")
    good = alice.sign("POST", "/p", BODY, NOW, to="site-2")
    for headers in (for_site_3, foreign, {k: v for k, v in good.items() if k != PEER_NONCE}, {}):
        with pytest.raises(SiteError) as excinfo:
            bob.verify("POST", "/p", BODY, headers, NOW)
        assert refusal(excinfo) == (401, "invalid_peer_signature")


def test_a_repeated_signature_header_is_refused() -> None:
    """Starlette keeps every value of a repeated header: the one verified must be the only one."""
    alice, bob = signers()
    caller = encode_caller("t", frozenset({"client"}), "k")
    headers = alice.sign("POST", "/p", BODY, NOW, to="site-2", caller=caller)
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    forged = encode_caller("t", frozenset({"client", "operator"}), "k").encode()
    for pairs in ([(b"x-mec-caller", forged), *raw], [*raw, (b"x-mec-caller", forged)]):
        with pytest.raises(SiteError) as excinfo:
            bob.verify("POST", "/p", BODY, Headers(raw=pairs), NOW)
        assert refusal(excinfo) == (401, "invalid_peer_signature")
    assert bob.check("POST", "/p", BODY, Headers(raw=raw), NOW).caller == decode_caller(caller)


def test_an_unknown_sender_and_the_site_itself_are_refused_even_when_signed() -> None:
    _, bob = signers()
    stranger = PeerSigner("site-9", SECRET).sign("POST", "/p", BODY, NOW, to="site-2")
    with pytest.raises(SiteError) as excinfo:
        bob.verify("POST", "/p", BODY, stranger, NOW)
    assert refusal(excinfo) == (401, "unknown_peer")
    with pytest.raises(ValueError):
        bob.sign("POST", "/p", BODY, NOW, to="site-2")  # a site does not sign for itself


@pytest.mark.parametrize("offset_s", [-31, 31, -3600, 86_400])
def test_a_request_signed_outside_the_skew_window_is_stale(offset_s: int) -> None:
    alice, bob = signers()
    headers = alice.sign("POST", "/p", BODY, NOW + offset_s, to="site-2")
    with pytest.raises(SiteError) as excinfo:
        bob.verify("POST", "/p", BODY, headers, NOW)
    assert refusal(excinfo) == (401, "stale_peer_request")
    assert bob.verify("POST", "/p", BODY, headers, NOW + offset_s) == "site-1"  # its own time: fine


def test_a_replayed_request_is_refused_within_the_window() -> None:
    alice, bob = signers()
    headers = alice.sign("POST", "/p", BODY, NOW, to="site-2")
    assert bob.verify("POST", "/p", BODY, headers, NOW) == "site-1"
    for later in (NOW, NOW + 1, NOW + 30):
        with pytest.raises(SiteError) as excinfo:
            bob.verify("POST", "/p", BODY, headers, later)
        assert refusal(excinfo) == (401, "replayed_peer_request")
    with pytest.raises(SiteError) as excinfo:
        bob.verify("POST", "/p", BODY, headers, NOW + 31)
    assert refusal(excinfo) == (401, "stale_peer_request")  # past the window: stale, not remembered


def test_a_bearer_key_on_a_peer_request_is_refused_even_with_a_valid_signature() -> None:
    alice, bob = signers()
    headers = alice.sign("POST", "/p", BODY, NOW, to="site-2")
    for name in ("Authorization", "authorization"):
        with pytest.raises(SiteError) as excinfo:
            bob.verify("POST", "/p", BODY, headers | {name: "Bearer some-operator-key-123"}, NOW)
        assert refusal(excinfo) == (401, "bearer_on_peer_route")
    with pytest.raises(SiteError):
        refuse_bearer(Headers(raw=[(b"authorization", b"")]))
    refuse_bearer(Headers(raw=[(b"x-mec-peer", b"site-1")]))
    assert bob.verify("POST", "/p", BODY, headers, NOW) == "site-1"  # the refusal spent no nonce


def test_the_nonce_memory_forgets_by_time_and_stays_bounded_without_opening_a_replay() -> None:
    alice = PeerSigner("site-1", SECRET)
    bob = PeerSigner("site-2", SECRET, max_nonces=4)
    sent = [alice.sign("POST", "/p", BODY, NOW + i, to="site-2") for i in range(10)]
    for i, headers in enumerate(sent):
        assert bob.verify("POST", "/p", BODY, headers, NOW + i) == "site-1"
        assert len(bob.nonces) <= 4
    assert bob.nonces.floor == NOW + 5  # the six oldest were forced out: their seconds are closed
    with pytest.raises(SiteError) as excinfo:
        bob.verify("POST", "/p", BODY, sent[0], NOW + 9)  # forgotten, yet not replayable
    assert refusal(excinfo) == (401, "stale_peer_request")
    with pytest.raises(SiteError) as excinfo:
        bob.verify("POST", "/p", BODY, sent[9], NOW + 9)
    assert refusal(excinfo) == (401, "replayed_peer_request")

    memory = NonceMemory(skew_s=30, max_entries=100)
    for i in range(50):
        memory.add("site-1", f"{i:032x}", int(NOW) + i, NOW + i)
    memory.add("site-1", "f" * 32, int(NOW) + 100, NOW + 100)  # the first 50 are past their window
    assert len(memory) == 1 and memory.floor == -1


# -- signed answers ------------------------------------------------------------------------------


def test_an_answer_opens_only_for_the_request_and_peer_it_was_signed_for() -> None:
    alice, bob = signers()
    headers = alice.sign("POST", "/p", BODY, NOW, to="site-2")
    call = bob.check("POST", "/p", BODY, headers, NOW)
    answer = bob.sign_answer(call, b'{"load":1}')
    assert alice.open_answer(answer, "site-2", headers[PEER_NONCE]) == b'{"load":1}'
    bad = [
        (answer, "site-3", headers[PEER_NONCE]),
        (answer, "site-2", "0" * 32),
        (answer.replace(b"load", b"lead"), "site-2", headers[PEER_NONCE]),
        (b'{"load":1}', "site-2", headers[PEER_NONCE]),
        (b"not json", "site-2", headers[PEER_NONCE]),
    ]
    for body, peer, nonce in bad:
        with pytest.raises(ValueError):
            alice.open_answer(body, peer, nonce)


# -- the dependency on a real FastAPI app --------------------------------------------------------


def _app_signer(request: Request) -> PeerSigner | None:
    """The signer getter a site would use: its app's state."""
    signer: PeerSigner | None = request.app.state.peer_signer
    return signer


PeerSender = Annotated[str, Depends(peer_caller(_app_signer))]
VerifiedCall = Annotated[PeerCall, Depends(peer_call(_app_signer))]


@pytest.fixture
async def peer_app() -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """A FastAPI app with two peer routes and the site's own error handlers; its signer in its state."""
    app = FastAPI()
    app.state.peer_signer = PeerSigner("site-2", SECRET, {"site-1"})
    install_error_handlers(app)

    @app.post("/v1/peer/load")
    async def load(request: Request, sender: PeerSender) -> dict[str, object]:
        return {"sender": sender, "body": (await request.body()).decode()}

    @app.post("/v1/peer/requests")
    async def forwarded(call: VerifiedCall) -> dict[str, object]:
        return {"sender": call.sender, "key_id": call.caller.key_id if call.caller else None}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://site-2") as client:
        yield client, app


async def test_the_dependency_verifies_a_signed_request_and_the_route_reads_the_body_again(
    peer_app: tuple[httpx.AsyncClient, FastAPI],
) -> None:
    client, _ = peer_app
    alice = PeerSigner("site-1", SECRET)
    headers = alice.sign("POST", "/v1/peer/load", BODY, time.time(), to="site-2")
    answer = await client.post("/v1/peer/load", content=BODY, headers=headers)
    assert answer.status_code == 200 and answer.json() == {"sender": "site-1", "body": BODY.decode()}
    replayed = await client.post("/v1/peer/load", content=BODY, headers=headers)
    assert replayed.status_code == 401 and replayed.json()["error"]["code"] == "replayed_peer_request"

    caller = encode_caller("t", frozenset({"client"}), "key-1")
    headers = alice.sign("POST", "/v1/peer/requests?x=1", BODY, time.time(), to="site-2", caller=caller)
    answer = await client.post("/v1/peer/requests?x=1", content=BODY, headers=headers)
    assert answer.status_code == 200 and answer.json() == {"sender": "site-1", "key_id": "key-1"}


async def test_the_dependency_refuses_bearer_keys_unsigned_requests_and_a_site_without_peers(
    peer_app: tuple[httpx.AsyncClient, FastAPI],
) -> None:
    client, app = peer_app
    headers = PeerSigner("site-1", SECRET).sign("POST", "/v1/peer/load", BODY, time.time(), to="site-2")
    with_key = await client.post(
        "/v1/peer/load", content=BODY, headers=headers | {"Authorization": "Bearer an-operator-key-0123"}
    )
    assert with_key.status_code == 401 and with_key.json()["error"]["code"] == "bearer_on_peer_route"
    unsigned = await client.post("/v1/peer/load", content=BODY)
    assert unsigned.status_code == 401 and unsigned.json()["error"]["code"] == "invalid_peer_signature"
    tampered = await client.post("/v1/peer/load", content=BODY + b" ", headers=headers)
    assert tampered.status_code == 401 and tampered.json()["error"]["code"] == "invalid_peer_signature"
    app.state.peer_signer = None
    off = await client.post("/v1/peer/load", content=BODY, headers=headers)
    assert off.status_code == 404 and off.json()["error"]["code"] == "no_peers"


def test_a_shared_nonce_store_refuses_a_request_replayed_to_another_process() -> None:
    """Two signers (two worker processes of one site) sharing one store: a nonce is spent once."""
    shared = NonceMemory()
    first = PeerSigner("site-2", SECRET, nonces=shared)
    second = PeerSigner("site-2", SECRET, nonces=shared)
    headers = PeerSigner("site-1", SECRET).sign("POST", "/p", BODY, NOW, to="site-2")
    assert first.verify("POST", "/p", BODY, headers, NOW) == "site-1"
    with pytest.raises(SiteError) as excinfo:
        second.verify("POST", "/p", BODY, headers, NOW)
    assert refusal(excinfo) == (401, "replayed_peer_request")
    alone = PeerSigner("site-2", SECRET)  # the default: this process's own memory
    assert alone.verify("POST", "/p", BODY, headers, NOW) == "site-1"
