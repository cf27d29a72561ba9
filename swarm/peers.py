"""The peers of a site: where they are, and how a site proves to another that a request is its own.

Addresses come from the `peers` setting, one `ID=URL[@RAFT_HOST:PORT]` entry per other site
(`parse_peers`). Requests between sites are signed with the swarm's shared secret (`PeerSigner`):

    X-Mec-Peer:           the sender's site id
    X-Mec-Peer-To:        the recipient's site id (a request signed for one site is refused by another)
    X-Mec-Peer-Time:      unix seconds when it was signed
    X-Mec-Peer-Nonce:     32 random hex digits, once per request
    X-Mec-Peer-Signature: hex HMAC-SHA256 of the lines
                          mec-peer-v1, METHOD, PATH, TIME, NONCE, SENDER, RECIPIENT, CALLER, sha256(BODY)
    X-Mec-Caller:         (forwarded client requests only) the client the request is served for,
                          `key_id=…;tenant=…;scopes=client,operator`; an absent header signs as "".

A request is accepted once, within ±`skew_s` (30 s) of the recipient's clock; nonces are
remembered until their request leaves that window, in a bounded memory (see `NonceMemory`).
Peer routes take no API keys: a request that carries an Authorization header is refused, so a
client or operator key can never be what lets a request onto the peer API.

A peer's answer to a gossip exchange is signed too, in its body (`sign_answer`/`open_answer`),
bound to the request's nonce: `agent.upstream` hands back no response headers, and an unsigned
answer would let anyone on the path write the load table.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import re
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

from fastapi import Request

from agent.errors import SiteError
from agent.scopes import Principal, Scope

SITE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
"""A site id (the `site_id` setting's pattern)."""
RAFT_PORT_OFFSET = 1000
"""A peer's Raft port unless its entry names one: its API port + this."""

PEER = "X-Mec-Peer"
PEER_TO = "X-Mec-Peer-To"
PEER_TIME = "X-Mec-Peer-Time"
PEER_NONCE = "X-Mec-Peer-Nonce"
PEER_SIGNATURE = "X-Mec-Peer-Signature"
CALLER = "X-Mec-Caller"
SIGNED_HEADERS = (PEER, PEER_TO, PEER_TIME, PEER_NONCE, PEER_SIGNATURE, CALLER)
"""Every header the signature scheme reads; each may appear once at most."""

SIGNATURE_VERSION = "mec-peer-v1"
ANSWER_VERSION = "mec-peer-answer-v1"
SKEW_S = 30
"""How far a request's time may be from the recipient's clock, either way."""
MAX_NONCES = 65_536
"""Nonces a site remembers at most (about 4 MiB)."""

_NONCE = re.compile(r"[0-9a-f]{32}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"[0-9]{1,12}")
_CALLER_PART = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SCOPES: frozenset[str] = frozenset({"client", "operator"})


# -- addresses ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """Where one peer site answers: its API (`url`, `host`, `port`) and its embedded Raft."""

    site_id: str
    url: str
    """The API's base URL as configured, without a trailing slash: `http://10.0.0.2:8080`."""
    scheme: str
    host: str
    port: int
    raft_host: str
    raft_port: int


def _host_port(text: str, what: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPV6]:PORT`; ValueError naming `what` otherwise."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address without brackets: ambiguous
    if not sep or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{what} {text!r} is not a host:port (an IPv6 address goes in brackets)")
    return host, int(port_text)


def _peer(entry: str) -> PeerAddress:
    site_id, sep, rest = entry.strip().partition("=")
    site_id = site_id.strip()
    if not sep or not SITE_ID.fullmatch(site_id):
        raise ValueError(
            f"peer entry {entry!r} must be ID=URL with ID a site id (lower-case letters, digits, '-')"
        )
    url, at, raft = rest.strip().rpartition("@") if "@" in rest else (rest.strip(), "", "")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"peer {site_id}: {url!r} is not an http(s) URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"peer {site_id}: {url!r} must be a base URL (no path, query or fragment)")
    try:
        host, port = _host_port(parts.netloc, f"peer {site_id}: the URL's authority")
    except ValueError as exc:
        if at:  # "http://user:pw@host:port" reads as the URL "http://user:pw" and a Raft address
            raise ValueError(f"{exc}; '@' starts the Raft address, a URL carries no credentials") from None
        raise
    if at:
        raft_host, raft_port = _host_port(raft, f"peer {site_id}: the Raft address")
    else:
        raft_host, raft_port = host, port + RAFT_PORT_OFFSET
        if raft_port > 65535:
            raise ValueError(
                f"peer {site_id}: API port {port} + {RAFT_PORT_OFFSET} is no port; give the Raft "
                "address as ID=URL@RAFT_HOST:PORT"
            )
    return PeerAddress(
        site_id=site_id,
        url=f"{parts.scheme}://{parts.netloc}",
        scheme=parts.scheme,
        host=host,
        port=port,
        raft_host=raft_host,
        raft_port=raft_port,
    )


def parse_peers(entries: list[str], self_id: str | None = None) -> dict[str, PeerAddress]:
    """The `peers` setting's entries (`ID=URL[@RAFT_HOST:PORT]`) by site id, in their order.

    ValueError, naming the entry, for an id that is not a site id, an id or address given twice,
    a URL that is not a plain `http(s)://HOST:PORT` (the port is required), a Raft address that
    is not `HOST:PORT`, or (with `self_id`) the site itself among its peers.
    """
    peers: dict[str, PeerAddress] = {}
    seen: dict[tuple[str, int], str] = {}
    for entry in entries:
        peer = _peer(entry)
        if peer.site_id in peers:
            raise ValueError(f"peer {peer.site_id} is listed twice")
        if peer.site_id == self_id:
            raise ValueError(f"peer {peer.site_id} is this site itself; list only the other sites")
        for address in ((peer.host.lower(), peer.port), (peer.raft_host.lower(), peer.raft_port)):
            other = seen.get(address)
            if other is not None and other != peer.site_id:
                raise ValueError(
                    f"peers {other} and {peer.site_id} share the address {address[0]}:{address[1]}"
                )
            seen[address] = peer.site_id
        peers[peer.site_id] = peer
    return peers


# -- the client a forwarded request is served for -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Caller:
    """The client a forwarded request is served for, as the site that took it authenticated it."""

    tenant: str
    scopes: frozenset[str]
    key_id: str

    def principal(self) -> Principal:
        """The caller as this site's `Principal`; ValueError if its tenant is not its key's."""
        principal = Principal(self.key_id, cast(frozenset[Scope], self.scopes))
        if principal.tenant != self.tenant:
            raise ValueError("the caller's tenant is not the one of its key id")
        return principal


def encode_caller(tenant: str, scopes: frozenset[str], key_id: str) -> str:
    """The `X-Mec-Caller` header value: `key_id=K;tenant=T;scopes=S1,S2` (scopes sorted)."""
    return _encode(Caller(tenant, frozenset(scopes), key_id))


def _encode(caller: Caller) -> str:
    for name, part in (("key_id", caller.key_id), ("tenant", caller.tenant)):
        if not _CALLER_PART.fullmatch(part):
            raise ValueError(f"the caller's {name} must be 1-64 letters, digits, '_' or '-': {part!r}")
    if not caller.scopes or not caller.scopes <= _SCOPES:
        raise ValueError(f"the caller's scopes must be some of {sorted(_SCOPES)}: {sorted(caller.scopes)}")
    return f"key_id={caller.key_id};tenant={caller.tenant};scopes={','.join(sorted(caller.scopes))}"


def decode_caller(value: str) -> Caller:
    """Parse an `X-Mec-Caller` value (exactly as `encode_caller` writes it); ValueError otherwise."""
    fields: dict[str, str] = {}
    for part in value.split(";"):
        name, sep, text = part.partition("=")
        if not sep or name in fields:
            raise ValueError(f"not an {CALLER} value: {value!r}")
        fields[name] = text
    if fields.keys() != {"key_id", "tenant", "scopes"}:
        raise ValueError(f"an {CALLER} value has key_id, tenant and scopes: {value!r}")
    caller = Caller(fields["tenant"], frozenset(fields["scopes"].split(",")), fields["key_id"])
    if _encode(caller) != value:  # also validates every part
        raise ValueError(f"not a canonical {CALLER} value: {value!r}")
    return caller


# -- signing -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerCall:
    """A verified peer request: who sent it, and for which client (forwarded requests)."""

    sender: str
    nonce: str
    caller: Caller | None = None


class NonceStore(Protocol):
    """Where a site remembers the nonces it accepted. `NonceMemory` is one process's; a site whose
    peer routes run in several processes needs one store they share (e.g. Redis `SET NX EX`), or
    a request replayed to another process would be accepted there."""

    @property
    def floor(self) -> int:
        """Requests signed at or before this unix second are refused (-1: none)."""
        ...

    def remember(self, sender: str, nonce: str, signed_at: int, now: float) -> bool:
        """Remember a nonce at once, atomically; False if it was remembered already."""
        ...


class NonceMemory:
    """The nonces of the requests accepted lately, so that each is accepted once.

    A nonce is kept until its request's time leaves the skew window (signed + `skew_s`): nothing
    older can be accepted anyway. At most `max_entries` are kept: when a new one would exceed that,
    the one whose request was signed first is forgotten, and every request signed at or before that
    second is refused from then on as stale (`floor`), so a forgotten nonce can never be replayed.
    Under a flood the window narrows; it never opens.
    """

    def __init__(self, skew_s: int = SKEW_S, max_entries: int = MAX_NONCES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be ≥ 1")
        self.skew_s = skew_s
        self.max_entries = max_entries
        self.floor = -1
        """Requests signed at or before this unix second are refused (forced evictions raise it)."""
        self._signed: dict[tuple[str, str], int] = {}
        self._heap: list[tuple[int, int, tuple[str, str]]] = []
        self._order = 0

    def __len__(self) -> int:
        return len(self._signed)

    def seen(self, sender: str, nonce: str) -> bool:
        """Whether a request with this sender and nonce was accepted and is still remembered."""
        return (sender, nonce) in self._signed

    def remember(self, sender: str, nonce: str, signed_at: int, now: float) -> bool:
        """`add` unless `seen`: False for a nonce remembered already."""
        if self.seen(sender, nonce):
            return False
        self.add(sender, nonce, signed_at, now)
        return True

    def add(self, sender: str, nonce: str, signed_at: int, now: float) -> None:
        """Remember a nonce of a request signed at `signed_at`; forget the ones past the window
        at `now` (unix s), and the oldest beyond `max_entries` (raising `floor`)."""
        heap, signed = self._heap, self._signed
        while heap and heap[0][0] + self.skew_s < now:
            _, _, key = heapq.heappop(heap)
            del signed[key]
        while len(signed) >= self.max_entries:
            oldest, _, key = heapq.heappop(heap)
            del signed[key]
            self.floor = max(self.floor, oldest)
        key = (sender, nonce)
        signed[key] = signed_at
        self._order += 1
        heapq.heappush(heap, (signed_at, self._order, key))


def _single(headers: Mapping[str, str], name: str) -> str | None:
    """A header's one value (case-insensitive); a repeated signature header is refused."""
    getlist = getattr(headers, "getlist", None)
    if getlist is not None:  # Starlette's Headers: several values per name
        values = cast(list[str], getlist(name))
    else:
        lower = name.lower()
        values = [value for key, value in headers.items() if key.lower() == lower]
    if len(values) > 1:
        raise _invalid(f"the {name} header appears {len(values)} times")
    return values[0] if values else None


def _invalid(message: str) -> SiteError:
    return SiteError(401, "invalid_peer_signature", message, "x-mec-peer-signature")


def _stale(message: str) -> SiteError:
    return SiteError(401, "stale_peer_request", message, "x-mec-peer-time")


def refuse_bearer(headers: Mapping[str, str]) -> None:
    """Refuse (401 `bearer_on_peer_route`) a request with an Authorization header: peer routes take
    no client or operator key, and one sent along is never what lets a request through."""
    if _single_any(headers, "authorization"):
        raise SiteError(
            401,
            "bearer_on_peer_route",
            "peer routes take a peer signature, never an API key: drop the Authorization header",
            "authorization",
        )


def _single_any(headers: Mapping[str, str], name: str) -> bool:
    getlist = getattr(headers, "getlist", None)
    if getlist is not None:
        return bool(getlist(name))
    return any(key.lower() == name for key in headers)


class PeerSigner:
    """Signs this site's peer requests and verifies the ones sent to it (HMAC-SHA256, shared secret).

    `peers`, when given, are the only senders accepted (401 `unknown_peer` for others); the site
    itself never is. `nonces` is where accepted nonces are remembered: by default a
    `NonceMemory` of this process, which makes replay protection hold per process only (see
    `NonceStore`). `verify` is for one event loop or thread at a time (the memory is not locked).
    """

    def __init__(
        self,
        site_id: str,
        secret: str,
        peers: Collection[str] | None = None,
        *,
        skew_s: int = SKEW_S,
        max_nonces: int = MAX_NONCES,
        nonces: NonceStore | None = None,
    ) -> None:
        if not SITE_ID.fullmatch(site_id):
            raise ValueError(f"not a site id: {site_id!r}")
        if len(secret) < 16:
            raise ValueError("the peer secret must be at least 16 characters long")
        if skew_s < 1:
            raise ValueError("skew_s must be ≥ 1")
        self.site_id = site_id
        self._key = hashlib.sha256(b"mec-peer-key\x00" + secret.encode()).digest()
        self.peers = frozenset(peers) if peers is not None else None
        self.skew_s = skew_s
        self.nonces: NonceStore = nonces if nonces is not None else NonceMemory(skew_s, max_nonces)

    def _mac(self, *lines: str) -> str:
        return hmac.new(self._key, "\n".join(lines).encode(), hashlib.sha256).hexdigest()

    def _request_mac(
        self,
        method: str,
        path: str,
        signed_at: str,
        nonce: str,
        sender: str,
        to: str,
        caller: str,
        body: bytes,
    ) -> str:
        digest = hashlib.sha256(body).hexdigest()
        return self._mac(
            SIGNATURE_VERSION, method.upper(), path, signed_at, nonce, sender, to, caller, digest
        )

    def sign(
        self, method: str, path: str, body: bytes, now: float, *, to: str, caller: str | None = None
    ) -> dict[str, str]:
        """The headers of a request from this site to site `to`, signed at `now` (unix s).

        `caller` (an `encode_caller` value) goes in `X-Mec-Caller`, covered by the signature.
        """
        if not SITE_ID.fullmatch(to) or to == self.site_id:
            raise ValueError(f"not a peer to sign for: {to!r}")
        if caller is not None:
            decode_caller(caller)
        if not path.startswith("/") or "\n" in path:
            raise ValueError(f"not a request target: {path!r}")
        signed_at = str(int(now))
        nonce = secrets.token_hex(16)
        headers = {
            PEER: self.site_id,
            PEER_TO: to,
            PEER_TIME: signed_at,
            PEER_NONCE: nonce,
            PEER_SIGNATURE: self._request_mac(
                method, path, signed_at, nonce, self.site_id, to, caller or "", body
            ),
        }
        if caller is not None:
            headers[CALLER] = caller
        return headers

    def verify(self, method: str, path: str, body: bytes, headers: Mapping[str, str], now: float) -> str:
        """The sender's site id of a signed request to this site; a 401 `SiteError` otherwise.

        Codes: `bearer_on_peer_route` (an Authorization header), `invalid_peer_signature` (missing,
        malformed or wrong headers, a request for another site), `unknown_peer`,
        `stale_peer_request` (signed more than `skew_s` from `now`), `replayed_peer_request`.
        """
        return self.check(method, path, body, headers, now).sender

    def check(self, method: str, path: str, body: bytes, headers: Mapping[str, str], now: float) -> PeerCall:
        """`verify`, answering the whole `PeerCall` (sender, nonce and the forwarded caller)."""
        refuse_bearer(headers)
        values = {name: _single(headers, name) for name in SIGNED_HEADERS}
        sender, to, signed_at = values[PEER], values[PEER_TO], values[PEER_TIME]
        nonce, signature, caller_text = values[PEER_NONCE], values[PEER_SIGNATURE], values[CALLER]
        if sender is None or to is None or signed_at is None or nonce is None or signature is None:
            missing = [name for name in SIGNED_HEADERS[:5] if values[name] is None]
            raise _invalid(f"a peer request carries {', '.join(missing)}")
        if not SITE_ID.fullmatch(sender) or not SITE_ID.fullmatch(to):
            raise _invalid("the peer headers do not name sites")
        if (
            not _TIME.fullmatch(signed_at)
            or not _NONCE.fullmatch(nonce)
            or not _SIGNATURE.fullmatch(signature)
        ):
            raise _invalid("malformed peer signature headers")
        caller = None
        if caller_text is not None:
            try:
                caller = decode_caller(caller_text)
            except ValueError as exc:
                raise _invalid(str(exc)) from None
        signed = int(signed_at)
        if abs(now - signed) > self.skew_s:
            raise _stale(
                f"the request was signed at {signed}, {signed - now:+.0f} s from this site's clock "
                f"(±{self.skew_s} s accepted): check the sites' clocks"
            )
        if signed <= self.nonces.floor:
            raise _stale(f"too many peer requests of late: only those signed after {self.nonces.floor} pass")
        expected = self._request_mac(method, path, signed_at, nonce, sender, to, caller_text or "", body)
        if not hmac.compare_digest(expected, signature):
            raise _invalid("the signature does not match the request (or the secrets differ)")
        if to != self.site_id:
            raise _invalid(f"the request is signed for {to}, not for {self.site_id}")
        if sender == self.site_id or (self.peers is not None and sender not in self.peers):
            raise SiteError(401, "unknown_peer", f"{sender} is not a peer of {self.site_id}", "x-mec-peer")
        if not self.nonces.remember(sender, nonce, signed, now):
            raise SiteError(
                401, "replayed_peer_request", "this request was accepted once already", "x-mec-peer-nonce"
            )
        return PeerCall(sender, nonce, caller)

    # The body of an answer.

    def sign_answer(self, call: PeerCall, payload: bytes) -> bytes:
        """The body answering `call` with `payload` (UTF-8 JSON text): `{"payload", "signature"}`,
        the signature binding it to this site, the request's sender and its nonce."""
        text = payload.decode()
        signature = self._mac(ANSWER_VERSION, self.site_id, call.sender, call.nonce, text)
        return json.dumps({"payload": text, "signature": signature}, separators=(",", ":")).encode()

    def open_answer(self, answer: bytes, peer: str, nonce: str) -> bytes:
        """The payload of `peer`'s answer to this site's request with `nonce`; ValueError unless
        it is signed so (by `sign_answer` on that peer, for that request)."""
        try:
            data: Any = json.loads(answer)
        except ValueError:
            raise ValueError(f"{peer}'s answer is not JSON") from None
        if not isinstance(data, dict) or data.keys() != {"payload", "signature"}:
            raise ValueError(f"{peer}'s answer is not a signed answer")
        text, signature = data["payload"], data["signature"]
        if not isinstance(text, str) or not isinstance(signature, str) or not signature.isascii():
            raise ValueError(f"{peer}'s answer is not a signed answer")
        expected = self._mac(ANSWER_VERSION, peer, self.site_id, nonce, text)
        if not hmac.compare_digest(expected, signature):
            raise ValueError(f"{peer}'s answer is not signed by {peer} for this request")
        return text.encode()


# -- the FastAPI side --------------------------------------------------------------------------


def _target(request: Request) -> str:
    """The request target as the sender signed it: the raw path, and the query string if any."""
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else request.url.path
    query = request.scope.get("query_string", b"")
    return f"{path}?{query.decode('latin-1')}" if query else path


SignerGetter = Callable[[Request], PeerSigner | None]
"""Finds the site's signer for a request (e.g. `request.app.state.peer_signer`); None: no peers."""


def peer_call(
    signer_getter: SignerGetter, clock: Callable[[], float] = time.time
) -> Callable[[Request], Awaitable[PeerCall]]:
    """A FastAPI dependency for peer routes: the verified `PeerCall`, or the `SiteError` (401; 404
    `no_peers` on a site without a signer). It reads the raw body (`await request.body()`, which
    Starlette keeps, so the route may read it again) and refuses an Authorization header before
    reading anything."""

    async def dependency(request: Request) -> PeerCall:
        signer = signer_getter(request)
        if signer is None:
            raise SiteError(404, "no_peers", "this site has no peers: the peer API is off")
        refuse_bearer(request.headers)
        body = await request.body()
        return signer.check(request.method, _target(request), body, request.headers, clock())

    return dependency


def peer_caller(
    signer_getter: SignerGetter, clock: Callable[[], float] = time.time
) -> Callable[[Request], Awaitable[str]]:
    """`peer_call`, answering only the sender's site id."""
    check = peer_call(signer_getter, clock)

    async def dependency(request: Request) -> str:
        return (await check(request)).sender

    return dependency
