"""`Request` + the tool results so far → the next tool calls, or the final answer.

A plan is a function of the request and the *rounds* that already ran (a round is the tool
calls of one assistant message with their results). It returns a `Step`: more calls, or the
answer text, built only from what the tools returned. Plans never retry a failed call: a failure
(a policy refusal, an unknown instance, a tool error) ends the plan and the answer says so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.models.events import ToolCall
from agent.models.intents import Request

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


@dataclass(frozen=True)
class Observation:
    """One tool call and what came back: `data` is the parsed JSON result (or the raw text)."""

    call: ToolCall
    ok: bool
    data: Any
    text: str

    @classmethod
    def of(cls, call: ToolCall, result: Mapping[str, Any]) -> Observation:
        """Read a strands toolResult block (text content holds JSON for the site's tools)."""
        texts: list[str] = []
        data: Any = None
        for item in result.get("content", []):
            if "json" in item:
                data = item["json"]
            if "text" in item:
                texts.append(item["text"])
        text = "\n".join(texts)
        if data is None:
            try:
                data = json.loads(text)
            except ValueError:
                data = text
        return cls(call=call, ok=result.get("status") != "error", data=data, text=text)

    @property
    def error(self) -> str:
        """The failure's reason without strands' "Error: " prefix."""
        return re.sub(r"^Error:\s*", "", self.text.strip()) or "no reason given"


Rounds = Sequence[Sequence[Observation]]


@dataclass(frozen=True)
class Step:
    """What the model says next: tool calls (one turn) or the final text."""

    calls: tuple[ToolCall, ...] = ()
    text: str = ""


# -- building calls ------------------------------------------------------------------------------


def _args(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def container(action: str, **values: Any) -> ToolCall:
    return ToolCall("container_ops", {"action": action, **_args(**values)})


def metrics(section: str) -> ToolCall:
    return ToolCall("metrics_monitor", {"section": section})


def cache(action: str, **values: Any) -> ToolCall:
    return ToolCall("cache_manager", {"action": action, **_args(**values)})


def _calls(*calls: ToolCall) -> Step:
    return Step(calls=tuple(calls))


def _say(*parts: str) -> Step:
    return Step(text=" ".join(part.strip() for part in parts if part and part.strip()))


# -- describing calls and figures ------------------------------------------------------------------


def describe(call: ToolCall) -> str:
    """What a call does, as a verb phrase: "restart sensor-1", "flush the sensor cache"."""
    args = call.input
    action = str(args.get("action", ""))
    if call.name == "container_ops":
        target = args.get("instance_id") or args.get("service") or "the site"
        phrases = {
            "list": f"list the instances of {args['service']}"
            if args.get("service")
            else "list the instances",
            "start": f"start an instance of {target}",
            "scale": f"scale {target} to {args.get('replicas')} replicas",
            "logs": f"read the logs of {target}",
            "inspect": f"inspect {target}",
        }
        return phrases.get(action, f"{action} {target}")
    if call.name == "cache_manager":
        namespace = args.get("namespace")
        phrases = {
            "stats": "read the cache stats",
            "flush": f"flush the {namespace} cache",
            "get": f"read key {args.get('key')} from the {namespace} cache",
            "set": f"store key {args.get('key')} in the {namespace} cache",
            "delete": f"delete key {args.get('key')} from the {namespace} cache",
        }
        return phrases.get(action, f"{action} the cache")
    if call.name == "metrics_monitor":
        return f"read the {args.get('section', 'all')} metrics"
    return f"call {call.name}"


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
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# -- failures ------------------------------------------------------------------------------------


def failure_sentences(observations: Sequence[Observation]) -> list[str]:
    """Plain sentences for failed calls; confirmations first, with the request to resend."""
    failed = [obs for obs in observations if not obs.ok]
    confirm = [obs for obs in failed if _CONFIRM.search(obs.error)]
    refused = [obs for obs in failed if obs not in confirm and _REFUSED.search(obs.error)]
    other = [obs for obs in failed if obs not in confirm and obs not in refused]
    sentences = []
    if confirm:
        actions = _join([describe(obs.call) for obs in confirm])
        sentences.append(
            f"I did not {actions}: the site's policy needs your confirmation first ({confirm[0].error}). "
            "Resend the request with confirmation to go ahead."
        )
    sentences += [f"I could not {describe(obs.call)}: it was refused ({obs.error})." for obs in refused]
    sentences += [f"I could not {describe(obs.call)}: {obs.error.rstrip('.')}." for obs in other]
    return sentences


def _all(rounds: Rounds) -> list[Observation]:
    return [obs for round_ in rounds for obs in round_]


def _result(rounds: Rounds, tool: str, action: str | None = None) -> Any:
    """The data of the latest successful call of `tool` (with `action`), or None."""
    for obs in reversed(_all(rounds)):
        if obs.ok and obs.call.name == tool and (action is None or obs.call.input.get("action") == action):
            return obs.data
    return None


def _metrics_result(rounds: Rounds) -> dict[str, Any]:
    data = _result(rounds, "metrics_monitor")
    return data if isinstance(data, dict) else {}


def _answer(rounds: Rounds, *parts: str) -> Step:
    """The final text: failures first (they are the news), then what succeeded."""
    sentences = failure_sentences(_all(rounds)) + [part for part in parts if part]
    return _say(*sentences) if sentences else _say("Done.")


def _failed(round_: Sequence[Observation]) -> bool:
    return any(not obs.ok for obs in round_)


# -- rendering tool results ------------------------------------------------------------------------


def _instance_phrase(inst: Mapping[str, Any]) -> str:
    bits = [str(inst.get("state", "unknown"))]
    if inst.get("gpu"):
        bits.append("GPU")
    if inst.get("restarts"):
        bits.append(_plural(int(inst["restarts"]), "restart"))
    if inst.get("state") != "running" and inst.get("last_exit_code") not in (None, 0):
        bits.append(f"last exit code {inst['last_exit_code']}")
    return f"{inst.get('id', '?')} ({', '.join(bits)})"


def _instances(data: Any, service: str | None = None) -> list[Mapping[str, Any]]:
    instances = data.get("instances", []) if isinstance(data, dict) else []
    return [inst for inst in instances if service is None or inst.get("service") == service]


def instances_sentence(instances: Sequence[Mapping[str, Any]], service: str | None) -> str:
    noun = f"{service} instance" if service else "instance"
    if not instances:
        return f"{service} has no instances." if service else "No service instances exist on this site."
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
        f"Host CPU {_pct(host.get('cpu_percent'))} of {host.get('cpu_count')} cores "
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
    """ "p50 1.2 ms, p95 3 ms, p99 9.5 ms over 120 requests (12/s), 0 errors" """
    return (
        f"p50 {fig(stats.get('p50_ms'))} ms, p95 {fig(stats.get('p95_ms'))} ms, "
        f"p99 {fig(stats.get('p99_ms'))} ms over {_plural(int(stats.get('requests', 0)), 'request')} "
        f"({fig(stats.get('rate_per_s'))}/s), {_plural(int(stats.get('errors', 0)), 'error')}"
    )


def _window(data: Mapping[str, Any]) -> str:
    return fig((data.get("requests") or {}).get("window_s"))


def _request_stats(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((data.get("requests") or {}).get("services") or [])


def _instance_stats(
    data: Mapping[str, Any], service: str | None, ids: Sequence[str] = ()
) -> list[Mapping[str, Any]]:
    rows = data.get("instances") or []
    if ids:
        return [row for row in rows if any(str(row.get("instance_id", "")).endswith(i) for i in ids)]
    if service:
        pattern = re.compile(rf"(^|-){re.escape(service)}-\d+$")
        return [row for row in rows if pattern.search(str(row.get("instance_id", "")))]
    return list(rows)


# -- plans, one per intent -------------------------------------------------------------------------

CAPABILITIES = (
    'I understand: status ("status", "what is running"); host and GPU metrics ("cpu", "memory", '
    '"load", "gpu"); latency ("why is the gaming latency high?"); scaling ("scale inference to 3 '
    'replicas"); starting, restarting and stopping ("start another inference instance", "restart sensor", '
    '"stop game-state-1"); logs ("show logs of sensor", "tail 20 lines of sensor-1"); the cache '
    '("cache stats", "flush the sensor cache", "get key K from the inference cache", "delete key K in '
    'namespace N").'
)


def _status(request: Request, rounds: Rounds) -> Step:
    if not rounds:
        return _calls(container("list", service=request.service), metrics("all"))
    data = _metrics_result(rounds)
    listed = _result(rounds, "container_ops", "list")
    parts = [
        instances_sentence(_instances(listed, request.service), request.service) if listed is not None else ""
    ]
    if data:
        parts.append(host_sentence(data.get("host")))
        parts.append(gpu_sentence(data.get("gpu")))
        stats = [s for s in _request_stats(data) if request.service in (None, s["service"])]
        if stats:
            parts.append(
                f"Requests in the last {_window(data)} s: "
                + "; ".join(f"{s['service']} {request_phrase(s)}" for s in stats)
                + "."
            )
        else:
            parts.append(f"No requests in the last {_window(data)} s.")
    return _answer(rounds, *parts)


def _host(request: Request, rounds: Rounds) -> Step:
    per_instance = bool(request.service or request.instance_ids)
    if not rounds:
        return _calls(metrics("instances" if per_instance else "host"))
    data = _metrics_result(rounds)
    if not data:
        return _answer(rounds)
    if not per_instance:
        return _answer(rounds, host_sentence(data.get("host")))
    rows = _instance_stats(data, request.service, request.instance_ids)
    subject = _join(list(request.instance_ids)) or str(request.service)
    if not rows:
        return _answer(rounds, f"The latest metrics snapshot has no CPU or memory figures for {subject}.")
    return _answer(
        rounds,
        "; ".join(
            f"{row['instance_id']}: CPU {_pct(row.get('cpu_percent'))}, memory {_mib(row.get('memory_bytes'))}"
            + (f" of {_mib(row['memory_limit_bytes'])}" if row.get("memory_limit_bytes") else "")
            for row in rows
        )
        + ".",
    )


def _gpu(request: Request, rounds: Rounds) -> Step:
    if not rounds:
        return _calls(metrics("gpu"))
    data = _metrics_result(rounds)
    return _answer(rounds, gpu_sentence(data.get("gpu")) if data else "")


def diagnose(
    stats: Mapping[str, Any] | None,
    instances: Sequence[Mapping[str, Any]],
    instance_rows: Sequence[Mapping[str, Any]],
    host: Mapping[str, Any] | None,
    service: str | None,
    listed: bool,
) -> list[str]:
    """Findings that explain latency, most decisive first; empty when nothing stands out."""
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
        if errors:
            findings.append(
                f"{errors} of {requests} requests failed with a server error; check the instance logs."
            )
        rejected = int((stats.get("by_tier") or {}).get("reject", 0))
        if rejected:
            findings.append(f"{_plural(rejected, 'request')} were rejected for lack of capacity.")
        p50, p99 = float(stats.get("p50_ms") or 0), float(stats.get("p99_ms") or 0)
        if requests >= TAIL_MIN_REQUESTS and p50 > 0 and p99 >= TAIL_RATIO * p50:
            findings.append(
                f"The p99 is {p99 / p50:.0f}x the p50: a few slow requests (a long tail), not a general slowdown."
            )
    return findings


def _latency(request: Request, rounds: Rounds) -> Step:
    if not rounds:
        return _calls(metrics("all"), container("list", service=request.service))
    data = _metrics_result(rounds)
    listed = _result(rounds, "container_ops", "list")
    if not data:
        return _answer(
            rounds, instances_sentence(_instances(listed, request.service), request.service) if listed else ""
        )
    window = _window(data)
    all_stats = sorted(_request_stats(data), key=lambda s: -float(s.get("p99_ms") or 0))
    stats = [s for s in all_stats if request.service in (None, s["service"])]
    host = data.get("host")
    parts: list[str] = []
    focus = stats[0] if stats else None
    if focus is None:
        subject = request.service or "this site"
        parts.append(
            f"{subject} served no requests in the last {window} s, so there is no latency to report."
        )
    else:
        parts.append(f"{focus['service']} latency over the last {window} s: {request_phrase(focus)}.")
        parts += [f"{s['service']}: {request_phrase(s)}." for s in stats[1:]]
    service = request.service or (focus["service"] if focus else None)
    instances = _instances(listed, service)
    findings = diagnose(focus, instances, _instance_stats(data, service), host, service, listed is not None)
    if focus is not None or findings:
        parts.append(
            "Diagnosis: " + " ".join(findings)
            if findings
            else "Diagnosis: nothing on the site explains it: instances are up, CPU is moderate and there are no errors."
        )
    if listed is not None:
        parts.append(instances_sentence(instances, service))
    if host:
        parts.append(
            f"Host CPU {_pct(host.get('cpu_percent'))} (load {float(host.get('load_1m') or 0):.2f})."
        )
    return _answer(rounds, *parts)


def _started_phrase(inst: Mapping[str, Any]) -> str:
    return f"{inst.get('id')} ({inst.get('state')}, {inst.get('url')})"


def _scale(request: Request, rounds: Rounds) -> Step:
    if request.replicas is not None:
        if not rounds:
            return _calls(container("scale", service=request.service, replicas=request.replicas))
    elif len(rounds) == 0:
        return _calls(container("list", service=request.service))
    elif len(rounds) == 1 and not _failed(rounds[0]):
        current = [
            i
            for i in _instances(_result(rounds, "container_ops", "list"), request.service)
            if i.get("state") != "stopped"
        ]
        target = max(0, len(current) + (request.replicas_delta or 0))
        if target == len(current):
            return _answer(rounds, f"{request.service} has no instances to scale down.")
        return _calls(container("scale", service=request.service, replicas=target))
    data = _result(rounds, "container_ops", "scale")
    if not isinstance(data, dict):
        return _answer(rounds)
    instances = data.get("instances") or []
    return _answer(
        rounds,
        f"{data.get('service')} now runs {_plural(int(data.get('replicas', 0)), 'replica')}"
        + (": " + ", ".join(_instance_phrase(inst) for inst in instances) + "." if instances else "."),
    )


def _start(request: Request, rounds: Rounds) -> Step:
    if not rounds:
        return _calls(
            *(container("start", service=request.service, image=request.image) for _ in range(request.count))
        )
    started = [
        inst
        for obs in _all(rounds)
        if obs.ok and isinstance(obs.data, dict)
        for inst in obs.data.get("started", [])
    ]
    if not started:
        return _answer(rounds)
    return _answer(
        rounds,
        f"Started {_plural(len(started), f'{request.service} instance')}: "
        + ", ".join(_started_phrase(inst) for inst in started)
        + ".",
    )


def _per_instance(verb: str, past: str) -> Callable[[Request, Rounds], Step]:
    """Restart or stop: the named instances, or every instance of the named service."""

    def plan(request: Request, rounds: Rounds) -> Step:
        if request.instance_ids:
            targets_round = 0
            if not rounds:
                return _calls(*(container(verb, instance_id=i) for i in request.instance_ids))
        else:
            targets_round = 1
            if not rounds:
                return _calls(container("list", service=request.service))
            if len(rounds) == 1:
                if _failed(rounds[0]):
                    return _answer(rounds)
                targets = [
                    inst["id"]
                    for inst in _instances(_result(rounds, "container_ops", "list"), request.service)
                    if inst.get("state") != "stopped"
                ]
                if not targets:
                    return _answer(rounds, f"{request.service} has no instances to {verb}.")
                return _calls(*(container(verb, instance_id=i) for i in targets))
        if len(rounds) <= targets_round:
            return _answer(rounds)
        done = [
            obs.data[past]
            for obs in rounds[targets_round]
            if obs.ok and isinstance(obs.data, dict) and past in obs.data
        ]
        if not done:
            return _answer(rounds)
        return _answer(
            rounds,
            f"{past.capitalize()} {_plural(len(done), 'instance')}: "
            + ", ".join(map(_instance_phrase, done))
            + ".",
        )

    plan.__doc__ = f"{verb.capitalize()} the named instances, or list the service and {verb} each instance."
    return plan


def _logs(request: Request, rounds: Rounds) -> Step:
    if request.instance_ids:
        if not rounds:
            return _calls(container("logs", instance_id=request.instance_ids[0], tail=request.tail))
    elif not rounds:
        return _calls(container("list", service=request.service))
    elif len(rounds) == 1:
        if _failed(rounds[0]):
            return _answer(rounds)
        instances = _instances(_result(rounds, "container_ops", "list"), request.service)
        if not instances:
            return _answer(rounds, f"{request.service} has no instances, so there are no logs to show.")
        running = [inst for inst in instances if inst.get("state") == "running"]
        chosen = (running or instances)[0]
        return _calls(container("logs", instance_id=chosen["id"], tail=request.tail))
    data = _result(rounds, "container_ops", "logs")
    if not isinstance(data, dict):
        return _answer(rounds)
    lines = [line for line in str(data.get("logs") or "").splitlines()]
    if not lines:
        return _answer(rounds, f"{data.get('instance_id')} has not written anything to its log yet.")
    return _answer(
        rounds, f"Last {_plural(len(lines), 'line')} of {data.get('instance_id')}:\n" + "\n".join(lines)
    )


def _cache_stats(data: Mapping[str, Any], namespace: str | None) -> str:
    namespaces: Mapping[str, int] = data.get("namespaces_in_memory") or {}
    lookups = int(data.get("hits", 0)) + int(data.get("misses", 0))
    ratio = data.get("hit_ratio")
    parts = []
    if namespace:
        parts.append(
            f"The {namespace} cache holds {_plural(int(namespaces.get(namespace, 0)), 'entry', 'entries')}."
        )
    parts.append(
        (f"Hit ratio {_pct(float(ratio) * 100)} " if ratio is not None else "No lookups yet ")
        + f"({data.get('hits', 0)} hits, {data.get('misses', 0)} misses over {_plural(lookups, 'lookup')}); "
        + f"{data.get('entries_in_memory', 0)} of {data.get('memory_capacity', '?')} entries in memory, "
        + f"{_plural(int(data.get('evictions', 0)), 'eviction')}; backend {data.get('backend')}."
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


def _cache(request: Request, rounds: Rounds) -> Step:
    action = request.action or "stats"
    if not rounds:
        if action == "stats":
            return _calls(cache("stats"))
        if action == "set":
            return _calls(
                cache(
                    "set",
                    namespace=request.namespace,
                    key=request.key,
                    value=request.value,
                    ttl_s=request.ttl_s,
                )
            )
        return _calls(cache(action, namespace=request.namespace, key=request.key))
    data = _result(rounds, "cache_manager", action)
    if not isinstance(data, dict):
        return _answer(rounds)
    ns, key = data.get("namespace", request.namespace), data.get("key", request.key)
    if action == "stats":
        return _answer(rounds, _cache_stats(data, request.namespace))
    if action == "flush":
        return _answer(
            rounds,
            f"Flushed the {ns} cache: {_plural(int(data.get('removed', 0)), 'entry', 'entries')} removed.",
        )
    if action == "get":
        if not data.get("found"):
            return _answer(rounds, f"The {ns} cache has no key {key}.")
        return _answer(rounds, f"{key} in the {ns} cache is {json.dumps(data.get('value'))}.")
    if action == "set":
        return _answer(rounds, f"Stored {key} in the {ns} cache for {fig(data.get('ttl_s'))} s.")
    if data.get("deleted"):
        return _answer(rounds, f"Deleted {key} from the {ns} cache.")
    return _answer(rounds, f"The {ns} cache had no key {key}; nothing was deleted.")


def _alerts(request: Request, rounds: Rounds) -> Step:
    return _say(
        "This site has no alerts tool yet, so I cannot list alerts. "
        'I can show the status, metrics, latency and logs instead (try "status" or "why is sensor slow?").'
    )


def _help(request: Request, rounds: Rounds) -> Step:
    return _say(CAPABILITIES)


PLANS: Mapping[str, Callable[[Request, Rounds], Step]] = {
    "alerts": _alerts,
    "help": _help,
    "cache": _cache,
    "scale": _scale,
    "restart": _per_instance("restart", "restarted"),
    "stop": _per_instance("stop", "stopped"),
    "start": _start,
    "logs": _logs,
    "latency": _latency,
    "gpu": _gpu,
    "host": _host,
    "status": _status,
}


def next_step(request: Request, rounds: Rounds, services: Sequence[str]) -> Step:
    """The next step of `request`'s plan after `rounds`."""
    if request.missing:
        return _say(
            f"To do that I need {request.missing}.",
            f"Services on this site: {', '.join(services) or 'none'}.",
        )
    return PLANS[request.intent](request, rounds)


def not_understood(text: str, services: Sequence[str]) -> Step:
    """The reply to text no intent matches: say so, list what is understood. Never a tool call."""
    quoted = text if len(text) <= 120 else text[:117] + "..."
    return _say(
        f'I did not understand "{quoted}", so I did nothing.',
        CAPABILITIES,
        f"Services on this site: {', '.join(services) or 'none'}.",
    )
