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
from urllib.parse import urlsplit

import yaml
from pydantic import AliasChoices, BaseModel, Field, field_validator, model_validator
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
ServiceKind = Literal["compute", "llm"]
"""What a service computes: `llm` services answer `{"question": str}` from a language model, and
fall back to Bedrock (`bedrock_model_id`) when no local instance can answer in budget."""


def check_cloud_url(url: str) -> str:
    """An http(s) URL with a host and no credentials (the token goes in `cloud_token`) nor fragment."""
    if any(char.isspace() or not char.isprintable() for char in url):
        raise ValueError(f"cloud_url {url!r} must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port out of range
    except ValueError as exc:
        raise ValueError(f"cloud_url {url!r} is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"cloud_url {url!r} must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("cloud_url must not carry credentials; set cloud_token (MEC_CLOUD_TOKEN) instead")
    if parts.fragment or url.endswith("#"):
        raise ValueError(f"cloud_url {url!r} must not have a fragment")
    if port == 0:
        raise ValueError(f"cloud_url {url!r} has port 0")
    return url


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
    cloud_url: str | None = Field(
        default=None,
        description="The service's cloud compute endpoint (an API Gateway, ALB or Lambda function URL): "
        "requests no local instance and no peer can answer in budget go there. None: no cloud.",
    )

    kind: ServiceKind = Field(
        default="compute",
        description='`llm`: a language-model service (`{"question": str}` in, `{"answer", "model", '
        '"tokens"}` out) whose cloud target is Bedrock when `bedrock_model_id` is set.',
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Variables set in the workload's environment (e.g. the URL of its model server).",
    )

    @field_validator("env")
    @classmethod
    def _env_names_upper_case(cls, value: dict[str, str]) -> dict[str, str]:
        """Variable names in upper case. `MEC_SERVICES__X__ENV__NAME` arrives lower-cased (environment
        names are read case-insensitively) next to the YAML's spelling: that override wins."""
        names: dict[str, str] = {}
        for name, item in value.items():
            if not name or not name.replace("_", "").isalnum() or name[0].isdigit():
                raise ValueError(
                    f"env name {name!r} must be letters, digits and '_', not starting with a digit"
                )
            upper = name.upper()
            if upper not in names or name != upper:
                names[upper] = item
        return names

    @field_validator("cloud_url", mode="before")
    @classmethod
    def _empty_cloud_url_is_none(cls, value: Any) -> Any:
        return value or None

    @field_validator("cloud_url")
    @classmethod
    def _cloud_url_is_http(cls, value: str | None) -> str | None:
        return None if value is None else check_cloud_url(value)

    @model_validator(mode="after")
    def _ttl_within_max(self) -> ServiceSettings:
        if self.cache_ttl_s > self.max_cache_ttl_s:
            raise ValueError(
                f"cache_ttl_s ({self.cache_ttl_s}) exceeds max_cache_ttl_s ({self.max_cache_ttl_s})"
            )
        return self


AlertMetric = Literal[
    "cpu_percent",
    "memory_percent",
    "gpu_utilization",
    "gpu_memory_percent",
    "inflight",
    "p99_budget_ratio",
    "error_rate",
    "peer_unreachable",
    "dependency_down",
]
"""What an alert rule can watch, and its subjects: the host's CPU and memory % (`host`); each GPU's
utilisation and memory % (`gpu0`, ...); per service, the requests in flight, the window's p99
over the service's default budget, and the share of its requests that failed (5xx); per peer, 1
while its load report is stale; per dependency (`redis`, `docker`, `consensus`), 1 while it is
unhealthy."""
AlertSeverity = Literal["info", "warning", "critical"]
OVERLOAD_ALERT_METRICS: tuple[AlertMetric, ...] = (
    "cpu_percent",
    "inflight",
    "p99_budget_ratio",
    "gpu_utilization",
)
OverloadState = Literal["normal", "shedding", "cloud"]
"""A site's overload state (`monitoring.overload`): it sheds to its peers, then to the cloud."""


class AlertRule(BaseModel):
    """One alert rule: fire when `metric` stays above `high` for `for_s`, resolve once it has stayed
    below `low` for `clear_s` (see `monitoring.alerts`)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_.-]+$")
    metric: AlertMetric
    high: float
    low: float | None = Field(default=None, description="Resolve threshold; default: `high`.")
    for_s: float = Field(default=10.0, ge=0, description="How long above `high` before it fires.")
    clear_s: float = Field(default=30.0, ge=0, description="How long below `low` before it resolves.")
    severity: AlertSeverity = "warning"
    subject: str | None = Field(default=None, description="Only this subject (a service, `gpu0`, a peer).")
    fold_s: float = Field(
        default=300.0, ge=0, description="A repeat this soon after the end reopens the same alert."
    )

    @model_validator(mode="after")
    def _low_at_most_high(self) -> AlertRule:
        if self.low is not None and self.low > self.high:
            raise ValueError(f"alert rule {self.name!r}: low ({self.low:g}) is above high ({self.high:g})")
        return self

    @property
    def resolve_below(self) -> float:
        """The value the metric must fall below for the alert to start resolving."""
        return self.high if self.low is None else self.low


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
    bedrock_model_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Bedrock model (or inference profile) id that services of kind `llm` fall back to "
        "through Converse when no local instance can answer in budget; none: no Bedrock fallback.",
    )
    bedrock_max_tokens: int = Field(
        default=256, ge=1, le=8192, description="`maxTokens` of a Bedrock fallback answer."
    )
    bedrock_assumed_ms: float = Field(
        default=1500.0,
        gt=0,
        le=60_000,
        description="Bedrock's time to answer until one answer has been measured (a request whose budget "
        "left is shorter is not sent there).",
    )
    bedrock_max_concurrency: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Bedrock fallback calls in flight at once; more are refused (503).",
    )
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
    peer_hedge_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="A request to a cacheable service that its local instance has not answered after this "
        "share of its budget is also sent to a peer that can answer in the rest; the first answer wins "
        "(1: never hedge).",
    )

    overload_alert_metrics: list[AlertMetric] = Field(
        default_factory=lambda: list(OVERLOAD_ALERT_METRICS),
        description="A firing alert on one of these metrics makes the site hot (monitoring.overload).",
    )
    overload_spill_share: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="The spill share while shedding or in cloud mode (peer_spill_share otherwise).",
    )
    overload_handoff_share: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="A site that hands more than this share of its requests (last 10 s) to peers or the "
        "cloud is hot even without an overload alert: it cannot serve what it is offered.",
    )
    overload_release_share: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="While shedding or offloading, the site stays hot as long as it hands more than this "
        "share of its requests (last 10 s) to peers or the cloud: the shedding must not hide the load.",
    )
    overload_cloud_after_s: float = Field(
        default=5.0, ge=0, description="Hot with no peer that has room this long: cloud mode."
    )
    overload_calm_s: float = Field(
        default=30.0, ge=0, description="No overload alert (or a peer with room) this long: step back."
    )
    overload_min_dwell_s: float = Field(
        default=10.0, ge=0, description="Each overload state is held at least this long."
    )
    alert_rules: list[AlertRule] = Field(
        default_factory=list, description="The alert rules (the embedded defaults are in default.yaml)."
    )
    alert_webhook_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/?#\s]+",
        description="Where alerts are POSTed (monitoring.webhook), spooled under data_dir/alerts/webhook "
        "while the receiver is down; none: no webhook.",
    )
    alert_webhook_secret: str | None = Field(
        default=None,
        min_length=16,
        description="Shared secret of the alert webhook's X-Mec-Signature (HMAC-SHA256); needed with its URL.",
    )
    alert_webhook_retry_window_s: float = Field(
        default=86400.0,
        gt=0,
        description="An alert the webhook receiver has not accepted this long after it fired is moved to "
        "data_dir/alerts/webhook/expired and no longer sent.",
    )

    cloud_token: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        pattern=r"^[\x21-\x7e]+$",
        description="Bearer token sent to every cloud compute endpoint (`Authorization: Bearer …`); none: "
        "no Authorization header.",
    )
    cloud_assumed_rtt_ms: float = Field(
        default=50.0,
        gt=0,
        le=60_000,
        description="A cloud endpoint's time to answer until one answer has been measured.",
    )
    cloud_breaker_failures: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Consecutive failures of a cloud endpoint that open its breaker.",
    )
    cloud_breaker_open_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="How long an open breaker refuses before a probe; doubles after each failed probe.",
    )
    cloud_breaker_max_open_s: float = Field(
        default=60.0, gt=0, le=86_400, description="The longest an open breaker refuses before a probe."
    )
    cloud_max_connections: int = Field(
        default=64, ge=1, le=10_000, description="Connections the site opens to cloud endpoints at most."
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "otel_exporter_otlp_endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT", "MEC_OTEL_EXPORTER_OTLP_ENDPOINT"
        ),
        description="Base URL of an OTLP/HTTP collector (`http://host:4318`; traces go to `/v1/traces`); "
        "when set the site exports its request spans and the agent's. Read from the standard "
        "OTEL_EXPORTER_OTLP_ENDPOINT (or MEC_OTEL_EXPORTER_OTLP_ENDPOINT); none: no tracing.",
    )

    archive_interval_s: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="How often committed swarm decisions, resolved alerts and a metrics roll-up are archived "
        "(monitoring.archive).",
    )
    archive_dir: Path | None = Field(
        default=None, description="Where the local archive is written; default: data_dir/archive."
    )
    archive_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="Largest total size of the local archive; the oldest files are removed past it.",
    )
    archive_s3_bucket: str | None = Field(
        default=None,
        min_length=3,
        max_length=63,
        description="S3 bucket the archive goes to instead of the local directory; none: local.",
    )
    archive_s3_prefix: str = Field(default="mec-archive", max_length=512, description="Key prefix in it.")
    archive_s3_endpoint_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/?#\s]+",
        description="Endpoint of an S3-compatible server (MinIO, Ceph, moto); none: AWS S3 of archive_s3_region.",
    )
    archive_s3_region: str = Field(default="us-east-1", description="Region of the archive's bucket.")

    image_allowlist: CommaList = Field(
        default_factory=list, description="Images that may be started; the services' images are always in."
    )
    services: dict[str, ServiceSettings] = Field(default_factory=dict)
    config: Path | None = Field(
        default=None,
        exclude=True,
        description="The operator's YAML file (`--config FILE`), read by its own source; not dumped.",
    )

    @field_validator(
        "config", "cloud_token", "otel_exporter_otlp_endpoint", "bedrock_model_id", mode="before"
    )
    @classmethod
    def _empty_config_is_none(cls, value: Any) -> Any:
        return value or None

    @field_validator(
        "alert_webhook_url",
        "alert_webhook_secret",
        "archive_dir",
        "archive_s3_bucket",
        "archive_s3_endpoint_url",
        mode="before",
    )
    @classmethod
    def _empty_webhook_is_none(cls, value: Any) -> Any:
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

    @model_validator(mode="after")
    def _alert_webhook_needs_secret(self) -> Settings:
        if self.alert_webhook_url and not self.alert_webhook_secret:
            raise ValueError(
                "alert_webhook_url needs alert_webhook_secret (MEC_ALERT_WEBHOOK_SECRET, at least 16 "
                "characters) to sign the alerts it is sent"
            )
        return self

    @model_validator(mode="after")
    def _breaker_times_in_order(self) -> Settings:
        if self.cloud_breaker_max_open_s < self.cloud_breaker_open_s:
            raise ValueError("cloud_breaker_max_open_s must be at least cloud_breaker_open_s")
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
