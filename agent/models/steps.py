"""The rules model's next step: `Request` + the tool rounds so far → more tool calls, or the answer.

Each intent has a step function of the request, the *rounds* that already ran (see `results`) and
the site's service names. It returns a `Step`: the next tool calls (several independent ones may
share a turn), or, once its tools have run, the answer text that `answers` writes from their
results. Steps never retry a failed call: a failure (a policy refusal, an unknown instance, a tool
error) ends the request and the answer says so, failures first.

A compound request runs its parts in *stages*: consecutive parts that only read share a stage and
call their tools in the same rounds (identical calls are made once); a part that changes the site
has a stage of its own, after the parts asked before it and before the parts asked after it. Each
part sees only the results of its own calls, and the answer is each part's answer in the order
asked, one per line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.models import answers
from agent.models.events import ToolCall
from agent.models.intents import Request
from agent.models.results import (
    Observation,
    Rounds,
    any_failed,
    latest_result,
    listed_instances,
    placed_replicas,
)

STEP_ROUNDS = 2
"""Every single (not compound) request is answered within this many tool rounds."""


@dataclass(frozen=True)
class Step:
    """What the model says next: tool calls (one turn) or the final text."""

    calls: tuple[ToolCall, ...] = ()
    text: str = ""


IntentSteps = Callable[[Request, Rounds, Sequence[str]], Step]
"""An intent's step function: (request, rounds so far, the site's services) → the next step."""


# -- building calls ------------------------------------------------------------------------------


def _args(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def container(action: str, **values: Any) -> ToolCall:
    return ToolCall("container_ops", {"action": action, **_args(**values)})


def metrics(section: str) -> ToolCall:
    return ToolCall("metrics_monitor", {"section": section})


def cache(action: str, **values: Any) -> ToolCall:
    return ToolCall("cache_manager", {"action": action, **_args(**values)})


def alert(action: str, **values: Any) -> ToolCall:
    return ToolCall("alert_ops", {"action": action, **_args(**values)})


def swarm(action: str, **values: Any) -> ToolCall:
    return ToolCall("swarm_ops", {"action": action, **_args(**values)})


def _calls(*calls: ToolCall) -> Step:
    return Step(calls=tuple(calls))


def _text(text: str) -> Step:
    return Step(text=text)


def _list_call(subjects: Sequence[str]) -> ToolCall:
    """List one service's instances, or all of them for several services or the whole site."""
    return container("list", service=subjects[0] if len(subjects) == 1 else None)


# -- the steps of each intent ----------------------------------------------------------------------


def _status(request: Request, rounds: Rounds, services: Sequence[str]) -> Step:
    if not rounds:
        return _calls(_list_call(request.subjects), metrics("all"))
    return _text(answers.status_report(request, rounds, services))


def _host(request: Request, rounds: Rounds, services: Sequence[str]) -> Step:
    if not rounds:
        return _calls(metrics("instances" if request.subjects or request.instance_ids else "host"))
    return _text(answers.host_report(request, rounds))


def _gpu(request: Request, rounds: Rounds, services: Sequence[str]) -> Step:
    if not rounds:
        return _calls(metrics("gpu"))
    return _text(answers.gpu_report(rounds))


def _latency(request: Request, rounds: Rounds, services: Sequence[str]) -> Step:
    if not rounds:
        return _calls(metrics("all"), _list_call(request.subjects))
    return _text(answers.latency_report(request, rounds))


def _scale(request: Request, rounds: Rounds, services: Sequence[str]) -> Step:
    if request.replicas is not None:
        if not rounds:
            return _calls(container("scale", service=request.service, replicas=request.replicas))
    elif len(rounds) == 0:
        return _calls(container("list", service=request.service))
    elif len(rounds) == 1 and not any_failed(rounds[0]):
        current = [
            i
            for i in listed_instances(latest_result(rounds, "container_ops", "list"), request.service)
            if i.get("state") != "stopped"
        ]
        target = max(0, len(current) + (request.replicas_delta or 0))
        if target == len(current):
            return _text(answers.no_instances_to("scale down", request.service))
        return _calls(container("scale", service=request.service, replicas=target))
    return _text(answers.scale_report(rounds))


def _start(request: Request, rounds: Rounds, services: Sequence[str]) -> Step:
    if not rounds:
        return _calls(
            *(container("start", service=request.service, image=request.image) for _ in range(request.count))
        )
    return _text(answers.start_report(request, rounds))


def _per_instance(verb: str, past: str) -> IntentSteps:
    """Restart or stop: the named instances, or every instance of the named service."""

    def steps(request: Request, rounds: Rounds, services: Sequence[str]) -> Step:
        if request.instance_ids:
            targets_round = 0
            if not rounds:
                return _calls(*(container(verb, instance_id=i) for i in request.instance_ids))
        else:
            targets_round = 1
            if not rounds:
                return _calls(container("list", service=request.service))
            if len(rounds) == 1:
                if any_failed(rounds[0]):
                    return Step()
                targets = [
                    inst["id"]
                    for inst in listed_instances(
                        latest_result(rounds, "container_ops", "list"), request.service
                    )
                    if inst.get("state") != "stopped"
                ]
                if not targets:
                    return _text(answers.no_instances_to(verb, request.service))
                return _calls(*(container(verb, instance_id=i) for i in targets))
        if len(rounds) <= targets_round:
            return Step()
        return _text(answers.per_instance_report(past, rounds[targets_round]))

    steps.__doc__ = f"{verb.capitalize()} the named instances, or list the service and {verb} each instance."
    return steps


def _logs(request: Request, rounds: Rounds, services: Sequence[str]) -> Step:
    if request.instance_ids:
        if not rounds:
            return _calls(container("logs", instance_id=request.instance_ids[0], tail=request.tail))
    elif not rounds:
        return _calls(container("list", service=request.service))
    elif len(rounds) == 1:
        if any_failed(rounds[0]):
            return Step()
        instances = listed_instances(latest_result(rounds, "container_ops", "list"), request.service)
        if not instances:
            return _text(answers.no_logs_to_show(request.service))
        running = [inst for inst in instances if inst.get("state") == "running"]
        chosen = (running or instances)[0]
        return _calls(container("logs", instance_id=chosen["id"], tail=request.tail))
    return _text(answers.logs_report(rounds))


def _cache(request: Request, rounds: Rounds, services: Sequence[str]) -> Step:
    action = request.action or "stats"
    if rounds:
        return _text(answers.cache_report(request, rounds))
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


def _swarm_call(request: Request) -> ToolCall:
    """The one `swarm_ops` call of a swarm request, with only the inputs its action takes."""
    action = request.action or "sites"
    if action == "leader":
        return swarm("leader")
    if action in ("sites", "load"):
        return swarm(action, site=request.site)
    if action == "placements":
        return swarm("placements", service=request.service, site=request.site)
    if action == "scale":
        return swarm("scale", service=request.service, replicas=request.replicas)
    return swarm("move", service=request.service, site=request.site)


def _swarm(request: Request, rounds: Rounds, services: Sequence[str]) -> Step:
    """One swarm_ops call and its answer; a scale up or down without a number reads the service's
    placement first, then scales its total by the step asked."""
    if request.action == "elsewhere":
        return _text(answers.swarm_elsewhere(request))
    if request.action == "scale" and request.site:
        return _text(answers.swarm_scale_on_one_site(request))
    if request.action == "scale" and request.replicas is None:
        if not rounds:
            return _calls(swarm("placements", service=request.service))
        if len(rounds) == 1 and not any_failed(rounds[0]):
            current = sum(
                placed_replicas(latest_result(rounds, "swarm_ops", "placements"), request.service).values()
            )
            target = max(0, current + (request.replicas_delta or 0))
            if target == current:
                return _text(answers.no_swarm_replicas_to_remove(request.service))
            return _calls(swarm("scale", service=request.service, replicas=target))
    elif not rounds:
        return _calls(_swarm_call(request))
    return _text(answers.swarm_report(request, rounds))


def _alerts(request: Request, rounds: Rounds, services: Sequence[str]) -> Step:
    """One alert_ops call (a list of the state asked, or the ack of one id) and its answer."""
    if rounds:
        return _text(answers.alerts_report(request, rounds))
    if request.action == "ack":
        return _calls(alert("ack", alert_id=request.key))
    return _calls(alert("list", state=request.value or "active"))


def _help(request: Request, rounds: Rounds, services: Sequence[str]) -> Step:
    return _text(answers.CAPABILITIES)


INTENT_STEPS: Mapping[str, IntentSteps] = {
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
    "swarm": _swarm,
}


# -- compound requests -------------------------------------------------------------------------------


def stages(request: Request) -> list[list[int]]:
    """The indexes of a compound request's parts, by stage: consecutive reads share one; each
    change has its own. A single request is one stage."""
    if request.intent != "compound":
        return [[0]]
    out: list[list[int]] = []
    for index, part in enumerate(request.parts):
        if out and not part.changes_site and not request.parts[out[-1][-1]].changes_site:
            out[-1].append(index)
        else:
            out.append([index])
    return out


def _call_key(call: ToolCall) -> str:
    return call.name + json.dumps(call.input, sort_keys=True, default=str)


def _merge_calls(pending: Mapping[int, Sequence[ToolCall]]) -> tuple[ToolCall, ...]:
    """The calls of several parts as one turn, in part order; a call two parts both make is made
    once (as many times as the part that makes it most often)."""
    issued: dict[str, int] = {}
    out: list[ToolCall] = []
    for calls in pending.values():
        seen: dict[str, int] = {}
        for call in calls:
            key = _call_key(call)
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > issued.get(key, 0):
                issued[key] = seen[key]
                out.append(call)
    return tuple(out)


def _share(calls: Sequence[ToolCall], round_: Sequence[Observation]) -> list[Observation]:
    """A part's share of a round: the result of each of its calls, found by name and input (tools
    may finish, and so report, in any order)."""
    by_key: dict[str, list[Observation]] = {}
    for obs in round_:
        by_key.setdefault(_call_key(obs.call), []).append(obs)
    seen: dict[str, int] = {}
    share = []
    for call in calls:
        key = _call_key(call)
        index = seen.get(key, 0)
        seen[key] = index + 1
        if index < len(by_key.get(key, [])):
            share.append(by_key[key][index])
    return share


def _compound(request: Request, rounds: Rounds, services: Sequence[str]) -> Step:
    """Run the parts stage by stage (see the module docstring), replaying `rounds` to know where
    each part stands; answer with each part's answer in the order asked."""
    parts = request.parts
    texts: list[str | None] = [None] * len(parts)
    used = 0
    for stage in stages(request):
        own: dict[int, list[list[Observation]]] = {index: [] for index in stage}
        while True:
            pending: dict[int, tuple[ToolCall, ...]] = {}
            for index in stage:
                if texts[index] is not None:
                    continue
                step = next_step(parts[index], own[index], services)
                if step.calls:
                    pending[index] = step.calls
                else:
                    texts[index] = step.text
            if not pending:
                break
            if used >= len(rounds):
                return Step(calls=_merge_calls(pending))
            for index, calls in pending.items():
                own[index].append(_share(calls, rounds[used]))
            used += 1
    return Step(text="\n".join(text for text in texts if text))


# -- entry points ------------------------------------------------------------------------------------


def finish(request: Request, rounds: Rounds, step: Step, services: Sequence[str]) -> Step:
    """An intent's step, with the failures of `rounds` in front of a final text ("Done." if empty)."""
    if step.calls or request.intent == "compound":
        return step
    return _text(answers.with_failures(rounds, step.text, services))


def next_step(request: Request, rounds: Rounds, services: Sequence[str]) -> Step:
    """The next step of `request` after `rounds`."""
    if request.missing:
        return _text(answers.need_detail(request.missing, services))
    if request.intent == "compound":
        return _compound(request, rounds, services)
    return finish(request, rounds, INTENT_STEPS[request.intent](request, rounds, services), services)


def unfinished(request: Request, rounds: Rounds, services: Sequence[str]) -> Step:
    """The step when a request still wants tools after its round budget (a safety net): the
    failures seen so far and a plain statement that it stopped."""
    return _text(answers.stopped_early(rounds, services))
