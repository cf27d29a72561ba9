"""The `container_ops` tool: operate the site's service instances through its runtime.

The runtime (`LocalRuntime` or `DockerRuntime`) is the backend; it enforces the allowlist of
services and images, so the tool cannot start anything the site's config does not name.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from strands import tool
from strands.types.tools import AgentTool

from tools.runtimes.base import Runtime

ContainerAction = Literal["list", "start", "stop", "restart", "scale", "logs", "inspect"]
"""The one list of `container_ops` actions; each is in exactly one of the three sets below."""
CONTAINER_ACTIONS: frozenset[ContainerAction] = frozenset(get_args(ContainerAction))

CONTAINER_READS: frozenset[ContainerAction] = frozenset({"list", "logs", "inspect"})
"""Actions that change nothing."""
CONTAINER_MUTATIONS: frozenset[ContainerAction] = frozenset({"start", "restart", "scale"})
"""Actions that change the site; another action can undo what they did."""
CONTAINER_DESTRUCTIVE: frozenset[ContainerAction] = frozenset({"stop"})
"""Actions that take something away for good; the policy wants the caller's confirmation first."""
CONTAINER_DESTRUCTIVE_AT_ZERO_REPLICAS: frozenset[ContainerAction] = frozenset({"scale"})
"""Mutations that are destructive when `replicas` is 0: scaling a service to 0 stops all of it."""
CONTAINER_SERVICE_ACTIONS: frozenset[ContainerAction] = frozenset({"start", "scale"})
"""Actions on a `service` rather than an instance; they start instances of it (from `image`,
for a start), so the policy checks both against the site's allowlists first."""


def container_ops_tool(runtime: Runtime, max_replicas: dict[str, int] | None = None) -> AgentTool:
    """Build the `container_ops` tool over one site's runtime."""
    limits = max_replicas or {}

    @tool(name="container_ops")
    async def container_ops(
        action: ContainerAction,
        service: str | None = None,
        instance_id: str | None = None,
        replicas: int | None = None,
        image: str | None = None,
        tail: int = 50,
    ) -> dict[str, Any]:
        """List and operate the service instances (processes or containers) of this edge site.

        Only services and images in the site's allowlist can be started; anything else is
        refused with an error naming what is allowed.

        Args:
            action: "list" shows instances (optionally of one `service`) with state, port,
                GPU use and restart count; "start" starts one more instance of `service`
                (optionally from an allowlisted `image`); "stop" stops `instance_id` for good
                (destructive); "restart" restarts `instance_id` in place; "scale" sets `service`
                to `replicas` instances (scaling to 0 is destructive); "logs" returns the last
                `tail` lines of `instance_id`; "inspect" returns everything known about
                `instance_id`.
            service: Service name, e.g. "inference", "sensor" or "game-state".
            instance_id: Instance id as shown by "list", e.g. "inference-1".
            replicas: Desired instance count for "scale".
            image: Container image for "start"; must be allowlisted.
            tail: Number of log lines for "logs" (1-1000).

        Returns:
            A JSON object with the affected instances or the requested details.
        """
        if action == "list":
            instances = runtime.instances(service)
            return {"runtime": runtime.name, "instances": [inst.to_dict() for inst in instances]}
        if action in CONTAINER_SERVICE_ACTIONS:
            if not service:
                raise ValueError(f"action {action!r} needs a service")
            if action == "start":
                started = await runtime.start(service, 1, image=image)
                return {"started": [inst.to_dict() for inst in started]}
            if replicas is None or replicas < 0:
                raise ValueError("action 'scale' needs replicas >= 0")
            limit = limits.get(service)
            if limit is not None and replicas > limit:
                raise ValueError(f"service {service!r} allows at most {limit} replicas")
            current = await runtime.scale(service, replicas)
            return {"service": service, "replicas": len(current), "instances": [i.to_dict() for i in current]}
        if not instance_id:
            raise ValueError(f"action {action!r} needs an instance_id")
        if action == "stop":
            return {"stopped": (await runtime.stop(instance_id)).to_dict()}
        if action == "restart":
            return {"restarted": (await runtime.restart(instance_id)).to_dict()}
        if action == "logs":
            lines = max(1, min(tail, 1000))
            return {"instance_id": instance_id, "logs": await runtime.logs(instance_id, lines)}
        return await runtime.inspect(instance_id)

    return container_ops
