from __future__ import annotations

import os
import threading
import zipfile
from importlib import resources
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from config.settings import Settings, _YamlFile, load_settings


@pytest.fixture
def bare_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No MEC_* variable from the shell that runs the tests."""
    for name in list(os.environ):
        if name.upper().startswith("MEC_"):
            monkeypatch.delenv(name)
    return monkeypatch


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_embedded_defaults_define_three_services_bound_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MEC_CONFIG", "MEC_HOST", "MEC_RUNTIME", "MEC_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.host == "127.0.0.1"
    assert settings.runtime == "local"
    assert settings.redis_url is None
    assert set(settings.services) == {"inference", "sensor", "game-state", "assistant"}
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


def test_an_alert_webhook_url_needs_a_long_enough_secret(bare_env: pytest.MonkeyPatch) -> None:
    assert load_settings().alert_webhook_url is None
    bare_env.setenv("MEC_ALERT_WEBHOOK_URL", "https://alerts.example.net/hooks/mec")
    with pytest.raises(ValidationError, match="alert_webhook_url needs alert_webhook_secret"):
        load_settings()
    bare_env.setenv("MEC_ALERT_WEBHOOK_SECRET", "too-short")
    with pytest.raises(ValidationError, match="at least 16"):
        load_settings()
    bare_env.setenv("MEC_ALERT_WEBHOOK_SECRET", "webhook-secret-0123456789")
    bare_env.setenv("MEC_ALERT_WEBHOOK_RETRY_WINDOW_S", "3600")
    settings = load_settings()
    assert settings.alert_webhook_url == "https://alerts.example.net/hooks/mec"
    assert settings.alert_webhook_secret == "webhook-secret-0123456789"
    assert settings.alert_webhook_retry_window_s == 3600.0
    bare_env.setenv("MEC_ALERT_WEBHOOK_URL", "alerts.example.net")
    with pytest.raises(ValidationError, match="alert_webhook_url"):
        load_settings()
    bare_env.setenv("MEC_ALERT_WEBHOOK_URL", "")
    assert load_settings().alert_webhook_url is None


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


def test_each_layer_beats_the_ones_below_it(tmp_path: Path, bare_env: pytest.MonkeyPatch) -> None:
    # sensor.default_budget_ms: field default 200, embedded default.yaml 100, then file, env, flag.
    path = _write(
        tmp_path / "site.yaml", "site_id: edge-file\nservices:\n  sensor:\n    default_budget_ms: 150\n"
    )
    bare_env.setenv("MEC_SITE_ID", "edge-env")
    bare_env.setenv("MEC_SERVICES__SENSOR__DEFAULT_BUDGET_MS", "120")
    flags = {"site_id": "edge-flag", "services": {"sensor": {"default_budget_ms": 110}}}

    def layers(settings: Settings) -> tuple[str, int]:
        sensor = settings.services["sensor"]
        assert sensor.module == "workloads.sensor" and sensor.affinity_key == "sensor_id"
        assert set(settings.services) == {"inference", "sensor", "game-state", "assistant"}
        return settings.site_id, sensor.default_budget_ms

    assert layers(load_settings(path, **flags)) == ("edge-flag", 110)
    assert layers(load_settings(path)) == ("edge-env", 120)
    bare_env.delenv("MEC_SITE_ID")
    bare_env.delenv("MEC_SERVICES__SENSOR__DEFAULT_BUDGET_MS")
    assert layers(load_settings(path)) == ("edge-file", 150)
    assert layers(load_settings()) == ("site-1", 100)


def test_nested_env_and_the_file_change_different_fields_of_one_service(
    tmp_path: Path, bare_env: pytest.MonkeyPatch
) -> None:
    baseline = load_settings()
    path = _write(tmp_path / "site.yaml", "services:\n  sensor:\n    cpus: 0.25\n")
    bare_env.setenv("MEC_SERVICES__SENSOR__REPLICAS", "3")
    settings = load_settings(path)
    sensor = settings.services["sensor"]
    assert (sensor.replicas, sensor.cpus) == (3, 0.25)
    assert sensor.model_dump(exclude={"replicas", "cpus"}) == baseline.services["sensor"].model_dump(
        exclude={"replicas", "cpus"}
    )
    for name in ("inference", "game-state"):
        assert settings.services[name] == baseline.services[name]


def test_builds_with_different_files_do_not_leak_into_each_other(
    tmp_path: Path, bare_env: pytest.MonkeyPatch
) -> None:
    first = _write(tmp_path / "a.yaml", "site_id: edge-a\nservices:\n  sensor:\n    replicas: 2\n")
    second = _write(tmp_path / "b.yaml", "port: 9001\n")
    a = load_settings(first)
    assert (a.site_id, a.port, a.services["sensor"].replicas, a.config) == ("edge-a", 8080, 2, first)
    b = load_settings(second)
    assert (b.site_id, b.port, b.services["sensor"].replicas, b.config) == ("site-1", 9001, 1, second)
    for plain in (load_settings(), Settings()):
        assert (plain.site_id, plain.port, plain.services["sensor"].replicas, plain.config) == (
            "site-1",
            8080,
            1,
            None,
        )


def test_builds_in_threads_at_once_each_read_their_own_file(
    tmp_path: Path, bare_env: pytest.MonkeyPatch
) -> None:
    threads = 6
    paths = [_write(tmp_path / f"{i}.yaml", f"site_id: edge-{i}\n") for i in range(threads)]
    start = threading.Barrier(threads)
    seen: dict[int, set[str]] = {i: set() for i in range(threads)}

    def build(i: int) -> None:
        start.wait()
        for _ in range(15):
            seen[i].add(load_settings(paths[i] if i % 2 else None).site_id)

    workers = [threading.Thread(target=build, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert seen == {i: {f"edge-{i}" if i % 2 else "site-1"} for i in range(threads)}


def test_mec_config_names_the_file_and_the_argument_beats_it(
    tmp_path: Path, bare_env: pytest.MonkeyPatch
) -> None:
    from_env = _write(tmp_path / "env.yaml", "site_id: edge-env\n")
    from_flag = _write(tmp_path / "flag.yaml", "site_id: edge-flag\n")
    bare_env.setenv("MEC_CONFIG", str(from_env))
    assert (load_settings().site_id, load_settings().config) == ("edge-env", from_env)
    assert load_settings(from_flag).site_id == "edge-flag"
    assert "config" not in load_settings().model_dump()
    bare_env.setenv("MEC_CONFIG", "")
    assert (load_settings().site_id, load_settings().config) == ("site-1", None)
    bare_env.setenv("MEC_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="cannot read config file"):
        load_settings()


def test_a_file_must_hold_a_mapping_and_not_name_another_file(
    tmp_path: Path, bare_env: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="must hold a mapping at the top level"):
        load_settings(_write(tmp_path / "list.yaml", "- site_id: edge-a\n"))
    with pytest.raises(ValueError, match="cannot name another config file"):
        load_settings(_write(tmp_path / "nested.yaml", "config: other.yaml\n"))
    with pytest.raises(ValueError, match=r"cannot read config file .*: Is a directory"):
        load_settings(tmp_path)
    assert load_settings(_write(tmp_path / "empty.yaml", "")).site_id == "site-1"


def test_the_embedded_layer_is_read_from_a_zipped_package(tmp_path: Path) -> None:
    embedded = resources.files("config").joinpath("default.yaml").read_text()
    archive = tmp_path / "mec.whl"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("config/default.yaml", embedded)
    with zipfile.ZipFile(archive) as wheel:
        assert _YamlFile(Settings, zipfile.Path(wheel, "config/default.yaml"))() == yaml.safe_load(embedded)


def test_a_service_takes_a_cloud_url_from_env_and_defaults_to_none(bare_env: pytest.MonkeyPatch) -> None:
    assert load_settings().services["sensor"].cloud_url is None
    url = "https://abcdef.lambda-url.eu-west-3.on.aws/sensor?stage=prod"
    bare_env.setenv("MEC_SERVICES__SENSOR__CLOUD_URL", url)
    settings = load_settings()
    assert settings.services["sensor"].cloud_url == url
    assert settings.services["sensor"].module == "workloads.sensor"
    assert settings.services["inference"].cloud_url is None
    bare_env.setenv("MEC_SERVICES__SENSOR__CLOUD_URL", "")
    assert load_settings().services["sensor"].cloud_url is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://cloud.example.com/sensor", "http:// or https://"),
        ("https:///sensor", "with a host"),
        ("cloud.example.com/sensor", "http:// or https://"),
        ("https://user:secret@cloud.example.com/", "must not carry credentials"),
        ("https://cloud.example.com/sensor#x", "fragment"),
        ("https://cloud.example.com:99999/", "not a valid URL"),
        ("https://cloud.example.com/a b", "spaces or control characters"),
        ("https://cloud.example.com/\r\nX: y", "spaces or control characters"),
    ],
)
def test_a_cloud_url_must_be_plain_http_or_https(bare_env: pytest.MonkeyPatch, url: str, why: str) -> None:
    bare_env.setenv("MEC_SERVICES__SENSOR__CLOUD_URL", url)
    with pytest.raises(ValidationError, match=why):
        load_settings()


def test_cloud_settings_have_defaults_and_bounds(bare_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.cloud_token is None
    assert (settings.cloud_assumed_rtt_ms, settings.cloud_breaker_failures) == (50.0, 5)
    assert (settings.cloud_breaker_open_s, settings.cloud_breaker_max_open_s) == (5.0, 60.0)
    bare_env.setenv("MEC_CLOUD_TOKEN", "tok-0123456789")
    bare_env.setenv("MEC_CLOUD_BREAKER_FAILURES", "3")
    bare_env.setenv("MEC_CLOUD_BREAKER_OPEN_S", "0.5")
    settings = load_settings()
    assert (settings.cloud_token, settings.cloud_breaker_failures) == ("tok-0123456789", 3)
    assert settings.cloud_breaker_open_s == 0.5
    bare_env.setenv("MEC_CLOUD_TOKEN", "")
    assert load_settings().cloud_token is None
    for name, value in [
        ("MEC_CLOUD_TOKEN", "two words"),
        ("MEC_CLOUD_BREAKER_FAILURES", "0"),
        ("MEC_CLOUD_BREAKER_OPEN_S", "0"),
        ("MEC_CLOUD_ASSUMED_RTT_MS", "-1"),
        ("MEC_CLOUD_MAX_CONNECTIONS", "0"),
    ]:
        bare_env.setenv(name, value)
        with pytest.raises(ValidationError, match=name.removeprefix("MEC_").lower()):
            load_settings()
        bare_env.delenv(name)
    bare_env.setenv("MEC_CLOUD_BREAKER_OPEN_S", "90")
    with pytest.raises(ValidationError, match="cloud_breaker_max_open_s must be at least"):
        load_settings()


def test_the_otlp_endpoint_comes_from_the_standard_otel_variable(bare_env: pytest.MonkeyPatch) -> None:
    bare_env.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert load_settings().otel_exporter_otlp_endpoint is None
    bare_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    settings = load_settings()
    assert settings.otel_exporter_otlp_endpoint == "http://127.0.0.1:4318"
    resolved = Settings.model_validate(settings.model_dump(mode="json"))  # as a worker receives them
    assert resolved.otel_exporter_otlp_endpoint == "http://127.0.0.1:4318"
    bare_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    assert load_settings().otel_exporter_otlp_endpoint is None
    bare_env.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    bare_env.setenv("MEC_OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4319")
    assert load_settings().otel_exporter_otlp_endpoint == "http://127.0.0.1:4319"
