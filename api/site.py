"""The composition root: one `Site` built from the settings, started and stopped with the app."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strands.types.tools import AgentTool

from agent.admission import Admission, AdmissionSettings
from agent.bedrock_fallback import BedrockFallback
from agent.chat import ChatService
from agent.cloud_forwarding import CloudForwarder
from agent.dispatch import Dispatcher
from agent.inflight import LoadCounters, LocalLoadCounters
from agent.models.build import build_chat_model
from agent.policy import CALLER_KEY, Caller
from agent.request_trace import RequestTracer
from agent.upstream import UpstreamPool
from agent.view import ServiceView, View
from api.auth import KeyRing, generate_key, write_private_json
from api.door import FrontDoor
from api.swarm_node import SiteSwarmBackend, SwarmNode
from config.settings import Settings
from monitoring.alert_desk import AlertChannelServer, LocalAlertDesk, RemoteAlertDesk
from monitoring.alert_service import AlertService, AlertSink, JsonLogSink
from monitoring.alert_store import RedisAlertStore
from monitoring.alerts import AlertEngine
from monitoring.archive import Archiver, archive_store
from monitoring.overload import OverloadMachine, handoff_hot
from monitoring.readings import site_readings
from monitoring.sampler import Sampler
from monitoring.tracing import Tracing, start_tracing
from monitoring.webhook import WebhookSink
from prompts import load_prompt
from swarm.cloud import CloudCompute
from tools.alert_ops import alert_ops_tool
from tools.cache_manager import CacheManager, cache_manager_tool
from tools.caches.memory import MemoryCache
from tools.caches.redis import RedisCache
from tools.container_ops import container_ops_tool
from tools.metrics_monitor import MetricsMonitor, MetricsSnapshot, RequestLog, metrics_monitor_tool
from tools.probes import GpuProbe, HostProbe
from tools.runtimes.base import Runtime, WorkloadRuntimeError, WorkloadSpec
from tools.swarm_ops import swarm_ops_tool

log = logging.getLogger(__name__)


def workload_specs(settings: Settings) -> dict[str, WorkloadSpec]:
    """What the runtime needs to run each configured service."""
    return {
        name: WorkloadSpec(
            name=name,
            module=svc.module,
            image=svc.image,
            gpu=svc.gpu,
            memory_mb=svc.memory_mb,
            cpus=svc.cpus,
            start_timeout_s=svc.start_timeout_s,
            env=dict(svc.env),
        )
        for name, svc in settings.services.items()
    }


def build_runtime(settings: Settings, gpu_available: bool) -> Runtime:
    """The configured runtime (`local` or `docker`), not yet opened."""
    specs = workload_specs(settings)
    allowlist = set(settings.image_allowlist)
    if settings.runtime == "docker":
        from tools.runtimes.docker import DockerRuntime

        return DockerRuntime(
            specs,
            allowlist,
            site_id=settings.site_id,
            host=settings.host if settings.host.startswith("127.") else "127.0.0.1",
            docker_url=settings.docker_url,
            supervise_interval_s=settings.supervise_interval_s,
            cpu_period_ms=settings.docker_cpu_period_ms,
        )
    from tools.runtimes.local import LocalRuntime

    return LocalRuntime(
        specs,
        allowlist,
        site_id=settings.site_id,
        gpu_available=gpu_available,
        supervise_interval_s=settings.supervise_interval_s,
    )


KEYS_FILE = "api-keys.json"
"""Where a site that was given no keys keeps the ones it generated, in its data dir (mode 0600)."""


class SiteStartError(Exception):
    """The site cannot start serving as configured; the message says which part failed and why."""


async def open_runtime(runtime: Runtime) -> None:
    """Connect the runtime to what it drives; `SiteStartError` when that cannot be reached."""
    try:
        await runtime.open()
    except WorkloadRuntimeError as exc:
        raise SiteStartError(f"runtime {runtime.name!r} is not usable: {exc}") from exc


async def start_services(settings: Settings, runtime: Runtime) -> dict[str, str]:
    """Open the runtime and scale every service to its replicas; the start error of each service
    that failed, by name.

    Raises `SiteStartError` when the runtime cannot be reached, or when a service that should run
    has no ready instance (unless `allow_degraded`). The caller closes the runtime after a failure.
    """
    await open_runtime(runtime)
    results = await asyncio.gather(
        *(runtime.scale(name, svc.replicas) for name, svc in settings.services.items()),
        return_exceptions=True,
    )
    errors: dict[str, str] = {}
    for name, result in zip(settings.services, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, WorkloadRuntimeError | OSError):
                raise result
            errors[name] = str(result)
            log.error("service %s did not start: %s", name, result)
    missing = unready_services(settings, runtime)
    if missing and not settings.allow_degraded:
        raise SiteStartError(
            "; ".join(
                f"service {name} has no ready instance: {errors.get(name, 'no instance started')}"
                for name in missing
            )
        )
    return errors


def unready_services(settings: Settings, runtime: Runtime) -> list[str]:
    """Services configured with replicas that have no ready instance now."""
    return [
        name
        for name, svc in settings.services.items()
        if svc.replicas > 0 and not runtime.ready_instances(name)
    ]


def _stored_keys(path: Path) -> dict[str, str] | None:
    """The keys an earlier start generated in this data dir, if the file holds a valid pair."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    pair = {scope: data.get(scope) for scope in ("client", "operator")}
    if not all(isinstance(key, str) and len(key) >= 16 for key in pair.values()):
        return None
    return {scope: str(key) for scope, key in pair.items()}


def resolve_keys(settings: Settings) -> tuple[KeyRing, dict[str, str]]:
    """The key ring. With no key configured, the site uses one client and one operator key of its
    own: generated once per data dir, kept in `api-keys.json` (0600) and reused on later starts."""
    client_keys, operator_keys = list(settings.client_keys), list(settings.operator_keys)
    if client_keys or operator_keys:
        return KeyRing.build(client_keys, operator_keys), {}
    path = settings.data_dir / KEYS_FILE
    generated = _stored_keys(path)
    if generated is None:
        generated = {"client": generate_key("mec_client"), "operator": generate_key("mec_operator")}
    write_private_json(path, generated)  # also tightens the mode of a file someone loosened
    return KeyRing.build([generated["client"]], [generated["operator"]]), generated


@dataclass(frozen=True, slots=True)
class AlertChannel:
    """The private socket over which the workers of `mec serve --workers N` reach the first
    worker's alerts, and its per-run token (both from the supervisor)."""

    path: Path
    token: str


def _caller_key_id(invocation_state: Mapping[str, Any]) -> str:
    """The key id of a chat turn's caller (who acknowledged an alert through `alert_ops`)."""
    caller = invocation_state.get(CALLER_KEY)
    return (caller.key_id or caller.session_id) if isinstance(caller, Caller) else ""


@dataclass
class Site:
    """Everything one MEC site runs, wired together from one `Settings`."""

    settings: Settings
    keys: KeyRing
    generated_keys: dict[str, str]
    runtime: Runtime
    cache: CacheManager
    monitor: MetricsMonitor
    sampler: Sampler
    upstream: UpstreamPool
    admission: Admission
    services: dict[str, ServiceView]
    dispatcher: Dispatcher = field(init=False)
    door: FrontDoor = field(init=False)
    tools: list[AgentTool] = field(init=False)
    chat: ChatService = field(init=False)
    start_errors: dict[str, str] = field(default_factory=dict)
    started: bool = False
    stopped: bool = False
    worker_index: int = 0
    """Which front-door process of the site this is (`mec serve --workers N`), and of how many."""
    worker_count: int = 1
    swarm: SwarmNode | None = None
    """This site's part of the swarm (with `peers` configured); None: a site on its own."""
    cloud: CloudCompute | None = None
    """The services' cloud endpoints (tier `cloud`); None: no service has one."""
    cloud_forwarder: CloudForwarder | None = field(init=False, default=None)
    bedrock: BedrockFallback | None = None
    """Bedrock Converse for services of kind `llm` (with `bedrock_model_id`); None: not configured."""
    alert_channel: AlertChannel | None = None
    """How the front-door processes of `mec serve --workers N` share the first one's alerts; None:
    one process."""
    alerts: AlertService = field(init=False)
    """The alert rules over every sample; evaluated by the first front-door process only."""
    alert_desk: LocalAlertDesk | RemoteAlertDesk = field(init=False)
    """Where every path (REST, SSE, the `alert_ops` tool) reads and acknowledges alerts: this
    process's own, or the first worker's over `alert_channel`."""
    alert_server: AlertChannelServer | None = field(init=False, default=None)
    overload: OverloadMachine = field(init=False)
    """normal → shedding → cloud, fed by the overload alerts (`monitoring.overload`)."""
    tracing: Tracing | None = field(init=False, default=None)
    """Traces going out over OTLP while `otel_exporter_otlp_endpoint` is set; None: no tracing."""
    archiver: Archiver | None = field(init=False, default=None)
    """Archives decisions, resolved alerts and metric roll-ups (first front-door process only)."""

    def __post_init__(self) -> None:
        self.alerts = AlertService(AlertEngine(self.settings.alert_rules))
        channel = self.alert_channel
        if channel is not None and self.worker_index != 0:
            self.alert_desk = RemoteAlertDesk(channel.path, channel.token)
        else:
            self.alert_desk = LocalAlertDesk(self.alerts, self.settings.site_id)
        self.overload = OverloadMachine(
            cloud_after_s=self.settings.overload_cloud_after_s,
            calm_s=self.settings.overload_calm_s,
            min_dwell_s=self.settings.overload_min_dwell_s,
        )
        if self.swarm is not None:
            self.swarm.overload_state = lambda: self.overload.state
        if self.cloud is not None:
            self.cloud_forwarder = CloudForwarder(
                self.cloud,
                self.settings.site_id,
                max_connections=self.settings.cloud_max_connections,
                pool=self.upstream,
            )
        self.dispatcher = Dispatcher(
            self.view_for,
            self.cache,
            self.runtime,
            self.monitor.requests,
            self.upstream,
            self.admission,
            upstream_timeout_s=self.settings.upstream_timeout_s,
            forwarder=None if self.swarm is None else self.swarm.forwarder,
            cloud=self.cloud_forwarder,
            bedrock=self.bedrock,
        )
        self.door = FrontDoor(
            self.admission.lag,
            self.settings.site_id,
            queue_target_ms=self.settings.queue_target_ms,
            max_inflight=self.settings.max_inflight,
            retry_after_s=self.settings.retry_after_s,
        )
        self.tools = [
            metrics_monitor_tool(self.monitor),
            container_ops_tool(self.runtime, {n: s.max_replicas for n, s in self.settings.services.items()}),
            cache_manager_tool(self.cache),
            alert_ops_tool(self.alert_desk, _caller_key_id),
        ]
        if self.swarm is not None:
            self.tools.append(swarm_ops_tool(SiteSwarmBackend(self.swarm)))
        settings, services = self.settings, tuple(self.settings.services)
        self.chat = ChatService(
            settings,
            load_prompt("operator").format(services=", ".join(services)),
            self.tools,
            lambda: build_chat_model(settings, services, self.overloaded),
            self.cache,
        )

    def admission_report(self) -> dict[str, Any]:
        """The front door, every instance's gate and the late answers, as plain data."""
        return {
            "door": self.door.stats(),
            "instances": {i.id: self.admission.gate(i).figures() for i in self.runtime.instances()},
            "late": self.dispatcher.late,
            "hedged": self.dispatcher.hedged,
            "hedges_won": self.dispatcher.hedges_won,
            "hedges_refused": self.dispatcher.hedges.refused,
        }

    def overloaded(self) -> bool:
        """Whether the host is too busy to run the local model (the fallback chain then skips it)."""
        host = self.monitor.snapshot.host
        return host is not None and host.cpu_percent >= self.settings.overload_cpu_pct

    @classmethod
    def build(
        cls,
        settings: Settings,
        runtime: Runtime | None = None,
        counters: LoadCounters | None = None,
        worker: tuple[int, int] = (0, 1),
        alert_channel: AlertChannel | None = None,
    ) -> Site:
        """Wire a site from its settings; `runtime` replaces the configured one (tests, embedding,
        a front-door worker's `RemoteRuntime`), `counters` the load counters (a worker's shared ones;
        default: this process's own); `worker` is (index, count) of this front-door process and
        `alert_channel` how the workers share the first one's alerts."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        keys, generated = resolve_keys(settings)
        gpu = GpuProbe()
        runtime = runtime or build_runtime(settings, gpu.available)
        redis = (
            RedisCache(
                settings.redis_url,
                settings.redis_timeout_s,
                key_prefix=f"mec:{settings.site_id}",  # sites sharing one Redis never share keys
                retries=settings.redis_retries,
                health_check_s=settings.redis_health_check_s,
            )
            if settings.redis_url
            else None
        )
        cache = CacheManager(
            MemoryCache(settings.cache_max_entries),
            redis,
            near_ttl_s=settings.cache_near_ttl_s,
            retry_s=settings.redis_retry_s,
        )
        requests = RequestLog()
        monitor = MetricsMonitor(
            HostProbe(settings.data_dir),
            gpu,
            requests,
            runtime=runtime,
            instance_stats_interval_s=settings.instance_stats_interval_s,
        )
        admission = Admission(
            counters or LocalLoadCounters(),
            AdmissionSettings.of(settings),
        )
        services = {name: ServiceView.of(name, svc) for name, svc in settings.services.items()}
        upstream = UpstreamPool()
        swarm = (
            SwarmNode(settings, runtime, upstream, admission, monitor, gpus=len(gpu.sample()))
            if settings.peers
            else None
        )
        return cls(
            settings=settings,
            keys=keys,
            generated_keys=generated,
            runtime=runtime,
            cache=cache,
            monitor=monitor,
            sampler=Sampler(monitor, settings.sample_interval_s),
            upstream=upstream,
            admission=admission,
            services=services,
            swarm=swarm,
            cloud=CloudCompute.of(settings),
            bedrock=BedrockFallback.of(settings),
            worker_index=worker[0],
            worker_count=worker[1],
            alert_channel=alert_channel,
        )

    def view_for(self, service: str) -> View:
        """The router's view for one request: live instance states, in-flight counts, GPU load."""
        gpu_util = self.monitor.snapshot.gpu_max_utilization
        ready = self.runtime.ready_instances(service)
        return View(
            site_id=self.settings.site_id,
            services=self.services,
            instances={service: ready},
            loads=self.admission.loads(ready),
            gpu_busy=gpu_util is not None and gpu_util >= self.settings.gpu_busy_pct,
            retry_after_s=self.settings.retry_after_s,
            choose_peer=None if self.swarm is None else self.swarm.choose,
            spill_share=self.settings.peer_spill_share
            if self.overload.state == "normal"
            else self.settings.overload_spill_share,
            cloud_spill=self.overload.state == "cloud",
            hedge_share=self.settings.peer_hedge_share if self.settings.peer_hedge_share < 1 else None,
            cloud=self.cloud,
            bedrock=self.bedrock,
        )

    async def start(self) -> None:
        """Connect the cache and the runtime, start every service's replicas, start sampling.

        Over a runtime another process owns (`owns_instances` false: a worker of `mec serve
        --workers N`) it only connects; the owner started the services and judged them.
        Raises `SiteStartError` when the runtime cannot be reached, or when a service that should
        run has no ready instance (unless `allow_degraded`, which starts anyway and reports it).
        A dead Redis is never fatal: the site serves from memory and reconnects by itself.
        """
        if self.started:
            return
        if self.stopped:
            raise SiteStartError("this site was stopped; build a new one")
        self._start_tracing()
        try:
            if self.runtime.owns_instances:
                self.start_errors = await start_services(self.settings, self.runtime)
            else:  # another process (the supervisor of `mec serve --workers N`) runs the services
                await open_runtime(self.runtime)
        except BaseException:
            await self.stop()
            raise
        await self.cache.open()
        if self.cloud_forwarder is not None:
            await self.cloud_forwarder.start()
        if self.bedrock is not None:
            try:  # the client resolves the AWS credential chain; a failure shows on the first call
                await self.bedrock.start()
            except Exception as exc:
                log.warning("the Bedrock client could not be made yet: %s", exc)
        if self.worker_index == 0:  # one process evaluates the rules and owns the webhook's spool
            self.alerts.sinks = self._alert_sinks()
            for sink in self.alerts.sinks:
                if isinstance(sink, RedisAlertStore):  # a restarted site still knows its alerts
                    self.alerts.engine.restore(await sink.load())
            await self.alerts.start()
            self.sampler.listeners.append(self.evaluate_alerts)
            if self.alert_channel is not None and isinstance(self.alert_desk, LocalAlertDesk):
                self.alert_server = AlertChannelServer(
                    self.alert_desk, self.alert_channel.path, self.alert_channel.token
                )
                await self.alert_server.start()
        await self.sampler.start()
        self.admission.lag.start()
        if self.swarm is not None:
            await self.swarm.start()
        if self.worker_index == 0:
            self.archiver = self._archiver()
            self.sampler.listeners.append(self.archiver.observe)
            await self.archiver.start()
        self.started = True

    def _start_tracing(self) -> None:
        """With an OTLP endpoint, trace each request the dispatcher finishes (and the agent)."""
        settings = self.settings
        self.tracing = start_tracing(
            settings.otel_exporter_otlp_endpoint, settings.site_id, self.worker_index
        )
        if self.tracing is not None:
            self.dispatcher.tracer = RequestTracer(self.tracing.tracer("mec.request"), settings.site_id)

    def _archiver(self) -> Archiver:
        swarm = self.swarm
        return Archiver(
            archive_store(self.settings),
            self.settings.site_id,
            decisions=(lambda: swarm.state.history()) if swarm is not None else list,
            resolved_alerts=lambda: [alert.to_dict() for alert in self.alerts.engine.resolved()],
            request_totals=lambda: self.monitor.requests.totals,
            interval_s=self.settings.archive_interval_s,
        )

    def _alert_sinks(self) -> list[AlertSink]:
        settings = self.settings
        sinks: list[AlertSink] = [JsonLogSink()]
        if settings.redis_url:
            sinks.append(RedisAlertStore(settings.redis_url, settings.site_id, settings.redis_timeout_s * 2))
        if settings.alert_webhook_url:
            assert settings.alert_webhook_secret is not None  # the settings refuse a URL without one
            sinks.append(
                WebhookSink(
                    settings.alert_webhook_url,
                    settings.alert_webhook_secret,
                    settings.data_dir / "alerts" / "webhook",
                    retry_window_s=settings.alert_webhook_retry_window_s,
                )
            )
        return sinks

    def evaluate_alerts(self, snapshot: MetricsSnapshot) -> None:
        """The sampler's listener: the alert rules over this sample and the site's live state."""
        inflight: dict[str, int] = {}
        for instance in self.runtime.instances():
            gate = self.admission.gate(instance)
            inflight[instance.service] = inflight.get(instance.service, 0) + gate.outstanding
        down = {"redis": self.cache.redis is not None and not self.cache.redis_up}
        if self.runtime.name == "docker":
            down["docker"] = not self.runtime.reachable
        stale: dict[str, bool] = {}
        if self.swarm is not None:
            down["consensus"] = not self.swarm.consensus_healthy
            stale = self.swarm.stale_peers()
        budgets = {name: float(view.default_budget_ms) for name, view in self.services.items()}
        self.alerts.evaluate(site_readings(snapshot, inflight, budgets, stale, down))
        self.step_overload(snapshot)

    def step_overload(self, snapshot: MetricsSnapshot) -> None:
        """Move the overload state on this sample's alerts; commit a change of cloud mode.

        Hot (`monitoring.overload.handoff_hot`) means an overload alert is firing, or the site
        hands more than `overload_handoff_share` of its requests (last 10 s) to peers or the cloud
        or refuses them for want of capacity (`overload_release_share` to stay hot once shedding)."""
        metrics = set(self.settings.overload_alert_metrics)
        hot = handoff_hot(
            any(alert.metric in metrics for alert in self.alerts.engine.firing()),
            sum(row.requests for row in snapshot.requests),
            sum(
                row.by_tier.get("peer", 0) + row.by_tier.get("cloud", 0) + row.rejected
                for row in snapshot.requests
            ),
            self.overload.state,
            self.settings.overload_handoff_share,
            self.settings.overload_release_share,
        )
        room = self.swarm is not None and self.swarm.peers_have_room()
        change = self.overload.step(hot, room, time.time())
        if change is None:
            return
        log.warning("overload: %s -> %s (%s)", change.before, change.after, change.reason)
        if self.swarm is not None and "cloud" in (change.before, change.after):
            self.swarm.set_cloud_fallback(change.after == "cloud")

    def unready_services(self) -> list[str]:
        """Services configured with replicas that have no ready instance now."""
        return unready_services(self.settings, self.runtime)

    async def stop(self) -> None:
        """Stop sampling, the instances, the HTTP pool and the cache. Safe to call more than once,
        and after a start that failed half way."""
        if self.stopped:
            return
        self.stopped, self.started = True, False
        if self.swarm is not None:
            await self.swarm.stop()
        await self.sampler.stop()
        if self.archiver is not None:
            await self.archiver.stop()
        if self.alert_server is not None:
            await self.alert_server.close()
            self.alert_server = None
        await self.alerts.stop()
        await self.admission.lag.stop()
        try:
            await self.runtime.close()
        finally:
            await self.upstream.close()
            await self.cache.close()
            if self.cloud_forwarder is not None:
                await self.cloud_forwarder.close()
            if self.tracing is not None:
                self.dispatcher.tracer = None
                await self.tracing.shutdown()
            if self.bedrock is not None:
                self.bedrock.close()

    def readiness(self, detail: bool = False) -> tuple[bool, dict[str, Any]]:
        """Whether the site can serve, and why: per-service instances and the cache backend.

        Without `detail` (what anyone may read) it says only ready/degraded/not ready per part;
        `detail` (operators) adds start errors and the cache's last error. Both go to the log too.
        """
        checks: dict[str, Any] = {}
        serving = False
        degraded = False
        for name in self.services:
            ready = len(self.runtime.ready_instances(name))
            total = len(self.runtime.instances(name))
            serving = serving or ready > 0
            entry: dict[str, Any] = {
                "status": "ok" if ready else "not_ready",
                "ready": ready,
                "instances": total,
            }
            # A service configured with no replicas (one that needs a model server, say) is not missing.
            wanted = self.settings.services[name].replicas if name in self.settings.services else 1
            degraded = degraded or (ready == 0 and wanted > 0)
            if detail and name in self.start_errors:
                entry["error"] = self.start_errors[name]
            checks[f"service:{name}"] = entry
        cache = self.cache.stats()
        if cache["redis_up"] is None:
            checks["cache"] = {"backend": "memory", "status": "ok"}
        elif cache["redis_up"]:
            checks["cache"] = {"backend": "redis", "status": "ok"}
        else:
            degraded = True
            checks["cache"] = {"backend": "redis", "status": "degraded"}
            if detail:
                checks["cache"]["detail"] = (
                    f"redis unreachable ({cache['last_error']}); serving from the in-process cache"
                )
        status = "ready" if serving and not degraded else ("degraded" if serving else "not_ready")
        body: dict[str, Any] = {"status": status, "site": self.settings.site_id, "checks": checks}
        if detail:
            body["runtime"] = self.runtime.name
        return serving, body
