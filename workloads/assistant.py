"""Short answers for mobile clients from the site's local model server (standard library only).

``POST /invoke`` with ``{"question": str}`` (1..2000 characters) answers::

    {"answer": "An edge site runs services close to its users.", "model": "smollm2",
     "tokens": {"input": 31, "output": 12, "total": 43}}

The answer comes from an OpenAI-compatible server (llama.cpp / llama-cpp-python, vLLM, Ollama)
that runs on the site: one ``POST {ASSISTANT_MODEL_URL}/chat/completions`` per question, with a
short system prompt, greedy decoding and at most ``ASSISTANT_MAX_TOKENS`` tokens. The site passes
these in the workload's environment (``ServiceSettings.env``):

* ``ASSISTANT_MODEL_URL`` — the server's base URL, ending in ``/v1`` (required);
* ``ASSISTANT_MODEL_ID`` — the model's name on that server (default ``smollm2``);
* ``ASSISTANT_MAX_TOKENS`` — the longest answer, in tokens (default 128);
* ``ASSISTANT_TIMEOUT_S`` — how long one call to the server may take (default 30).

``GET /healthz`` asks the server for ``/models`` (within 1 s): while it does not answer, the
health check is a 503 ``not_ready`` and the site takes the instance out of service (its requests
then go to a peer, or to Bedrock when the site has ``bedrock_model_id``). A question the server
fails to answer is a 503 ``unavailable``. A missing ``question``, or one that is not a string of
1..2000 characters, is a 422 naming ``payload.question``.

Run it with ``python -m workloads.assistant --port N``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from workloads.server import NotReady, Unavailable, main, require_str

SERVICE_NAME = "assistant"
MAX_QUESTION_CHARS = 2000
MAX_ANSWER_BYTES = 1024 * 1024
HEALTH_TIMEOUT_S = 1.0
SYSTEM_PROMPT = "You are a helpful assistant for mobile app users. Answer in one or two short sentences."

EXAMPLE_PAYLOAD: dict[str, Any] = {"question": "What is an edge computing site?"}

URL_ENV = "ASSISTANT_MODEL_URL"
MODEL_ENV = "ASSISTANT_MODEL_ID"
MAX_TOKENS_ENV = "ASSISTANT_MAX_TOKENS"
TIMEOUT_ENV = "ASSISTANT_TIMEOUT_S"


def _direct_opener() -> urllib.request.OpenerDirector:
    """An opener that takes no proxy from the environment: the model server is on this host."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


class AssistantService:
    """Turns a question into one chat completion of the local model server."""

    name = SERVICE_NAME

    def __init__(
        self, model_url: str, model_id: str = "smollm2", max_tokens: int = 128, timeout_s: float = 30.0
    ):
        if not model_url.startswith(("http://", "https://")):
            raise ValueError(f"{URL_ENV} must be an http(s) URL, got {model_url!r}")
        if max_tokens < 1 or timeout_s <= 0:
            raise ValueError("max_tokens must be at least 1 and timeout_s positive")
        self.model_url = model_url.rstrip("/")
        self.model_id = model_id
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self._opener = _direct_opener()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AssistantService:
        """Built from the workload's environment (see the module's docstring)."""
        source = os.environ if env is None else env
        url = source.get(URL_ENV)
        if not url:
            raise ValueError(f"{URL_ENV} is not set: the assistant needs the URL of a model server")
        return cls(
            url,
            source.get(MODEL_ENV) or "smollm2",
            int(source.get(MAX_TOKENS_ENV) or 128),
            float(source.get(TIMEOUT_ENV) or 30.0),
        )

    def info(self) -> dict[str, Any]:
        """The model server's address and model; `NotReady` while it does not answer."""
        try:
            with self._opener.open(f"{self.model_url}/models", timeout=HEALTH_TIMEOUT_S) as response:
                response.read(MAX_ANSWER_BYTES)
        except (OSError, ValueError) as exc:
            raise NotReady(f"the model server {self.model_url} does not answer: {exc}") from None
        return {"model": self.model_id, "model_url": self.model_url}

    def invoke(self, payload: dict[str, Any]) -> dict[str, Any]:
        question = require_str(payload, "question", max_len=MAX_QUESTION_CHARS)
        body = {
            "model": self.model_id,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": question},
            ],
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": False,
        }
        request = urllib.request.Request(
            f"{self.model_url}/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            method="POST",
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                raw = response.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise Unavailable(f"the model server answered {exc.code}") from None
        except (OSError, ValueError) as exc:
            raise Unavailable(f"the model server failed: {type(exc).__name__}: {exc}") from None
        if len(raw) > MAX_ANSWER_BYTES:
            raise Unavailable("the model server's answer is too large")
        return _answer(raw, self.model_id)


def _answer(raw: bytes, model_id: str) -> dict[str, Any]:
    """`{"answer", "model", "tokens"}` of an OpenAI chat completion; `Unavailable` when it is not one."""
    try:
        completion = json.loads(raw)
        text = completion["choices"][0]["message"]["content"]
        usage = completion.get("usage") or {}
        tokens = {
            "input": int(usage.get("prompt_tokens", 0)),
            "output": int(usage.get("completion_tokens", 0)),
            "total": int(usage.get("total_tokens", 0)),
        }
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise Unavailable("the model server's answer is not a chat completion") from None
    if not isinstance(text, str):
        raise Unavailable("the model server's answer has no text")
    model = completion.get("model")
    return {"answer": text.strip(), "model": model if isinstance(model, str) else model_id, "tokens": tokens}


def assistant() -> AssistantService:
    """The service as its process runs it: configured from the environment."""
    return AssistantService.from_env()


if __name__ == "__main__":
    raise SystemExit(main(assistant))
