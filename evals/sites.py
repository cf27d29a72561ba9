"""The site a chat suite runs against: one started in this process, or a live one over HTTP.

Both talk to the agent the same way, `POST /v1/chat` with an operator key, one fresh session per
turn. The in-process site (`InProcessSite`) is the embedded defaults (local runtime, in-memory
cache) with the chosen model; it is reset to its configured replicas and a clean cache before
each case, and its end state is read from the site's own runtime and cache. A live site
(`RemoteSite`) is neither set up nor reset (its operator's state is left alone): cases with a
`setup` are skipped there, and only instance counts are checked (through `GET /v1/services`);
cache checks cannot be made over its API and count as not checked.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from evals.suites import EndState, Setup

if TYPE_CHECKING:
    from api.site import Site

OPERATOR_KEY = "mec-eval-operator-key-0123456789"
"""The operator key of the in-process site (it listens on no socket)."""

BASE_TOOLS = frozenset({"metrics_monitor", "container_ops", "cache_manager"})


@dataclass
class Turn:
    """One chat turn as the site answered it."""

    reply: str
    tool_calls: list[dict[str, Any]]
    usage: dict[str, int]
    latency_ms: float
    model: str = ""
    error: str | None = None


@dataclass
class ModelChoice:
    """The operator agent's model for an in-process site (`Settings.model` and its options)."""

    kind: str = "rules"
    url: str | None = None
    model_id: str | None = None
    timeout_s: float | None = None
    max_tokens: int | None = None


class SiteUnderTest(Protocol):
    tools: frozenset[str]
    can_set_up: bool

    async def turn(self, message: str, confirm: bool) -> Turn: ...

    async def prepare(self, setup: Setup) -> None:
        """Bring the site to its baseline, then apply `setup`."""

    async def check(self, checks: Sequence[EndState]) -> list[tuple[str, bool | None]]:
        """(what, held) per check; held None: cannot be checked here."""


async def _post_chat(http: httpx.AsyncClient, key: str, message: str, confirm: bool) -> Turn:
    started = time.perf_counter()
    try:
        response = await http.post(
            "/v1/chat",
            json={"message": message, "confirm": confirm},
            headers={"Authorization": f"Bearer {key}"},
        )
    except httpx.HTTPError as exc:
        return Turn("", [], {}, (time.perf_counter() - started) * 1000, error=f"{type(exc).__name__}: {exc}")
    latency_ms = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        return Turn("", [], {}, latency_ms, error=f"HTTP {response.status_code}: {response.text[:300]}")
    body = response.json()
    return Turn(
        reply=str(body.get("reply", "")),
        tool_calls=list(body.get("tool_calls", [])),
        usage={k: int(v) for k, v in (body.get("usage") or {}).items()},
        latency_ms=latency_ms,
        model=str(body.get("model", "")),
    )


def _describe(check: EndState) -> str:
    if check.instances is not None:
        spec = check.instances
        parts = [f"{spec.service} runs {spec.running} instance(s)"] if spec.running is not None else []
        if spec.no_image:
            parts.append(f"no {spec.service} instance from {spec.no_image}")
        return " and ".join(parts) or f"{spec.service} instances"
    assert check.cache is not None
    state = "present" if check.cache.present else "absent"
    return f"cache {check.cache.namespace}/{check.cache.key} {state}"


@dataclass
class InProcessSite:
    """The embedded-defaults site, started in this process with the chosen model."""

    model: ModelChoice
    data_dir: Path | None = None
    tools: frozenset[str] = BASE_TOOLS
    can_set_up: bool = True
    site: Site | None = field(default=None, init=False)
    _http: httpx.AsyncClient | None = field(default=None, init=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False)
    _baseline: dict[str, tuple[str, ...]] = field(default_factory=dict, init=False)
    _starts: int = field(default=0, init=False)
    _touched: set[tuple[str, str]] = field(default_factory=set, init=False)

    async def __aenter__(self) -> InProcessSite:
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mec-eval-")
            self.data_dir = Path(self._tmp.name)
        await self._start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    async def _start(self) -> None:
        from api.app import create_app
        from api.site import Site
        from config.settings import load_settings

        assert self.data_dir is not None
        self._starts += 1
        overrides: dict[str, Any] = {
            "data_dir": self.data_dir / f"site-{self._starts}",
            "operator_keys": [OPERATOR_KEY],
            "model": self.model.kind,
            "model_fallback": [],
            # One evaluation sends hundreds of turns and changes from one key: the limits that
            # keep a flood of chat off the fast path would only measure themselves here.
            "chat_turns_per_minute": 1_000_000.0,
            "chat_burst": 10_000,
            "chat_mutations_per_minute": 1_000_000,
        }
        if self.model.url:
            overrides["model_url"] = self.model.url
        if self.model.model_id:
            overrides["model_id"] = self.model.model_id
        if self.model.timeout_s:
            overrides["model_timeout_s"] = self.model.timeout_s
        if self.model.max_tokens:
            overrides["model_max_tokens"] = self.model.max_tokens
        settings = load_settings(None, **overrides)
        site = Site.build(settings)
        app = create_app(settings, site)
        await site.start()
        self.site = site
        self.tools = frozenset(tool.tool_name for tool in site.tools)
        self._baseline = self._running_ids()
        self._http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://site", timeout=None
        )

    async def _stop(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self.site is not None:
            await self.site.stop()
            self.site = None

    def _running_ids(self) -> dict[str, tuple[str, ...]]:
        assert self.site is not None
        runtime = self.site.runtime
        return {
            name: tuple(sorted(i.id for i in runtime.instances(name) if i.state == "running"))
            for name in self.site.settings.services
        }

    async def turn(self, message: str, confirm: bool) -> Turn:
        assert self._http is not None
        return await _post_chat(self._http, OPERATOR_KEY, message, confirm)

    async def prepare(self, setup: Setup) -> None:
        """The baseline is the site as it started, instance ids included (cases name `sensor-1`):
        a site whose instances changed is replaced by a fresh one (a runtime never reuses an id)."""
        if self.site is None or self._running_ids() != self._baseline:
            await self._stop()
            await self._start()
        site = self.site
        assert site is not None
        for namespace, key in sorted(self._touched):
            await site.cache.delete(namespace, key)
        self._touched.clear()
        for service, replicas in setup.scale.items():
            await site.runtime.scale(service, replicas)
        for entry in setup.cache:
            namespace, key = str(entry["namespace"]), str(entry["key"])
            await site.cache.set(namespace, key, json.dumps(entry.get("value")).encode(), 300.0)
            self._touched.add((namespace, key))

    def remember(self, checks: Sequence[EndState]) -> None:
        """Cache entries a case checks are removed before the next case (its agent may have made them)."""
        for check in checks:
            if check.cache is not None:
                self._touched.add((check.cache.namespace, check.cache.key))

    async def check(self, checks: Sequence[EndState]) -> list[tuple[str, bool | None]]:
        site = self.site
        assert site is not None
        self.remember(checks)
        results: list[tuple[str, bool | None]] = []
        for check in checks:
            if check.instances is not None:
                spec = check.instances
                instances = site.runtime.instances(spec.service)
                held = True
                if spec.running is not None:
                    held = sum(i.state == "running" for i in instances) == spec.running
                if spec.no_image is not None:
                    held = held and all(i.image != spec.no_image for i in site.runtime.instances())
                results.append((_describe(check), held))
            else:
                assert check.cache is not None
                found = await site.cache.get(check.cache.namespace, check.cache.key)
                results.append((_describe(check), (found is not None) == check.cache.present))
        return results


@dataclass
class RemoteSite:
    """A live site at `url`, reached with an operator `key`."""

    url: str
    key: str
    timeout_s: float = 180.0
    tools: frozenset[str] = BASE_TOOLS
    can_set_up: bool = False
    _http: httpx.AsyncClient | None = field(default=None, init=False)

    async def __aenter__(self) -> RemoteSite:
        self._http = httpx.AsyncClient(base_url=self.url.rstrip("/"), timeout=self.timeout_s)
        sites = await self._http.get("/v1/sites", headers={"Authorization": f"Bearer {self.key}"})
        if sites.status_code == 200 and len(sites.json().get("sites", [])) > 1:
            self.tools = BASE_TOOLS | {"swarm_ops"}
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def turn(self, message: str, confirm: bool) -> Turn:
        assert self._http is not None
        return await _post_chat(self._http, self.key, message, confirm)

    async def prepare(self, setup: Setup) -> None:
        """A live site is not set up or reset (the runner skips cases that need a setup)."""

    async def check(self, checks: Sequence[EndState]) -> list[tuple[str, bool | None]]:
        assert self._http is not None
        if not checks:
            return []
        response = await self._http.get("/v1/services", headers={"Authorization": f"Bearer {self.key}"})
        ready = {s["name"]: s["instances_ready"] for s in response.json().get("services", [])}
        results: list[tuple[str, bool | None]] = []
        for check in checks:
            spec = check.instances
            if spec is not None and spec.running is not None and spec.no_image is None:
                results.append((_describe(check), ready.get(spec.service) == spec.running))
            else:
                results.append((_describe(check), None))
        return results
