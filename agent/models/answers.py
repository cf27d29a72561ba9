"""The rules model's reply, written in plain English from what the tools returned.

Every answer is built only from the tool results (`results.Observation`), never from what a tool
was expected to return. A failure (a policy refusal, an unknown instance, a tool error) is said
first, in plain words; a call the policy holds for confirmation becomes a question ("This stops 1
instance of game-state (game-state-1); reply yes to confirm and go ahead."). Figures are shown as
the tools reported them. `steps` decides when to answer and calls the writers here: one
``*_report`` per intent, plus the replies that need no tool (help, not understood, a missing
detail, a round budget spent).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from agent.models.events import ToolCall
from agent.models.intents import Request
from agent.models.results import Observation, Rounds, all_observations, latest_result, listed_instances

CPU_HOT_PERCENT = 80.0
"""An instance at or above this CPU share is called saturated in a latency diagnosis."""
HOST_HOT_PERCENT = 85.0
"""A host at or above this CPU share is called overloaded in a latency diagnosis."""
TAIL_RATIO = 5.0
"""A p99 at least this many times the p50 is called a long tail..."""
TAIL_MIN_REQUESTS = 20
"""...once the window holds at least this many requests (below it the p99 is just the maximum)."""

_CONFIRM = re.compile(r"confirm", re.IGNORECASE)
_REFUSED = re.compile(
    r"refused|not allowed|not in (the|this site's) \w* ?allowlist|forbidden|denied|scope", re.IGNORECASE
)

CAPABILITIES = (
    'I understand: status ("status", "is everything ok?", "what is running"); host and GPU metrics '
    '("cpu", "what\'s the load like", "gpu"); latency and errors ("why is the gaming latency high?"); '
    'scaling ("scale inference to 3 replicas", "bump sensor to 3"); starting, restarting and stopping '
    '("start another inference instance", "restart sensor", "take down game-state-1"); logs ("show logs '
    'of sensor", "tail 20 lines of sensor-1"); the cache ("cache stats", "flush the sensor cache", "get '
    'key K from the inference cache", "set key K to 42 in the sensor cache", "delete key K in namespace '
    'N"); the swarm ("which site is the leader?", "list the sites", "where does inference run?", "swarm '
    'load", "move inference to site-2", "scale inference to 4 across the swarm"); alerts ("any alerts?", '
    '"show resolved alerts", "ack alert 3f9c2e-4"); and several of these in '
    'one message ("CPU and GPU load?", "restart sensor-1 and show its logs").'
)


# -- words and figures ---------------------------------------------------------------------------


def _sentences(*parts: str) -> str:
    """The non-blank parts, stripped, joined by a space."""
    return " ".join(part.strip() for part in parts if part and part.strip())


_CALL_PHRASES: Mapping[tuple[str, str], str] = {
    ("container_ops", "start"): "start an instance of {target}",
    ("container_ops", "scale"): "scale {target} to {replicas}",
    ("container_ops", "logs"): "read the logs of {target}",
    ("container_ops", "inspect"): "inspect {target}",
    ("cache_manager", "stats"): "read the cache stats",
    ("cache_manager", "flush"): "flush the {namespace} cache",
    ("cache_manager", "get"): "read key {key} from the {namespace} cache",
    ("cache_manager", "set"): "store key {key} in the {namespace} cache",
    ("cache_manager", "delete"): "delete key {key} from the {namespace} cache",
}
"""What a call does, by tool and action, as a template over the fields `describe` fills in."""
_OTHER_ACTION = {"container_ops": "{action} {target}", "cache_manager": "{action} the cache"}


_SWARM_PHRASES: Mapping[str, str] = {
    "sites": "list the swarm's sites",
    "leader": "find the swarm's coordinator",
    "placements": "read the swarm's placements",
    "load": "read the swarm's load",
    "scale": "scale {service} to {replicas} across the swarm",
    "move": "move {service} to {site}",
}
"""What a `swarm_ops` call does, by action."""


def _describe_swarm(args: Mapping[str, Any]) -> str:
    action = str(args.get("action", ""))
    service, site = args.get("service"), args.get("site")
    if action == "placements" and (service or site):
        where = f" on {site}" if site else " in the swarm"
        return f"read where {service} runs{where}" if service else f"read what runs on {site}"
    if action in ("sites", "load") and site:
        return f"read the {'load' if action == 'load' else 'state'} of {site}"
    template = _SWARM_PHRASES.get(action, "{action} in the swarm")
    return template.format(
        action=action,
        service=service or "a service",
        site=site or "a site",
        replicas=_plural(_int(args.get("replicas")), "replica"),
    )


def describe(call: ToolCall) -> str:
    """What a call does, as a verb phrase: "restart sensor-1", "flush the sensor cache"."""
    args = call.input
    action = str(args.get("action", ""))
    if call.name == "swarm_ops":
        return _describe_swarm(args)
    if call.name == "metrics_monitor":
        return f"read the {args.get('section', 'all')} metrics"
    if call.name == "alert_ops":
        return f"acknowledge alert {args.get('alert_id')}" if action == "ack" else "list the alerts"
    if call.name == "container_ops" and action == "list":
        return f"list the instances of {args['service']}" if args.get("service") else "list the instances"
    template = _CALL_PHRASES.get((call.name, action), _OTHER_ACTION.get(call.name))
    if template is None:
        return f"call {call.name}"
    return template.format(
        action=action,
        target=args.get("instance_id") or args.get("service") or "the site",
        replicas=_plural(_int(args.get("replicas")), "replica"),
        namespace=args.get("namespace"),
        key=args.get("key"),
    )


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def fig(value: float | int | None) -> str:
    """A figure as the tool reported it, without trailing zeros: 12.5, 40, 0.125."""
    if value is None:
        return "n/a"
    return f"{float(value):.3f}".rstrip("0").rstrip(".")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{float(value):.1f}%"


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{float(value) / 2**30:.1f} GiB"


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{float(value) / 2**20:.1f} MiB"


def _rate(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 2**20:
        return f"{value / 2**20:.1f} MiB/s"
    return f"{value / 2**10:.1f} KiB/s"


def _plural(count: int, word: str, plural: str | None = None) -> str:
    """ "1 replica", "2 replicas", "0 entries" (with `plural` for irregular words)."""
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _were(count: int) -> str:
    return "was" if count == 1 else "were"


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def service_of(instance_id: str, services: Sequence[str]) -> str:
    """The service an instance id belongs to: "game-state-1" → "game-state" (also for the Docker
    runtime's "mec-site-1-sensor-1"); without a match, the id less its number."""
    for service in sorted(services, key=len, reverse=True):
        if re.search(rf"(^|-){re.escape(service)}-\d+$", instance_id):
            return service
    return re.sub(r"-\d+$", "", instance_id)


# -- failures ------------------------------------------------------------------------------------


def _consequences(calls: Sequence[ToolCall], services: Sequence[str]) -> str:
    """What held calls would do, in plain words: "stops 1 instance of sensor (sensor-1) and
    flushes the sensor cache"."""
    phrases: list[str] = []
    stopped: dict[str, list[str]] = {}
    for call in calls:
        if call.name == "container_ops" and call.input.get("action") == "stop":
            instance = str(call.input.get("instance_id"))
            stopped.setdefault(service_of(instance, services), []).append(instance)
    if stopped:
        phrases.append(
            "stops "
            + _join(
                [
                    f"{_plural(len(ids), 'instance')} of {service} ({_join(ids)})"
                    for service, ids in stopped.items()
                ]
            )
        )
    for call in calls:
        action = call.input.get("action")
        if call.name == "container_ops" and action == "stop":
            continue
        if call.name == "container_ops" and action == "scale":
            replicas = _int(call.input.get("replicas"))
            phrases.append(
                f"scales {call.input.get('service')} to {_plural(replicas, 'replica')}"
                + (" (stops every instance)" if replicas == 0 else "")
            )
        elif call.name == "cache_manager" and action == "flush":
            phrases.append(f"flushes the {call.input.get('namespace')} cache")
        elif call.name == "swarm_ops" and action == "scale":
            replicas = _int(call.input.get("replicas"))
            phrases.append(
                f"scales {call.input.get('service')} to {_plural(replicas, 'replica')} across the swarm"
                + (" (stops it on every site)" if replicas == 0 else "")
            )
        else:
            phrases.append(f"would {describe(call)}")
    return _join(phrases)


def failure_sentences(observations: Sequence[Observation], services: Sequence[str] = ()) -> list[str]:
    """Plain sentences for failed calls; calls held for confirmation first, as a question to the
    operator ("This flushes the sensor cache; reply yes to confirm and go ahead.")."""
    failed = [obs for obs in observations if not obs.ok]
    confirm = [obs for obs in failed if _CONFIRM.search(obs.error)]
    refused = [obs for obs in failed if obs not in confirm and _REFUSED.search(obs.error)]
    other = [obs for obs in failed if obs not in confirm and obs not in refused]
    sentences = []
    if confirm:
        sentences.append(
            f"This {_consequences([obs.call for obs in confirm], services)}; reply yes to confirm and go ahead."
        )
    sentences += [f"I could not {describe(obs.call)}: it was refused ({_reason(obs)})." for obs in refused]
    sentences += [f"I could not {describe(obs.call)}: {obs.error.rstrip('.')}." for obs in other]
    return sentences


def _reason(obs: Observation) -> str:
    return re.sub(r"^refused:\s*", "", obs.error)


# -- rendering tool results ------------------------------------------------------------------------


def _metrics_result(rounds: Rounds) -> dict[str, Any]:
    data = latest_result(rounds, "metrics_monitor")
    return data if isinstance(data, dict) else {}


def _instance_phrase(inst: Mapping[str, Any]) -> str:
    bits = [str(inst.get("state", "unknown"))]
    if inst.get("gpu"):
        bits.append("GPU")
    if inst.get("restarts"):
        bits.append(_plural(int(inst["restarts"]), "restart"))
    if inst.get("state") != "running" and inst.get("last_exit_code") not in (None, 0):
        bits.append(f"last exit code {inst['last_exit_code']}")
    return f"{inst.get('id', '?')} ({', '.join(bits)})"


def idle_sentence(service: str) -> str:
    """The sentence for a service with nothing running: "game-state: no instance running."."""
    return f"{service}: no instance running."


def instances_sentence(instances: Sequence[Mapping[str, Any]], service: str | None) -> str:
    noun = f"{service} instance" if service else "instance"
    if not instances:
        return idle_sentence(service) if service else "No service instances exist on this site."
    running = sum(1 for inst in instances if inst.get("state") == "running")
    return (
        f"{running} of {_plural(len(instances), noun)} running: "
        + ", ".join(_instance_phrase(inst) for inst in instances)
        + "."
    )


def host_sentence(host: Mapping[str, Any] | None) -> str:
    if not host:
        return "Host figures are not sampled yet."
    return (
        f"Host CPU {_pct(host.get('cpu_percent'))} of {_plural(_int(host.get('cpu_count')), 'core')} "
        f"(load {float(host.get('load_1m') or 0):.2f}), memory {_pct(host.get('memory_percent'))} "
        f"({_gib(host.get('memory_used_bytes'))} of {_gib(host.get('memory_total_bytes'))}), "
        f"disk {_pct(host.get('disk_percent'))} used ({_gib(host.get('disk_free_bytes'))} free), "
        f"network in {_rate(host.get('net_rx_bytes_per_s'))}, out {_rate(host.get('net_tx_bytes_per_s'))}."
    )


def gpu_sentence(gpu: Mapping[str, Any] | None) -> str:
    if not gpu:
        return "No GPU figures were returned."
    devices = gpu.get("devices") or []
    if not devices:
        return f"This site has no usable GPU ({gpu.get('reason') or 'none found'})."
    parts = []
    for dev in devices:
        extras = []
        if dev.get("temperature_c") is not None:
            extras.append(f"{fig(dev['temperature_c'])} °C")
        if dev.get("power_w") is not None:
            extras.append(f"{fig(dev['power_w'])} W")
        parts.append(
            f"GPU {dev.get('index')} ({dev.get('name')}): {_pct(dev.get('utilization_percent'))} busy, "
            f"memory {_gib(dev.get('memory_used_bytes'))} of {_gib(dev.get('memory_total_bytes'))}"
            + (f", {', '.join(extras)}" if extras else "")
            + "."
        )
    return " ".join(parts)


def request_phrase(stats: Mapping[str, Any]) -> str:
    """ "p50 1.2 ms, p95 3 ms, p99 9.5 ms over 120 requests (12/s), 0 server errors[, 3 turned
    away for lack of capacity]" — server errors and capacity rejects (503) counted apart."""
    rejected = int(stats.get("rejected", 0))
    return (
        f"p50 {fig(stats.get('p50_ms'))} ms, p95 {fig(stats.get('p95_ms'))} ms, "
        f"p99 {fig(stats.get('p99_ms'))} ms over {_plural(int(stats.get('requests', 0)), 'request')} "
        f"({fig(stats.get('rate_per_s'))}/s), {_plural(int(stats.get('errors', 0)), 'server error')}"
        + (f", {rejected} turned away for lack of capacity" if rejected else "")
    )


def _window(data: Mapping[str, Any]) -> str:
    return fig((data.get("requests") or {}).get("window_s"))


def _request_stats(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((data.get("requests") or {}).get("services") or [])


def _instance_stats(
    data: Mapping[str, Any], services: Sequence[str], ids: Sequence[str] = ()
) -> list[Mapping[str, Any]]:
    rows = data.get("instances") or []
    if ids:
        return [row for row in rows if any(str(row.get("instance_id", "")).endswith(i) for i in ids)]
    if services:
        patterns = [re.compile(rf"(^|-){re.escape(service)}-\d+$") for service in services]
        return [row for row in rows if any(p.search(str(row.get("instance_id", ""))) for p in patterns)]
    return list(rows)


def diagnose(
    stats: Mapping[str, Any] | None,
    instances: Sequence[Mapping[str, Any]],
    instance_rows: Sequence[Mapping[str, Any]],
    host: Mapping[str, Any] | None,
    service: str | None,
    listed: bool,
) -> list[str]:
    """Findings that explain latency, most decisive first; empty when nothing stands out.

    Server errors (5xx from an instance) and capacity rejects (503 before any instance was tried)
    are separate findings: the first points at the instances' logs, the second at scaling out.
    """
    findings = []
    running = [inst for inst in instances if inst.get("state") == "running"]
    if listed and service and not running:
        findings.append(f"No {service} instance is running, so its requests cannot be served locally.")
    for inst in instances:
        if inst.get("state") in ("unhealthy", "restarting", "starting", "exited"):
            findings.append(f"{inst['id']} is {inst['state']}.")
    for row in instance_rows:
        if float(row.get("cpu_percent") or 0) >= CPU_HOT_PERCENT:
            findings.append(
                f"{row['instance_id']} is at {_pct(row['cpu_percent'])} CPU: it is saturated, "
                "and scaling out should help."
            )
    if host and float(host.get("cpu_percent") or 0) >= HOST_HOT_PERCENT:
        findings.append(f"The host CPU is at {_pct(host['cpu_percent'])}: the whole site is overloaded.")
    if stats:
        errors, requests = int(stats.get("errors", 0)), int(stats.get("requests", 0))
        rejected = int(stats.get("rejected", 0))
        if errors:
            findings.append(
                f"{errors} of {_plural(requests, 'request')} failed with a server error; check the instance logs."
            )
        if rejected:
            findings.append(
                f"{_plural(rejected, 'request')} {_were(rejected)} turned away for lack of capacity (503): "
                "no instance was free to take them; scaling out should help."
            )
        p50, p99 = float(stats.get("p50_ms") or 0), float(stats.get("p99_ms") or 0)
        # Rejects are answered at once and drag the p50 down: with any, the ratio means nothing.
        if not rejected and requests >= TAIL_MIN_REQUESTS and p50 > 0 and p99 >= TAIL_RATIO * p50:
            findings.append(
                f"The p99 is {p99 / p50:.0f}x the p50: a few slow requests (a long tail), not a general slowdown."
            )
    return findings


def _started_phrase(inst: Mapping[str, Any]) -> str:
    return f"{inst.get('id')} ({inst.get('state')}, {inst.get('url')})"


def _cache_stats(data: Mapping[str, Any], namespace: str | None) -> str:
    namespaces: Mapping[str, int] = data.get("namespaces_in_memory") or {}
    hits, misses = int(data.get("hits", 0)), int(data.get("misses", 0))
    ratio = data.get("hit_ratio")
    parts = []
    if namespace:
        parts.append(
            f"The {namespace} cache holds {_plural(int(namespaces.get(namespace, 0)), 'entry', 'entries')}."
        )
    parts.append(
        (f"Hit ratio {_pct(float(ratio) * 100)} " if ratio is not None else "No lookups yet ")
        + f"({_plural(hits, 'hit')}, {_plural(misses, 'miss', 'misses')} over {_plural(hits + misses, 'lookup')}); "
        + f"{data.get('entries_in_memory', 0)} of {_plural(_int(data.get('memory_capacity')), 'entry', 'entries')} "
        + f"in memory, {_plural(int(data.get('evictions', 0)), 'eviction')}; backend {data.get('backend')}."
    )
    if namespaces and not namespace:
        parts.append(
            "Entries per namespace: "
            + ", ".join(f"{ns} {count}" for ns, count in sorted(namespaces.items()))
            + "."
        )
    if data.get("backend") == "redis" and data.get("redis_up") is False:
        parts.append(f"Redis is unreachable ({data.get('last_error')}); the site serves from memory.")
    return " ".join(parts)


# -- the answer of each intent, once its tools have run --------------------------------------------


def status_report(request: Request, rounds: Rounds, services: Sequence[str]) -> str:
    """The site's (or the named services') instances, host and GPU figures and request figures."""
    subjects = request.subjects
    data = _metrics_result(rounds)
    listed = latest_result(rounds, "container_ops", "list")
    parts: list[str] = []
    if listed is not None:
        if subjects:
            parts += [instances_sentence(listed_instances(listed, service), service) for service in subjects]
        else:
            instances = listed_instances(listed)
            parts += [
                idle_sentence(service)
                for service in services
                if not any(i.get("service") == service and i.get("state") == "running" for i in instances)
            ]
            if instances or not services:
                parts.append(instances_sentence(instances, None))
    if data:
        parts.append(host_sentence(data.get("host")))
        parts.append(gpu_sentence(data.get("gpu")))
        stats = [s for s in _request_stats(data) if not subjects or s["service"] in subjects]
        if stats:
            parts.append(
                f"Requests in the last {_window(data)} s: "
                + "; ".join(f"{s['service']} {request_phrase(s)}" for s in stats)
                + "."
            )
        else:
            parts.append(f"No requests in the last {_window(data)} s.")
    return _sentences(*parts)


def host_report(request: Request, rounds: Rounds) -> str:
    """The host's figures, or the CPU and memory of the named services or instances."""
    data = _metrics_result(rounds)
    if not data:
        return ""
    if not (request.subjects or request.instance_ids):
        return _sentences(host_sentence(data.get("host")))
    rows = _instance_stats(data, request.subjects, request.instance_ids)
    subject = _join(list(request.instance_ids)) or _join(list(request.subjects))
    if not rows:
        return _sentences(f"The latest metrics snapshot has no CPU or memory figures for {subject}.")
    return _sentences(
        "; ".join(
            f"{row['instance_id']}: CPU {_pct(row.get('cpu_percent'))}, memory {_mib(row.get('memory_bytes'))}"
            + (f" of {_mib(row['memory_limit_bytes'])}" if row.get("memory_limit_bytes") else "")
            for row in rows
        )
        + ".",
    )


def gpu_report(rounds: Rounds) -> str:
    """The GPU figures."""
    data = _metrics_result(rounds)
    return _sentences(gpu_sentence(data.get("gpu")) if data else "")


def latency_report(request: Request, rounds: Rounds) -> str:
    """The latency of the named services (the slowest first) with a diagnosis from the site's figures."""
    subjects = request.subjects
    data = _metrics_result(rounds)
    listed = latest_result(rounds, "container_ops", "list")
    if not data:
        if not listed:
            return ""
        return _sentences(*(instances_sentence(listed_instances(listed, s), s) for s in subjects or (None,)))
    window = _window(data)
    all_stats = sorted(_request_stats(data), key=lambda s: -float(s.get("p99_ms") or 0))
    stats = [s for s in all_stats if not subjects or s["service"] in subjects]
    host = data.get("host")
    parts: list[str] = []
    focus = stats[0] if stats else None
    if focus is None:
        subject = _join(list(subjects)) or "this site"
        parts.append(
            f"{subject} served no requests in the last {window} s, so there is no latency to report."
        )
    else:
        parts.append(f"{focus['service']} latency over the last {window} s: {request_phrase(focus)}.")
        parts += [f"{s['service']}: {request_phrase(s)}." for s in stats[1:]]
    service = focus["service"] if focus else (subjects[0] if subjects else None)
    instances = listed_instances(listed, service)
    findings = diagnose(
        focus,
        instances,
        _instance_stats(data, (service,) if service else ()),
        host,
        service,
        listed is not None,
    )
    if focus is not None or findings:
        parts.append(
            "Diagnosis: " + " ".join(findings)
            if findings
            else "Diagnosis: nothing on the site explains it: instances are up, CPU is moderate and there are no errors."
        )
    if listed is not None:
        parts += [instances_sentence(listed_instances(listed, s), s) for s in (subjects or (service,))]
    if host:
        parts.append(
            f"Host CPU {_pct(host.get('cpu_percent'))} (load {float(host.get('load_1m') or 0):.2f})."
        )
    return _sentences(*parts)


def no_instances_to(action: str, service: str | None) -> str:
    """The reply when a service has no instance to act on: "sensor has no instances to restart."."""
    return _sentences(f"{service} has no instances to {action}.")


def scale_report(rounds: Rounds) -> str:
    """The replicas a service now runs, from the scale call's result."""
    data = latest_result(rounds, "container_ops", "scale")
    if not isinstance(data, dict):
        return ""
    instances = data.get("instances") or []
    return _sentences(
        f"{data.get('service')} now runs {_plural(int(data.get('replicas', 0)), 'replica')}"
        + (": " + ", ".join(_instance_phrase(inst) for inst in instances) + "." if instances else "."),
    )


def start_report(request: Request, rounds: Rounds) -> str:
    """The instances the start calls started."""
    started = [
        inst
        for obs in all_observations(rounds)
        if obs.ok and isinstance(obs.data, dict)
        for inst in obs.data.get("started", [])
    ]
    if not started:
        return ""
    return _sentences(
        f"Started {_plural(len(started), f'{request.service} instance')}: "
        + ", ".join(_started_phrase(inst) for inst in started)
        + ".",
    )


def per_instance_report(past: str, round_: Sequence[Observation]) -> str:
    """The instances a round of restart (`past` "restarted") or stop ("stopped") calls acted on."""
    done = [obs.data[past] for obs in round_ if obs.ok and isinstance(obs.data, dict) and past in obs.data]
    if not done:
        return ""
    return _sentences(
        f"{past.capitalize()} {_plural(len(done), 'instance')}: "
        + ", ".join(map(_instance_phrase, done))
        + ".",
    )


def no_logs_to_show(service: str | None) -> str:
    """The reply when a service has no instance whose logs could be read."""
    return _sentences(f"{service} has no instances, so there are no logs to show.")


def logs_report(rounds: Rounds) -> str:
    """The log lines the logs call returned."""
    data = latest_result(rounds, "container_ops", "logs")
    if not isinstance(data, dict):
        return ""
    lines = [line for line in str(data.get("logs") or "").splitlines()]
    if not lines:
        return _sentences(f"{data.get('instance_id')} has not written anything to its log yet.")
    return _sentences(
        f"Last {_plural(len(lines), 'line')} of {data.get('instance_id')}:\n" + "\n".join(lines)
    )


def _alert_phrase(alert: Mapping[str, Any]) -> str:
    acked = f", acknowledged by {alert['acknowledged_by']}" if alert.get("acknowledged_by") else ""
    folded = f", fired {alert['fired']} times" if _int(alert.get("fired")) > 1 else ""
    summary = alert.get("summary") or f"{alert.get('metric')} of {alert.get('subject')}"
    return (
        f"{alert.get('id')} {alert.get('severity')} {alert.get('rule')}: {summary} "
        f"(peak {fig(alert.get('peak'))}, threshold {fig(alert.get('threshold'))}{folded}{acked})"
    )


def alerts_report(request: Request, rounds: Rounds) -> str:
    """What the alert_ops call returned: the alerts of the state asked, or the one acknowledged."""
    if request.action == "ack":
        data = latest_result(rounds, "alert_ops", "ack")
        if not isinstance(data, dict) or not isinstance(data.get("acknowledged"), dict):
            return ""
        alert = data["acknowledged"]
        return _sentences(f"Acknowledged {_alert_phrase(alert)}.")
    data = latest_result(rounds, "alert_ops", "list")
    if not isinstance(data, dict):
        return ""
    parts: list[str] = []
    for name, label in (("active", "firing"), ("resolved", "recently resolved")):
        listed = data.get(name)
        if not isinstance(listed, list):
            continue
        total = len(listed) + _int(data.get(f"{name}_not_listed"))
        if not listed:
            parts.append(f"No alerts {label} on {data.get('site', 'this site')}.")
            continue
        shown = "; ".join(_alert_phrase(alert) for alert in listed[:10])
        more = f" (and {total - 10} more)" if total > 10 else ""
        parts.append(f"{_plural(total, 'alert')} {label}: {shown}{more}.")
    return _sentences(*parts)


def cache_report(request: Request, rounds: Rounds) -> str:
    """What the cache call returned: stats, a flush, or a key read, stored or deleted."""
    action = request.action or "stats"
    data = latest_result(rounds, "cache_manager", action)
    if not isinstance(data, dict):
        return ""
    ns, key = data.get("namespace", request.namespace), data.get("key", request.key)
    if action == "stats":
        return _sentences(_cache_stats(data, request.namespace))
    if action == "flush":
        return _sentences(
            f"Flushed the {ns} cache: {_plural(int(data.get('removed', 0)), 'entry', 'entries')} removed."
        )
    if action == "get":
        if not data.get("found"):
            return _sentences(f"The {ns} cache has no key {key}.")
        return _sentences(f"{key} in the {ns} cache is {json.dumps(data.get('value'))}.")
    if action == "set":
        return _sentences(f"Stored {key} in the {ns} cache for {fig(data.get('ttl_s'))} s.")
    if data.get("deleted"):
        return _sentences(f"Deleted {key} from the {ns} cache.")
    return _sentences(f"The {ns} cache had no key {key}; nothing was deleted.")


# -- the swarm -------------------------------------------------------------------------------------

_LOAD_LABELS: Mapping[str, str] = {
    "cpu_percent": "CPU {pct}",
    "memory_percent": "memory {pct}",
    "gpu_percent": "GPU {pct}",
    "gpu_utilization_percent": "GPU {pct}",
    "utilization_percent": "{pct} busy",
    "inflight": "{n} in flight",
    "in_flight": "{n} in flight",
    "queued": "{n} queued",
    "queue_depth": "{n} queued",
    "capacity": "capacity {n}",
    "free_slots": "{n} free slots",
    "rate_per_s": "{n}/s",
    "requests_per_s": "{n} requests/s",
    "p50_ms": "p50 {n} ms",
    "p95_ms": "p95 {n} ms",
    "p99_ms": "p99 {n} ms",
    "age_s": "reported {n} s ago",
}
"""How a load figure of the gossiped table reads; a figure not named here reads "name value"."""

_LOAD_SCORE = ("utilization_percent", "cpu_percent", "inflight", "in_flight", "queued", "queue_depth")
"""The figures that rank sites from busiest to least loaded, the first one all healthy sites have."""


def _load_figure(name: str, value: Any) -> str | None:
    if value is None or value is False:
        return None
    words = name.replace("_", " ")
    if value is True:
        return words
    if isinstance(value, int | float):
        label = _LOAD_LABELS.get(name)
        if label is not None:
            return label.format(pct=_pct(value), n=fig(value))
        return f"{words} {fig(value)}"
    return f"{words} {value}"


def load_phrase(load: Mapping[str, Any] | None) -> str:
    """A site's load figures in words: "CPU 55.5%, 4 in flight"; "no load reported" without any."""
    figures = [phrase for name, value in (load or {}).items() if (phrase := _load_figure(str(name), value))]
    return ", ".join(figures) or "no load reported"


def _site_phrase(row: Mapping[str, Any], leader: str | None) -> str:
    state = "healthy" if row.get("healthy") else "unhealthy"
    if row.get("site_id") == leader:
        state += ", the coordinator"
    return f"{row.get('site_id')} ({state}; {load_phrase(row.get('load'))})"


def _site_rows(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [row for row in data.get("sites") or [] if isinstance(row, Mapping)]


def _shown_of(data: Mapping[str, Any], shown: int, total: int, noun: str) -> str:
    """ "Showing 64 of 100 sites." when the tool cut its list short."""
    return f"Showing {shown} of {_plural(total, noun)}." if data.get("truncated") else ""


def _ranking(rows: Sequence[Mapping[str, Any]]) -> str:
    """Which healthy site is busiest and which least loaded, by the first figure they all report."""
    healthy = [row for row in rows if row.get("healthy")]
    if len(healthy) < 2:
        return ""
    for name in _LOAD_SCORE:
        values = [(row.get("load") or {}).get(name) for row in healthy]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            ranked = sorted(zip(values, (str(row.get("site_id")) for row in healthy), strict=True))
            (low, least), (high, busiest) = ranked[0], ranked[-1]
            if low == high:
                return f"The healthy sites are equally loaded ({_load_figure(name, low)})."
            return f"Busiest: {busiest} ({_load_figure(name, high)}); least loaded: {least} ({_load_figure(name, low)})."
    return ""


def _sites_report(request: Request, data: Mapping[str, Any], with_ranking: bool) -> str:
    rows = _site_rows(data)
    leader = data.get("leader")
    if request.site and rows:
        row = rows[0]
        state = "healthy" if row.get("healthy") else "unhealthy"
        role = " and the swarm's coordinator" if row.get("site_id") == leader else ""
        return _sentences(f"{row.get('site_id')} is {state}{role}: {load_phrase(row.get('load'))}.")
    if not rows:
        return "The swarm lists no sites."
    count, healthy = _int(data.get("count", len(rows))), _int(data.get("healthy"))
    head = (
        f"Load across {_plural(count, 'site')} ({healthy} healthy): "
        if with_ranking
        else f"The swarm has {_plural(count, 'site')}, {healthy} healthy: "
    )
    coordinator = ""
    if not leader:
        coordinator = "No coordinator is elected right now."
    elif not any(row.get("site_id") == leader for row in rows):
        coordinator = f"{leader} is the coordinator."
    return _sentences(
        head + "; ".join(_site_phrase(row, leader) for row in rows) + ".",
        _shown_of(data, len(rows), count, "site"),
        coordinator,
        _ranking(rows) if with_ranking else "",
    )


def _placement_phrase(placement: Mapping[str, int]) -> str:
    """ "2 on site-1 and 1 on site-2"."""
    return _join([f"{count} on {site}" for site, count in placement.items()])


def _placements_report(request: Request, data: Mapping[str, Any]) -> str:
    placements: Mapping[str, Mapping[str, int]] = data.get("placements") or {}
    if request.service:
        placement = dict(placements.get(request.service) or {})
        total = sum(placement.values())
        if request.site:
            if not total:
                return f"{request.service} has no replicas on {request.site}."
            return f"{request.service} runs {_plural(total, 'replica')} on {request.site}."
        if not total:
            return f"{request.service} runs on no site of the swarm."
        return f"{request.service} runs {_plural(total, 'replica')} in the swarm: {_placement_phrase(placement)}."
    if request.site:
        running = [(svc, sum(p.values())) for svc, p in placements.items() if sum(p.values())]
        if not running:
            return f"{request.site} runs no service replicas."
        return (
            f"{request.site} runs " + _join([f"{svc} ({_plural(n, 'replica')})" for svc, n in running]) + "."
        )
    if not placements:
        return "The swarm has no placements yet."
    phrases = [
        f"{svc} {_plural(sum(p.values()), 'replica')} ({_placement_phrase(p)})" if p else f"{svc} on no site"
        for svc, p in placements.items()
    ]
    return _sentences(
        "Placements: " + "; ".join(phrases) + ".",
        _shown_of(data, len(placements), _int(data.get("services")), "service"),
    )


def _committed(data: Mapping[str, Any]) -> str:
    leader = data.get("leader")
    return f"; committed by the coordinator {leader} in term {data.get('term')}" if leader else ""


def _change_report(request: Request, data: Mapping[str, Any]) -> str:
    service = data.get("service", request.service)
    placement: Mapping[str, int] = data.get("placement") or {}
    total = _int(data.get("replicas"))
    if request.action == "move":
        target = data.get("site", request.site)
        if set(placement) == {target}:
            where = f"{target} now runs all of it ({_plural(total, 'replica')})"
        else:
            where = (
                f"it now runs {_plural(total, 'replica')}: {_placement_phrase(placement) or 'none placed'}"
            )
        return _sentences(f"Moved {service} to {target}: {where}{_committed(data)}.")
    if not total:
        return _sentences(
            f"{service} is scaled to 0 across the swarm: no site runs it now{_committed(data)}."
        )
    return _sentences(
        f"{service} now runs {_plural(total, 'replica')} across the swarm: "
        f"{_placement_phrase(placement)}{_committed(data)}."
    )


def swarm_report(request: Request, rounds: Rounds) -> str:
    """What the swarm_ops call returned: the coordinator, the sites, their load, the placements,
    or the placement a scale or move committed."""
    action = request.action or "sites"
    data = latest_result(rounds, "swarm_ops", action)
    if not isinstance(data, dict):
        return ""
    if action == "leader":
        leader, term = data.get("leader"), data.get("term")
        if not leader:
            return (
                f"The swarm has no coordinator right now (term {term}): an election is under way or there "
                "is no quorum, so no placement can be changed until one is elected."
            )
        return f"{leader} is the swarm's coordinator (leader), term {term}."
    if action in ("sites", "load"):
        return _sites_report(request, data, with_ranking=action == "load")
    if action == "placements":
        return _placements_report(request, data)
    return _change_report(request, data)


def no_swarm_replicas_to_remove(service: str | None) -> str:
    """The reply to a scale down of a service the swarm runs no replica of."""
    return f"{service} runs no replicas in the swarm, so there is none to scale down."


def swarm_scale_on_one_site(request: Request) -> str:
    """The reply to a scale that names one site: the coordinator places a total, not a per-site count."""
    service = request.service or "a service"
    count = request.replicas if request.replicas is not None else "N"
    return (
        f"The swarm's coordinator decides which sites run {service}'s replicas, so I cannot set a count on "
        f'{request.site} alone. Say "move {service} to {request.site}" to run all of it there, or "scale '
        f'{service} to {count} across the swarm" to set its total.'
    )


def swarm_elsewhere(request: Request) -> str:
    """The reply to a change (restart, stop, flush) or a local read (logs, cache, latency) asked
    of other sites."""
    where = request.site or "other sites"
    return (
        f"I operate and read only this site's own instances, logs, cache and GPU, so I cannot do that on "
        f"{where}: ask {'that site' if request.site else 'each site'}'s own agent. Across the swarm I can show the sites, their load, the "
        "coordinator and the placements, move a service to a site, or set its total replicas "
        '("swarm load", "move inference to site-2", "scale inference to 4 across the swarm").'
    )


# -- the whole reply -------------------------------------------------------------------------------


def with_failures(rounds: Rounds, text: str, services: Sequence[str]) -> str:
    """An intent's answer `text` with the failures of `rounds` in front of it ("Done." if both are empty)."""
    sentences = failure_sentences(all_observations(rounds), services) + ([text] if text else [])
    return _sentences(*sentences) if sentences else "Done."


def need_detail(missing: str, services: Sequence[str]) -> str:
    """The reply to a request that lacks a detail (`missing`: "a service", "a key", ...)."""
    return _sentences(
        f"To do that I need {missing}.",
        f"Services on this site: {', '.join(services) or 'none'}.",
    )


def stopped_early(rounds: Rounds, services: Sequence[str]) -> str:
    """The reply when a request still wants tools after its round budget (a safety net): the
    failures seen so far and a plain statement that it stopped."""
    return _sentences(
        *failure_sentences(all_observations(rounds), services),
        f"I stopped after {_plural(len(rounds), 'round')} of tool calls without a complete answer; "
        "ask again, one request at a time.",
    )


def not_understood(text: str, services: Sequence[str]) -> str:
    """The reply to text no intent matches: say so, list what is understood."""
    quoted = text if len(text) <= 120 else text[:117] + "..."
    return _sentences(
        f'I did not understand "{quoted}", so I did nothing.',
        CAPABILITIES,
        f"Services on this site: {', '.join(services) or 'none'}.",
    )
