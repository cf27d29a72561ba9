"""A real site and its app in this process, reached through `httpx.ASGITransport`.

The site's one service `svc` (mobile clients) has one instance: a real in-test HTTP workload
(`ScriptedWorkload`) behind a `StaticRuntime`. The site starts before the first request and stops
afterwards, whatever the test did.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from api.app import create_app
from api.site import Site
from config.settings import ServiceSettings, load_settings
from tests.support.workloads import ScriptedWorkload, StaticRuntime, instance_for


@dataclass
class InProcessSite:
    http: httpx.AsyncClient
    site: Site
    workload: ScriptedWorkload


@asynccontextmanager
async def in_process_site(
    data_dir: Path,
    client_keys: list[str],
    operator_keys: list[str],
    instance_id: str = "svc-1",
    service: dict[str, Any] | None = None,
    **settings: Any,
) -> AsyncIterator[InProcessSite]:
    """A started site with `settings` overridden; `service` adds fields to `svc`'s settings."""
    config = load_settings(
        None, data_dir=data_dir, client_keys=client_keys, operator_keys=operator_keys, **settings
    )
    config.services = {
        "svc": ServiceSettings(module="x", image="img", client_kinds=["mobile"], **(service or {}))
    }
    async with ScriptedWorkload(instance_id) as workload:
        site = Site.build(config, runtime=StaticRuntime([instance_for(workload, "svc", instance_id)]))
        app = create_app(config, site)
        await site.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://site") as http:
                yield InProcessSite(http, site, workload)
        finally:
            await site.stop()
