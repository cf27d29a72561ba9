"""Build the operator agent's model from settings: one kind, or a fallback chain of kinds.

The factory reads only the fields of `ModelSettings` (the site's `config.settings.Settings` has
them all, under the same names). Kinds (`model` and the entries of `model_fallback`):

* ``rules`` — the embedded deterministic rules model (`agent.models.rules.RulesModel`).
* ``openai-compatible`` — a local llama.cpp / vLLM / Ollama server, through strands `OpenAIModel`
  (base URL `model_url`, request timeout `model_timeout_s`, no client retries),
  with its messages sent in the plain string form (see `plain_text_messages`).
* ``bedrock`` — Amazon Bedrock through strands `BedrockModel` (region `bedrock_region`,
  credentials from the usual AWS chain, botocore timeouts equal to the model timeout, one attempt).

A fallback entry may name its own model id as ``KIND:MODEL_ID`` (split at the first ``:``, so
Bedrock ids such as ``anthropic.claude-3-haiku-20240307-v1:0`` survive). `model_id` is a
single field shared by every kind, so a chain that mixes a local server and Bedrock needs this
form for the fallback, e.g. ``MEC_MODEL_FALLBACK=bedrock:anthropic.claude-3-haiku-20240307-v1:0,rules``.

`build_chat_model` always returns the chain model of `agent.models.fallback` (a chain of one when
there is no fallback); a kind that cannot be built stands in it as an `UnavailableModel`.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import boto3
from botocore.config import Config as BotocoreConfig
from pydantic import BaseModel
from strands.models.model import Model
from strands.types.content import Messages

from agent.models.fallback import ChainLink, FallbackModel
from agent.models.offline import ModelCall, OfflineModel, Reply
from config.settings import MODEL_KINDS, ModelKind

if TYPE_CHECKING:
    from strands.models.openai import OpenAIModel

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

LOCAL_KINDS: frozenset[ModelKind] = frozenset({"openai-compatible"})
"""Kinds that run on the site's own hardware and are skipped while the site is overloaded."""

RULES_MODEL_ID = "rules-v1"


class ModelSettings(Protocol):
    """The settings `build_model` and `build_chat_model` read, with the types of `config.settings`.

    The site's `config.settings.Settings` has every one of them; a caller passes it as it is.
    """

    model: ModelKind
    model_fallback: list[str]
    model_url: str | None
    model_id: str | None
    model_api_key: str
    model_timeout_s: float
    model_max_tokens: int
    bedrock_region: str


class ModelUnavailableError(RuntimeError):
    """A model kind in the chain could not be built; raised when the chain reaches it."""


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


class UnavailableModel(OfflineModel):
    """Stands in for a model kind that could not be built; every call raises `ModelUnavailableError`.

    Keeping it in the chain (instead of dropping the kind) keeps the chain's shape visible in
    `FallbackModel.attempts` and turns a misconfiguration into a clear per-call error rather than a
    start-up crash.
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind} (unavailable)")
        self.kind = kind
        self.reason = reason

    def update_config(self, **model_config: Any) -> None:
        """Accept and ignore configuration: there is no model to configure."""

    # It stands in for a provider's model, so it estimates tokens as strands does for one (the chain
    # asks its first link), not in the words the other offline models report.
    count_tokens = Model.count_tokens

    def _error(self) -> ModelUnavailableError:
        return ModelUnavailableError(f"model {self.kind!r} is not available: {self.reason}")

    def reply(self, call: ModelCall) -> Reply:
        """Raise `ModelUnavailableError`."""
        raise self._error()

    def structured_reply(self, output_model: type[T], prompt: Messages, system_prompt: str | None) -> T:
        """Raise `ModelUnavailableError`."""
        raise self._error()


def parse_chain_entry(entry: str) -> tuple[ModelKind, str | None]:
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
    kind: ModelKind,
    settings: ModelSettings,
    services: Sequence[str],
    *,
    model_id: str | None = None,
    boto_session: boto3.Session | None = None,
) -> Model:
    """Build the model of one kind from `settings`.

    Args:
        kind: ``rules``, ``openai-compatible`` or ``bedrock``.
        settings: The model settings (`model_url`, `model_id`, `model_api_key`,
            `model_timeout_s`, `model_max_tokens`, `bedrock_region`), e.g. the site's `Settings`.
        services: The site's service names (the rules model's steps act on them).
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
    settings: ModelSettings,
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
    entries: list[tuple[ModelKind, str | None]] = [(settings.model, None)]
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
