"""The fallback chain (`FallbackModel`), with in-process models and a real misbehaving endpoint.

The OpenAI-compatible failures are real: a stdlib HTTP server on a loopback port answers with a
500, a 429, an unparseable body, or closes the connection, and a port with nothing listening
refuses it. The `openai` client and strands' `OpenAIModel` run unmodified against them.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import BaseModel
from strands import Agent
from strands.models.model import Model
from strands.types.exceptions import ContextWindowOverflowException, ModelThrottledException
from strands.types.streaming import StreamEvent

from agent.models.build import UnavailableModel, build_model
from agent.models.fallback import ChainLink, FallbackModel, ModelChainError, ModelStreamInterruptedError
from agent.models.offline import ModelCall, OfflineModel, Reply
from agent.models.scripted import ScriptedModel, Turn
from config.settings import Settings
from tools.runtimes.base import free_port

SERVICES = ("inference", "sensor", "game-state")


def answers(*texts: str) -> ScriptedModel:
    """A model that answers its calls with these texts, in order."""
    return ScriptedModel([Turn(text=text) for text in texts])


def fails(error: Exception) -> ScriptedModel:
    """A model whose (single) call raises `error` before producing any event."""
    return ScriptedModel([Turn(raises=error)])


def calls(model: ScriptedModel) -> int:
    return len(model.requests)


class BrokenMidway(OfflineModel):
    """Streams the first `after` events of a reply, then raises `error` (ScriptedModel raises
    only before its first event, so mid-stream failures need this)."""

    def __init__(self, error: Exception, after: int) -> None:
        super().__init__("broken-midway")
        self.error = error
        self.after = after

    def reply(self, call: ModelCall) -> Reply:
        return Reply(["partial answer"])

    async def stream(self, *args: Any, **kwargs: Any) -> AsyncGenerator[StreamEvent, None]:
        number = 0
        async for event in super().stream(*args, **kwargs):
            if number == self.after:
                raise self.error
            yield event
            number += 1


def chain(*links: tuple[str, Model], local: Sequence[str] = (), busy: bool = False) -> FallbackModel:
    return FallbackModel(
        [ChainLink(label, model, local=label in local) for label, model in links], overloaded=lambda: busy
    )


async def collect(model: Model) -> list[StreamEvent]:
    return [event async for event in model.stream([{"role": "user", "content": [{"text": "hi"}]}])]


def reply_text(result: Any) -> str:
    return "".join(block.get("text", "") for block in result.message["content"])


# ---- the chain with in-process models ----


async def test_fallback_moves_on_and_reports_served_by() -> None:
    broken = fails(ConnectionRefusedError("nothing listens"))
    backup = answers("from backup")
    model = chain(("openai-compatible", broken), ("rules", backup))
    agent = Agent(model=model, callback_handler=None)

    result = await agent.invoke_async("status?")

    assert reply_text(result) == "from backup"
    assert model.served_by == "rules"
    assert [(a.label, a.outcome) for a in model.attempts] == [
        ("openai-compatible", "failed"),
        ("rules", "served"),
    ]
    assert "ConnectionRefusedError" in (model.attempts[0].error or "")
    assert calls(broken) == 1 and calls(backup) == 1


async def test_primary_serves_when_healthy() -> None:
    primary, backup = answers("primary"), answers("backup")
    model = chain(("bedrock", primary), ("rules", backup))
    assert model.served_by is None

    events = await collect(model)

    assert model.served_by == "bedrock"
    assert calls(backup) == 0
    assert [a.outcome for a in model.attempts] == ["served"]
    assert sum("messageStart" in event for event in events) == 1


async def test_events_before_content_are_dropped_with_the_failed_model() -> None:
    # messageStart got out, then the model broke: the caller must see one clean message only.
    model = chain(
        ("openai-compatible", BrokenMidway(ValueError("bad chunk"), after=1)), ("rules", answers("ok"))
    )

    events = await collect(model)

    assert sum("messageStart" in event for event in events) == 1
    texts = [e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e]
    assert texts == ["ok"]
    assert model.served_by == "rules"


async def test_failure_mid_answer_fails_the_turn_without_fallback() -> None:
    # after=3: messageStart, contentBlockStart, one text delta went out before the error.
    broken = BrokenMidway(ConnectionResetError("peer went away"), after=3)
    backup = answers("backup")
    model = chain(("openai-compatible", broken), ("rules", backup))
    deltas: list[str] = []
    agent = Agent(model=model, callback_handler=lambda **event: deltas.append(event.get("data", "")))

    with pytest.raises(ModelStreamInterruptedError, match="openai-compatible") as caught:
        await agent.invoke_async("status?")

    assert isinstance(caught.value.__cause__, ConnectionResetError)
    assert calls(backup) == 0
    assert "".join(deltas) == "partial answer"
    assert [(a.label, a.outcome) for a in model.attempts] == [("openai-compatible", "interrupted")]
    assert agent.messages[-1]["role"] == "user"  # nothing half-written was kept


async def test_overload_skips_the_local_model() -> None:
    local, remote = answers("local"), answers("remote")
    busy = [True]
    model = FallbackModel(
        [ChainLink("openai-compatible", local, local=True), ChainLink("bedrock", remote)],
        overloaded=lambda: busy[0],
    )

    await collect(model)
    assert model.served_by == "bedrock"
    assert calls(local) == 0
    assert [(a.label, a.outcome) for a in model.attempts] == [
        ("openai-compatible", "skipped"),
        ("bedrock", "served"),
    ]

    busy[0] = False
    await collect(model)
    assert model.served_by == "openai-compatible"
    assert calls(local) == 1


async def test_overload_with_only_local_models_still_answers() -> None:
    local = answers("local")
    model = chain(("openai-compatible", local), local=["openai-compatible"], busy=True)

    await collect(model)

    assert model.served_by == "openai-compatible"


async def test_a_failing_overload_check_counts_as_not_overloaded() -> None:
    def broken_check() -> bool:
        raise RuntimeError("no metrics yet")

    local = answers("local")
    model = FallbackModel([ChainLink("openai-compatible", local, local=True)], overloaded=broken_check)

    await collect(model)

    assert model.served_by == "openai-compatible"


async def test_every_model_failing_lists_each_attempt() -> None:
    model = chain(
        ("openai-compatible", fails(ConnectionRefusedError("refused"))),
        ("bedrock", fails(RuntimeError("no credentials"))),
    )

    with pytest.raises(ModelChainError) as caught:
        await collect(model)

    message = str(caught.value)
    assert "openai-compatible: failed (ConnectionRefusedError: refused)" in message
    assert "bedrock: failed (RuntimeError: no credentials)" in message
    assert model.served_by is None


async def test_all_throttled_surfaces_throttling_for_the_agent_to_back_off() -> None:
    model = chain(
        ("openai-compatible", fails(ModelThrottledException("slow down"))),
        ("bedrock", fails(ModelThrottledException("slow down too"))),
    )
    with pytest.raises(ModelThrottledException, match="slow down too"):
        await collect(model)


async def test_context_overflow_surfaces_so_the_agent_can_trim() -> None:
    model = chain(
        ("openai-compatible", fails(ContextWindowOverflowException("too long"))),
        ("bedrock", fails(ConnectionRefusedError("refused"))),
    )
    with pytest.raises(ContextWindowOverflowException):
        await collect(model)


async def test_single_model_failure_is_reraised_unchanged() -> None:
    error = ConnectionRefusedError("refused")
    model = chain(("openai-compatible", fails(error)))
    with pytest.raises(ConnectionRefusedError) as caught:
        await collect(model)
    assert caught.value is error


async def test_unavailable_model_is_passed_over() -> None:
    model = chain(("bedrock", UnavailableModel("bedrock", "no region")), ("rules", answers("ok")))

    await collect(model)

    assert model.served_by == "rules"
    assert model.attempts[0].outcome == "failed"
    assert "ModelUnavailableError" in (model.attempts[0].error or "")


class SilentModel(BrokenMidway):
    """Ends its answer without a single content event."""

    def __init__(self) -> None:
        super().__init__(RuntimeError("unused"), after=-1)

    async def stream(self, *args: Any, **kwargs: Any) -> AsyncGenerator[StreamEvent, None]:
        yield {"messageStart": {"role": "assistant"}}
        yield {"messageStop": {"stopReason": "end_turn"}}


async def test_an_empty_answer_moves_on_unless_it_is_the_last() -> None:
    model = chain(("openai-compatible", SilentModel()), ("rules", answers("ok")))
    await collect(model)
    assert model.served_by == "rules"
    assert "EmptyModelResponseError" in (model.attempts[0].error or "")

    last = chain(("openai-compatible", fails(ConnectionRefusedError())), ("bedrock", SilentModel()))
    events = await collect(last)
    assert last.served_by == "bedrock"
    assert [next(iter(event)) for event in events] == ["messageStart", "messageStop"]


class Verdict(BaseModel):
    healthy: bool


async def test_structured_output_falls_back_too() -> None:
    model = chain(
        ("openai-compatible", fails(ConnectionRefusedError("refused"))),
        ("rules", answers('{"healthy": true}')),
    )

    events = [
        event
        async for event in model.structured_output(Verdict, [{"role": "user", "content": [{"text": "ok?"}]}])
    ]

    assert events[-1]["output"] == Verdict(healthy=True)
    assert model.served_by == "rules"


def test_chain_labels_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        chain(("rules", answers("a")), ("rules", answers("b")))
    with pytest.raises(ValueError, match="at least one"):
        FallbackModel([])


# ---- a real OpenAI-compatible endpoint that misbehaves ----


class MisbehavingServer:
    """A loopback HTTP server whose every answer is broken in the way `mode` says."""

    def __init__(self) -> None:
        self.mode = "500"
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                owner.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if owner.mode == "close":
                    self.close_connection = True
                    return
                status, content_type, body = {
                    "500": (500, "application/json", b'{"error": {"message": "model crashed"}}'),
                    "429": (429, "application/json", b'{"error": {"message": "rate limit reached"}}'),
                    "garbage-json": (200, "application/json", b"{this is not json"),
                    "garbage-sse": (200, "text/event-stream", b"data: {not json either\n\n"),
                    "html": (200, "text/html", b"<html><body>captive portal</body></html>"),
                }[owner.mode]
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> MisbehavingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def misbehaving() -> Iterator[MisbehavingServer]:
    with MisbehavingServer() as server:
        yield server


def local_then_backup(url: str) -> tuple[FallbackModel, ScriptedModel]:
    local = build_model(
        "openai-compatible", Settings(model_url=url, model_id="smol", model_timeout_s=5), SERVICES
    )
    backup = answers("backup answer")
    return chain(("openai-compatible", local), ("rules", backup)), backup


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("500", "InternalServerError"),
        ("429", "ModelThrottledException"),
        ("garbage-json", "EmptyModelResponseError"),
        ("garbage-sse", "JSONDecodeError"),
        ("html", "EmptyModelResponseError"),
        ("close", "APIConnectionError"),
    ],
)
async def test_broken_openai_compatible_server_falls_back(
    misbehaving: MisbehavingServer, mode: str, error: str
) -> None:
    misbehaving.mode = mode
    model, _backup = local_then_backup(misbehaving.url)
    agent = Agent(model=model, callback_handler=None)

    result = await agent.invoke_async("status?")

    assert misbehaving.requests == 1  # no client retries
    assert reply_text(result) == "backup answer"
    assert model.served_by == "rules"
    assert [(a.label, a.outcome) for a in model.attempts] == [
        ("openai-compatible", "failed"),
        ("rules", "served"),
    ]
    assert error in (model.attempts[0].error or "")


async def test_refused_connection_falls_back() -> None:
    model, backup = local_then_backup(f"http://127.0.0.1:{free_port()}/v1")
    await collect(model)

    assert model.served_by == "rules"
    assert "APIConnectionError" in (model.attempts[0].error or "")
    assert calls(backup) == 1
