"""Build the operator agent's model from settings: one kind, or a fallback chain of kinds.

Kinds (`Settings.model` and the entries of `Settings.model_fallback`):

* ``rules`` — the embedded deterministic planner (`agent.models.rules.RulesModel`).
* ``openai-compatible`` — a local llama.cpp / vLLM / Ollama server, through strands `OpenAIModel`
  (base URL `Settings.model_url`, request timeout `Settings.model_timeout_s`, no client retries),
  with its messages sent in the plain string form (see `plain_text_messages`).
* ``bedrock`` — Amazon Bedrock through strands `BedrockModel` (region `Settings.bedrock_region`,
  credentials from the usual AWS chain, botocore timeouts equal to the model timeout, one attempt).

A fallback entry may name its own model id as ``KIND:MODEL_ID`` (split at the first ``:``, so
Bedrock ids such as ``anthropic.claude-3-haiku-20240307-v1:0`` survive). `Settings.model_id` is a
single field shared by every kind, so a chain that mixes a local server and Bedrock needs this
form for the fallback, e.g. ``MEC_MODEL_FALLBACK=bedrock:anthropic.claude-3-haiku-20240307-v1:0,rules``.

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

import functools
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import boto3
from botocore.config import Config as BotocoreConfig
from pydantic import BaseModel
from strands.models.model import Model
from strands.types.content import Messages
from strands.types.exceptions import ContextWindowOverflowException, ModelThrottledException
from strands.types.streaming import StreamEvent
from strands.types.tools import ToolSpec

from config.settings import MODEL_KINDS, Settings

if TYPE_CHECKING:
    from strands.models.openai import OpenAIModel

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

LOCAL_KINDS: frozenset[str] = frozenset({"openai-compatible"})
"""Kinds that run on the site's own hardware and are skipped while the site is overloaded."""

RULES_MODEL_ID = "rules-v1"

# Stream events that carry (part of) the answer. Once one of them has been passed on, the call is
# committed to the model that produced it; `messageStart` and `metadata` are not content.
_CONTENT_KEYS = frozenset({"contentBlockStart", "contentBlockDelta", "contentBlockStop", "redactContent"})


class ModelUnavailableError(RuntimeError):
    """A model kind in the chain could not be built; raised when the chain reaches it."""


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


def plain_text_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rewrite OpenAI chat messages into the plain form every OpenAI-compatible server accepts.

    strands' `OpenAIModel` sends user/assistant content as a list of parts and leaves ``content``
    out of an assistant message that only calls tools. Both are valid OpenAI API, but chat
    templates that concatenate ``message['content']`` as a string (the one embedded in most GGUF
    files, as rendered by llama-cpp-python's server) fail on them with HTTP 500, and its
    ``chatml`` format silently drops list content. Here a content list made only of text parts
    becomes one string (parts joined by a newline), and a message without content gets ``""``.
    Anything with images or documents is left as it is.
    """
    plain: list[dict[str, Any]] = []
    for message in messages:
        message = dict(message)
        content = message.get("content")
        if content is None:
            message["content"] = ""
        elif isinstance(content, list) and all(
            isinstance(part, dict) and part.get("type") == "text" for part in content
        ):
            message["content"] = "\n".join(str(part.get("text", "")) for part in content)
        plain.append(message)
    return plain


@functools.cache
def _openai_compatible_class() -> type[OpenAIModel]:
    """`OpenAIModel` with `plain_text_messages` applied to every request (imports `openai` lazily)."""
    from strands.models.openai import OpenAIModel

    class OpenAICompatibleModel(OpenAIModel):
        """strands' `OpenAIModel` speaking the plain message form; see `plain_text_messages`."""

        @classmethod
        def format_request_messages(cls, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            return plain_text_messages(super().format_request_messages(*args, **kwargs))

    return OpenAICompatibleModel


class UnavailableModel(Model):
    """Stands in for a model kind that could not be built; every call raises `ModelUnavailableError`.

    Keeping it in the chain (instead of dropping the kind) keeps the chain's shape visible in
    `FallbackModel.attempts` and turns a misconfiguration into a clear per-call error rather than a
    start-up crash.
    """

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        self.config: dict[str, Any] = {"model_id": f"{kind} (unavailable)"}

    def update_config(self, **model_config: Any) -> None:
        """Accept and ignore configuration: there is no model to configure."""

    def get_config(self) -> dict[str, Any]:
        """The placeholder's configuration (its label only)."""
        return dict(self.config)

    def _error(self) -> ModelUnavailableError:
        return ModelUnavailableError(f"model {self.kind!r} is not available: {self.reason}")

    async def stream(
        self,
        messages: Messages,
        tool_specs: list[ToolSpec] | None = None,
        system_prompt: str | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Raise `ModelUnavailableError`."""
        raise self._error()
        yield  # pragma: no cover - makes this an async generator

    async def structured_output(
        self, output_model: type[T], prompt: Messages, system_prompt: str | None = None, **kwargs: Any
    ) -> AsyncGenerator[dict[str, T | Any], None]:
        """Raise `ModelUnavailableError`."""
        raise self._error()
        yield  # pragma: no cover - makes this an async generator


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

    def _plan(self) -> tuple[list[ChainLink], list[ModelAttempt]]:
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
        links, attempts = self._plan()
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


def parse_chain_entry(entry: str) -> tuple[str, str | None]:
    """Split a chain entry ``KIND`` or ``KIND:MODEL_ID`` into the kind and the optional model id."""
    kind, sep, model_id = entry.strip().partition(":")
    kind = kind.strip()
    if kind not in MODEL_KINDS:
        raise ValueError(
            f"unknown model kind {kind!r} in {entry!r}; expected one of {', '.join(MODEL_KINDS)}"
        )
    return kind, (model_id.strip() or None) if sep else None


@functools.cache
def _shared_session(region: str) -> boto3.Session:
    """One boto3 session per region for the whole process.

    Sharing it means the AWS credential chain is resolved (and refreshed) once, not once per chat
    session, and the service model is parsed once. Clients made from it are thread-safe.
    """
    return boto3.Session(region_name=region)


_session_lock = threading.Lock()


def bedrock_client_config(timeout_s: float) -> BotocoreConfig:
    """The botocore config for Bedrock: connect/read timeouts bounded by `timeout_s`, one attempt.

    No botocore retries: a throttled call surfaces as `ModelThrottledException` and the agent's own
    retry strategy backs off, and any other failure moves the fallback chain on — retries at this
    layer would only multiply the wait.
    """
    return BotocoreConfig(
        connect_timeout=min(timeout_s, 5.0),
        read_timeout=timeout_s,
        retries={"total_max_attempts": 1, "mode": "standard"},
    )


def build_model(
    kind: str,
    settings: Settings,
    services: Sequence[str],
    *,
    model_id: str | None = None,
    boto_session: boto3.Session | None = None,
) -> Model:
    """Build the model of one kind from `settings`.

    Args:
        kind: ``rules``, ``openai-compatible`` or ``bedrock``.
        settings: The site's settings (`model_url`, `model_id`, `model_api_key`,
            `model_timeout_s`, `model_max_tokens`, `bedrock_region`).
        services: The site's service names (the rules model plans over them).
        model_id: Overrides `settings.model_id` (a fallback entry's ``KIND:MODEL_ID``).
        boto_session: The boto3 session for Bedrock; it must carry a region. By default a
            process-wide session for `settings.bedrock_region` with the standard credential chain.

    Raises:
        ValueError: Unknown kind, or a setting the kind needs is missing (`model_url` and
            `model_id` for ``openai-compatible``; `model_id` and a region for ``bedrock``).
    """
    resolved_id = model_id or settings.model_id
    if kind == "rules":
        from agent.models.rules import RulesModel

        return RulesModel(list(services), model_id=model_id or RULES_MODEL_ID)
    if kind == "openai-compatible":
        if not settings.model_url:
            raise ValueError(
                "model 'openai-compatible' needs model_url (MEC_MODEL_URL), e.g. http://127.0.0.1:8081/v1"
            )
        if not resolved_id:
            raise ValueError(
                "model 'openai-compatible' needs model_id (MEC_MODEL_ID): the model's name on the server"
            )
        return _openai_compatible_class()(
            client_args={
                "base_url": settings.model_url,
                "api_key": settings.model_api_key,
                "timeout": settings.model_timeout_s,
                "max_retries": 0,
            },
            model_id=resolved_id,
            params={"max_tokens": settings.model_max_tokens},
        )
    if kind == "bedrock":
        from strands.models.bedrock import BedrockModel

        if not resolved_id:
            raise ValueError(
                "model 'bedrock' needs a Bedrock model id: MEC_MODEL_ID when it is the primary model, "
                "or a fallback entry 'bedrock:MODEL_ID'"
            )
        if boto_session is None:
            if not settings.bedrock_region:
                raise ValueError("model 'bedrock' needs bedrock_region (MEC_BEDROCK_REGION)")
            with _session_lock:
                boto_session = _shared_session(settings.bedrock_region)
        elif not boto_session.region_name:
            raise ValueError("model 'bedrock': the boto3 session given has no region")
        return BedrockModel(
            boto_session=boto_session,
            boto_client_config=bedrock_client_config(settings.model_timeout_s),
            model_id=resolved_id,
            max_tokens=settings.model_max_tokens,
        )
    raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}")


_reported: set[tuple[str, str]] = set()


def build_chat_model(
    settings: Settings,
    services: Sequence[str],
    overloaded: Callable[[], bool],
    *,
    boto_session: boto3.Session | None = None,
) -> FallbackModel:
    """Build one chat session's model: `settings.model` followed by `settings.model_fallback`.

    Always a `FallbackModel` (a chain of one when there is no fallback), so `served_by` and
    `attempts` are there for every configuration. A kind listed twice is kept once (first place).
    A kind that cannot be built (missing URL or model id, no region, ...) does not raise here: it
    is logged once per process and stands in the chain as an `UnavailableModel`, so the chain
    moves past it, and a chain with nothing else fails each call with `ModelUnavailableError`
    naming the missing setting.

    Raises:
        ValueError: A fallback entry names an unknown kind (a typo must not pass silently).
    """
    entries: list[tuple[str, str | None]] = [(settings.model, None)]
    entries += [parse_chain_entry(entry) for entry in settings.model_fallback if entry.strip()]
    links: list[ChainLink] = []
    for kind, model_id in entries:
        if any(link.label == kind for link in links):
            continue
        try:
            model = build_model(kind, settings, services, model_id=model_id, boto_session=boto_session)
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            if (kind, reason) not in _reported:
                _reported.add((kind, reason))
                log.warning("model %s cannot be built and is unavailable: %s", kind, reason)
            model = UnavailableModel(kind, reason)
        links.append(ChainLink(kind, model, local=kind in LOCAL_KINDS))
    return FallbackModel(links, overloaded)
