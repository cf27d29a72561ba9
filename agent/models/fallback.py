"""The fallback chain: a strands `Model` that tries several models in order, one call at a time.

`FallbackModel` holds `ChainLink`s (a label, the model, whether it runs on the site's own
hardware) and commits each call to the first link that starts answering; `ModelAttempt` records
how every link fared in the latest call. `agent.models.build` builds a chain from settings.

Why a `FallbackModel` and not strands' `ModelRouter`: the router (strands 1.62, provisional API) is
an agent plugin rather than a `Model` — it works only inside `Agent(model=...)`, leaves
`agent.model` on the first candidate, and is bypassed by `Agent.structured_output()`. It fails over
on *any* error, including one raised after the failed model already streamed part of its answer
(documented there as a known limitation: a streaming consumer then sees the partial output followed
by the replacement's full answer), and it resets the agent's retry budget through a private
attribute. Fallback here must stop at the first streamed content and say which model served, so a
small wrapper is the more honest fit.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel
from strands.models.model import Model
from strands.types.content import Messages
from strands.types.exceptions import ContextWindowOverflowException, ModelThrottledException
from strands.types.streaming import StreamEvent
from strands.types.tools import ToolSpec

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

# Stream events that carry (part of) the answer. Once one of them has been passed on, the call is
# committed to the model that produced it; `messageStart` and `metadata` are not content.
_CONTENT_KEYS = frozenset({"contentBlockStart", "contentBlockDelta", "contentBlockStop", "redactContent"})


class ModelStreamInterruptedError(RuntimeError):
    """The serving model failed after it had started streaming its answer.

    Falling back at that point would send a second answer after a partial first one, so the turn
    fails instead. This is deliberately not a `ModelThrottledException`: the agent must not retry a
    call whose partial output its consumer has already seen.
    """

    def __init__(self, label: str, cause: BaseException) -> None:
        super().__init__(
            f"model {label!r} failed after it had started answering: {type(cause).__name__}: {cause}"
        )
        self.label = label


class EmptyModelResponseError(RuntimeError):
    """A model ended its answer without any content while another model could still be tried."""


class ModelChainError(RuntimeError):
    """Every model of a fallback chain failed (or was skipped) before producing an answer."""

    def __init__(self, attempts: Sequence[ModelAttempt]) -> None:
        details = "; ".join(attempt.describe() for attempt in attempts)
        super().__init__(f"no model could answer: {details}")
        self.attempts = tuple(attempts)


@dataclass(frozen=True)
class ModelAttempt:
    """How one link of the chain fared in one call.

    outcome:
        ``served`` — it produced the answer; ``failed`` — it raised before any content;
        ``interrupted`` — it raised after content had been streamed (the call failed);
        ``skipped`` — not tried because the site was overloaded (local models only).
    """

    label: str
    outcome: Literal["served", "failed", "interrupted", "skipped"]
    error: str | None = None

    def describe(self) -> str:
        """One line for logs and error messages."""
        return f"{self.label}: {self.outcome}" + (f" ({self.error})" if self.error else "")


@dataclass(frozen=True)
class ChainLink:
    """One model in a fallback chain: a label (its kind), the model, and whether it is local."""

    label: str
    model: Model
    local: bool = False


class FallbackModel(Model):
    """A strands `Model` that tries its links in order until one starts answering.

    Per call (`stream` or `structured_output`):

    1. When ``overloaded()`` returns true, local links (``openai-compatible``) are skipped — unless
       every link is local, in which case they are tried anyway (an overloaded site's operator
       still needs an answer, and there is nowhere else to send the call).
    2. Each remaining link is called in order. Its events are held back until the first content
       event (`contentBlockStart`/`Delta`/`Stop`, `redactContent`; for `structured_output`, any
       event): a link that raises before that — connection refused, timeout, HTTP 5xx, throttling,
       an unparseable response, a missing credential — is recorded as ``failed`` and the next link
       is tried with the same request. Nothing it produced reaches the caller.
    3. From its first content event on, the call is committed to that link: ``served_by`` is set
       and events pass straight through. If it then raises, the call fails with
       `ModelStreamInterruptedError` (no fallback, no duplicated output).
    4. A link that ends its stream without a single content event is treated as failed
       (`EmptyModelResponseError`) when a later link remains — a 200 response whose body is not a
       chunk stream (an HTML page, a bare JSON error) looks exactly like that through strands'
       `OpenAIModel`. The last link's empty answer is passed on as its answer.
    5. When every link failed: a `ContextWindowOverflowException` among the failures is re-raised
       (the agent then trims its context and calls again); if all failures were
       `ModelThrottledException`, the last one is re-raised (the agent backs off and calls again);
       a single failure is re-raised as it was; otherwise `ModelChainError` lists every attempt.

    Attributes (per object, overwritten by each call; safe because a chat session owns one model
    and runs one call at a time):

    served_by:
        The label (model kind: ``rules``, ``openai-compatible`` or ``bedrock``) of the link that
        answered the latest call. Reset to ``None`` when a call starts and set when a link
        commits, so it is ``None`` before the first call and after a call in which no link
        answered, and names the interrupted link after a `ModelStreamInterruptedError`. An agent
        turn with tool use makes several calls; after the turn it names the link of the last one.
    attempts:
        The `ModelAttempt`s of the latest call, in the order the links were considered.
    """

    def __init__(self, links: Sequence[ChainLink], overloaded: Callable[[], bool] | None = None) -> None:
        """Chain `links` (tried in order); `overloaded` is asked once per call."""
        if not links:
            raise ValueError("a fallback chain needs at least one model")
        labels = [link.label for link in links]
        if len(set(labels)) != len(labels):
            raise ValueError(f"fallback chain labels must be unique: {labels}")
        self.links: tuple[ChainLink, ...] = tuple(links)
        self.overloaded = overloaded
        self.served_by: str | None = None
        self.attempts: tuple[ModelAttempt, ...] = ()
        self.config: dict[str, Any] = {"model_id": ">".join(labels)}

    @property
    def labels(self) -> tuple[str, ...]:
        """The chain's labels in order."""
        return tuple(link.label for link in self.links)

    @property
    def context_window_limit(self) -> int | None:
        """The smallest context window any link declares (the conservative choice), or None."""
        limits = [link.model.context_window_limit for link in self.links]
        known = [limit for limit in limits if limit]
        return min(known) if known else None

    def update_config(self, **model_config: Any) -> None:
        """Update the chain's own configuration (not its links', whose keys differ by provider)."""
        self.config.update(model_config)

    def get_config(self) -> dict[str, Any]:
        """The chain's configuration: ``model_id`` is the labels joined by ``>``."""
        return dict(self.config)

    async def count_tokens(self, *args: Any, **kwargs: Any) -> int:
        """Estimate tokens with the first link's estimator."""
        return await self.links[0].model.count_tokens(*args, **kwargs)

    def _links_to_try(self) -> tuple[list[ChainLink], list[ModelAttempt]]:
        """The links to try for this call, and the skipped ones as attempts."""
        busy = False
        if self.overloaded is not None:
            try:
                busy = bool(self.overloaded())
            except Exception:
                log.exception("overload check failed; treating the site as not overloaded")
        if not busy:
            return list(self.links), []
        remote = [link for link in self.links if not link.local]
        if not remote:
            log.info("site overloaded but every model in the chain is local; using them anyway")
            return list(self.links), []
        skipped = [
            ModelAttempt(link.label, "skipped", "site overloaded") for link in self.links if link.local
        ]
        return remote, skipped

    async def _run(
        self,
        call: Callable[[Model], AsyncIterator[Any]],
        is_content: Callable[[Any], bool],
    ) -> AsyncGenerator[Any, None]:
        """Drive `call` over the chain with the commit-on-first-content rule (see the class doc)."""
        self.served_by = None
        links, attempts = self._links_to_try()
        self.attempts = tuple(attempts)
        failures: list[Exception] = []
        for link in links:
            source = call(link.model)
            held: list[Any] = []
            committed = False
            failed = False
            try:
                while True:
                    try:
                        event = await anext(source)
                    except StopAsyncIteration:
                        break
                    except Exception as exc:
                        if committed:
                            attempts.append(ModelAttempt(link.label, "interrupted", _brief(exc)))
                            self.attempts = tuple(attempts)
                            log.warning("model %s failed mid-answer: %s", link.label, _brief(exc))
                            raise ModelStreamInterruptedError(link.label, exc) from exc
                        attempts.append(ModelAttempt(link.label, "failed", _brief(exc)))
                        self.attempts = tuple(attempts)
                        failures.append(exc)
                        failed = True
                        log.warning("model %s failed before answering: %s", link.label, _brief(exc))
                        break
                    if committed:
                        yield event
                        continue
                    held.append(event)
                    if is_content(event):
                        committed = True
                        self.served_by = link.label
                        for waiting in held:
                            yield waiting
                        held.clear()
            finally:
                closer = getattr(source, "aclose", None)
                if closer is not None:
                    await closer()
            if failed:
                continue
            if not committed and link is not links[-1]:
                # Not one content event: a 200 whose body was not a stream of chunks looks exactly
                # like this, so the next link gets the call.
                empty = EmptyModelResponseError(f"model {link.label!r} returned no content")
                attempts.append(ModelAttempt(link.label, "failed", _brief(empty)))
                self.attempts = tuple(attempts)
                failures.append(empty)
                log.warning("model %s returned no content, trying the next one", link.label)
                continue
            if not committed:
                # The last link's empty answer is still an answer (a model may legitimately have
                # nothing to add after a tool result).
                self.served_by = link.label
                for waiting in held:
                    yield waiting
            attempts.append(ModelAttempt(link.label, "served"))
            self.attempts = tuple(attempts)
            return
        raise _chain_failure(failures, attempts)

    async def stream(
        self,
        messages: Messages,
        tool_specs: list[ToolSpec] | None = None,
        system_prompt: str | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream from the first link that answers; see the class docstring for the rules."""

        def call(model: Model) -> AsyncIterator[StreamEvent]:
            return aiter(model.stream(messages, tool_specs, system_prompt, **kwargs))

        async for event in self._run(call, _is_content_event):
            yield event

    async def structured_output(
        self, output_model: type[T], prompt: Messages, system_prompt: str | None = None, **kwargs: Any
    ) -> AsyncGenerator[dict[str, T | Any], None]:
        """Structured output from the first link that yields anything; same fallback rules."""

        def call(model: Model) -> AsyncIterator[dict[str, Any]]:
            return aiter(model.structured_output(output_model, prompt, system_prompt, **kwargs))

        async for event in self._run(call, lambda _event: True):
            yield event


def _is_content_event(event: Any) -> bool:
    return isinstance(event, dict) and not _CONTENT_KEYS.isdisjoint(event)


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _chain_failure(failures: Sequence[Exception], attempts: Sequence[ModelAttempt]) -> Exception:
    """The exception that ends a call in which no link answered (see `FallbackModel`, rule 5)."""
    for failure in failures:
        if isinstance(failure, ContextWindowOverflowException):
            return failure
    if failures and all(isinstance(failure, ModelThrottledException) for failure in failures):
        return failures[-1]
    if len(failures) == 1:
        return failures[0]
    return ModelChainError(attempts)
