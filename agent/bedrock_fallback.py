"""Bedrock as the cloud tier of `llm` services: one Converse call for a question no local model can
answer within its budget.

Services of kind `llm` (`ServiceSettings.kind`) take `{"question": str}` and answer
`{"answer": str, "model": str, "tokens": {"input", "output", "total"}}`, locally from the site's
model server (`workloads.assistant`). With `bedrock_model_id` set, `BedrockFallback` is their cloud
target: the pure router asks it (through `View.bedrock`) for a `CloudChoice` whose target is
`bedrock` when no local instance and no peer can answer in time; the dispatcher also sends it the
requests a local instance refused or failed before answering. `answer` then makes one
`bedrock-runtime` `converse` call:

    converse(modelId=bedrock_model_id,
             messages=[{"role": "user", "content": [{"text": question}]}],
             system=[{"text": <prompts/assistant.txt>}],
             inferenceConfig={"maxTokens": bedrock_max_tokens})

and the answer is `{"answer": <the text blocks of output.message>, "model": modelId, "tokens":
<usage>}` with `route.tier == "cloud"`, `route.target == "bedrock"`.

How the call is bounded: boto3 is blocking, so each call runs on a thread pool of its own
(`max_concurrency` threads, never the loop's default executor, which the site's other blocking
work shares), and a request is refused (no choice: a 503) while every thread is busy. The client
has no retries (one attempt) and read/connect timeouts of the longest `llm` budget; each request
waits no longer than what is left of its own budget (a 504 after it; the thread ends by the
client's read timeout). Errors: a `ClientError` is a 502 (`ThrottlingException` a 503 with
Retry-After); a time-out a 504; anything else of botocore (no credentials, no connection) a 502.
A circuit breaker (`swarm.breaker`, the cloud tier's settings) counts Bedrock's 5xx, connection
failures and slow time-outs; while it is open, requests are refused at once (503
`cloud_unavailable` with Retry-After). Its 4xx say it answered and count as successes.

Credentials and endpoint come from the standard AWS chain of a boto3 session for
`bedrock_region` (as the chat's `bedrock` model does); the client is made on first use, off the
event loop (resolving credentials may query an instance metadata service).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError

from agent.dispatch import ClientCall, Outcome
from agent.errors import SiteError
from agent.models.build import bedrock_client_config
from config.settings import Settings
from prompts import load_prompt
from swarm.breaker import CircuitBreaker
from swarm.cloud import CloudBlocked, CloudChoice, CloudTarget

TARGET = "bedrock"
"""`route.target` of answers from Bedrock."""
MAX_QUESTION_CHARS = 2000
"""The longest question (the same limit as `workloads.assistant`)."""
BEDROCK_OVERHEAD_MS = 5.0
"""What a call adds on this side (thread hand-off, request signing, JSON)."""
THROTTLED = frozenset({"ThrottlingException", "TooManyRequestsException", "ServiceQuotaExceededException"})


def converse_request(model_id: str, question: str, max_tokens: int, system_prompt: str) -> dict[str, Any]:
    """The keyword arguments of one `converse` call."""
    return {
        "modelId": model_id,
        "messages": [{"role": "user", "content": [{"text": question}]}],
        "system": [{"text": system_prompt}],
        "inferenceConfig": {"maxTokens": max_tokens},
    }


def answer_of(response: Mapping[str, Any], model_id: str) -> dict[str, Any]:
    """The `llm` service's answer from a `converse` response: its text blocks and token usage."""
    content = response["output"]["message"]["content"]
    text = "".join(block["text"] for block in content if isinstance(block, dict) and "text" in block)
    usage = response.get("usage") or {}
    tokens = {
        "input": int(usage.get("inputTokens", 0)),
        "output": int(usage.get("outputTokens", 0)),
        "total": int(usage.get("totalTokens", 0)),
    }
    return {"answer": text.strip(), "model": model_id, "tokens": tokens}


def question_of(payload: Mapping[str, Any]) -> str | SiteError:
    """The payload's question, or the 422 a local instance would answer for it."""
    question = payload.get("question")
    if not isinstance(question, str) or not 1 <= len(question) <= MAX_QUESTION_CHARS:
        return SiteError(
            422,
            "invalid_payload",
            f"'question' must be a string of 1..{MAX_QUESTION_CHARS} characters",
            "payload.question",
        )
    return question


class BedrockFallback:
    """Bedrock Converse for the `llm` services `services`, behind one breaker and a bounded pool."""

    def __init__(
        self,
        model_id: str,
        services: Iterable[str],
        *,
        region: str,
        max_tokens: int = 256,
        read_timeout_s: float = 30.0,
        assumed_ms: float = 1500.0,
        max_concurrency: int = 8,
        breaker: CircuitBreaker | None = None,
        session: boto3.Session | None = None,
        system_prompt: str | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if max_concurrency < 1 or read_timeout_s <= 0:
            raise ValueError("max_concurrency must be at least 1 and read_timeout_s positive")
        self.model_id = model_id
        self.services = frozenset(services)
        self.region = region
        self.max_tokens = max_tokens
        self.read_timeout_s = read_timeout_s
        self.assumed_ms = assumed_ms
        self.max_concurrency = max_concurrency
        self.breaker = breaker or CircuitBreaker()
        self.session = session
        """The boto3 session the client is made from; None: one for `region` with the default chain."""
        self.system_prompt = system_prompt if system_prompt is not None else load_prompt("assistant")
        self._clock = clock
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="bedrock")
        self.calls = CloudTarget(
            ",".join(sorted(self.services)),
            f"bedrock-runtime.{region}/{model_id}",
            self.breaker,
            assumed_ms,
            target=TARGET,
        )
        """What Bedrock's calls took and how they ended, as for any cloud target (`swarm.cloud`):
        its 4xx (throttling included) are `refused`, the calls counted against the breaker `failed`."""
        self.inflight = 0
        """Calls whose thread has not returned (including ones nobody waits for any more)."""

    @classmethod
    def of(cls, settings: Settings) -> BedrockFallback | None:
        """The fallback for the configured `llm` services; None without `bedrock_model_id` or such a service."""
        llm = {name: svc for name, svc in settings.services.items() if svc.kind == "llm"}
        if not settings.bedrock_model_id or not llm:
            return None
        longest_budget_s = max(svc.default_budget_ms for svc in llm.values()) / 1000
        return cls(
            settings.bedrock_model_id,
            llm,
            region=settings.bedrock_region,
            max_tokens=settings.bedrock_max_tokens,
            read_timeout_s=longest_budget_s,
            assumed_ms=settings.bedrock_assumed_ms,
            max_concurrency=settings.bedrock_max_concurrency,
            breaker=CircuitBreaker(
                settings.cloud_breaker_failures,
                settings.cloud_breaker_open_s,
                max_open_s=settings.cloud_breaker_max_open_s,
            ),
        )

    # planning (pure reads) -------------------------------------------------------------------------

    @property
    def expected_ms(self) -> float:
        """What the next answer is expected to take: the measured EWMA, else the assumed time."""
        return self.calls.expected_ms

    def serves(self, service: str) -> bool:
        return service in self.services

    def choice(self, service: str, budget_ms: float) -> CloudChoice | None:
        if service not in self.services or self.inflight >= self.max_concurrency:
            return None
        if not self.breaker.available():
            return None
        predicted = self.expected_ms + BEDROCK_OVERHEAD_MS
        if predicted > budget_ms:
            return None
        return CloudChoice(
            service,
            f"bedrock-runtime.{self.region}/{self.model_id}",
            TARGET,
            predicted,
            f"Bedrock ({self.model_id}) is expected to answer in {predicted:.0f} ms",
        )

    def blocked(self, service: str) -> CloudBlocked | None:
        if service not in self.services or self.breaker.available():
            return None
        return CloudBlocked(service, TARGET, self.breaker.state, self.breaker.retry_after_s)

    # the call ---------------------------------------------------------------------------------------

    def client(self) -> Any:
        """The `bedrock-runtime` client, made on first use (blocking: call it off the loop)."""
        with self._client_lock:
            if self._client is None:
                session = self.session or boto3.Session(region_name=self.region)
                self._client = session.client(
                    "bedrock-runtime",
                    region_name=self.region,
                    config=bedrock_client_config(self.read_timeout_s),
                )
            return self._client

    def _converse(self, question: str) -> Mapping[str, Any]:
        request = converse_request(self.model_id, question, self.max_tokens, self.system_prompt)
        response: Mapping[str, Any] = self.client().converse(**request)
        return response

    async def answer(self, call: ClientCall, deadline: float) -> Outcome:
        """Bedrock's answer to `call`'s question as this site's outcome: 200; 422 for a payload
        without a question; 502 when Bedrock fails or refuses; 503 while its breaker is open, every
        call slot is busy or it throttles; 504 past `deadline` (`time.perf_counter()`)."""
        service = call.service
        question = question_of(call.payload)
        if isinstance(question, SiteError):
            return Outcome.failed(question, service, "cloud", TARGET)
        left_s = deadline - self._clock()
        if left_s <= 0:
            return self._timeout(service)
        if self.inflight >= self.max_concurrency:
            busy = SiteError(
                503,
                "bedrock_busy",
                f"every one of the {self.max_concurrency} Bedrock call slots is busy",
                retry_after_s=1,
            )
            return Outcome.failed(busy, service, "reject", TARGET)
        breaker = self.breaker
        if not breaker.allow():
            blocked = CloudBlocked(service, TARGET, breaker.state, breaker.retry_after_s)
            return Outcome.failed(_unavailable(blocked), service, "reject", TARGET)
        generation = breaker.generation
        verdict: Callable[[int | None], None] = breaker.release
        self.inflight += 1
        self.calls.sent += 1
        sent = self._clock()
        loop = asyncio.get_running_loop()
        work: Future[Mapping[str, Any]] = self._executor.submit(self._converse, question)
        work.add_done_callback(lambda _: self._call_ended(loop))
        try:
            try:
                async with asyncio.timeout(left_s):
                    response = await asyncio.wrap_future(work)
            except (TimeoutError, ReadTimeoutError, ConnectTimeoutError):
                self.calls.timed_out += 1
                if self.calls.slow((self._clock() - sent) * 1000):
                    self.calls.failed += 1
                    verdict = breaker.record_failure
                return self._timeout(service)
            except ClientError as exc:
                outcome, verdict = self._refusal(service, exc)
                return outcome
            except BotoCoreError as exc:
                self.calls.failed += 1
                verdict = breaker.record_failure
                return _failed(service, f"{type(exc).__name__}: {exc}")
            try:
                result = answer_of(response, self.model_id)
            except (KeyError, TypeError, ValueError, AttributeError):
                self.calls.failed += 1
                verdict = breaker.record_failure
                return _failed(service, "its answer has no output message")
            self.calls.answered_in((self._clock() - sent) * 1000)
            verdict = breaker.record_success
            body = json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode()
            return Outcome(200, service, "cloud", TARGET, result_json=body)
        finally:
            verdict(generation)

    def _call_ended(self, loop: asyncio.AbstractEventLoop) -> None:
        """A call's thread returned (whether or not anyone still waits): its slot is free, counted
        on the loop that owns `inflight`."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody counts any more
            loop.call_soon_threadsafe(self._release_slot)

    def _release_slot(self) -> None:
        self.inflight -= 1

    def _refusal(self, service: str, exc: ClientError) -> tuple[Outcome, Callable[[int | None], None]]:
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "ClientError")
        message = str(error.get("Message") or code)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 500)
        if code in THROTTLED or status == 429:
            self.calls.refused += 1
            busy = SiteError(503, "bedrock_busy", f"Bedrock is throttling requests ({code})", retry_after_s=1)
            return Outcome.failed(busy, service, "cloud", TARGET), self.breaker.release
        if status >= 500:
            self.calls.failed += 1
            return _failed(service, f"{code} ({status}): {message}"), self.breaker.record_failure
        self.calls.refused += 1
        refused = SiteError(502, "bedrock_refused", f"Bedrock refused the call: {code} ({status}): {message}")
        return Outcome.failed(refused, service, "cloud", TARGET), self.breaker.record_success

    @staticmethod
    def _timeout(service: str) -> Outcome:
        error = SiteError(504, "budget_exceeded", "the latency budget ran out before Bedrock answered")
        return Outcome.failed(error, service, "cloud", TARGET)

    def snapshot(self) -> dict[str, Any]:
        """Its state and figures, for metrics and the dashboard."""
        return {
            **self.calls.snapshot(),
            "model": self.model_id,
            "region": self.region,
            "services": sorted(self.services),
            "inflight": self.inflight,
        }

    async def start(self) -> None:
        """Make the client off the loop, so the first request does not pay for it."""
        await asyncio.to_thread(self.client)

    def close(self) -> None:
        """Stop taking calls; threads still in a call end by the client's read timeout."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _unavailable(blocked: CloudBlocked) -> SiteError:
    return SiteError(
        503,
        "cloud_unavailable",
        f"Bedrock is failing for {blocked.service}: its circuit breaker is {blocked.state.replace('_', '-')}; "
        f"try again in {blocked.retry_after_s} s",
        retry_after_s=blocked.retry_after_s,
    )


def _failed(service: str, why: str) -> Outcome:
    error = SiteError(502, "bedrock_failed", f"Bedrock failed: {why}")
    return Outcome.failed(error, service, "cloud", TARGET)
