"""The OpenAPI and the server agree: schemathesis, every check, against a real `mec serve`.

Schemathesis generates requests from `/openapi.json` (schema-valid ones and, in its negative
mode, schema-violating ones) for `POST /v1/requests` and `POST /v1/chat`, sends them over real
HTTP and runs all its checks on each answer: no 5xx from our own code, the status is one the route
documents, the body and headers match the documented schema, valid data is accepted and invalid
data is refused, the key is not ignored.

One allowance, and only one: a service validates its own payload (the site forwards it as is),
so a schema-valid request the *service* refuses — 422 `invalid_payload` naming a field under
`payload` — is not counted as valid data rejected. Every other refusal of valid data still is.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks, positive_data_acceptance
from schemathesis.config import SchemathesisConfig

from tests.conftest import CLIENT_KEY, SiteProcess

load_all_checks()
ALL_CHECKS = list(CHECKS.get_all())


@pytest.fixture(scope="module")
def contract_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteProcess]:
    site = SiteProcess(
        tmp_path_factory.mktemp("contract"),
        # A fuzzer sends chat turns back to back: the per-key turn rate would turn most of them
        # into 429s (documented, but they would test nothing else).
        {"MEC_CHAT_TURNS_PER_MINUTE": "60000", "MEC_CHAT_BURST": "10000"},
    )
    site.start()
    try:
        yield site
    finally:
        site.stop()


# "Not a server error" means no 500 and no 502 (a workload that fails on some input is a bug the
# test must find). 503 and 504 are the site's documented answers to a budget it cannot meet (a
# generated `latency_budget_ms: 1` is one), with `Retry-After` or `budget_exceeded`.
CONFIG = SchemathesisConfig.from_str(
    """
[checks.not_a_server_error]
expected-statuses = ["2XX", "3XX", "4XX", "503", "504"]
"""
)


@pytest.fixture(scope="module")
def api_schema(contract_site: SiteProcess) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{contract_site.url}/openapi.json", config=CONFIG)


def _service_refused_its_payload(response: schemathesis.Response) -> bool:
    if response.status_code != 422:
        return False
    error = response.json().get("error", {})
    return error.get("code") == "invalid_payload" and str(error.get("field") or "").startswith("payload")


# Schemathesis' own pytest plugin does not run on pytest 9 (it reads a removed `_nodeid`), so the
# operations' hypothesis strategies are driven here directly, in both generation modes.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize("path", ["/v1/requests", "/v1/chat"])
def test_the_server_does_what_its_schema_says(
    api_schema: schemathesis.BaseSchema, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path]["POST"]
    calls: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=200,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def check(case: schemathesis.Case) -> None:
        response = case.call(headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=30)
        calls.append(response.status_code)
        excluded = [positive_data_acceptance] if _service_refused_its_payload(response) else []
        case.validate_response(response, checks=ALL_CHECKS, excluded_checks=excluded)

    check()
    assert len(calls) >= 20, f"schemathesis sent only {len(calls)} requests"
    if mode is GenerationMode.POSITIVE:
        assert any(200 <= status < 300 for status in calls), f"no schema-valid request was served: {calls}"


def test_the_schema_states_the_per_site_rules(api_schema: schemathesis.BaseSchema) -> None:
    """What the fuzzer relies on is really in the document (not an empty schema it trivially meets)."""
    raw = api_schema.raw_schema
    request = raw["components"]["schemas"]["ServiceRequest"]
    rules = request["allOf"]
    ttl_limits = {
        rule["if"]["properties"]["service"]["const"]: rule["then"]["properties"]["cache_ttl_s"]["maximum"]
        for rule in rules
        if "const" in rule["if"]["properties"].get("service", {})
    }
    assert ttl_limits == {"inference": 3600.0, "sensor": 3600.0, "game-state": 3600.0, "assistant": 3600.0}
    assert any("payload" in rule["then"]["properties"] for rule in rules)
    message = raw["components"]["schemas"]["ChatRequest"]["properties"]["message"]
    assert (message["minLength"], message["maxLength"], message["pattern"]) == (1, 4000, r"\S")
