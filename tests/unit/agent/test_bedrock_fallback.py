"""Bedrock as the cloud target of `llm` services, on a real `bedrock-runtime` client whose calls
`botocore.stub.Stubber` answers (moto does not implement `converse`): the request and the answer
mapping, Bedrock's errors as this site's statuses, the breaker, and the router's plan."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from agent.bedrock_fallback import BedrockFallback, converse_request
from agent.dispatch import ClientCall, canonical_json
from agent.router import PlanRequest, plan
from agent.view import ServiceView, View
from config.settings import ServiceSettings, load_settings
from prompts import load_prompt
from swarm.breaker import CircuitBreaker

MODEL_ID = "anthropic.claude-3-haiku-20240307-v1:0"
QUESTION = "What is an edge computing site?"


def fake_session() -> boto3.Session:
    """Credentials that sign nothing real: the Stubber answers before any request is sent."""
    return boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )


def converse_response(text: str = "A small data centre near its users.") -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 31, "outputTokens": 9, "totalTokens": 40},
        "metrics": {"latencyMs": 120},
    }


def call_for(payload: dict[str, Any], service: str = "assistant") -> ClientCall:
    return ClientCall(service, payload, canonical_json(payload), "mobile", "phone-1")


def deadline(in_s: float = 5.0) -> float:
    return time.perf_counter() + in_s


@pytest.fixture
def fallback() -> Iterator[BedrockFallback]:
    bedrock = BedrockFallback(
        MODEL_ID,
        ["assistant"],
        region="us-east-1",
        max_tokens=64,
        breaker=CircuitBreaker(2, 30.0),
        session=fake_session(),
    )
    yield bedrock
    bedrock.close()


@pytest.fixture
def stubber(fallback: BedrockFallback) -> Iterator[Stubber]:
    with Stubber(fallback.client()) as stub:
        yield stub


async def test_a_question_is_one_converse_call_and_its_answer_maps_to_answer_model_tokens(
    fallback: BedrockFallback, stubber: Stubber
) -> None:
    expected = {
        "modelId": MODEL_ID,
        "messages": [{"role": "user", "content": [{"text": QUESTION}]}],
        "system": [{"text": load_prompt("assistant")}],
        "inferenceConfig": {"maxTokens": 64},
    }
    assert converse_request(MODEL_ID, QUESTION, 64, load_prompt("assistant")) == expected
    stubber.add_response("converse", converse_response(), expected)

    outcome = await fallback.answer(call_for({"question": QUESTION}), deadline())

    stubber.assert_no_pending_responses()
    assert (outcome.status, outcome.tier, outcome.target) == (200, "cloud", "bedrock")
    assert outcome.result_json is not None
    assert json.loads(outcome.result_json) == {
        "answer": "A small data centre near its users.",
        "model": MODEL_ID,
        "tokens": {"input": 31, "output": 9, "total": 40},
    }
    figures = fallback.snapshot()
    assert (figures["sent"], figures["answered"], figures["state"]) == (1, 1, "closed")
    assert figures["rtt_ms"] is not None


async def test_a_payload_without_a_question_is_a_422_and_nothing_is_sent(
    fallback: BedrockFallback, stubber: Stubber
) -> None:
    outcome = await fallback.answer(call_for({"text": "no question here"}), deadline())
    assert outcome.status == 422
    assert outcome.error is not None and outcome.error.field == "payload.question"
    assert fallback.calls.sent == 0  # an unexpected converse call would have raised in the Stubber


async def test_a_bedrock_server_error_is_a_502_for_that_request_only(
    fallback: BedrockFallback, stubber: Stubber
) -> None:
    stubber.add_client_error("converse", "InternalServerException", "try later", http_status_code=500)
    stubber.add_response("converse", converse_response("fine again"))

    failed = await fallback.answer(call_for({"question": QUESTION}), deadline())
    served = await fallback.answer(call_for({"question": "and now?"}), deadline())

    assert failed.status == 502
    assert failed.error is not None and failed.error.code == "bedrock_failed"
    assert "InternalServerException" in failed.error.message
    assert served.status == 200 and served.result_json is not None
    assert json.loads(served.result_json)["answer"] == "fine again"


async def test_a_refusal_is_a_502_that_does_not_count_against_the_breaker(
    fallback: BedrockFallback, stubber: Stubber
) -> None:
    for _ in range(3):
        stubber.add_client_error("converse", "AccessDeniedException", "no model access", http_status_code=403)
        outcome = await fallback.answer(call_for({"question": QUESTION}), deadline())
        assert outcome.status == 502
        assert outcome.error is not None and outcome.error.code == "bedrock_refused"
    assert fallback.breaker.state == "closed"


async def test_throttling_is_a_503_with_retry_after(fallback: BedrockFallback, stubber: Stubber) -> None:
    stubber.add_client_error("converse", "ThrottlingException", "slow down", http_status_code=429)
    outcome = await fallback.answer(call_for({"question": QUESTION}), deadline())
    assert outcome.status == 503
    assert outcome.error is not None and outcome.error.code == "bedrock_busy"
    assert outcome.retry_after_s == 1
    assert fallback.breaker.state == "closed"


async def test_consecutive_failures_open_the_breaker_and_later_requests_are_refused_at_once(
    fallback: BedrockFallback, stubber: Stubber
) -> None:
    for _ in range(2):  # the breaker's threshold
        stubber.add_client_error("converse", "ServiceUnavailableException", "down", http_status_code=503)
        assert (await fallback.answer(call_for({"question": QUESTION}), deadline())).status == 502

    assert fallback.breaker.state == "open"
    assert fallback.choice("assistant", 5000) is None
    blocked = fallback.blocked("assistant")
    assert blocked is not None and blocked.retry_after_s >= 1
    refused = await fallback.answer(call_for({"question": QUESTION}), deadline())
    assert refused.status == 503
    assert refused.error is not None and refused.error.code == "cloud_unavailable"
    assert refused.retry_after_s == blocked.retry_after_s
    stubber.assert_no_pending_responses()  # nothing more was sent
    assert fallback.snapshot()["opened"] == 1


async def test_a_budget_already_spent_is_a_504_without_a_call(
    fallback: BedrockFallback, stubber: Stubber
) -> None:
    outcome = await fallback.answer(call_for({"question": QUESTION}), time.perf_counter() - 0.001)
    assert outcome.status == 504
    assert fallback.calls.sent == 0


def _view(bedrock: BedrockFallback | None, kind: str = "llm") -> View:
    service = ServiceView.of("assistant", ServiceSettings(module="m", image="i", kind=kind))  # type: ignore[arg-type]
    return View("site-1", {"assistant": service}, {"assistant": ()}, {}, False, 1, bedrock=bedrock)


def test_the_router_plans_bedrock_for_an_llm_service_with_no_local_instance(
    fallback: BedrockFallback,
) -> None:
    decision = plan(PlanRequest("assistant", budget_ms=5000), _view(fallback))
    assert (decision.tier, decision.target) == ("cloud", "bedrock")
    assert decision.bedrock is not None and decision.cloud is None


def test_the_router_does_not_plan_bedrock_when_the_budget_is_shorter_than_its_answer(
    fallback: BedrockFallback,
) -> None:
    decision = plan(PlanRequest("assistant", budget_ms=fallback.expected_ms / 2), _view(fallback))
    assert (decision.tier, decision.status) == ("reject", 503)


def test_the_router_plans_bedrock_only_for_services_it_serves(fallback: BedrockFallback) -> None:
    other = BedrockFallback(MODEL_ID, ["other"], region="us-east-1", session=fake_session())
    try:
        decision = plan(PlanRequest("assistant", budget_ms=math.inf), _view(other))
    finally:
        other.close()
    assert decision.tier == "reject"
    assert plan(PlanRequest("assistant", budget_ms=5000, forwarded=True), _view(fallback)).tier == "reject"


def test_the_router_rejects_with_the_breakers_retry_after_while_bedrock_is_failing(
    fallback: BedrockFallback,
) -> None:
    for _ in range(2):
        fallback.breaker.record_failure()
    decision = plan(PlanRequest("assistant", budget_ms=5000), _view(fallback))
    assert (decision.tier, decision.status, decision.code) == ("reject", 503, "cloud_unavailable")
    assert decision.retry_after_s == fallback.breaker.retry_after_s


def test_settings_build_a_fallback_only_for_llm_services_with_a_model_id(tmp_path: Any) -> None:
    assert BedrockFallback.of(load_settings(None, data_dir=tmp_path)) is None  # no bedrock_model_id
    built = BedrockFallback.of(load_settings(None, data_dir=tmp_path, bedrock_model_id=MODEL_ID))
    assert built is not None
    try:
        assert built.services == {"assistant"}  # the embedded defaults' one `llm` service
        assert built.read_timeout_s == 5.0  # its budget
    finally:
        built.close()
