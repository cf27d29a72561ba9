"""Operator text → `Request`: the rules model's parser, a small ordered table of intents.

Each `IntentRule` is a trigger pattern plus an extractor; the first rule whose trigger matches
(and whose extractor accepts the text) wins. Triggers run on the *masked* text, where service
names and instance ids are replaced by `_svc_` / `_inst_`, so "game state" never reads as the
word "state" and "sensor-1" never reads as the number 1. Rules that change the site are skipped
for questions ("should I restart sensor?") and negations ("don't stop game-state-1").

Service names are matched against the site's own list: exact, plural, hyphen/space/underscore
variants ("game state", "gamestate"), a unique prefix of 4+ letters ("infer"), and client kinds
("gaming" → game-state, "mobile" → inference, "iot" → sensor). Instance ids are any token ending in
`<service>-<n>`, so the Docker runtime's "mec-site-1-sensor-1" is recognised whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

IntentName = Literal[
    "alerts", "help", "cache", "scale", "restart", "stop", "start", "logs", "latency", "gpu", "host", "status"
]

DEFAULT_KINDS: Mapping[str, str] = {"gaming": "game-state", "mobile": "inference", "iot": "sensor"}
"""Client kinds operators use for a service; a kind only counts when its service exists."""

MAX_STARTS = 10
"""More starts than this in one request are refused with a pointer to `scale`."""

NUMBER_WORDS: Mapping[str, int] = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}  # fmt: skip
_NUMBER = r"(\d+|zero|one|two|three|four|five|six|seven|eight|nine|ten)"

# Words the prefix rule never reads as a service, whatever the site's services are called.
_VOCABULARY = frozenset(
    "status start state stop scale show list logs load memory latency cache cluster site service "
    "services instance instances replicas restart stats gpus host help what where which when".split()
)

_QUESTION = re.compile(
    r"^\s*(why|what|what's|how|how's|when|which|who|did|does|do|is|are|was|were|has|have|should|shall)\b"
)
_NEGATION = re.compile(r"\b(don'?t|do not|never|no need to|not now)\b")


class Lexicon:
    """The site's service names and every way an operator may write them."""

    def __init__(self, services: Sequence[str], kinds: Mapping[str, str] | None = None) -> None:
        self.services: tuple[str, ...] = tuple(services)
        aliases: dict[str, str] = {}
        for service in self.services:
            low = service.lower()
            parts = re.split(r"[-_ ]+", low)
            for form in {low, " ".join(parts), "".join(parts), "-".join(parts), "_".join(parts)}:
                for variant in (form, f"{form}s", f"{form}es"):
                    aliases.setdefault(variant, service)
        for kind, service in (DEFAULT_KINDS if kinds is None else kinds).items():
            if service in self.services:
                aliases.setdefault(kind.lower(), service)
        self.aliases = aliases
        names = sorted(aliases, key=len, reverse=True)
        self._service_re = re.compile(
            r"(?<![\w-])("
            + "|".join(re.escape(name).replace(r"\ ", r"\s+") for name in names)
            + r")(?![\w-])"
        )
        ids = "|".join(re.escape(s.lower()) for s in sorted(self.services, key=len, reverse=True))
        self._instance_re = re.compile(r"(?<![\w.-])((?:[a-z0-9][a-z0-9_.-]*-)?(" + ids + r")-\d+)(?![\w-])")

    def instances_in(self, low: str) -> list[tuple[str, str]]:
        """(instance id, service) for every instance id in lower-cased text, in order."""
        if not self.services:
            return []
        found = []
        for match in self._instance_re.finditer(low):
            service = next(s for s in self.services if s.lower() == match.group(2))
            found.append((match.group(1), service))
        return found

    def services_in(self, low: str) -> list[str]:
        """Services named in lower-cased text (aliases, then unique prefixes), first mention first."""
        if not self.services:
            return []
        text = self._instance_re.sub(" ", low)
        hits: list[tuple[int, str]] = [
            (m.start(), self.aliases[self._normal(m.group(1))]) for m in self._service_re.finditer(text)
        ]
        for match in re.finditer(r"[a-z][a-z0-9]{3,}", self._service_re.sub(" ", text)):
            word = match.group(0)
            if word in _VOCABULARY:
                continue
            owners = {s for s in self.services if s.lower().startswith(word)}
            if len(owners) == 1:
                hits.append((match.start(), owners.pop()))
        ordered: list[str] = []
        for _, service in sorted(hits, key=lambda hit: hit[0]):
            if service not in ordered:
                ordered.append(service)
        return ordered

    def mask(self, low: str) -> str:
        """The text with instance ids as `_inst_` and service names as `_svc_`."""
        if not self.services:
            return low
        return self._service_re.sub(" _svc_ ", self._instance_re.sub(" _inst_ ", low))

    @staticmethod
    def _normal(alias: str) -> str:
        return re.sub(r"\s+", " ", alias)


@dataclass(frozen=True)
class Utterance:
    """One operator message, read once: raw text, lower-cased, masked, and what it names."""

    raw: str
    low: str
    masked: str
    services: tuple[str, ...]
    instances: tuple[str, ...]
    question: bool
    negated: bool

    @classmethod
    def read(cls, text: str, lexicon: Lexicon) -> Utterance:
        raw = text.replace("’", "'").replace("“", '"').replace("”", '"').strip()
        low = raw.lower()
        found = lexicon.instances_in(low)
        services = lexicon.services_in(low)
        for _, service in found:
            if service not in services:
                services.append(service)
        return cls(
            raw=raw,
            low=low,
            masked=lexicon.mask(low),
            services=tuple(services),
            instances=tuple(instance for instance, _ in found),
            question=bool(_QUESTION.match(low)),
            negated=bool(_NEGATION.search(low)),
        )

    @property
    def service(self) -> str | None:
        return self.services[0] if self.services else None


@dataclass(frozen=True)
class Request:
    """What the operator asked for, with everything the plan needs to call the tools.

    `missing` names a required detail the text lacked ("a service", "a key"); the plan then
    asks for it instead of calling anything.
    """

    intent: IntentName
    service: str | None = None
    instance_ids: tuple[str, ...] = ()
    replicas: int | None = None
    replicas_delta: int | None = None
    count: int = 1
    image: str | None = None
    tail: int | None = None
    action: str | None = None
    namespace: str | None = None
    key: str | None = None
    value: Any = None
    ttl_s: float | None = None
    missing: str | None = None


def _number(token: str) -> int:
    return int(token) if token.isdigit() else NUMBER_WORDS[token]


def _first_int(patterns: Sequence[str], text: str) -> int | None:
    for pattern in patterns:
        match = re.search(pattern, text)
        if match:
            return _number(match.group(1))
    return None


# -- extractors: one per intent; each docstring is the intent's definition -----------------------


def _alerts(u: Utterance, lexicon: Lexicon) -> Request:
    """Alerts ("any alerts?", "show alarms"): text only; this site has no alerts tool yet."""
    return Request("alerts")


def _help(u: Utterance, lexicon: Lexicon) -> Request:
    """Help ("help", "what can you do?"): text only, the list of what the rules model understands."""
    return Request("help")


_CACHE_SET = re.compile(r"\b(set|put|store|write|save)\b")
_CACHE_DELETE = re.compile(r"\b(delete|remove|drop|evict|invalidate|clear|purge|unset|del)\b")
_CACHE_FLUSH = re.compile(r"\b(flush\w*|clear|purge|empty|wipe|invalidate|reset|delete|remove|drop)\b")
_KEY = re.compile(r"""\bkey\s+(?:"([^"]+)"|'([^']+)'|`([^`]+)`|([^\s,;?"'`]+))""", re.IGNORECASE)
_NAMESPACE_AFTER = re.compile(r"""\bnamespace\s+(?:"([^"]+)"|'([^']+)'|([\w.:-]+))""", re.IGNORECASE)
_NAMESPACE_BEFORE = re.compile(r"([\w.:-]+)\s+namespace\b", re.IGNORECASE)
_NOT_A_NAME = frozenset(
    {"the", "a", "an", "this", "that", "in", "from", "of", "to", "for", "its", "each", "every"}
)


def _namespace(raw: str) -> str | None:
    """The namespace written after or before the word "namespace", if any."""
    for pattern in (_NAMESPACE_AFTER, _NAMESPACE_BEFORE):
        for match in pattern.finditer(raw):
            name = next(group for group in match.groups() if group)
            if name.lower() not in _NOT_A_NAME:
                return name
    return None


_VALUE = re.compile(
    r"""\b(?:to|=|as|value)\s+("(?:[^"\\]|\\.)*"|'[^']*'|[\[{].*?[\]}]|[^\s,;]+)""", re.IGNORECASE
)
_TTL = re.compile(
    r"\b(?:for|ttl(?:_s)?(?:\s+of)?|ttl\s*=)\s*(\d+)\s*(s|secs?|seconds?|m|mins?|minutes?|h|hours?)?\b"
)


def _cache_value(token: str) -> Any:
    if token.startswith("'") and token.endswith("'"):
        return token[1:-1]
    try:
        return json.loads(token)
    except ValueError:
        return token


def _cache(u: Utterance, lexicon: Lexicon) -> Request:
    """Cache ("cache stats", "flush the sensor cache", "get key K from the inference cache",
    "delete key K in namespace N", "set key K to 42 in the sensor cache for 60 s") → cache_manager.

    The namespace is the one named after "namespace", else the service named. Questions and
    negations never flush, delete or set: they read (get with a key, stats without).
    """
    key_match = _KEY.search(u.raw)
    key = next((g for g in key_match.groups() if g), None) if key_match else None
    if key is not None and key_match is not None and key_match.group(4) is not None:
        key = key.rstrip(".")
    rest_raw = u.raw if key_match is None else u.raw[: key_match.start()] + " " + u.raw[key_match.end() :]
    namespace = _namespace(rest_raw)
    if namespace is None:
        named = lexicon.services_in(rest_raw.lower())
        namespace = named[0] if named else None
    rest = rest_raw.lower()
    reading = u.question or u.negated
    if key is not None:
        if _CACHE_SET.search(rest) and not reading:
            value_match = _VALUE.search(u.raw, key_match.end()) if key_match is not None else None
            if value_match is None:
                return Request(
                    "cache", action="set", key=key, namespace=namespace, missing="a value (… to VALUE)"
                )
            ttl_match = _TTL.search(rest)
            ttl = None
            if ttl_match:
                unit = (ttl_match.group(2) or "s")[0]
                ttl = float(int(ttl_match.group(1)) * {"s": 1, "m": 60, "h": 3600}[unit])
            return Request(
                "cache",
                action="set",
                key=key,
                namespace=namespace,
                value=_cache_value(value_match.group(1)),
                ttl_s=ttl,
                missing=None if namespace else "a namespace",
            )
        action = "delete" if _CACHE_DELETE.search(rest) and not reading else "get"
        return Request(
            "cache", action=action, key=key, namespace=namespace, missing=None if namespace else "a namespace"
        )
    if _CACHE_FLUSH.search(rest) and not reading:
        return Request(
            "cache", action="flush", namespace=namespace, missing=None if namespace else "a namespace"
        )
    if re.search(r"\b(get|read|fetch|lookup|look up|delete|remove|set|store)\b", rest) and not reading:
        return Request("cache", action="get", namespace=namespace, missing="a key (… key NAME …)")
    return Request("cache", action="stats", namespace=namespace)


def _scale(u: Utterance, lexicon: Lexicon) -> Request | None:
    """Scale ("scale inference to 3 replicas", "set sensor replicas to 2", "scale sensor up")
    → container_ops scale; up/down without a number lists the service first, then scales ±1."""
    replicas = _first_int(
        (
            rf"\b{_NUMBER}\s+(?:replicas?|instances?|copies|containers?|processes)\b",
            rf"\b(?:replicas?|count)\s*(?:to|=|:|at|of)?\s*{_NUMBER}\b",
            rf"\bto\s+{_NUMBER}\b",
        ),
        u.masked,
    )
    delta = None
    if replicas is None:
        if re.search(r"\b(up|out|more)\b", u.masked):
            delta = 1
        elif re.search(r"\b(down|fewer|less)\b", u.masked):
            delta = -1
        elif re.search(r"\bscal(e|es|ed|ing)\b", u.masked):
            return Request("scale", service=u.service, missing="a replica count (… to N replicas)")
        else:
            return None  # "replicas" without a number or a direction is a status question
    return Request(
        "scale",
        service=u.service,
        replicas=replicas,
        replicas_delta=delta,
        missing=None if u.service else "a service",
    )


def _restart(u: Utterance, lexicon: Lexicon) -> Request:
    """Restart ("restart the sensor service", "bounce sensor-1") → container_ops restart of the
    named instances; with only a service named, list it first and restart each instance."""
    if u.instances:
        return Request("restart", service=u.service, instance_ids=u.instances)
    return Request("restart", service=u.service, missing=None if u.service else "a service or an instance id")


def _stop(u: Utterance, lexicon: Lexicon) -> Request:
    """Stop ("stop game-state-1", "stop the sensor service") → container_ops stop of the named
    instances; with only a service named, list it first and stop each instance (destructive)."""
    if u.instances:
        return Request("stop", service=u.service, instance_ids=u.instances)
    return Request("stop", service=u.service, missing=None if u.service else "a service or an instance id")


def _start(u: Utterance, lexicon: Lexicon) -> Request:
    """Start ("start another inference instance", "launch 2 more sensors") → one
    container_ops start per instance wanted (at most 10; more is a job for scale)."""
    count = _first_int((rf"\b{_NUMBER}\s+(?:more|new|additional|extra|_svc_)\b",), u.masked) or 1
    image_match = re.search(r"\bimage\s+([\w./:@-]+)", u.raw, re.IGNORECASE)
    missing = None if u.service else "a service"
    if count > MAX_STARTS:
        missing = f"at most {MAX_STARTS} starts per request (use scale for more)"
    return Request(
        "start",
        service=u.service,
        count=count,
        image=image_match.group(1) if image_match else None,
        missing=missing,
    )


def _logs(u: Utterance, lexicon: Lexicon) -> Request:
    """Logs ("show logs of sensor", "tail 20 lines of sensor-1") → container_ops logs of the
    instance; with only a service named, list it first and read its first (running) instance."""
    tail = _first_int((r"\b(?:tail|last|latest|final|top)\s+(\d+)\b", r"\b(\d+)\s+lines?\b"), u.masked)
    if u.instances:
        return Request("logs", service=u.service, instance_ids=u.instances[:1], tail=tail)
    return Request(
        "logs", service=u.service, tail=tail, missing=None if u.service else "a service or an instance id"
    )


def _latency(u: Utterance, lexicon: Lexicon) -> Request:
    """Latency ("why is the gaming latency high?", "sensor is slow", "p99 of inference",
    "any errors?") → metrics_monitor all + container_ops list; the answer gives p50/p95/p99,
    errors, instance states, host CPU and a one-line diagnosis."""
    return Request("latency", service=u.service)


def _gpu(u: Utterance, lexicon: Lexicon) -> Request:
    """GPU ("gpu", "how busy is the GPU?", "vram") → metrics_monitor gpu."""
    return Request("gpu")


def _host(u: Utterance, lexicon: Lexicon) -> Request:
    """Host metrics ("cpu", "memory", "load", "disk") → metrics_monitor host; with a service or
    instance named → metrics_monitor instances (per-instance CPU and memory)."""
    return Request("host", service=u.service, instance_ids=u.instances)


def _status(u: Utterance, lexicon: Lexicon) -> Request:
    """Status ("status", "how is the site", "what is running", "is sensor healthy?")
    → container_ops list (of the service, if one is named) + metrics_monitor all."""
    return Request("status", service=u.service)


@dataclass(frozen=True)
class IntentRule:
    """A trigger pattern (searched in the masked text) and the extractor that builds the request.

    An extractor may return None to let the next rule try. Rules that change the site are
    skipped for questions and negations.
    """

    name: IntentName
    pattern: str
    extract: Callable[[Utterance, Lexicon], Request | None]
    changes_site: bool = False
    trigger: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trigger", re.compile(self.pattern))


RULES: tuple[IntentRule, ...] = (
    IntentRule("alerts", r"\b(alerts?|alarms?|alerting|incidents?)\b", _alerts),
    IntentRule(
        "help",
        r"^\s*(help|\?)\s*[.!?]*\s*$|\bwhat can you do\b|\bwhat do you (understand|know)\b|\bcommands\b",
        _help,
    ),
    IntentRule("cache", r"\b(caches?|cached|namespaces?|key|flush\w*)\b|\bhit (ratio|rate)\b", _cache),
    IntentRule("scale", r"\b(scale[sd]?|scaling|replicas?)\b", _scale, changes_site=True),
    IntentRule("restart", r"\b(re-?start|reboot|bounce|recycle|reload)\b", _restart, changes_site=True),
    IntentRule(
        "stop",
        r"\b(stop|kill|shut\s*down|terminate|halt|take\s+down|bring\s+down)\b",
        _stop,
        changes_site=True,
    ),
    IntentRule(
        "start",
        r"\b(start|launch|spin\s+up|bring\s+up|boot|add|run)\b.*\b(_svc_|instances?|replicas?|another|more)\b|\banother\b",
        _start,
        changes_site=True,
    ),
    IntentRule("logs", r"\b(logs?|tail|stdout|stderr|journal)\b", _logs),
    IntentRule(
        "latency",
        r"\b(latenc(y|ies)|slow\w*|sluggish|lag\w*|p50|p95|p99|percentiles?|response\s+times?|errors?|"
        r"failing|failures?|timeouts?|5\d\d|requests?|throughput|rps|qps|traffic)\b",
        _latency,
    ),
    IntentRule("gpu", r"\b(gpus?|cuda|vram|nvidia|accelerators?)\b", _gpu),
    IntentRule(
        "host",
        r"\b(cpus?|memory|ram|mem|load|disk|storage|network|bandwidth|resources?|usage|"
        r"utili[sz]ation|metrics?|host|machine)\b",
        _host,
    ),
    IntentRule(
        "status",
        r"\b(status|overview|health\w*|running|summary|report|instances?|list|replicas?|up|down|site|"
        r"services?|containers?|processes|ps|_svc_|_inst_)\b|\bhow('s| is| are)\b|\bwhat'?s up\b",
        _status,
    ),
)


class IntentParser:
    """Reads operator text into a `Request` with `RULES`, or None when nothing matches."""

    def __init__(self, services: Sequence[str], kinds: Mapping[str, str] | None = None) -> None:
        self.lexicon = Lexicon(services, kinds)

    def parse(self, text: str) -> Request | None:
        u = Utterance.read(text, self.lexicon)
        for rule in RULES:
            if rule.changes_site and (u.question or u.negated):
                continue
            if rule.trigger.search(u.masked):
                request = rule.extract(u, self.lexicon)
                if request is not None:
                    return request
        return None
