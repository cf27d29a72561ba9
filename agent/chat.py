"""The operator agent: one strands `Agent` per chat session, driving the site's tools.

Sessions are kept in memory (a `MemoryCache`: bounded count, idle TTL) and their conversations are also written
to the site cache after every turn — so to Redis when Redis is configured — which lets a session
survive the site's restart. Each session belongs to the API key that made it: another key gets
the same 404 as for an unknown id. Each session has its own model object and policy, and a lock
so one session runs one turn at a time.

Chat is kept from crowding out the fast path: each key has a turn rate (token bucket, 429 with
`Retry-After` above it) and the site runs at most `max_concurrent_turns` turns at once (503 with
`Retry-After` after a short bounded wait); both are checked before any model work starts (see
`ChatService.admitted`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from strands import Agent
from strands.agent import ModelRetryStrategy, SlidingWindowConversationManager
from strands.models.model import Model
from strands.types.content import Messages
from strands.types.exceptions import MaxTokensReachedException
from strands.types.tools import AgentTool

from agent.errors import SiteError
from agent.limits import MutationLimiter, TokenBucket
from agent.policy import CALLER_KEY, Caller, ToolCallRecord, ToolPolicy
from agent.scopes import Principal
from tools.cache_manager import CacheManager
from tools.caches.memory import MemoryCache

log = logging.getLogger(__name__)

SESSION_NAMESPACE = "_chat_sessions"


class ChatSettings(Protocol):
    """What the chat service reads of the site's settings (`config.settings.Settings` has it).

    `model_timeout_s` is one model call's limit; a turn (several calls and tools) may take four."""

    chat_max_sessions: int
    chat_session_ttl_s: float
    chat_window_messages: int
    chat_mutations_per_minute: int
    chat_turns_per_minute: float
    chat_burst: int
    chat_max_concurrent_turns: int
    model_timeout_s: float

    @property
    def services(self) -> Mapping[str, object]:
        """The site's services by name: the only ones the agent may start or scale."""

    @property
    def image_allowlist(self) -> Sequence[str]:
        """Images the agent may start."""


@dataclass
class ChatReply:
    reply: str
    session_id: str
    tool_calls: list[dict[str, Any]]
    model: str
    usage: dict[str, int]
    latency_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "reply": self.reply,
            "session_id": self.session_id,
            "tool_calls": self.tool_calls,
            "model": self.model,
            "usage": self.usage,
            "latency_ms": self.latency_ms,
        }


@dataclass
class _Session:
    id: str
    owner: str
    """The key id of the API key that made the session."""
    agent: Agent
    model: Model
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tokens_so_far: dict[str, int] = field(default_factory=dict)

    def turn_usage(self, accumulated: dict[str, Any]) -> dict[str, int]:
        """This turn's tokens: strands accumulates usage over the agent's life."""
        usage = {}
        for ours, theirs in (
            ("input_tokens", "inputTokens"),
            ("output_tokens", "outputTokens"),
            ("total_tokens", "totalTokens"),
        ):
            total = int(accumulated.get(theirs, 0))
            usage[ours] = total - self.tokens_so_far.get(ours, 0)
            self.tokens_so_far[ours] = total
        return usage


def model_name(model: Model) -> str:
    """Which model served the last turn: a fallback chain's `served_by`, else the model id."""
    served = getattr(model, "served_by", None)
    if served:
        return str(served)
    config = model.get_config() if hasattr(model, "get_config") else {}
    model_id = config.get("model_id") if isinstance(config, dict) else None
    return str(model_id or type(model).__name__)


def _load_record(stored: bytes) -> dict[str, Any] | None:
    """A saved session: `{"owner": key id, "messages": [...]}`; None for anything else."""
    try:
        record = json.loads(stored)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        return None
    if not isinstance(record.get("owner"), str):
        return None
    return record


def _reply_text(message: dict[str, Any]) -> str:
    return "".join(block.get("text", "") for block in message.get("content", []) if "text" in block).strip()


class ChatService:
    """Runs chat turns for operators (and free-text client requests) on per-session agents."""

    TURN_QUEUE_S = 1.0
    """Longest a turn waits for one of the site's turn slots before it is refused (503)."""
    REFUSAL_HOLD_S = 1.0
    """Longest a rate-limited turn's 429 is held back (see `admitted`)."""
    MAX_HELD_REFUSALS = 64
    """Refusals held back at once per key; beyond that they are sent at once."""

    def __init__(
        self,
        settings: ChatSettings,
        system_prompt: str,
        tools: Sequence[AgentTool],
        model_factory: Callable[[], Model],
        store: CacheManager,
    ) -> None:
        self.settings = settings
        self.system_prompt = system_prompt
        self.services = tuple(settings.services)
        self.image_allowlist = tuple(settings.image_allowlist)
        self.turn_timeout_s = settings.model_timeout_s * 4
        self.tools = list(tools)
        self.model_factory = model_factory
        self.store = store
        self._sessions: MemoryCache[_Session] = MemoryCache(settings.chat_max_sessions)
        self.turns: dict[tuple[str, str], int] = {}
        self.mutations = MutationLimiter(settings.chat_mutations_per_minute)
        self.turn_rate = TokenBucket(settings.chat_turns_per_minute / 60.0, settings.chat_burst)
        self.running_turns = 0
        self.refused: dict[str, int] = {"rate_limited": 0, "chat_busy": 0}
        self._slots = asyncio.Semaphore(settings.chat_max_concurrent_turns)
        self._waiting = 0
        self._held: dict[str, int] = {}

    def _new_agent(self, messages: list[dict[str, Any]] | None = None) -> tuple[Agent, Model]:
        model = self.model_factory()
        policy = ToolPolicy(
            self.services,
            self.image_allowlist,
            self.settings.chat_mutations_per_minute,
            limiter=self.mutations,
        )
        agent = Agent(
            model=model,
            messages=cast(Messages, messages or []),
            tools=list[Any](self.tools),
            system_prompt=self.system_prompt,
            conversation_manager=SlidingWindowConversationManager(
                window_size=self.settings.chat_window_messages
            ),
            hooks=[policy],
            callback_handler=None,
            # strands' default (6 attempts, 4 s doubling) would outlast the turn's deadline when a
            # model is throttled; the fallback chain is the better answer to a failing model.
            retry_strategy=ModelRetryStrategy(max_attempts=2, initial_delay=1),
        )
        return agent, model

    def _keep(self, session: _Session) -> None:
        """Keep a session in memory for another idle lifetime (the least recent one goes at the
        bound)."""
        self._sessions.set(SESSION_NAMESPACE, session.id, session, self.settings.chat_session_ttl_s)

    async def _session(self, session_id: str | None, owner: str) -> _Session:
        if session_id is None:
            agent, model = self._new_agent()
            session = _Session(uuid.uuid4().hex, owner, agent, model)
            self._keep(session)
            return session
        unknown = SiteError(
            404, "unknown_session", f"no chat session {session_id!r} (expired?)", "session_id"
        )
        found = self._sessions.get(SESSION_NAMESPACE, session_id)
        if found is None:
            stored = await self.store.get(SESSION_NAMESPACE, session_id)
            record = _load_record(stored) if stored is not None else None
            if record is None or record["owner"] != owner:
                raise unknown
            agent, model = self._new_agent(record["messages"])
            session = _Session(session_id, owner, agent, model)
        elif found.owner != owner:
            # Another key's session is indistinguishable from one that does not exist.
            raise unknown
        else:
            session = found
        self._keep(session)
        return session

    async def _save(self, session: _Session) -> None:
        record = {"v": 1, "owner": session.owner, "messages": session.agent.messages}
        data = json.dumps(record, default=str).encode()
        await self.store.set(SESSION_NAMESPACE, session.id, data, self.settings.chat_session_ttl_s)

    @asynccontextmanager
    async def admitted(self, caller: Principal) -> AsyncIterator[None]:
        """Hold one of the site's turn slots for a turn of `caller`, or refuse it.

        * Over the key's rate: 429 `rate_limited` with `Retry-After`. The refusal is held back
          about as long as `Retry-After` (at most `REFUSAL_HOLD_S`, jittered; at most
          `MAX_HELD_REFUSALS` per key at a time, beyond that it is sent at once): a client that
          ignores `Retry-After` and floods the site then costs a sleeping task per request, not a
          busy loop of rejections that starves the fast path (nginx's `limit_req` delays excess
          requests for the same reason).
        * All `chat_max_concurrent_turns` slots busy: wait for one up to `TURN_QUEUE_S` (at most
          that many waiters), else 503 `chat_busy` with `Retry-After`.
        """
        key = caller.key_id
        wait_s = self.turn_rate.take(key)
        if wait_s > 0:
            self.refused["rate_limited"] += 1
            retry_after_s = TokenBucket.retry_after_s(wait_s)
            held = self._held.get(key, 0)
            if held < self.MAX_HELD_REFUSALS:
                self._held[key] = held + 1
                try:
                    # About as long as Retry-After asks anyway, jittered so that a flood's
                    # connections do not all come back at once.
                    hold_s = min(retry_after_s, self.REFUSAL_HOLD_S) * random.uniform(0.5, 1.0)
                    await asyncio.sleep(hold_s)
                finally:
                    self._held[key] -= 1
            raise SiteError(
                429,
                "rate_limited",
                f"this key may start {self.settings.chat_turns_per_minute:g} chat turns a minute "
                f"(bursts of {self.settings.chat_burst}); retry later",
                retry_after_s=retry_after_s,
            )
        busy = SiteError(
            503,
            "chat_busy",
            f"the site already runs {self.settings.chat_max_concurrent_turns} chat turns; retry shortly",
            retry_after_s=1,
        )
        if self._slots.locked() and self._waiting >= self.settings.chat_max_concurrent_turns:
            self.refused["chat_busy"] += 1
            raise busy
        self._waiting += 1
        try:
            async with asyncio.timeout(self.TURN_QUEUE_S):
                await self._slots.acquire()
        except TimeoutError:
            self.refused["chat_busy"] += 1
            raise busy from None
        finally:
            self._waiting -= 1
        self.running_turns += 1
        try:
            yield
        finally:
            self.running_turns -= 1
            self._slots.release()

    async def chat(
        self,
        message: str,
        caller: Principal,
        session_id: str | None = None,
        confirm: bool = False,
        timeout_s: float | None = None,
        persist: bool = True,
        read_only: bool = False,
    ) -> ChatReply:
        """Run one turn and return the reply with its tool calls, model, usage and latency."""
        final: ChatReply | None = None
        async for kind, payload in self.stream(
            message, caller, session_id, confirm, timeout_s, persist, read_only
        ):
            if kind == "done":
                final = payload
        assert final is not None
        return final

    async def stream(
        self,
        message: str,
        caller: Principal,
        session_id: str | None = None,
        confirm: bool = False,
        timeout_s: float | None = None,
        persist: bool = True,
        read_only: bool = False,
    ) -> AsyncIterator[tuple[str, Any]]:
        """Run one turn, yielding ("session", id), ("text", delta), ("tool_start"/"tool_end", record)
        as they happen and finally ("done", ChatReply). Failures raise `SiteError`.

        Admission (`admitted`) comes first, so no path can skip it. `read_only` refuses every change.
        """
        started = time.perf_counter()
        async with self.admitted(caller):
            session = await self._session(session_id, caller.key_id)
            if session.lock.locked():
                raise SiteError(409, "session_busy", "this session is already running a turn", "session_id")
            events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

            def on_tool_event(kind: str, record: ToolCallRecord) -> None:
                events.put_nowait((kind, record.to_dict()))

            turn_caller = Caller(
                session.id,
                caller.scopes,
                confirm,
                on_tool_event=on_tool_event,
                key_id=caller.key_id,
                read_only=read_only,
            )
            async for item in self._run_turn(
                session, message, turn_caller, events, started, timeout_s, persist
            ):
                yield item

    async def _run_turn(
        self,
        session: _Session,
        message: str,
        caller: Caller,
        events: asyncio.Queue[tuple[str, Any]],
        started: float,
        timeout_s: float | None,
        persist: bool,
    ) -> AsyncIterator[tuple[str, Any]]:
        async with session.lock:
            yield "session", session.id
            result = None
            budget_s = timeout_s or self.turn_timeout_s
            stream = session.agent.stream_async(message, invocation_state={CALLER_KEY: caller})
            try:
                # One task drives the whole turn (strands' tracing context must not cross tasks),
                # under one deadline for the turn.
                async with asyncio.timeout(budget_s):
                    async for event in stream:
                        while not events.empty():
                            yield events.get_nowait()
                        if event.get("data"):
                            yield "text", event["data"]
                        if "result" in event:
                            result = event["result"]
            except TimeoutError:
                await stream.aclose()  # type: ignore[attr-defined]  # an async generator
                self._drop(session)
                self._count(session, "timeout")
                raise SiteError(
                    504, "model_timeout", "the model did not finish within the time allowed"
                ) from None
            except asyncio.CancelledError:
                # The caller went away mid-turn (e.g. an SSE client disconnected): the agent's
                # history may hold half a turn, so forget it; the saved history stays.
                self._drop(session)
                raise
            except SiteError:
                raise
            except Exception as exc:
                self._drop(session)
                self._count(session, "error")
                cause = exc.__cause__ if type(exc).__name__ == "EventLoopException" and exc.__cause__ else exc
                log.warning("chat turn failed on %s: %s", model_name(session.model), cause)
                if isinstance(cause, MaxTokensReachedException):
                    raise SiteError(
                        502,
                        "model_output_truncated",
                        "the model reached its output limit (MEC_MODEL_MAX_TOKENS) before finishing its answer",
                    ) from exc
                raise SiteError(
                    503, "model_unavailable", f"the model failed: {type(cause).__name__}: {str(cause)[:300]}"
                ) from exc
            while not events.empty():
                yield events.get_nowait()
            if result is None:
                raise SiteError(503, "model_unavailable", "the model returned no result")
            if persist:
                await self._save(session)
            else:
                self._sessions.delete(SESSION_NAMESPACE, session.id)
            usage = session.turn_usage(dict(result.metrics.accumulated_usage))
            self._count(session, "ok")
            yield (
                "done",
                ChatReply(
                    reply=_reply_text(result.message),
                    session_id=session.id,
                    tool_calls=[record.to_dict() for record in caller.tool_calls],
                    model=model_name(session.model),
                    usage=usage,
                    latency_ms=round((time.perf_counter() - started) * 1000, 3),
                ),
            )

    def _drop(self, session: _Session) -> None:
        """Forget a session's in-memory agent after a failed turn; its saved history stays."""
        self._sessions.delete(SESSION_NAMESPACE, session.id)

    def _count(self, session: _Session, outcome: str) -> None:
        key = (model_name(session.model), outcome)
        self.turns[key] = self.turns.get(key, 0) + 1

    @property
    def active_sessions(self) -> int:
        """Sessions held in memory and not yet idle past their lifetime."""
        return self._sessions.namespaces().get(SESSION_NAMESPACE, 0)
