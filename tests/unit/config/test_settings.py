from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from config.settings import load_settings


def test_embedded_defaults_define_three_services_bound_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MEC_CONFIG", "MEC_HOST", "MEC_RUNTIME", "MEC_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.host == "127.0.0.1"
    assert settings.runtime == "local"
    assert settings.redis_url is None
    assert set(settings.services) == {"inference", "sensor", "game-state"}
    assert settings.services["inference"].gpu is True
    assert settings.image_allowlist == ["mec-workloads:0.1"]


def test_yaml_file_overrides_one_field_of_one_service(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("site_id: edge-paris-3\nservices:\n  sensor:\n    replicas: 3\n")
    settings = load_settings(path)
    assert settings.site_id == "edge-paris-3"
    assert settings.services["sensor"].replicas == 3
    assert settings.services["sensor"].module == "workloads.sensor"


def test_environment_beats_yaml_and_overrides_beat_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("port: 9000\nservices:\n  sensor:\n    replicas: 3\n")
    monkeypatch.setenv("MEC_CONFIG", str(path))
    monkeypatch.setenv("MEC_PORT", "9100")
    monkeypatch.setenv("MEC_SERVICES__SENSOR__REPLICAS", "5")
    assert load_settings().port == 9100
    assert load_settings().services["sensor"].replicas == 5
    assert load_settings(port=9200).port == 9200


def test_keys_are_comma_separated_and_must_be_long(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEC_CLIENT_KEYS", "aaaaaaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbbbbbb")
    assert load_settings().client_keys == ["aaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbb"]
    monkeypatch.setenv("MEC_OPERATOR_KEYS", "short")
    with pytest.raises(ValidationError, match="at least 16"):
        load_settings()


def test_extra_images_join_the_service_images_in_the_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEC_IMAGE_ALLOWLIST", "mec-extra:1")
    assert load_settings().image_allowlist == ["mec-extra:1", "mec-workloads:0.1"]


def test_broken_yaml_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("services: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_settings(path)
    with pytest.raises(ValueError, match="cannot read config file"):
        load_settings(tmp_path / "missing.yaml")


def test_invalid_runtime_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEC_RUNTIME", "kubernetes")
    with pytest.raises(ValidationError, match="runtime"):
        load_settings()


def test_model_fallback_entries_must_name_a_known_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEC_MODEL_FALLBACK", "bedrock:anthropic.claude-3-haiku-20240307-v1:0,rules")
    assert load_settings().model_fallback == ["bedrock:anthropic.claude-3-haiku-20240307-v1:0", "rules"]
    monkeypatch.setenv("MEC_MODEL_FALLBACK", "bedrok")
    with pytest.raises(ValidationError, match="bedrok"):
        load_settings()


def test_workers_default_to_half_the_usable_cores_and_come_from_env_or_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MEC_WORKERS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert load_settings().workers == max(1, min(8, cores // 2))
    monkeypatch.setenv("MEC_WORKERS", "3")
    assert load_settings().workers == 3
    assert load_settings(workers=2).workers == 2
    with pytest.raises(ValidationError):
        load_settings(workers=0)
