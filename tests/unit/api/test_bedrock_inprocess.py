"""An `llm` service on a real in-process site falls back to Bedrock: the site's own
`bedrock-runtime` client (built from the settings at start-up) answered by `botocore.stub.Stubber`,
which cannot reach across processes, hence in process. Its one local instance is a real in-test
HTTP workload; a local failure, then no ready instance, send questions to Bedrock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.stub import Stubber

from tests.support.inprocess import InProcessSite, in_process_site

CLIENT = "client-key-a-0123456789"
OPERATOR = "operator-key-0123456789"
MODEL_ID = "anthropic.claude-3-haiku-20240307-v1:0"


def converse_response(text: str) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 12, "outputTokens": 5, "totalTokens": 17},
        "metrics": {"latencyMs": 90},
    }


@pytest.fixture
async def running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[InProcessSite, Stubber]]:
    # Fake credentials and no instance-metadata lookups: nothing leaves this process.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    async with in_process_site(
        tmp_path,
        [CLIENT],
        [OPERATOR],
        service={"kind": "llm", "cacheable": True, "default_budget_ms": 5000},
        bedrock_model_id=MODEL_ID,
        bedrock_region="us-east-1",
    ) as site:
        assert site.site.bedrock is not None
        with Stubber(site.site.bedrock.client()) as stubber:
            yield site, stubber


async def ask(site: InProcessSite, payload: dict[str, Any]) -> httpx.Response:
    body = {"service": "svc", "payload": payload, "client": {"kind": "mobile", "id": "phone"}}
    return await site.http.post("/v1/requests", json=body, headers={"Authorization": f"Bearer {CLIENT}"})


async def test_a_failing_local_model_then_no_ready_instance_are_answered_by_bedrock(
    running: tuple[InProcessSite, Stubber],
) -> None:
    site, stubber = running
    stubber.add_response("converse", converse_response("Answer one."))
    stubber.add_response("converse", converse_response("Answer two."))

    # The local instance fails before answering (a 500 from the workload): Bedrock answers instead.
    first = await ask(site, {"question": "first?", "mode": "fail"})
    assert first.status_code == 200, first.text
    assert first.json()["route"]["tier"] == "cloud" and first.json()["route"]["target"] == "bedrock"
    assert first.json()["result"] == {
        "answer": "Answer one.",
        "model": MODEL_ID,
        "tokens": {"input": 12, "output": 5, "total": 17},
    }
    assert site.workload.calls == 1
    assert site.site.runtime.ready_instances("svc") == []  # the failure took it out of the view

    # No ready local instance now: the router plans Bedrock at once.
    second = await ask(site, {"question": "second?"})
    assert second.status_code == 200, second.text
    assert second.json()["route"]["target"] == "bedrock"
    assert second.json()["result"]["answer"] == "Answer two."
    assert site.workload.calls == 1

    # The service is cacheable: the same question again is a cache hit, not another call.
    again = await ask(site, {"question": "second?"})
    assert again.json()["route"]["tier"] == "cache" and again.json()["result"]["answer"] == "Answer two."
    stubber.assert_no_pending_responses()

    snapshot = (
        await site.http.get("/v1/metrics/snapshot", headers={"Authorization": f"Bearer {OPERATOR}"})
    ).json()
    assert snapshot["bedrock"]["answered"] == 2 and snapshot["bedrock"]["model"] == MODEL_ID


async def test_a_bedrock_error_is_a_502_for_that_request_only(running: tuple[InProcessSite, Stubber]) -> None:
    site, stubber = running
    site.site.runtime.report_failure("svc-1")  # no ready local instance
    stubber.add_client_error("converse", "ModelErrorException", "the model failed", http_status_code=424)
    stubber.add_response("converse", converse_response("Recovered."))

    failed = await ask(site, {"question": "one"})
    served = await ask(site, {"question": "two"})

    assert failed.status_code == 502
    assert failed.json()["error"]["code"] == "bedrock_refused"
    assert served.status_code == 200 and served.json()["result"]["answer"] == "Recovered."
