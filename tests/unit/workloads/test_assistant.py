"""The assistant workload over real HTTP, in front of a real OpenAI-compatible stand-in server on
loopback (the slow test with llama-cpp-python and SmolLM2 is tests/integration/test_assistant_llm.py):
the request it sends, the answer it gives, its health while the model server is up and down."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from workloads.assistant import SYSTEM_PROMPT, AssistantService
from workloads.server import WorkloadHTTPServer


class ModelServer:
    """`GET /v1/models` and `POST /v1/chat/completions` answering a fixed completion; records bodies."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": "smollm2", "object": "model"}]})

            def do_POST(self) -> None:
                outer.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                if outer.status != 200:
                    self._send(outer.status, {"error": {"message": "model crashed"}})
                    return
                self._send(
                    200,
                    {
                        "model": "smollm2",
                        "choices": [{"message": {"role": "assistant", "content": " Close to you. "}}],
                        "usage": {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24},
                    },
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})

    def start(self) -> ModelServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def model_server() -> Iterator[ModelServer]:
    server = ModelServer().start()
    try:
        yield server
    finally:
        server.stop()


def serving(service: AssistantService) -> tuple[WorkloadHTTPServer, threading.Thread]:
    server = WorkloadHTTPServer(("127.0.0.1", 0), service)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def workload(model_server: ModelServer) -> Iterator[WorkloadHTTPServer]:
    server, thread = serving(AssistantService(model_server.url, "smollm2", max_tokens=32, timeout_s=5))
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def exchange(server: WorkloadHTTPServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_a_question_is_one_chat_completion_and_the_answer_has_text_model_and_tokens(
    workload: WorkloadHTTPServer, model_server: ModelServer
) -> None:
    status, body = exchange(workload, "POST", "/invoke", {"question": "Where is my edge site?"})
    assert status == 200
    assert body == {
        "answer": "Close to you.",
        "model": "smollm2",
        "tokens": {"input": 20, "output": 4, "total": 24},
    }
    [sent] = model_server.bodies
    assert sent["model"] == "smollm2" and sent["max_tokens"] == 32 and sent["temperature"] == 0
    assert sent["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Where is my edge site?"},
    ]


@pytest.mark.parametrize("payload", [{}, {"question": ""}, {"question": 7}, {"question": "x" * 2001}])
def test_a_missing_or_bad_question_is_a_422_naming_it(workload: WorkloadHTTPServer, payload: dict) -> None:
    status, body = exchange(workload, "POST", "/invoke", payload)
    assert status == 422
    assert body["error"]["field"] == "payload.question"


def test_health_is_ok_while_the_model_server_answers(workload: WorkloadHTTPServer) -> None:
    status, body = exchange(workload, "GET", "/healthz")
    assert status == 200
    assert body["status"] == "ok" and body["model"] == "smollm2"


def test_a_model_server_error_is_a_503_unavailable(
    workload: WorkloadHTTPServer, model_server: ModelServer
) -> None:
    model_server.status = 500
    status, body = exchange(workload, "POST", "/invoke", {"question": "still there?"})
    assert status == 503
    assert body["error"]["code"] == "unavailable" and "500" in body["error"]["message"]


def test_with_the_model_server_down_health_is_not_ready_and_questions_are_503(
    workload: WorkloadHTTPServer, model_server: ModelServer
) -> None:
    model_server.stop()
    status, body = exchange(workload, "GET", "/healthz")
    assert status == 503
    assert body["status"] == "not_ready" and model_server.url in body["reason"]
    status, body = exchange(workload, "POST", "/invoke", {"question": "anyone?"})
    assert status == 503 and body["error"]["code"] == "unavailable"


def test_the_environment_configures_it_and_a_missing_url_refuses_to_start() -> None:
    service = AssistantService.from_env(
        {
            "ASSISTANT_MODEL_URL": "http://127.0.0.1:9/v1/",
            "ASSISTANT_MODEL_ID": "m",
            "ASSISTANT_MAX_TOKENS": "7",
        }
    )
    assert (service.model_url, service.model_id, service.max_tokens) == ("http://127.0.0.1:9/v1", "m", 7)
    with pytest.raises(ValueError, match="ASSISTANT_MODEL_URL"):
        AssistantService.from_env({})
