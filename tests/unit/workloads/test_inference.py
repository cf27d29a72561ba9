"""Intent classification: the real model, called through the service class."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workloads.inference import (
    DEVICE_ENV,
    EXAMPLE_PAYLOAD,
    INTENT_EXAMPLES,
    MAX_TEXT_CHARS,
    UNKNOWN_LABEL,
    InferenceService,
)
from workloads.server import PayloadError

REPO_ROOT = Path(__file__).resolve().parents[3]

CLEAR_PHRASES = {
    "navigate to the nearest gas station": "navigation",
    "give me directions to the stadium": "navigation",
    "will it rain in paris tomorrow": "weather",
    "play some rock music": "music",
    "send a text message to my brother": "messaging",
    "order new headphones online": "shopping",
    "take a photo with the flash on": "camera",
    "translate good night into italian": "translation",
    "how many calories did i burn on my run": "fitness",
}


def _without_timing(result: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in result.items() if key != "compute_ms"}


@pytest.fixture(scope="module")
def service() -> InferenceService:
    return InferenceService("python")


@pytest.mark.parametrize(("text", "label"), CLEAR_PHRASES.items())
def test_clear_phrases_get_their_intent(service: InferenceService, text: str, label: str) -> None:
    result = service.invoke({"text": text})

    assert result["label"] == label
    assert result["confidence"] > 0.5


def test_shipped_examples_are_recognised_by_the_centroids_built_from_them(service: InferenceService) -> None:
    examples = [(text, label) for label, texts in INTENT_EXAMPLES.items() for text in texts]

    correct = sum(service.invoke({"text": text})["label"] == label for text, label in examples)

    assert correct / len(examples) >= 0.9


def test_case_and_punctuation_do_not_change_the_answer(service: InferenceService) -> None:
    plain = service.invoke({"text": "navigate to the nearest gas station"})
    shouted = service.invoke({"text": "NAVIGATE to the nearest gas station!!!"})

    assert _without_timing(shouted) == _without_timing(plain)


def test_same_text_gives_the_same_result_every_time(service: InferenceService) -> None:
    first = service.invoke({"text": "what's the forecast for tomorrow"})

    for _ in range(5):
        assert _without_timing(
            service.invoke({"text": "what's the forecast for tomorrow"})
        ) == _without_timing(first)


def test_separately_built_models_agree(service: InferenceService) -> None:
    other = InferenceService("python")

    for text in CLEAR_PHRASES:
        assert _without_timing(other.invoke({"text": text})) == _without_timing(
            service.invoke({"text": text})
        )


def test_results_do_not_depend_on_the_process_hash_seed(service: InferenceService) -> None:
    script = (
        "import json; from workloads.inference import InferenceService;"
        "r = InferenceService('python').invoke({'text': 'play my favourite playlist'});"
        "r.pop('compute_ms'); print(json.dumps(r))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}

    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )

    assert completed.returncode == 0, completed.stderr
    expected = _without_timing(service.invoke({"text": "play my favourite playlist"}))
    assert json.loads(completed.stdout) == expected


def test_scores_are_a_distribution_over_every_intent(service: InferenceService) -> None:
    result = service.invoke({"text": "skip this song"})

    assert set(result["scores"]) == set(INTENT_EXAMPLES)
    assert math.isclose(sum(result["scores"].values()), 1.0, abs_tol=1e-5)
    assert result["confidence"] == result["scores"][result["label"]] == max(result["scores"].values())


def test_result_reports_model_device_tokens_and_compute_time(service: InferenceService) -> None:
    result = service.invoke(EXAMPLE_PAYLOAD)

    assert result["model"] == "intent-hashproj-v1"
    assert result["device"] == "cpu"
    assert result["tokens"] == 6
    assert isinstance(result["compute_ms"], float)
    assert result["compute_ms"] >= 0.0  # how fast: bench/workload_bench.py


def test_text_without_any_word_is_unknown_with_zero_confidence(service: InferenceService) -> None:
    result = service.invoke({"text": "?! ... ---"})

    assert result["label"] == UNKNOWN_LABEL
    assert result["confidence"] == 0.0
    assert result["tokens"] == 0
    assert set(result["scores"]) == set(INTENT_EXAMPLES)


def test_text_of_the_maximum_length_is_accepted(service: InferenceService) -> None:
    text = ("weather " * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS]

    assert service.invoke({"text": text})["label"] == "weather"


@pytest.mark.parametrize(
    "payload",
    [{}, {"text": None}, {"text": 42}, {"text": ["hi"]}, {"text": ""}, {"text": "x" * (MAX_TEXT_CHARS + 1)}],
    ids=["missing", "null", "number", "list", "empty", "too-long"],
)
def test_invalid_text_is_refused_naming_the_field(
    service: InferenceService, payload: dict[str, object]
) -> None:
    with pytest.raises(PayloadError) as refused:
        service.invoke(payload)

    assert refused.value.field == "payload.text"


def test_device_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEVICE_ENV, "python")

    assert InferenceService().info()["engine"] == "python"


def test_unknown_device_setting_is_refused() -> None:
    with pytest.raises(ValueError, match=DEVICE_ENV):
        InferenceService("tpu")


def test_cuda_is_refused_where_there_is_none() -> None:
    try:
        import torch
    except ImportError:
        pass
    else:
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")

    with pytest.raises(RuntimeError, match="cuda"):
        InferenceService("cuda")


@pytest.fixture(scope="module")
def torch_service() -> InferenceService:
    pytest.importorskip("torch", reason="the torch engine needs torch installed")
    return InferenceService("auto")


def test_torch_engine_classifies_clear_phrases(torch_service: InferenceService) -> None:
    for text, label in CLEAR_PHRASES.items():
        result = torch_service.invoke({"text": text})
        assert result["label"] == label, text
        assert result["model"] == "intent-hashproj-transformer-v1"


def test_torch_engine_is_deterministic(torch_service: InferenceService) -> None:
    first = torch_service.invoke(EXAMPLE_PAYLOAD)

    for _ in range(3):
        assert _without_timing(torch_service.invoke(EXAMPLE_PAYLOAD)) == _without_timing(first)


def test_torch_engine_runs_on_cuda_when_it_is_there(torch_service: InferenceService) -> None:
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert torch_service.invoke(EXAMPLE_PAYLOAD)["device"] == expected
    assert torch_service.info()["device"] == expected
