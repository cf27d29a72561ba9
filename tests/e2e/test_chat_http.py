"""The operator agent through `POST /v1/chat` on a real `mec serve`, with the embedded rules model."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import CLIENT_KEY, OPERATOR_KEY, SiteProcess, running_site
from tests.support.prometheus import sample_value
from tools.runtimes.base import free_port


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteProcess]:
    with running_site(
        tmp_path_factory.mktemp("chat-site"),
        {"MEC_CHAT_MAX_MESSAGE_CHARS": "500", "MEC_SERVICES__INFERENCE__REPLICAS": "0"},
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def operator(site: SiteProcess) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=site.url, timeout=30, headers={"Authorization": f"Bearer {OPERATOR_KEY}"}
    ) as client:
        yield client


@pytest.fixture(scope="module")
def client(site: SiteProcess) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=site.url, timeout=30, headers={"Authorization": f"Bearer {CLIENT_KEY}"}
    ) as http:
        yield http


def _instances(http: httpx.Client, service: str) -> list[dict]:
    snap = http.get("/v1/metrics/snapshot").json()
    return [i for i in snap["runtime"]["instances"] if i["service"] == service]


def test_status_answer_comes_from_real_tool_calls(operator: httpx.Client) -> None:
    response = operator.post("/v1/chat", json={"message": "what is the status of the site?"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "rules"
    assert {call["name"] for call in body["tool_calls"]} >= {"container_ops"}
    assert all(call["status"] == "success" for call in body["tool_calls"])
    assert "sensor-1" in body["reply"]
    assert body["usage"]["total_tokens"] > 0 and body["latency_ms"] > 0


def test_operator_scales_a_service_and_it_really_scales(operator: httpx.Client) -> None:
    body = operator.post("/v1/chat", json={"message": "scale game-state to 2 replicas"}).json()
    [call] = [c for c in body["tool_calls"] if c["name"] == "container_ops"]
    assert call["input"]["action"] == "scale" and call["status"] == "success"
    assert len(_instances(operator, "game-state")) == 2
    operator.post("/v1/chat", json={"message": "scale game-state to 1 replica"})
    assert len(_instances(operator, "game-state")) == 1


def test_client_key_cannot_change_the_site_through_chat(client: httpx.Client, operator: httpx.Client) -> None:
    body = client.post("/v1/chat", json={"message": "scale sensor to 3 replicas"}).json()
    [call] = [c for c in body["tool_calls"] if c["name"] == "container_ops"]
    assert call["status"] == "refused"
    assert "operator key" in call["reason"]
    assert len(_instances(operator, "sensor")) == 1


def test_unconfirmed_stop_never_reaches_the_runtime(operator: httpx.Client) -> None:
    before = _instances(operator, "sensor")
    body = operator.post("/v1/chat", json={"message": "stop sensor-1"}).json()
    [call] = [c for c in body["tool_calls"] if c["input"].get("action") == "stop"]
    assert call["status"] == "refused" and "confirm" in call["reason"]
    assert "confirm" in body["reply"].lower()
    after = _instances(operator, "sensor")
    assert [(i["id"], i["pid"], i["state"]) for i in after] == [
        (i["id"], i["pid"], i["state"]) for i in before
    ]


def test_flush_runs_once_confirmed_in_the_same_session(operator: httpx.Client) -> None:
    first = operator.post("/v1/chat", json={"message": "flush the sensor cache"}).json()
    assert [c["status"] for c in first["tool_calls"]] == ["refused"]
    second = operator.post(
        "/v1/chat",
        json={"message": "flush the sensor cache", "session_id": first["session_id"], "confirm": True},
    ).json()
    assert second["session_id"] == first["session_id"]
    assert [c["status"] for c in second["tool_calls"]] == ["success"]


def test_unknown_request_gets_a_plain_answer_and_no_tool_call(operator: httpx.Client) -> None:
    body = operator.post("/v1/chat", json={"message": "bake me a sourdough loaf"}).json()
    assert body["tool_calls"] == []
    assert body["reply"]


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"message": ""}, 422, "message"),
        ({"message": "   "}, 422, "message"),
        ({"message": "x" * 501}, 422, "message"),
        ({"message": "status", "session_id": "no-such-session"}, 404, "session_id"),
        ({"message": "status", "session_id": "bad id!"}, 422, "session_id"),
        ({"message": "status", "confirm": "maybe"}, 422, "confirm"),
    ],
)
def test_bad_chat_input_gets_4xx_naming_the_field(
    operator: httpx.Client, payload: dict, status: int, field: str
) -> None:
    response = operator.post("/v1/chat", json=payload)
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field


def test_chat_streams_server_sent_events(operator: httpx.Client) -> None:
    events = []
    with operator.stream(
        "POST", "/v1/chat", json={"message": "cache stats"}, headers={"Accept": "text/event-stream"}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "session" and kinds[-1] == "done"
    assert "tool_start" in kinds and "tool_end" in kinds and "text" in kinds
    done = events[-1][1]
    assert "".join(data["delta"] for kind, data in events if kind == "text").strip() == done["reply"]


def test_free_text_request_goes_to_the_agent_only_when_allowed(client: httpx.Client) -> None:
    base = {"payload": {"text": "what is the gpu doing?"}, "client": {"kind": "mobile", "id": "m"}}
    refused = client.post("/v1/requests", json=base)
    assert refused.status_code == 400
    assert refused.json()["error"]["field"] == "service"
    served = client.post("/v1/requests", json={**base, "allow_llm": True})
    assert served.status_code == 200, served.text
    body = served.json()
    assert body["route"]["tier"] == "llm" and body["route"]["target"] == "rules"
    assert [c["name"] for c in body["result"]["tool_calls"]] == ["metrics_monitor"]
    assert (
        client.post("/v1/requests", json={**base, "payload": {"x": 1}, "allow_llm": True}).status_code == 400
    )


def test_llm_path_is_counted_in_metrics(operator: httpx.Client) -> None:
    operator.post(
        "/v1/requests",
        json={"payload": {"text": "cache stats"}, "client": {"kind": "mobile", "id": "m"}, "allow_llm": True},
    )
    metrics = operator.get("/metrics").text
    assert sample_value(
        metrics, "mec_requests_total", site="site-1", service="(llm)", tier="llm", status="200"
    )
    assert sample_value(metrics, "mec_chat_turns_total", site="site-1", model="rules", outcome="ok")


def test_model_server_down_gives_503_and_fast_path_keeps_serving(site_factory) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    broken = site_factory(
        {"MEC_MODEL": "openai-compatible", "MEC_MODEL_URL": dead, "MEC_MODEL_ID": "smollm2"}
    )
    headers = broken.headers(OPERATOR_KEY)
    chat = httpx.post(f"{broken.url}/v1/chat", json={"message": "status"}, headers=headers, timeout=30)
    assert chat.status_code == 503
    assert chat.json()["error"]["code"] == "model_unavailable"
    fast = httpx.post(
        f"{broken.url}/v1/requests",
        json={
            "service": "sensor",
            "payload": {"sensor_id": "a", "value": 1},
            "client": {"kind": "iot", "id": "i"},
        },
        headers=headers,
    )
    assert fast.status_code == 200


def test_fallback_chain_serves_with_rules_when_local_model_is_down(site_factory) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    site = site_factory(
        {
            "MEC_MODEL": "openai-compatible",
            "MEC_MODEL_URL": dead,
            "MEC_MODEL_ID": "smollm2",
            "MEC_MODEL_FALLBACK": "rules",
        }
    )
    chat = httpx.post(
        f"{site.url}/v1/chat", json={"message": "cache stats"}, headers=site.headers(OPERATOR_KEY), timeout=30
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["model"] == "rules"
