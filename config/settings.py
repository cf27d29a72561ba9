"""The site's settings: one object, built once at start-up and passed down.

Precedence, highest first: explicit overrides (CLI flags) > environment `MEC_*` > the operator's
YAML file (`--config FILE` or `MEC_CONFIG`) > the embedded `config/default.yaml`. Services are
merged key by key, so a YAML file or `MEC_SERVICES__SENSOR__REPLICAS=3` changes one field of one
service without restating the rest.

Every layer is a pydantic-settings source: init kwargs, the environment (nested with `__`), and a
`YamlConfigSettingsSource` each for the operator's file and the embedded one, deep-merged by
pydantic-settings itself. Why so: the operator's file is the `config` field (`MEC_CONFIG` is its
environment name), and its source takes the path from the sources above it (`current_state`), so
each build carries its own path: no module-global, no per-call subclass, nothing threads can race on.
"""

from __future__ import annotations

import os
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from pydantic_settings.sources import ConfigFileSourceType

ClientKind = Literal["mobile", "iot", "gaming"]
"""What sort of client sends a request; services say which kinds they serve."""
CLIENT_KINDS: tuple[ClientKind, ...] = get_args(ClientKind)
ModelKind = Literal["rules", "openai-compatible", "bedrock"]
"""The operator agent's model: the embedded rules, a local OpenAI-compatible server, or Bedrock."""
MODEL_KINDS: tuple[ModelKind, ...] = get_args(ModelKind)
CommaList = Annotated[list[str], NoDecode]


class ServiceSettings(BaseModel):
    """One service the site may run, as the operator configured it."""

    description: str = ""
    module: str = Field(description="Python module of the workload, run as `python -m MODULE`.")
    image: str = Field(description="Container image for the docker runtime.")
    client_kinds: list[ClientKind] = Field(default_factory=lambda: list(CLIENT_KINDS))
    gpu: bool = False
    replicas: int = Field(default=1, ge=0, le=64)
    max_replicas: int = Field(default=8, ge=1, le=64)
    default_budget_ms: int = Field(default=200, ge=1, le=60_000)
    cacheable: bool = False
    cache_ttl_s: float = Field(default=60.0, gt=0)
    max_cache_ttl_s: float = Field(
        default=3600.0, gt=0, le=604_800, description="Longest `cache_ttl_s` a client may ask for."
    )
    affinity_key: str | None = Field(
        default=None, description="Payload field whose value pins a request to one instance."
    )
    memory_mb: int = Field(default=256, ge=32)
    cpus: float = Field(default=1.0, gt=0)
    start_timeout_s: float = Field(default=30.0, gt=0)
    example_payload: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ttl_within_max(self) -> ServiceSettings:
        if self.cache_ttl_s > self.max_cache_ttl_s:
            raise ValueError(
                f"cache_ttl_s ({self.cache_ttl_s}) exceeds max_cache_ttl_s ({self.max_cache_ttl_s})"
            )
        return self


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers() -> int:
    """Front-door processes for an edge site by default: half the cores this process may run on,
    1 to 8 (so 1 on a 2-core box, where the workloads need the other core)."""
    return max(1, min(8, usable_cores() // 2))


class _YamlFile(YamlConfigSettingsSource):
    """One YAML layer, read by pydantic-settings' YAML source, except that a file it is given must be
    read (the stock source skips one that does not exist) and any failure is a ValueError naming it."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | Traversable) -> None:
        self.path = path
        super().__init__(settings_cls, yaml_file=path)

    def _read_files(self, files: ConfigFileSourceType | None, deep_merge: bool = False) -> dict[str, Any]:
        # The stock version reads only the files that exist; `files` is `self.path`, one file.
        return self._read_file(self.path)

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except OSError as exc:
            raise ValueError(f"cannot read config file {file_path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ValueError(f"config file {file_path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"config file {file_path} must hold a mapping at the top level")
        if "config" in data:
            raise ValueError(f"config file {file_path} cannot name another config file (`config`)")
        return data


class _OperatorFile(PydanticBaseSettingsSource):
    """The operator's YAML file: the `config` that the sources above this one settled on (an init
    kwarg from `--config`, else `MEC_CONFIG`), or nothing."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole file

    def __call__(self) -> dict[str, Any]:
        path = self.current_state.get("config")
        return _YamlFile(self.settings_cls, Path(path))() if path else {}


class Settings(BaseSettings):
    """Everything the site reads at start-up. Each field has the environment name MEC_<FIELD>."""

    model_config = SettingsConfigDict(
        env_prefix="MEC_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    site_id: str = Field(default="site-1", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    client_keys: CommaList = Field(default_factory=list)
    operator_keys: CommaList = Field(default_factory=list)
    redis_url: str | None = None
    runtime: Literal["local", "docker"] = "local"
    data_dir: Path = Path("data")
    docker_url: str | None = Field(default=None, description="Docker engine URL; default from DOCKER_HOST.")
    docker_cpu_period_ms: float | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="CFS period of each container's CPU limit (`cpus` of quota per period); default: the "
        "engine's 100 ms. Shorter bounds the wait of a container that used up its quota.",
    )

    allow_degraded: bool = Field(
        default=False, description="Start even when a service has no ready instance (and say so)."
    )
    workers: int = Field(
        default_factory=default_workers,
        ge=1,
        le=64,
        description="Front-door processes sharing the API port (one supervisor owns the runtime); "
        "default: half the cores, 1 to 8.",
    )
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_connections: int = Field(
        default=2048,
        ge=8,
        description="Client connections the API holds open at most; at the limit the least recently "
        "active idle one is closed to admit a new one.",
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest a client may take to send a request's headers."
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest a client may take to send a request's body."
    )
    keepalive_timeout_s: float = Field(
        default=5.0, gt=0, description="An idle keep-alive connection is closed after this long."
    )
    sample_interval_s: float = Field(default=0.5, gt=0)
    instance_stats_interval_s: float = Field(default=2.0, gt=0)
    gpu_busy_pct: float = Field(default=85.0, ge=0, le=100, description="GPU busy above this utilisation.")
    instance_capacity: int = Field(
        default=32,
        ge=1,
        description="Most requests one instance works on at once: the ceiling of its adaptive "
        "concurrency limit.",
    )
    instance_queue: int = Field(
        default=64, ge=0, description="Requests that may wait at the site for a slot of one instance."
    )
    queue_target_ms: float = Field(
        default=5.0,
        gt=0,
        description="Longest a request should wait behind others before the dispatcher starts on it "
        "(and an instance's queue turns newest-first past it); the front door admits fewer while the "
        "shortest wait stays above it.",
    )
    max_inflight: int = Field(
        default=4096, ge=1, description="Fast-path requests one front-door process holds at once."
    )
    http_telemetry: bool = Field(
        default=False,
        description="FastAPI's own OpenTelemetry spans and metrics of HTTP requests (needs a configured "
        "OpenTelemetry provider). Off by default: with nothing to export it still costs about 4 % of "
        "the CPU of each request.",
    )
    upstream_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Hard limit of one call to an instance, however long its caller waits.",
    )
    retry_after_s: int = Field(default=1, ge=1)
    supervise_interval_s: float = Field(default=1.0, gt=0)

    cache_max_entries: int = Field(default=50_000, ge=1)
    cache_near_ttl_s: float = Field(
        default=2.0, ge=0, description="Longest a Redis-backed entry is also kept in process memory."
    )
    redis_timeout_s: float = Field(default=0.25, gt=0)
    redis_retry_s: float = Field(default=1.0, gt=0)
    redis_retries: int = Field(
        default=1,
        ge=0,
        le=5,
        description="Retries of one Redis command on a connection error or timeout (after reconnecting), "
        "all within redis_timeout_s.",
    )
    redis_health_check_s: float = Field(
        default=5.0,
        ge=0,
        description="A pooled Redis connection idle this long is PINGed before use; 0: never.",
    )

    model: ModelKind = Field(
        default="rules", description="The operator agent's model: embedded rules, a local server, or Bedrock."
    )
    model_url: str | None = Field(default=None, description="Base URL of an OpenAI-compatible server (…/v1).")
    model_id: str | None = Field(
        default=None, description="Model name on that server, or the Bedrock model id."
    )
    model_api_key: str = Field(default="none", description="API key for the OpenAI-compatible server.")
    model_fallback: CommaList = Field(
        default_factory=list,
        description="Models tried in order when the primary fails or the site is overloaded.",
    )
    model_timeout_s: float = Field(default=30.0, gt=0)
    model_max_tokens: int = Field(default=512, ge=16, le=8192)
    bedrock_region: str = "us-east-1"
    overload_cpu_pct: float = Field(
        default=90.0, ge=0, le=100, description="Host CPU above which the local model is skipped."
    )
    chat_max_sessions: int = Field(default=256, ge=1)
    chat_session_ttl_s: float = Field(default=1800.0, gt=0)
    chat_window_messages: int = Field(default=20, ge=2, description="Messages an agent keeps in context.")
    chat_max_message_chars: int = Field(default=4000, ge=1)
    chat_mutations_per_minute: int = Field(default=10, ge=1, description="Changing tool calls per API key.")
    chat_turns_per_minute: float = Field(
        default=60.0, gt=0, description="Chat turns (and allow_llm requests) per API key, sustained."
    )
    chat_burst: int = Field(
        default=10, ge=1, description="Chat turns a key may send at once above that rate."
    )
    chat_max_concurrent_turns: int = Field(
        default=4, ge=1, description="Chat turns the site runs at once; more get 503 with Retry-After."
    )
    llm_budget_ms: int = Field(
        default=20_000, ge=100, le=120_000, description="Budget of requests sent to the LLM."
    )

    peers: CommaList = Field(
        default_factory=list,
        description="The other sites of the swarm as ID=URL (e.g. site-2=http://10.0.0.2:8080); none: a "
        "site on its own.",
    )
    peer_secret: str | None = Field(
        default=None,
        min_length=16,
        description="Shared secret the sites sign peer requests with (HMAC-SHA256); needed with peers.",
    )
    consensus: Literal["embedded", "etcd"] = Field(
        default="embedded", description="The swarm's consensus: embedded Raft (pysyncobj) or an etcd cluster."
    )
    raft_host: str = Field(default="127.0.0.1", description="Where the embedded Raft listens.")
    raft_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="The embedded Raft's port; default: the API port + 1000. Peers' Raft ports are "
        "their API ports + 1000 unless given as ID=URL@RAFT_HOST:PORT.",
    )
    etcd_endpoints: CommaList = Field(
        default_factory=list, description="etcd members' client URLs (http://HOST:PORT) for consensus=etcd."
    )
    consensus_max_entries: int = Field(
        default=1000,
        ge=2,
        description="Log entries the consensus keeps past its latest snapshot of the swarm state "
        "(both backends); older ones are compacted into that snapshot. The same on every site.",
    )
    gossip_interval_s: float = Field(
        default=0.2, gt=0, description="How often a site sends its load to its peers."
    )
    load_stale_s: float = Field(
        default=1.5, gt=0, description="A peer's load older than this counts as unavailable."
    )
    balancer: Literal["default", "p2c", "least-loaded", "round-robin"] = Field(
        default="default",
        description="How a request the site cannot serve in budget picks a peer.",
    )
    peer_spill_share: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="A request whose best local instance is predicted to answer later than this share "
        "of its remaining budget goes to a peer predicted to answer sooner, when there is one "
        "(1: only what no local instance can answer in budget goes to peers).",
    )

    image_allowlist: CommaList = Field(
        default_factory=list, description="Images that may be started; the services' images are always in."
    )
    services: dict[str, ServiceSettings] = Field(default_factory=dict)
    config: Path | None = Field(
        default=None,
        exclude=True,
        description="The operator's YAML file (`--config FILE`), read by its own source; not dumped.",
    )

    @field_validator("config", mode="before")
    @classmethod
    def _empty_config_is_none(cls, value: Any) -> Any:
        return value or None

    @field_validator(
        "client_keys",
        "operator_keys",
        "image_allowlist",
        "model_fallback",
        "peers",
        "etcd_endpoints",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("model_fallback")
    @classmethod
    def _fallback_kinds(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry.split(":", 1)[0] not in MODEL_KINDS:
                raise ValueError(
                    f"model_fallback entry {entry!r} must be KIND[:MODEL_ID] with KIND one of {MODEL_KINDS}"
                )
        return value

    @field_validator("client_keys", "operator_keys")
    @classmethod
    def _keys_long_enough(cls, value: list[str]) -> list[str]:
        for key in value:
            if len(key) < 16:
                raise ValueError("API keys must be at least 16 characters long")
        return value

    @field_validator("services")
    @classmethod
    def _service_names(cls, value: dict[str, ServiceSettings]) -> dict[str, ServiceSettings]:
        for name in value:
            if not name.replace("-", "").isalnum() or name != name.lower():
                raise ValueError(f"service name {name!r} must be lower-case letters, digits and '-'")
        return value

    @model_validator(mode="after")
    def _swarm_needs_secret_and_port(self) -> Settings:
        if self.peers and not self.peer_secret:
            raise ValueError("peers need a shared peer_secret (MEC_PEER_SECRET, at least 16 characters)")
        if self.peers and self.port == 0:
            raise ValueError("a site with peers needs a fixed port (its peers are told it)")
        return self

    @property
    def raft_address(self) -> str:
        """Where this site's embedded Raft listens (`raft_host:raft_port`, default port + 1000)."""
        return f"{self.raft_host}:{self.raft_port or self.port + 1000}"

    @model_validator(mode="after")
    def _allow_service_images(self) -> Settings:
        for service in self.services.values():
            if service.image not in self.image_allowlist:
                self.image_allowlist.append(service.image)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            _OperatorFile(settings_cls),
            _YamlFile(settings_cls, resources.files("config").joinpath("default.yaml")),
        )


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the site's settings from defaults, a YAML file, the environment and overrides.

    `config_file` falls back to the `MEC_CONFIG` environment variable; None overrides are ignored.
    """
    values = {key: value for key, value in overrides.items() if value is not None}
    if config_file:
        values["config"] = config_file
    return Settings(**values)
