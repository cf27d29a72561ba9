"""The etcd backend of `swarm.consensus.base.Consensus`: the log, the leader and the members live in
an etcd (v3) cluster the operator already runs, reached over its HTTP gateway with etcd3gw.

Keys, under `prefix` (default `/mec`; several swarms can share one etcd with distinct prefixes):

    {prefix}/log/{i:020d}   entry i = 1, 2, ...: the command's JSON (`swarm.commands.to_json`)
    {prefix}/leader         the leader's node id, attached to the leader's lease
    {prefix}/members/{id}   a node's id, attached to that node's lease
    {prefix}/snapshot       the latest snapshot's header: {"index", "chunks", "size", "sha256"}
    {prefix}/snapshot-data/{i:020d}/{n:06d}   chunk n of the snapshot at index i (the state's bytes)

Appending (`propose`): one transaction puts entry i only if key i is absent *and* key i-1 exists,
so the log is dense from its first kept entry on and entries are never overwritten, whichever
site proposes (entry 1 also needs the snapshot header absent: once the log is compacted, a
missing key below the first kept one is no free slot). A proposer that
loses the race reads the last index in the same round trip and tries the next one (bounded by
the proposal's deadline and `MAX_APPEND_ATTEMPTS`). A node's proposals go through one append
thread: those that queue up while a transaction is out go together in the next one, as entries
i, i+1, ... (group commit), which also keeps the race to three proposers for three sites. An
append whose answer was lost (a member died or timed out mid-request) is retried at the *same*
index: if the keys from there then hold exactly these JSONs, the first try committed and its
indexes are returned, so a retry after a lost answer never adds entries twice. Two proposals of
one command are two entries (the command id dedupes them in the state machine).

Applying: a follower thread reads the log with ranges from the next unapplied index, in key
order, and hands each batch to one task on the event loop, which calls the `Applier` for each
index exactly once, in order; a coroutine applier is awaited before the next entry. An applier
that raises is logged and counted (`status().detail["apply_errors"]`) and the entry counts as
applied (every node applies the same entries, so it fails the same way everywhere); an entry that
is not a known command is skipped likewise (`skipped_entries`). On start the follower replays the
log from index 1, or from the snapshot when the log has been compacted (below).

Compaction (with a `snapshotter`; without one the log keeps every entry): once the leader has
applied `max_entries` entries past the latest snapshot, it takes its owner's snapshot (on the
loop, between two entries) and its snapshot thread writes it: the chunks first (etcd takes
requests up to 1.5 MiB, a state may be larger), then one transaction that puts the header, deletes
every log key below the snapshot's index and every older snapshot's chunks, on the condition that
the header is still the one it read (a concurrent snapshot wins or loses whole) and the entry at
the snapshot's index exists. The entry at the index stays, so the next append still finds its
predecessor, and the log holds about `max_entries` keys (plus those appended while a snapshot is
written). Any other node does the same once the log runs `2 * max_entries` past the latest
snapshot (a leader without a snapshotter, or one that cannot keep up). A follower whose next index
is gone (a node started or restarted after a compaction, or one that fell that far behind) reads
the header and its chunks (checked against the header's size and digest; read again when a newer
snapshot replaced them meanwhile), hands the owner `Snapshotter.restore(index, data)` on the loop
and reads on from the entry after it. A node without a snapshotter that finds its next index
compacted away stops there and reports the gap (`gap_at`): configure every node alike.

etcd3gw's watch on `{prefix}/log/` only rings a bell that starts the next range; entries never
come from the watch itself, because etcd3gw's watch reports nothing when its stream ends (a killed
member) and sends its request without a timeout. Here its headers must come within the request
timeout, and a watch that rang nothing for `poll_interval_s` is replaced after one more range, so
when a watch is lost an entry waits at most `poll_interval_s` to be seen (a poll, as a fallback).

Leadership: each node holds an etcd lease (`lease_ttl_s`), kept alive every ttl/3, with its
`members/{id}` key on it. The leader key is created by a transaction only while absent, on the
creator's lease: its holder leads; `term` is the key's create revision, so it only grows. A watch
on the leader key wakes the others as soon as it goes (a clean `stop()` revokes the lease, so
failover is one round trip); a crashed leader's key goes when its lease expires (ttl + up to 0.5 s
of etcd's expiry scan). A leader that cannot renew its lease stops calling itself leader once the
lease may have run out (its deadline counts from when the last renewal was *sent*). A node that
restarts before its crashed run's lease expired finds its own id in the leader key, on that old
lease: it names no leader (it would forward to itself) until the key goes, then campaigns.

Threads: the follower, the session (lease, leader, members), the appender and (with a
snapshotter) the snapshot writer; every
call to etcd has a timeout (`request_timeout_s`, at most the time a proposal has left) and the
members are tried in turn when one does not answer. Nothing blocks the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import functools
import hashlib
import inspect
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import etcd3gw
import requests
import requests.adapters
from etcd3gw import exceptions as etcd_errors
from etcd3gw.watch import Watcher

from swarm.commands import Command, command_from_json, to_json
from swarm.consensus.base import Applier, ConsensusError, ConsensusStatus, Snapshotter, poll_leader

log = logging.getLogger(__name__)

T = TypeVar("T")

INDEX_DIGITS = 20
"""Log keys carry the index zero-padded to this width, so key order is index order."""
MAX_APPEND_ATTEMPTS = 256
"""A proposal gives up after this many lost races or failed tries, whatever its deadline."""
RETRY_PAUSE_S = 0.02
"""The pause after every member failed once, before trying them again."""
NOT_STARTED = "not started"
MAX_BACKOFF_S = 0.5
"""The follower's longest pause between reads while etcd does not answer."""
BACKPRESSURE_PAUSE_S = 0.01
LEADER_POLL_S = 0.01
MAX_BATCH = 64
"""Proposals of one node waiting together go to etcd in one transaction, this many at most (etcd
allows 128 operations per transaction by default)..."""
MAX_BATCH_BYTES = 256 * 1024
"""... and this much JSON at most (etcd takes requests up to 1.5 MiB by default)."""
DEFAULT_PORT = 2379
CHUNK_BYTES = 512 * 1024
"""A snapshot's bytes go to etcd in chunks of this much at most (base64 in a request of 1.5 MiB)."""
SNAPSHOT_ATTEMPTS = 5
SNAPSHOT_RETRY_S = 1.0
"""A snapshot write that fails is tried this many times, this far apart."""
CHUNK_DIGITS = 6
SNAPSHOT_READ_ATTEMPTS = 5
"""Reads of a snapshot that a newer one replaced meanwhile, before the follower backs off."""

_SORT_ASCEND, _SORT_DESCEND, _SORT_BY_KEY = 1, 2, 0

_UNAVAILABLE_ERRORS = (
    etcd_errors.ConnectionFailedError,  # refused, reset, or gRPC Unavailable (no leader, timed out)
    etcd_errors.ConnectionTimeoutError,
    etcd_errors.InternalServerError,
)


class _Unavailable(Exception):
    """No answer from etcd in time, or none that could be read: the request may have been applied."""


class _Rejected(Exception):
    """etcd answered with an error that asking another member would not change."""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _describe(exc: BaseException) -> str:
    detail = getattr(exc, "detail_text", None) or str(exc) or ""
    return f"{type(exc).__name__}: {detail}"[:300]


def _prefix_end(prefix: str) -> str:
    """The first key after every key that starts with `prefix` (etcd's range_end for a prefix)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


@dataclass(frozen=True, slots=True)
class _Endpoint:
    protocol: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.host}:{self.port}"


def _parse_endpoint(text: str) -> _Endpoint:
    parts = urlsplit(text if "://" in text else f"http://{text}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an etcd client URL: {text!r} (expected http://HOST:PORT)")
    return _Endpoint(parts.scheme, parts.hostname, parts.port or DEFAULT_PORT)


class _DefaultTimeoutAdapter(requests.adapters.HTTPAdapter):
    """Gives requests sent without a timeout this one (etcd3gw's watch sends none)."""

    def __init__(self, timeout: tuple[float, float]) -> None:
        super().__init__()
        self.default_timeout = timeout

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float | None, float | None] | None = None,
        verify: Any = True,
        cert: Any = None,
        proxies: dict[str, str] | None = None,
    ) -> requests.Response:
        return super().send(
            request,
            stream=stream,
            timeout=self.default_timeout if timeout is None else timeout,
            verify=verify,
            cert=cert,
            proxies=proxies,
        )


class _Cluster:
    """The etcd members' client endpoints: the one in use (shared by every thread), a client of
    each per thread (a `requests.Session` is not shared between threads), and bounded calls that
    move to the next member when one does not answer."""

    def __init__(self, endpoints: Sequence[str], watch_read_timeout_s: float) -> None:
        self.endpoints = [_parse_endpoint(text) for text in endpoints]
        if not self.endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.watch_read_timeout_s = watch_read_timeout_s
        self._current = 0
        self._lock = threading.Lock()
        self._local = threading.local()

    @property
    def url(self) -> str:
        """The endpoint in use now."""
        return self.endpoints[self._current].url

    def _client(self, index: int) -> etcd3gw.Etcd3Client:
        clients: dict[int, etcd3gw.Etcd3Client] | None = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        client = clients.get(index)
        if client is None:
            endpoint = self.endpoints[index]
            client = etcd3gw.client(host=endpoint.host, port=endpoint.port, protocol=endpoint.protocol)
            clients[index] = client
        return client

    def _failed(self, index: int) -> None:
        with self._lock:
            if self._current == index:
                self._current = (index + 1) % len(self.endpoints)
                log.debug("%s failed; now on %s", self.endpoints[index].url, self.url)

    def attempt(self, fn: Callable[[etcd3gw.Etcd3Client], T], timeout_s: float) -> T:
        """`fn(client)` once, on the member in use, each of its requests bounded by `timeout_s`.
        When the member does not answer, the next one is in use and `_Unavailable` is raised."""
        index = self._current
        client = self._client(index)
        client.timeout = max(0.01, timeout_s)
        try:
            return fn(client)
        except _UNAVAILABLE_ERRORS as exc:
            self._failed(index)
            raise _Unavailable(f"{self.endpoints[index].url}: {_describe(exc)}") from exc
        except etcd_errors.Etcd3Exception as exc:
            raise _Rejected(f"{self.endpoints[index].url}: {_describe(exc)}") from exc
        except (requests.RequestException, OSError, ValueError, KeyError, TypeError) as exc:
            # a stream cut mid-answer, a body that is not the JSON expected
            self._failed(index)
            raise _Unavailable(f"{self.endpoints[index].url}: {_describe(exc)}") from exc

    def call(self, fn: Callable[[etcd3gw.Etcd3Client], T], timeout_s: float, per_try_s: float) -> T:
        """`attempt` on one member after another until one answers or `timeout_s` has passed.
        For requests that are safe to repeat."""
        deadline = time.monotonic() + timeout_s
        failures = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                return self.attempt(fn, min(per_try_s, remaining))
            except _Unavailable:
                failures += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                if failures % len(self.endpoints) == 0:
                    time.sleep(min(RETRY_PAUSE_S, remaining))

    def watch(
        self,
        client: etcd3gw.Etcd3Client,
        key: str,
        range_end: str | None,
        start_revision: int,
        ring: threading.Event,
    ) -> Watcher:
        """A watch from `start_revision` on `key` (up to `range_end`) that sets `ring` on every
        event. Its answer's headers must come within the client's timeout (a member that is
        stopped accepts the connection and says nothing); then the stream may stay quiet for
        `watch_read_timeout_s`. It has its own HTTP session: stopping an etcd3gw watch closes its
        session's connection pool."""
        session = requests.Session()
        timeout_s = float(client.timeout or 1.0)
        adapter = _DefaultTimeoutAdapter((timeout_s, timeout_s))  # etcd3gw's watch sets no timeout
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.hooks["response"].append(self._quiet_stream_allowed)
        watch_client = etcd3gw.client(
            host=client.host,
            port=client.port,
            protocol=client.protocol,
            timeout=client.timeout,
            api_path=client.api_path,
            session=session,
        )

        def on_event(event: object) -> None:
            ring.set()

        return Watcher(watch_client, key, on_event, start_revision=start_revision, range_end=range_end)

    def _quiet_stream_allowed(self, response: requests.Response, *args: object, **kwargs: object) -> None:
        """Once a watch's headers are in, reads of its stream wait up to `watch_read_timeout_s`."""
        sock = getattr(getattr(response.raw, "connection", None), "sock", None)
        if sock is not None:
            sock.settimeout(self.watch_read_timeout_s)


@dataclass(frozen=True, slots=True)
class _Proposal:
    """A command waiting for the append thread, and where its index goes."""

    payload: str
    deadline: float
    future: concurrent.futures.Future[int]


@dataclass(frozen=True, slots=True)
class _Restore:
    """A snapshot for the loop to restore before the entries after its index."""

    index: int
    data: bytes


@dataclass(frozen=True, slots=True)
class _Header:
    """The snapshot header as read, with the key's mod revision (0: there is none)."""

    index: int
    chunks: int
    size: int
    sha256: str
    mod_revision: int

    @classmethod
    def absent(cls) -> _Header:
        return cls(0, 0, 0, "", 0)


def _transaction(client: etcd3gw.Etcd3Client, txn: dict[str, Any]) -> dict[str, Any]:
    return cast(dict[str, Any], client.transaction(txn))


def _post(path: str, request: dict[str, Any], client: etcd3gw.Etcd3Client) -> dict[str, Any]:
    return dict(client.post(client.get_url(path), json=request))


def _close(watcher: Watcher | None) -> None:
    if watcher is not None:
        with contextlib.suppress(Exception):
            watcher.stop()


class EtcdConsensus:
    """One node (site) of a swarm whose log, leader and members are kept in etcd.

    `endpoints` are the etcd members' client URLs (`http://HOST:PORT`); every node of the swarm
    uses the same `prefix`. See the module's docstring for the key layout and the protocol.
    """

    def __init__(
        self,
        node_id: str,
        endpoints: Sequence[str],
        applier: Applier,
        *,
        prefix: str = "/mec",
        lease_ttl_s: int = 2,
        request_timeout_s: float = 1.0,
        poll_interval_s: float = 1.0,
        batch_size: int = 256,
        max_pending: int = 1024,
        snapshotter: Snapshotter | None = None,
        max_entries: int = 1000,
    ) -> None:
        """`lease_ttl_s`: how long a crashed node stays leader and member (etcd raises it to its
        own minimum, 1.5 × its election timeout); `request_timeout_s`: the most one request to
        etcd may take; `poll_interval_s`: how long an entry can wait to be seen when a watch is
        lost; `batch_size`: entries per read; `max_pending`: entries read but not yet applied
        before the follower waits for the applier; `snapshotter`: the applier's owner, whose
        snapshots let the log be compacted to about `max_entries` keys (see the module's
        docstring)."""
        if not node_id or "/" in node_id:
            raise ValueError(f"a node id is a non-empty name without '/': {node_id!r}")
        if max_entries < 2:
            raise ValueError("max_entries must be at least 2")
        if lease_ttl_s < 1:
            raise ValueError("lease_ttl_s is a whole number of seconds, at least 1")
        if not prefix.startswith("/") or prefix.rstrip("/") == "":
            raise ValueError(f"the prefix is a key path such as '/mec': {prefix!r}")
        self.node_id = node_id
        self.prefix = prefix.rstrip("/")
        self._applier = applier
        self._ttl_s = lease_ttl_s
        self._request_timeout_s = request_timeout_s
        self._poll_interval_s = poll_interval_s
        self._batch_size = batch_size
        self._max_pending = max_pending
        self._snapshotter = snapshotter
        self._max_entries = max_entries
        self._keepalive_s = lease_ttl_s / 3
        self._session_timeout_s = max(0.2, min(request_timeout_s, lease_ttl_s / 4))
        self._cluster = _Cluster(endpoints, watch_read_timeout_s=max(10.0, 5 * poll_interval_s))

        self._log_prefix = f"{self.prefix}/log/"
        self._log_end = _prefix_end(self._log_prefix)
        self._leader_key = f"{self.prefix}/leader"
        self._members_prefix = f"{self.prefix}/members/"
        self._snapshot_key = f"{self.prefix}/snapshot"
        self._snapshot_data_prefix = f"{self.prefix}/snapshot-data/"

        # threads
        self._stopping = threading.Event()
        self._log_bell = threading.Event()
        self._session_bell = threading.Event()
        self._follower: threading.Thread | None = None
        self._session: threading.Thread | None = None
        self._appender: threading.Thread | None = None
        self._snapshot_writer: threading.Thread | None = None
        self._appends: queue.SimpleQueue[_Proposal | None] = queue.SimpleQueue()
        self._snapshots: queue.SimpleQueue[tuple[int, bytes, int] | None] = queue.SimpleQueue()
        self._revoke_on_stop = True

        # shared state: written by the threads, read anywhere (under `_lock`)
        self._lock = threading.Lock()
        self._last_index = 0
        self._leader: str | None = None
        self._leader_lease = 0
        self._leader_seen_at = 0.0
        self._term = 0
        self._members: tuple[str, ...] = ()
        self._lease_id: int | None = None
        self._lease_deadline = 0.0
        self._errors: dict[str, str | None] = {"session": NOT_STARTED, "follower": NOT_STARTED}
        """The last error of each thread's last round, None when it succeeded."""
        self._append_error: str | None = None
        self._gap_at: int | None = None
        self._snapshot_index = 0
        """The latest snapshot's index this node knows of (read, written or restored)."""
        self._snapshot_busy = False
        """A snapshot was handed to the writer and it has not finished with it."""
        self._snapshots_written = 0
        self._snapshot_errors = 0
        self._fetched_index = 0  # the follower thread's own

        # the event loop's own
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: asyncio.Queue[list[tuple[int, Command | None]] | _Restore] | None = None
        self._apply_task: asyncio.Task[None] | None = None
        self._applied_index = 0
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._apply_errors = 0
        self._skipped_entries = 0
        self._restores = 0
        self._restore_errors = 0
        self._stop_task: asyncio.Task[None] | None = None

    # --- keys ---------------------------------------------------------------------------------

    def _log_key(self, index: int) -> str:
        return f"{self._log_prefix}{index:0{INDEX_DIGITS}d}"

    def _snapshot_data_key(self, index: int, chunk: int | None = None) -> str:
        """The key of one chunk of the snapshot at `index`, or (None) the prefix of its chunks."""
        base = f"{self._snapshot_data_prefix}{index:0{INDEX_DIGITS}d}/"
        return base if chunk is None else f"{base}{chunk:0{CHUNK_DIGITS}d}"

    def _index_of(self, key: bytes) -> int | None:
        text = key.decode(errors="replace")
        digits = text[len(self._log_prefix) :]
        if not text.startswith(self._log_prefix) or len(digits) != INDEX_DIGITS or not digits.isdigit():
            return None
        return int(digits)

    def _last_entry_range(self) -> dict[str, Any]:
        return {
            "key": _b64(self._log_prefix),
            "range_end": _b64(self._log_end),
            "limit": 1,
            "sort_order": _SORT_DESCEND,
            "sort_target": _SORT_BY_KEY,
            "keys_only": True,
        }

    def _members_range(self) -> dict[str, Any]:
        return {
            "key": _b64(self._members_prefix),
            "range_end": _b64(_prefix_end(self._members_prefix)),
            "keys_only": True,
        }

    def _last_index_in(self, range_response: dict[str, Any]) -> int:
        kvs = range_response.get("kvs") or []
        index = self._index_of(_unb64(kvs[0]["key"])) if kvs else None
        return index or 0

    def _report(self, part: str, error: str | None) -> None:
        """Record the last round of the `session` or the `follower`; log when errors start and end."""
        with self._lock:
            before = self._errors[part]
            self._errors[part] = error
        if error is not None and before is None:
            log.warning("%s: the %s cannot reach etcd: %s", self.node_id, part, error)
        elif error is None and before not in (None, NOT_STARTED):
            log.info("%s: the %s reaches etcd again", self.node_id, part)

    def _note_index(self, index: int) -> None:
        with self._lock:
            if index > self._last_index:
                self._last_index = index

    # --- the protocol ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the follower (which replays the log from index 1) and the session (lease, leader,
        members) threads; returns at once, without waiting for etcd or a leader."""
        if self._stop_task is not None:
            raise ConsensusError("a stopped EtcdConsensus does not start again; build a new one")
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._inbox = asyncio.Queue()
        self._apply_task = self._loop.create_task(self._apply_forever(), name=f"etcd-{self.node_id}-apply")
        self._appender = threading.Thread(
            target=self._append_forever, name=f"etcd-{self.node_id}-append", daemon=True
        )
        self._follower = threading.Thread(
            target=self._follow, name=f"etcd-{self.node_id}-follow", daemon=True
        )
        self._session = threading.Thread(target=self._lead, name=f"etcd-{self.node_id}-session", daemon=True)
        if self._snapshotter is not None:
            self._snapshot_writer = threading.Thread(
                target=self._write_snapshots, name=f"etcd-{self.node_id}-snapshot", daemon=True
            )
            self._snapshot_writer.start()
        self._follower.start()
        self._session.start()
        self._appender.start()

    async def stop(self, *, revoke_lease: bool = True) -> None:
        """Revoke the lease (the leader key and the member key go with it, so another node takes
        over at once), stop the threads and fail pending proposals. Idempotent.

        `revoke_lease=False` leaves the lease to expire, as a crashed site would (for tests and
        benchmarks of failover)."""
        if self._stop_task is None:
            self._revoke_on_stop = revoke_lease
            self._stop_task = asyncio.get_running_loop().create_task(self._shutdown())
        await asyncio.shield(self._stop_task)

    async def _shutdown(self) -> None:
        self._stopping.set()
        self._log_bell.set()
        self._session_bell.set()
        self._appends.put(None)
        self._snapshots.put(None)
        parts = (self._session, self._follower, self._appender, self._snapshot_writer)
        threads = [thread for thread in parts if thread is not None]
        join_s = 3 * self._request_timeout_s + 1.0
        if threads:
            await asyncio.to_thread(self._join, threads, join_s)
        self._fail_queued()
        if self._apply_task is not None:
            self._apply_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._apply_task
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(ConsensusError(f"{self.node_id} stopped"))
        self._waiters.clear()
        with self._lock:
            self._leader = None
            self._lease_id = None
            self._members = ()

    @staticmethod
    def _join(threads: list[threading.Thread], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("%s did not end within %.1f s", thread.name, timeout_s)

    async def propose(self, command: Command, timeout_s: float) -> int:
        """Append `command` at the next free index and return it once this node has applied it.

        `ConsensusError` when that does not happen within `timeout_s` (etcd unreachable, the node
        stopped); the command may still commit later: its id makes a retry safe."""
        if self._loop is None:
            raise ConsensusError(f"{self.node_id} is not started")
        if self._stopping.is_set():
            raise ConsensusError(f"{self.node_id} is stopped")
        deadline = time.monotonic() + timeout_s
        proposal = _Proposal(to_json(command), deadline, concurrent.futures.Future())
        self._appends.put(proposal)
        try:
            # a proposal that times out before it is sent is cancelled here and never sent
            index = await asyncio.wait_for(
                asyncio.wrap_future(proposal.future), timeout=max(0.0, deadline - time.monotonic())
            )
        except TimeoutError:
            raise ConsensusError(
                f"not committed within {timeout_s:g} s (it may still commit): {self._append_error or 'no answer'}"
            ) from None
        await self._wait_applied(index, deadline, timeout_s)
        return index

    async def _wait_applied(self, index: int, deadline: float, timeout_s: float) -> None:
        if self._applied_index >= index:
            return
        if self._stopping.is_set():
            raise ConsensusError(f"entry {index} committed, but {self.node_id} stopped before applying it")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(index, []).append(future)
        try:
            await asyncio.wait_for(future, timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise ConsensusError(
                f"entry {index} committed but not applied on {self.node_id} within {timeout_s:g} s"
            ) from None
        finally:
            waiting = self._waiters.get(index)
            if waiting is not None and future in waiting:
                waiting.remove(future)
                if not waiting:
                    del self._waiters[index]

    def leader(self) -> str | None:
        """The node id in the leader key as last read, None when there is none, when the last read
        is older than a lease, or when the key names this node on a lease that is not its own (a
        previous run of this node that crashed: the key goes when that lease expires)."""
        with self._lock:
            if self._leader is None or time.monotonic() - self._leader_seen_at > self._ttl_s:
                return None
            if self._leader == self.node_id and self._leader_lease != self._lease_id:
                return None
            return self._leader

    def is_leader(self) -> bool:
        """Whether this node holds the leader key on its own lease, and that lease cannot have
        expired yet."""
        with self._lock:
            return (
                self._leader == self.node_id
                and self._lease_id is not None
                and self._leader_lease == self._lease_id
                and time.monotonic() < self._lease_deadline
            )

    async def wait_leader(self, timeout_s: float) -> str:
        """The leader's id once there is one; `ConsensusError` after `timeout_s`."""
        return await poll_leader(
            self.leader,
            timeout_s,
            LEADER_POLL_S,
            lambda: f"no leader within {timeout_s:g} s: {self._errors['session'] or 'none elected'}",
        )

    def status(self) -> ConsensusStatus:
        """This node's view: leader, term (the leader key's create revision), the last index seen
        in etcd, the last applied here, the members holding a lease, and whether etcd answers."""
        with self._lock:
            lease_alive = self._lease_id is not None and time.monotonic() < self._lease_deadline
            error = self._errors["session"] or self._errors["follower"]
            running = self._loop is not None and not self._stopping.is_set()
            detail: dict[str, object] = {
                "backend": "etcd",
                "endpoint": self._cluster.url,
                "prefix": self.prefix,
                "lease_id": self._lease_id,
                "error": error,
                "apply_errors": self._apply_errors,
                "skipped_entries": self._skipped_entries,
                "snapshot_index": self._snapshot_index,
                "snapshots_written": self._snapshots_written,
                "snapshot_errors": self._snapshot_errors,
                "restores": self._restores,
                "restore_errors": self._restore_errors,
            }
            if self._gap_at is not None:
                detail["gap_at"] = self._gap_at
            term, commit, members = self._term, self._last_index, self._members
        return ConsensusStatus(
            node_id=self.node_id,
            leader=self.leader(),
            term=term,
            commit_index=max(commit, self._applied_index),
            applied_index=self._applied_index,
            members=members,
            healthy=running and lease_alive and error is None,
            detail=detail,
        )

    # --- appending (a proposal pool thread) --------------------------------------------------------

    def _append_forever(self) -> None:
        """Send the proposals queued by `propose`, as many as wait together in one transaction."""
        while True:
            first = self._appends.get()
            if first is None or self._stopping.is_set():
                break
            batch, size = [first], len(first.payload)
            while len(batch) < MAX_BATCH and size < MAX_BATCH_BYTES:
                try:
                    more = self._appends.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._appends.put(None)  # stop: after this batch
                    break
                batch.append(more)
                size += len(more.payload)
            batch = [proposal for proposal in batch if proposal.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                index = self._append([proposal.payload for proposal in batch], max(p.deadline for p in batch))
            except ConsensusError as exc:
                for proposal in batch:
                    proposal.future.set_exception(exc)
                continue
            for offset, proposal in enumerate(batch):
                proposal.future.set_result(index + offset)
        self._fail_queued()

    def _fail_queued(self) -> None:
        while True:
            try:
                proposal = self._appends.get_nowait()
            except queue.Empty:
                return
            if proposal is not None and proposal.future.set_running_or_notify_cancel():
                proposal.future.set_exception(ConsensusError(f"{self.node_id} stopped"))

    def _append_txn(self, index: int, payloads: Sequence[str]) -> dict[str, Any]:
        key = _b64(self._log_key(index))
        compare: list[dict[str, Any]] = [{"key": key, "target": "VERSION", "result": "EQUAL", "version": 0}]
        if index > 1:
            previous = _b64(self._log_key(index - 1))
            compare.append({"key": previous, "target": "VERSION", "result": "GREATER", "version": 0})
        else:  # key 1 is free only in a log never compacted
            compare.append(
                {"key": _b64(self._snapshot_key), "target": "VERSION", "result": "EQUAL", "version": 0}
            )
        puts = [
            {"request_put": {"key": _b64(self._log_key(index + offset)), "value": _b64(payload)}}
            for offset, payload in enumerate(payloads)
        ]
        taken = {
            "key": key,
            "range_end": _b64(self._log_end),
            "limit": len(payloads),
            "sort_order": _SORT_ASCEND,
        }
        return {
            "compare": compare,
            "success": puts,
            "failure": [{"request_range": taken}, {"request_range": self._last_entry_range()}],
        }

    def _try_append(self, index: int, payloads: Sequence[str], client: etcd3gw.Etcd3Client) -> dict[str, Any]:
        return _transaction(client, self._append_txn(index, payloads))

    def _append(self, payloads: Sequence[str], deadline: float) -> int:
        """Put `payloads` at the first free indexes (see the module's docstring); the first one."""
        index = self._last_index + 1
        ambiguous = False  # the last try at `index` may have committed without our hearing it
        expected = [payload.encode() for payload in payloads]
        for _ in range(MAX_APPEND_ATTEMPTS):
            if self._stopping.is_set():
                raise ConsensusError(f"{self.node_id} stopped")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                response = self._cluster.attempt(
                    functools.partial(self._try_append, index, payloads),
                    min(self._request_timeout_s, remaining),
                )
            except _Unavailable as exc:
                ambiguous = True
                self._append_error = str(exc)
                time.sleep(min(RETRY_PAUSE_S, max(0.0, deadline - time.monotonic())))
                continue
            except _Rejected as exc:
                raise ConsensusError(f"etcd refused the append: {exc}") from exc
            if not response.get("succeeded"):
                taken = response["responses"][0]["response_range"].get("kvs") or []
                found = [(self._index_of(_unb64(kv["key"])), _unb64(kv.get("value", ""))) for kv in taken]
                if not (ambiguous and found == list(enumerate(expected, start=index))):
                    ambiguous = False
                    index = self._last_index_in(response["responses"][1]["response_range"]) + 1
                    self._note_index(index - 1)
                    continue
                # else the try whose answer was lost did commit: these are our entries
            self._append_error = None
            self._note_index(index + len(payloads) - 1)
            self._log_bell.set()
            return index
        raise ConsensusError(
            f"not committed before the deadline (it may still commit): {self._append_error or 'lost every race'}"
        )

    # --- applying (the follower thread, then the loop) ---------------------------------------------

    def _follow(self) -> None:
        watcher: Watcher | None = None
        failures = 0
        try:
            while not self._stopping.is_set():
                if self._fetched_index - self._applied_index >= self._max_pending:
                    self._stopping.wait(BACKPRESSURE_PAUSE_S)  # the applier is behind
                    continue
                self._log_bell.clear()  # before the read: whatever comes after it rings again
                try:
                    revision, more = self._fetch()
                    if more:
                        continue
                    if watcher is None:
                        watcher = self._cluster.attempt(
                            functools.partial(
                                self._cluster.watch,
                                key=self._log_prefix,
                                range_end=self._log_end,
                                start_revision=revision + 1,
                                ring=self._log_bell,
                            ),
                            self._request_timeout_s,
                        )
                    self._report("follower", None)
                    failures = 0
                except (_Unavailable, _Rejected, KeyError, TypeError, ValueError) as exc:
                    self._report(
                        "follower", str(exc) if isinstance(exc, _Unavailable | _Rejected) else _describe(exc)
                    )
                    _close(watcher)
                    watcher = None
                    failures += 1
                    self._stopping.wait(min(MAX_BACKOFF_S, RETRY_PAUSE_S * 2 ** min(failures, 6)))
                    continue
                if not self._log_bell.wait(self._poll_interval_s):
                    _close(watcher)  # quiet, or lost: a fresh watch after one more read
                    watcher = None
        except RuntimeError:  # the event loop is closed: nobody to apply to
            if self._loop is None or not self._loop.is_closed():
                raise
        finally:
            _close(watcher)

    def _fetch(self) -> tuple[int, bool]:
        """Read the entries after the last one handed to the loop, hand them over in key order;
        the read's revision and whether more entries follow."""
        first = self._fetched_index + 1
        request = {
            "key": _b64(self._log_key(first)),
            "range_end": _b64(self._log_end),
            "limit": self._batch_size,
            "sort_order": _SORT_ASCEND,
            "sort_target": _SORT_BY_KEY,
        }

        def read(client: etcd3gw.Etcd3Client) -> dict[str, Any]:
            return dict(client.post(client.get_url("/kv/range"), json=request))

        response = self._cluster.attempt(read, self._request_timeout_s)
        revision = int(response["header"]["revision"])
        kvs = response.get("kvs") or []
        if kvs and self._snapshotter is not None and (self._index_of(_unb64(kvs[0]["key"])) or 0) > first:
            return revision, self._catch_up_from_snapshot(first)  # the next entries were compacted away
        batch: list[tuple[int, Command | None]] = []
        expected = first
        gap = False
        for kv in kvs:
            index = self._index_of(_unb64(kv["key"]))
            if index != expected:  # compacted (and no snapshotter here), or not this backend's log
                gap = True
                if self._gap_at != expected:
                    log.error(
                        "the log under %s lacks entry %d (found %r)%s",
                        self._log_prefix,
                        expected,
                        index,
                        "" if self._snapshotter else ": compacted? this node has no snapshotter",
                    )
                self._gap_at = expected
                break
            batch.append((index, self._decode(index, kv.get("value", ""))))
            expected += 1
        if batch:
            self._fetched_index = batch[-1][0]
            self._note_index(self._fetched_index)
            assert self._loop is not None and self._inbox is not None
            self._loop.call_soon_threadsafe(self._inbox.put_nowait, batch)
        return revision, bool(response.get("more")) and not gap

    # --- snapshots (the follower thread reads them, the snapshot thread writes them) -----------------

    def _read_header(self, client: etcd3gw.Etcd3Client) -> _Header:
        response = dict(client.post(client.get_url("/kv/range"), json={"key": _b64(self._snapshot_key)}))
        kvs = response.get("kvs") or []
        if not kvs:
            return _Header.absent()
        data = json.loads(_unb64(kvs[0].get("value", "")))
        return _Header(
            int(data["index"]),
            int(data["chunks"]),
            int(data["size"]),
            str(data["sha256"]),
            int(kvs[0]["mod_revision"]),
        )

    def _read_chunk(self, index: int, chunk: int, client: etcd3gw.Etcd3Client) -> bytes | None:
        request = {"key": _b64(self._snapshot_data_key(index, chunk))}
        kvs = dict(client.post(client.get_url("/kv/range"), json=request)).get("kvs") or []
        return _unb64(kvs[0].get("value", "")) if kvs else None

    def _read_snapshot(self) -> tuple[_Header, bytes | None]:
        """The latest snapshot's header and its bytes: None when there is none, or when a newer
        snapshot replaced its chunks while they were read."""
        header = self._cluster.attempt(self._read_header, self._request_timeout_s)
        if header.mod_revision == 0:
            return header, None
        parts: list[bytes] = []
        for chunk in range(header.chunks):
            part = self._cluster.attempt(
                functools.partial(self._read_chunk, header.index, chunk), self._request_timeout_s
            )
            if part is None:
                return header, None
            parts.append(part)
        data = b"".join(parts)
        if len(data) != header.size or hashlib.sha256(data).hexdigest() != header.sha256:
            return header, None
        return header, data

    def _catch_up_from_snapshot(self, needed: int) -> bool:
        """The follower's next index, `needed`, was compacted away: hand the loop the latest
        snapshot and go on after it. Whether it did (False: no snapshot covers `needed`)."""
        for _ in range(SNAPSHOT_READ_ATTEMPTS):
            header, data = self._read_snapshot()
            if header.mod_revision == 0 or header.index < needed:
                break
            if data is None:
                continue  # replaced while it was read: read the newer one
            self._fetched_index = header.index
            self._note_index(header.index)
            with self._lock:
                self._snapshot_index = max(self._snapshot_index, header.index)
                self._gap_at = None
            assert self._loop is not None and self._inbox is not None
            self._loop.call_soon_threadsafe(self._inbox.put_nowait, _Restore(header.index, data))
            log.info(
                "%s: entry %d was compacted; restoring the snapshot at %d", self.node_id, needed, header.index
            )
            return True
        else:
            raise _Unavailable("the snapshot changed under every read")
        if self._gap_at != needed:
            log.error("%s: entry %d is compacted away and no snapshot covers it", self.node_id, needed)
        self._gap_at = needed
        return False

    def _write_snapshots(self) -> None:
        """The snapshot thread: write each snapshot the loop hands over (see the module's docstring)."""
        while True:
            handed = self._snapshots.get()
            if handed is None or self._stopping.is_set():
                break
            index, data, gap = handed
            try:
                # A failed write is tried again a few times: the next chance would otherwise come
                # only with the next batch of commands, and a quiet log may not have one for long.
                for attempt in range(SNAPSHOT_ATTEMPTS):
                    try:
                        self._write_snapshot(index, data, gap)
                        break
                    except (_Unavailable, _Rejected, KeyError, TypeError, ValueError) as exc:
                        with self._lock:
                            self._snapshot_errors += 1
                        log.warning(
                            "%s: the snapshot at %d was not written (try %d): %s",
                            self.node_id,
                            index,
                            attempt + 1,
                            _describe(exc),
                        )
                        if self._stopping.wait(SNAPSHOT_RETRY_S):
                            break
            finally:
                with self._lock:
                    self._snapshot_busy = False
                # Entries applied while it was written found the writer busy: look again now, or
                # a log that then falls quiet would keep them until the next batch of commands.
                loop = self._loop
                if loop is not None and not self._stopping.is_set():
                    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                        loop.call_soon_threadsafe(self._maybe_snapshot)

    def _write_snapshot(self, index: int, data: bytes, gap: int) -> None:
        """Write the snapshot at `index` unless the latest one is fewer than `gap` entries behind
        it; compact the log below it in the transaction that makes it the latest."""
        timeout = self._request_timeout_s
        header = self._cluster.call(self._read_header, 3 * timeout, timeout)
        with self._lock:
            self._snapshot_index = max(self._snapshot_index, header.index)
        if index - header.index < gap:
            return  # another node compacted recently enough
        chunks = [data[start : start + CHUNK_BYTES] for start in range(0, len(data), CHUNK_BYTES)] or [b""]
        for number, chunk in enumerate(chunks):
            if self._stopping.is_set():
                return
            key, value = self._snapshot_data_key(index, number), base64.b64encode(chunk).decode("ascii")
            put = functools.partial(_post, "/kv/put", {"key": _b64(key), "value": value})
            self._cluster.call(put, 3 * timeout, timeout)
        value = json.dumps(
            {
                "index": index,
                "chunks": len(chunks),
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        snapshot_key = _b64(self._snapshot_key)
        unchanged = (
            {"key": snapshot_key, "target": "MOD", "result": "EQUAL", "mod_revision": header.mod_revision}
            if header.mod_revision
            else {"key": snapshot_key, "target": "CREATE", "result": "EQUAL", "create_revision": 0}
        )
        txn = {
            "compare": [
                unchanged,
                {"key": _b64(self._log_key(index)), "target": "VERSION", "result": "GREATER", "version": 0},
            ],
            "success": [
                {"request_put": {"key": snapshot_key, "value": _b64(value)}},
                {
                    "request_delete_range": {
                        "key": _b64(self._log_prefix),
                        "range_end": _b64(self._log_key(index)),
                    }
                },
                {
                    "request_delete_range": {
                        "key": _b64(self._snapshot_data_prefix),
                        "range_end": _b64(self._snapshot_data_key(index)),
                    }
                },
            ],
            "failure": [],
        }
        response = self._cluster.call(lambda client: _transaction(client, txn), 3 * timeout, timeout)
        if response.get("succeeded"):
            with self._lock:
                self._snapshot_index = max(self._snapshot_index, index)
                self._snapshots_written += 1
            log.info("%s wrote the snapshot at %d and compacted the log below it", self.node_id, index)
            return
        # lost to another snapshot (or to an answer lost on the way): drop these chunks unless
        # the header now names this very index (equal bytes: a node's snapshot at an index is any node's)
        now = self._cluster.call(self._read_header, 3 * timeout, timeout)
        with self._lock:
            self._snapshot_index = max(self._snapshot_index, now.index)
        if now.index == index:
            return
        prefix = self._snapshot_data_key(index)
        current = (
            {"key": snapshot_key, "target": "MOD", "result": "EQUAL", "mod_revision": now.mod_revision}
            if now.mod_revision
            else {"key": snapshot_key, "target": "CREATE", "result": "EQUAL", "create_revision": 0}
        )
        drop = {
            "compare": [current],
            "success": [
                {"request_delete_range": {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))}}
            ],
            "failure": [],
        }
        self._cluster.call(lambda client: _transaction(client, drop), 3 * timeout, timeout)

    def _maybe_snapshot(self) -> None:
        """On the loop, after a batch: hand the writer a snapshot once the log runs `max_entries`
        past the latest one (this node leads) or twice that (it does not)."""
        if self._snapshotter is None or self._stopping.is_set():
            return
        gap = self._max_entries if self.is_leader() else 2 * self._max_entries
        with self._lock:
            if self._snapshot_busy or self._applied_index - self._snapshot_index < gap:
                return
            self._snapshot_busy = True
        try:
            index, data = self._snapshotter.take()
        except Exception:
            log.exception("%s: taking a snapshot failed", self.node_id)
            index, data = 0, b""
        if not 0 < index <= self._applied_index:
            with self._lock:
                self._snapshot_busy = False
                self._snapshot_errors += 1
            if index:
                log.error(
                    "%s: a snapshot at %d is not within the applied index %d",
                    self.node_id,
                    index,
                    self._applied_index,
                )
            return
        self._snapshots.put((index, bytes(data), gap))

    def _decode(self, index: int, value: str) -> Command | None:
        try:
            return command_from_json(_unb64(value))
        except ValueError as exc:
            log.error("entry %d under %s is skipped: %s", index, self._log_prefix, exc)
            return None

    async def _apply_forever(self) -> None:
        assert self._inbox is not None
        while True:
            batch = await self._inbox.get()
            if isinstance(batch, _Restore):
                self._restore(batch)
                continue
            for index, command in batch:
                if index != self._applied_index + 1:  # the follower hands each index over once
                    log.error("entry %d arrived after %d; ignored", index, self._applied_index)
                    continue
                if command is None:
                    self._skipped_entries += 1
                else:
                    try:
                        result = self._applier(index, command)
                        if inspect.isawaitable(result):
                            await result
                    except Exception:
                        self._apply_errors += 1
                        log.exception(
                            "applying entry %d (%s) failed on %s", index, command.type, self.node_id
                        )
                self._applied_index = index
                for future in self._waiters.pop(index, ()):
                    if not future.done():
                        future.set_result(None)
            self._maybe_snapshot()

    def _restore(self, snapshot: _Restore) -> None:
        """On the loop: the owner's state becomes the snapshot's; applied up to its index."""
        if snapshot.index <= self._applied_index:
            return
        assert self._snapshotter is not None  # the follower restores only with one
        try:
            self._snapshotter.restore(snapshot.index, snapshot.data)
            self._restores += 1
        except Exception:
            self._restore_errors += 1
            log.exception("%s: restoring the snapshot at %d failed", self.node_id, snapshot.index)
        self._applied_index = snapshot.index
        for index in [index for index in self._waiters if index <= snapshot.index]:
            for future in self._waiters.pop(index):
                if not future.done():
                    future.set_result(None)

    # --- lease, leader, members (the session thread) ---------------------------------------------

    def _lead(self) -> None:
        watcher: Watcher | None = None
        try:
            while not self._stopping.is_set():
                if self._loop is not None and self._loop.is_closed():
                    return  # the site's loop is gone without a stop(): let the lease go
                started = time.monotonic()
                self._session_bell.clear()
                revision: int | None = None
                error: str | None = None
                try:
                    revision = self._session_round()
                except (_Unavailable, _Rejected) as exc:
                    error = str(exc)
                except (KeyError, TypeError, ValueError) as exc:  # an answer not shaped as expected
                    log.exception("%s: the session round failed", self.node_id)
                    error = _describe(exc)
                _close(watcher)
                watcher = None
                if revision is not None and not self._stopping.is_set():
                    try:  # wakes this thread as soon as the leader key changes
                        watcher = self._cluster.attempt(
                            functools.partial(
                                self._cluster.watch,
                                key=self._leader_key,
                                range_end=None,
                                start_revision=revision + 1,
                                ring=self._session_bell,
                            ),
                            self._session_timeout_s,
                        )
                    except (_Unavailable, _Rejected) as exc:
                        error = str(exc)
                self._report("session", error)
                self._session_bell.wait(max(0.0, self._keepalive_s - (time.monotonic() - started)))
        finally:
            _close(watcher)
            if self._revoke_on_stop:
                self._revoke()

    def _session_round(self) -> int:
        """Grant or renew the lease, claim the leader key if it is free, read the leader and the
        members; the revision of that read."""
        if self._lease_id is not None:
            lease_id = self._lease_id
            sent = time.monotonic()
            ttl = self._cluster.call(
                lambda client: etcd3gw.Lease(lease_id, client).refresh(),
                self._session_timeout_s,
                self._session_timeout_s,
            )
            if ttl > 0:
                with self._lock:
                    self._lease_deadline = sent + ttl
            else:  # expired (etcd did not hear from us for a lease): leader and member keys are gone
                log.warning("%s lost its lease %x; taking a new one", self.node_id, lease_id)
                with self._lock:
                    self._lease_id = None
                    self._lease_deadline = 0.0
        if self._lease_id is None:
            if self._stopping.is_set():
                raise _Rejected("stopping")
            self._grant()
        return self._campaign()

    def _grant(self) -> None:
        sent = time.monotonic()
        lease = self._cluster.call(
            lambda client: client.lease(self._ttl_s), self._session_timeout_s, self._session_timeout_s
        )
        with self._lock:
            self._lease_id = lease.id
            self._lease_deadline = sent + self._ttl_s
        self._put_member(lease.id)

    def _put_member(self, lease_id: int) -> None:
        key = f"{self._members_prefix}{self.node_id}"
        self._cluster.call(
            lambda client: client.put(key, self.node_id, lease=etcd3gw.Lease(lease_id, client)),
            self._session_timeout_s,
            self._session_timeout_s,
        )

    def _campaign(self) -> int:
        lease_id = self._lease_id
        assert lease_id is not None
        leader_key = _b64(self._leader_key)
        reads = [{"request_range": self._members_range()}, {"request_range": self._last_entry_range()}]
        txn = {
            "compare": [{"key": leader_key, "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
            "success": [
                {"request_put": {"key": leader_key, "value": _b64(self.node_id), "lease": lease_id}},
                *reads,
            ],
            "failure": [{"request_range": {"key": leader_key}}, *reads],
        }
        sent = time.monotonic()
        response = self._cluster.call(
            lambda client: _transaction(client, txn), self._session_timeout_s, self._session_timeout_s
        )
        revision = int(response["header"]["revision"])
        responses = response["responses"]
        if response.get("succeeded"):
            leader: str | None = self.node_id
            leader_lease, term = lease_id, revision
            log.info("%s is the leader (term %d)", self.node_id, term)
        else:
            kvs = responses[0]["response_range"].get("kvs") or []
            leader = _unb64(kvs[0].get("value", "")).decode(errors="replace") if kvs else None
            leader_lease = int(kvs[0].get("lease", 0)) if kvs else 0
            term = int(kvs[0].get("create_revision", 0)) if kvs else 0
        member_keys = responses[-2]["response_range"].get("kvs") or []
        members = tuple(
            sorted(
                _unb64(kv["key"]).decode(errors="replace")[len(self._members_prefix) :] for kv in member_keys
            )
        )
        self._note_index(self._last_index_in(responses[-1]["response_range"]))
        with self._lock:
            self._leader, self._leader_lease, self._leader_seen_at = leader, leader_lease, sent
            self._term = max(self._term, term)
            self._members = members
        if self.node_id not in members and not self._stopping.is_set():
            self._put_member(lease_id)  # someone deleted it
        return revision

    def _revoke(self) -> None:
        lease_id = self._lease_id
        if lease_id is None:
            return
        try:
            self._cluster.call(
                lambda client: etcd3gw.Lease(lease_id, client).revoke(),
                self._request_timeout_s,
                self._request_timeout_s,
            )
        except (_Unavailable, _Rejected) as exc:
            log.warning(
                "%s could not revoke its lease (it expires in %d s): %s", self.node_id, self._ttl_s, exc
            )
        with self._lock:
            self._lease_id = None
            self._lease_deadline = 0.0
            if self._leader == self.node_id:
                self._leader = None
