"""Operator text → `Request`: the rules model's parser, a small ordered table of intents.

Each `IntentRule` is a trigger pattern plus an extractor; the first rule whose trigger matches
(and whose extractor accepts the text) wins. Triggers run on the *masked* text, where service
names and instance ids are replaced by `_svc_` / `_inst_`, so "game state" never reads as the
word "state" and "sensor-1" never reads as the number 1. Rules that change the site are skipped
for questions ("should I restart sensor?"), conditionals ("restart sensor if it is slow") and
negations ("don't stop game-state-1").

Service names are matched against the site's own list: exact, plural, hyphen/space/underscore
variants ("game state", "gamestate"), a unique prefix of 4+ letters ("infer"), and client kinds
("gaming" → game-state, "mobile" → inference, "iot" → sensor). Instance ids are any token ending in
`<service>-<n>`, so the Docker runtime's "mec-site-1-sensor-1" is recognised whole.

Compound messages ("CPU and GPU load?", "restart sensor-1 and show its logs") are split on
"and", ",", ";", "then", "also", "plus" into clauses, but only where each piece has an intent of
its own: a piece that is only a service ("status of sensor and inference", "scale sensor and
inference to 2") or only an argument ("set key k to a and b") stays with the clause before it. A
clause without a service of its own that says "it"/"its"/"them" or lacks one it needs takes the
previous clause's. The result is a `Request` with `intent="compound"` whose `parts` the rules
model's steps run in the order asked. Small talk, off-topic requests and prompt-injection phrasing
parse to None (the model then says it did not understand and calls nothing).

Site ids of the swarm are read from the words ("site-2", "site 2", "site two" → "site-2"; a
prefixed id such as "mec-site-2" whole) and masked as `_site_`, so "site 2" never reads as the
number 2. A request names the swarm when it says so ("swarm", "sites", "across the cluster"),
names a site, or asks about the coordinator or placements; only then is it a `swarm` request:
"scale inference to 3" stays a change of this site's own instances.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

IntentName = Literal[
    "alerts",
    "help",
    "cache",
    "scale",
    "restart",
    "stop",
    "start",
    "logs",
    "latency",
    "gpu",
    "host",
    "status",
    "swarm",
    "compound",
]

DEFAULT_KINDS: Mapping[str, str] = {"gaming": "game-state", "mobile": "inference", "iot": "sensor"}
"""Client kinds operators use for a service; a kind only counts when its service exists."""

MAX_STARTS = 10
"""More starts than this in one request are refused with a pointer to `scale`."""

MAX_PARTS = 6
"""A compound message with more parts than this is refused (send the rest separately)."""

NUMBER_WORDS: Mapping[str, int] = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}  # fmt: skip
_NUMBER = r"(\d+|zero|one|two|three|four|five|six|seven|eight|nine|ten)"

# Words the prefix rule never reads as a service, whatever the site's services are called.
_VOCABULARY = frozenset(
    "status start state stop scale show list logs load memory latency cache cluster site service "
    "services instance instances replicas restart stats gpus host help what where which when "
    "swarm sites leader coordinator placement placements peers move term".split()
)

_QUESTION = re.compile(
    r"^\s*(why|what|what's|how|how's|when|which|who|did|does|do|is|are|was|were|has|have|should|shall)\b"
)
_CONDITIONAL = re.compile(r"\b(if|unless|whenever|in case)\b")
_NEGATION = re.compile(r"\b(don'?t|do not|never|no need to|not now)\b")
_PRONOUN = re.compile(r"\b(it|its|it's|them|their|theirs|those|these|that one|this one|the same)\b")

_SMALL_TALK = re.compile(
    r"^\s*(hi|hello|hey|hiya|yo|howdy|good\s+(morning|afternoon|evening|night|day)|"
    r"thanks?(\s+(you|a lot|so much))?|thank\s+you(\s+(very|so)\s+much)?|thx|ty|cheers|"
    r"ok(ay)?|cool|great|nice|perfect|fine|sure|got it|bye|goodbye|see you|"
    r"how\s+are\s+you(\s+(doing|today))?|who\s+are\s+you|what\s+are\s+you|are\s+you\s+(there|a bot|human))"
    r"[\s!.,?]*(there|mate|bot|agent)?[\s!.,?]*$"
)
_OFF_TOPIC = re.compile(
    r"\b(write|compose|draft|generate|create)\s+(me\s+)?(a|an|some)\s+(\w+\s+)?"
    r"(poem|story|song|script|program|essay|email|letter|haiku|joke|code|function|recipe)\b|"
    r"\btell\s+me\s+a\s+(joke|story)\b|\btranslate\b"
)
_INJECTION = re.compile(
    r"\b(ignore|disregard|forget)\s+(all\s+|any\s+)?(the\s+|your\s+)?(previous|prior|above|earlier|"
    r"preceding)\s+(instructions?|prompts?|rules|messages)\b|\bsystem\s+prompt\b|\byou\s+are\s+now\b|"
    r"\bjailbreak\b|\bdeveloper\s+mode\b"
)

# A site id: "site-2", "site 2", "site2", "site two", or with a prefix ("mec-site-2"). It is read
# from text whose instance ids are already masked ("mec-site-1-sensor-1" is an instance).
_SITE_ID = re.compile(
    r"(?<![\w-])((?:[a-z0-9]+-)*site)[-_ ]?(\d+|zero|one|two|three|four|five|six|seven|eight|nine|ten)(?![\w-])"
)


def site_ids(masked: str) -> list[str]:
    """The site ids written in (instance-masked, lower-cased) text, in order: "site 2" → "site-2"."""
    ids = []
    for match in _SITE_ID.finditer(masked):
        number = match.group(2)
        ids.append(f"{match.group(1)}-{number if number.isdigit() else NUMBER_WORDS[number]}")
    return ids


_SEPARATOR = re.compile(
    r"\s*(?:;|(?<!\d),|,(?!\d)|\band\s+then\b|\band\s+also\b|\band\b|\bthen\b|\balso\b|\bplus\b|&)\s*"
)
# Spans a separator never splits: quoted text and JSON values.
_ATOMS = re.compile(r""""(?:[^"\\]|\\.)*"|(?<!\w)'[^']*'(?!\w)|`[^`]*`|\{.*?\}|\[.*?\]""")


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

    def mentions(self, low: str) -> list[str]:
        """The service of each `_svc_` that `mask(low)` writes, in order (repeats included)."""
        if not self.services:
            return []
        text = self._instance_re.sub(" _inst_ ", low)
        return [self.aliases[self._normal(m.group(1))] for m in self._service_re.finditer(text)]

    def spans(self, low: str) -> list[tuple[int, int]]:
        """Where service names and instance ids sit in lower-cased text (never split inside them)."""
        if not self.services:
            return []
        return [m.span() for m in self._instance_re.finditer(low)] + [
            m.span() for m in self._service_re.finditer(low)
        ]

    @staticmethod
    def _normal(alias: str) -> str:
        return re.sub(r"\s+", " ", alias)


@dataclass(frozen=True)
class Utterance:
    """One operator message (or one clause of it), read once: raw text, lower-cased, masked, and
    what it names. `direct_services` are the services named as such (not through an instance id);
    `inherited` is set when the services came from the clause before ("… and show its logs")."""

    raw: str
    low: str
    masked: str
    services: tuple[str, ...]
    instances: tuple[str, ...]
    question: bool
    negated: bool
    direct_services: tuple[str, ...] = ()
    inherited: bool = False
    sites: tuple[str, ...] = ()

    @classmethod
    def read(cls, text: str, lexicon: Lexicon) -> Utterance:
        raw = normalise(text)
        low = raw.lower()
        found = lexicon.instances_in(low)
        direct = lexicon.services_in(low)
        services = list(direct)
        for _, service in found:
            if service not in services:
                services.append(service)
        masked = lexicon.mask(low)
        return cls(
            raw=raw,
            low=low,
            masked=_SITE_ID.sub(" _site_ ", masked),
            services=tuple(services),
            instances=tuple(instance for instance, _ in found),
            question=bool(_QUESTION.match(low) or _CONDITIONAL.search(low)),
            negated=bool(_NEGATION.search(low)),
            direct_services=tuple(direct),
            sites=tuple(site_ids(masked)),
        )

    @property
    def service(self) -> str | None:
        return self.services[0] if self.services else None

    @property
    def reading(self) -> bool:
        """A question, a conditional or a negation: nothing in it may change the site."""
        return self.question or self.negated


def normalise(text: str) -> str:
    """Typographic quotes to ASCII ones, outer whitespace stripped."""
    return text.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"').strip()


@dataclass(frozen=True)
class Request:
    """What the operator asked for, with everything its steps need to call the tools.

    `missing` names a required detail the text lacked ("a service", "a key"); the model then
    asks for it instead of calling anything. `services` lists every service a status, latency or
    host question is about when it names more than one (`service` is the first). A swarm request
    keeps its `swarm_ops` action in `action` and the site it names in `site`. A compound
    message is `intent="compound"` with its `parts` (never compound themselves) in the order asked.
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
    services: tuple[str, ...] = ()
    parts: tuple[Request, ...] = ()
    site: str | None = None

    @property
    def changes_site(self) -> bool:
        """Whether the request starts, stops, restarts, scales, writes to the cache or changes the
        swarm's placements."""
        if self.intent == "compound":
            return any(part.changes_site for part in self.parts)
        if self.intent == "cache":
            return self.action in ("set", "delete", "flush")
        if self.intent == "swarm":
            return self.action in SWARM_CHANGES
        if self.intent == "alerts":
            return self.action == "ack"
        return self.intent in ("scale", "restart", "stop", "start")

    @property
    def subjects(self) -> tuple[str, ...]:
        """The services the request is about (empty: the whole site)."""
        if self.services:
            return self.services
        return (self.service,) if self.service else ()


def _number(token: str) -> int:
    return int(token) if token.isdigit() else NUMBER_WORDS[token]


def _first_int(patterns: Sequence[str], text: str) -> int | None:
    for pattern in patterns:
        match = re.search(pattern, text)
        if match:
            return _number(match.group(1))
    return None


def _owner(instance_id: str, lexicon: Lexicon) -> str | None:
    """The service of an instance id ("mec-site-1-sensor-1" → "sensor")."""
    found = lexicon.instances_in(instance_id.lower())
    return found[0][1] if found else None


# -- extractors: one per intent; each docstring is the intent's definition -----------------------


_ALERT_ACK = re.compile(r"\b(ack|acked|acknowledge[sd]?|acknowledging)\b")
_ALERT_ID = re.compile(r"\b([0-9a-f]{6}-\d+)\b")
_ALERT_RESOLVED = re.compile(r"\b(resolved|cleared|past|recent(ly)?|history|earlier|ended)\b")
_ALERT_ALL = re.compile(
    r"\ball (the )?(alerts?|alarms?)\b|\b(alerts?|alarms?),? (active|firing) (and|or) resolved\b"
)


def _alerts(u: Utterance, lexicon: Lexicon) -> Request:
    """Alerts ("any alerts?", "show resolved alarms", "ack alert 3f9c2e-4"): `alert_ops` "list"
    (`action` "list", the state asked in `value`: active by default) or "ack" of the alert id
    named (`key`), which the model asks for when the text has none."""
    if _ALERT_ACK.search(u.low):
        found = _ALERT_ID.search(u.low)
        if found is None:
            return Request("alerts", action="ack", missing="an alert id")
        return Request("alerts", action="ack", key=found.group(1))
    state = "all" if _ALERT_ALL.search(u.low) else "resolved" if _ALERT_RESOLVED.search(u.low) else "active"
    return Request("alerts", action="list", value=state)


def _help(u: Utterance, lexicon: Lexicon) -> Request:
    """Help ("help", "what can you do?"): text only, the list of what the rules model understands."""
    return Request("help")


_CACHE_SET = re.compile(r"\b(set|put|store|write|save)\b")
_CACHE_DELETE = re.compile(r"\b(delete|remove|drop|evict|invalidate|clear|purge|unset|del|forget|expire)\b")
_CACHE_FLUSH = re.compile(r"\b(flush\w*|clear|purge|empty|wipe|invalidate|reset|delete|remove|drop)\b")
_KEY = re.compile(r"""\b(?:key|entry)\s+(?:"([^"]+)"|'([^']+)'|`([^`]+)`|([^\s,;?"'`=]+))""", re.IGNORECASE)
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


# A value: quoted, JSON, or bare words up to "in/into/on/for/ttl/with/under/at/from" (so
# "set key k to a and b in the sensor cache" stores "a and b").
_BARE_VALUE = r"[^\s,;]+(?:\s+(?!(?:in|into|on|for|ttl|with|under|at|from)\b)[^\s,;]+)*"
_VALUE_TOKEN = r"""("(?:[^"\\]|\\.)*"|'[^']*'|[\[{].*?[\]}]|""" + _BARE_VALUE + ")"
_VALUE = re.compile(r"(?:\b(?:to|as|value)\s+|=\s*)" + _VALUE_TOKEN, re.IGNORECASE)
_VALUE_BEFORE_KEY = re.compile(
    r"""\b(?:set|put|store|write|save)\s+("(?:[^"\\]|\\.)*"|'[^']*'|[\[{].*?[\]}]|[^\s,;]+)\s+"""
    r"""(?:under|at|as|in|for|into|with)\s+(?:the\s+)?(?:key|entry)\b""",
    re.IGNORECASE,
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
    "what's cached under key K in sensor", "clear key K from the inference cache", "delete key K
    in namespace N", "set key K to 42 in the sensor cache for 60 s", "store 42 under key K in
    sensor") → cache_manager.

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
        namespace = named[0] if named else (u.service if u.inherited else None)
    rest = rest_raw.lower()
    if key is not None and key_match is not None:
        if _CACHE_SET.search(rest) and not u.reading:
            value_match = _VALUE.search(u.raw, key_match.end()) or _VALUE_BEFORE_KEY.search(u.raw)
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
        action = "delete" if _CACHE_DELETE.search(rest) and not u.reading else "get"
        return Request(
            "cache", action=action, key=key, namespace=namespace, missing=None if namespace else "a namespace"
        )
    if _CACHE_FLUSH.search(rest) and not u.reading:
        return Request(
            "cache", action="flush", namespace=namespace, missing=None if namespace else "a namespace"
        )
    if re.search(r"\b(get|read|fetch|lookup|look up|delete|remove|set|store)\b", rest) and not u.reading:
        return Request("cache", action="get", namespace=namespace, missing="a key (… key NAME …)")
    return Request("cache", action="stats", namespace=namespace)


_REPLICAS = (
    rf"\b{_NUMBER}\s+(?:replicas?|instances?|copies|containers?|processes)\b",
    rf"\b(?:replicas?|count)\s*(?:to|=|:|at|of)?\s*{_NUMBER}\b",
    rf"\bto\s+{_NUMBER}\b",
)


def _scale(u: Utterance, lexicon: Lexicon) -> Request | None:
    """Scale ("scale inference to 3 replicas", "set sensor replicas to 2", "bump sensor to 3",
    "scale sensor up") → container_ops scale; up/down without a number lists the service first,
    then scales ±1."""
    replicas = _first_int(_REPLICAS, u.masked)
    delta = None
    if replicas is None:
        if re.search(r"\b(up|out|more|grow)\b", u.masked):
            delta = 1
        elif re.search(r"\b(down|fewer|less|shrink)\b", u.masked):
            delta = -1
        elif re.search(r"\b(scal(e|es|ed|ing)|bump|resize)\b", u.masked):
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
    """Restart ("restart the sensor service", "bounce sensor-1", "kick sensor-1") → container_ops
    restart of the named instances; with only a service named, list it first and restart each."""
    if u.instances:
        return Request("restart", service=_owner(u.instances[0], lexicon), instance_ids=u.instances)
    return Request("restart", service=u.service, missing=None if u.service else "a service or an instance id")


def _stop(u: Utterance, lexicon: Lexicon) -> Request:
    """Stop ("stop game-state-1", "take down sensor-2", "stop the sensor service") → container_ops
    stop of the named instances; with only a service named, list it first and stop each instance
    (destructive)."""
    if u.instances:
        return Request("stop", service=_owner(u.instances[0], lexicon), instance_ids=u.instances)
    return Request("stop", service=u.service, missing=None if u.service else "a service or an instance id")


def _start(u: Utterance, lexicon: Lexicon) -> Request:
    """Start ("start another inference instance", "launch 2 more sensors", "fire up another
    sensor") → one container_ops start per instance wanted (at most 10; more is a job for scale)."""
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
    """Logs ("show logs of sensor", "tail 20 lines of sensor-1", "what did sensor-1 print?")
    → container_ops logs of the instance; with only a service named, list it first and read its
    first (running) instance."""
    tail = _first_int((r"\b(?:tail|last|latest|final|top)\s+(\d+)\b", r"\b(\d+)\s+lines?\b"), u.masked)
    if u.instances:
        return Request(
            "logs", service=_owner(u.instances[0], lexicon), instance_ids=u.instances[:1], tail=tail
        )
    return Request(
        "logs", service=u.service, tail=tail, missing=None if u.service else "a service or an instance id"
    )


def _latency(u: Utterance, lexicon: Lexicon) -> Request:
    """Latency ("why is the gaming latency high?", "sensor is slow", "how fast is inference?",
    "p99 of inference", "any errors?", "requests turned away?") → metrics_monitor all +
    container_ops list; the answer gives p50/p95/p99, server errors and capacity rejects apart,
    instance states, host CPU and a one-line diagnosis."""
    return Request("latency", service=u.service, services=_several(u))


def _gpu(u: Utterance, lexicon: Lexicon) -> Request:
    """GPU ("gpu", "how busy is the GPU?", "vram") → metrics_monitor gpu."""
    return Request("gpu")


def _host(u: Utterance, lexicon: Lexicon) -> Request:
    """Host metrics ("cpu", "memory", "what's the load like", "disk") → metrics_monitor host; with
    a service or instance named → metrics_monitor instances (per-instance CPU and memory)."""
    return Request("host", service=u.service, instance_ids=u.instances, services=_several(u))


def _status(u: Utterance, lexicon: Lexicon) -> Request:
    """Status ("status", "how are things", "is everything ok?", "anything wrong?", "show me the
    containers", "is sensor healthy?") → container_ops list (of the service, if one is named) +
    metrics_monitor all; the answer names every site service with no running instance."""
    return Request("status", service=u.service, services=_several(u))


def _several(u: Utterance) -> tuple[str, ...]:
    return u.services if len(u.services) > 1 else ()


# -- the swarm ---------------------------------------------------------------------------------------

SWARM_CHANGES = frozenset({"scale", "move"})
"""The `swarm_ops` actions of a swarm request that change the swarm (the rest read it)."""

_ACROSS = r"\bacross\s+(?:the\s+|all\s+(?:the\s+)?|every\s+|each\s+)?(?:cluster|peers|nodes|sites?|swarm)\b"
_SWARM_WIDE = re.compile(rf"\bswarm\w*|\bsites\b|\bmulti-?site\b|{_ACROSS}")
"""Words that put a change across the swarm rather than on this site."""
_PER_SITE = re.compile(r"\b(?:per|each|every)\s+site\b")
_SWARM_CONTEXT = (
    rf"\bswarm\w*|\bsites\b|\bmulti-?site\b|{_ACROSS}|\b_site_\b|"
    r"\b(?:which|what|each|every|other|all|per)\s+sites?\b|"
    r"\bcoordinat\w*|\bleader\w*|\bleadership\b|\bplacements?\b|\bplaced\b|\bpeers\b|\braft\b|\bquorum\b|"
    r"\bconsensus\b|\belect(ed|ion|ions)?\b|"
    r"\bwhere\b.*\b(run|runs|running|placed|deployed|hosted|live|lives|located|replicas?|copies)\b|"
    r"^\s*where\s+(is|are)\s+(the\s+)?_svc_\W*$"
)
"""What makes a request about the swarm: its words, a site id, the coordinator, placements."""

_MOVE = re.compile(r"\b(move[sd]?|moving|migrat\w*|relocat\w*|transfer\w*|evacuat\w*|re-?home)\b")
_MOVE_TO_A_SITE = re.compile(
    r"\b(shift|put|place|pin|send)\b(?!.*\b(replicas?|instances?|copies)\b).*\b_site_\b"
)
_TOWARDS = re.compile(r"\b(to|onto|into|towards|on|over)\s+(the\s+)?(site\s+)?$")
_AWAY = re.compile(r"\b(from|off|out\s+of|away\s+from)\s+(the\s+)?$")
_SWARM_SCALE = re.compile(
    rf"\b(scale[sd]?|scaling|replicas?|resize|bump|copies)\b|"
    rf"\b(set|change|make|put|grow|shrink|increase|decrease|reduce)\b.*\b_svc_\b.*\bto\s+{_NUMBER}\b|"
    rf"\b(grow|shrink)\s+(the\s+)?_svc_\b|\b(run|deploy|want|need|give)\b.*\b{_NUMBER}\s+_svc_"
)
_LOCAL_CHANGE = re.compile(
    r"\b(re-?start\w*|reboot|bounce|stop|kill|shut\s*down|start|launch|spin\s+up|flush\w*|purge|wipe|"
    r"clear|delete|remove|evict)\b"
)
_LEADER = re.compile(
    r"\b(leader\w*|coordinat\w*|lead|leads|leading|in\s+charge|raft|consensus|term|elect\w*|quorum|"
    r"primary|master)\b"
)
_PLACED = re.compile(r"\b(placements?|placed|placing|where|distribut\w*|spread|layout|allocat\w*)\b")
_RUNS = re.compile(r"\b(run|runs|running|host|hosts|hosting|hosted|deployed|scheduled|serves?|serving)\b")
_LOADED = re.compile(
    r"\b(load\w*|busy|busier|busiest|idle\w*|utili[sz]\w*|cpus?|pressure|capacity|headroom|hot\w*|"
    r"overload\w*|least|saturat\w*|in\s*flight|queue\w*|free|memory|mem|ram|disk)\b"
)
_LOCAL_READ = re.compile(
    r"\b(logs?|logging|tail|output|caches?|cached|namespaces?|key|entry|entries|gpus?|vram|latenc(y|ies)|"
    r"p50|p95|p99|errors?|instances?|containers?|processes)\b"
)
"""What only this site's own tools read (another site's logs, cache, GPU or latency are its own)."""
_SITES = re.compile(
    r"\b(sites|members?|membership|peers?|nodes?|health\w*|unhealthy|up|down|status|alive|dead|reachable|"
    r"online|offline|list|show|overview|who|what|which)\b|^\W*(the\s+)?swarm\W*$"
)


def _target_site(masked: str, sites: Sequence[str]) -> str | None:
    """The site a move names as its target in `masked` (whose `_site_`s are `sites`): the one
    after "to"/"onto" or the one site named, never one it moves away from ("from site-1", "off
    site-1"); None when there is none, or more than one ("to site-2 or site-3")."""
    pieces = masked.split("_site_")
    named = list(zip(sites, pieces[:-1], strict=False))
    candidates = {site for site, before in named if not _AWAY.search(before)}
    towards = {site for site, before in named if _TOWARDS.search(before)}
    if len(candidates) == 1 and (towards <= candidates):
        return candidates.pop()
    return None


def move_targets(u: Utterance) -> list[str | None]:
    """The target site of each service mention (`_svc_`) of a move, in order: the one written
    between it and the next mention ("inference to site-2 and sensor to site-3"); a mention
    without one takes the next one's ("inference and sensor to site-2")."""
    masked = u.masked
    starts = [match.start() for match in re.finditer(r"_svc_", masked)]
    if len(starts) <= 1:
        return [_target_site(masked, u.sites)]
    bounds = [0, *starts[1:], len(masked)]
    targets: list[str | None] = []
    for start, end in itertools.pairwise(bounds):
        before = masked[:start].count("_site_")
        segment = masked[start:end]
        targets.append(_target_site(segment, u.sites[before : before + segment.count("_site_")]))
    for index in range(len(targets) - 2, -1, -1):
        if targets[index] is None:
            targets[index] = targets[index + 1]
    return targets


def _swarm_change(u: Utterance, lexicon: Lexicon) -> Request | None:
    """Swarm changes ("move inference to site-2", "migrate sensor onto site 3", "scale inference
    to 4 across the swarm", "run 4 replicas of inference in the swarm", "scale inference up across
    the sites") → swarm_ops move / scale; the coordinator commits the placement. A scale that names
    one site, or a count per site, is answered in words (the coordinator places a total); a
    restart, stop or flush on other sites is too (`action="elsewhere"`: this site's agent changes
    only its own)."""
    masked = u.masked
    if _MOVE.search(masked) or _MOVE_TO_A_SITE.search(masked):
        if not (u.sites or u.service):
            return None
        site = move_targets(u)[0]
        missing = None if site else "one site to move it to (… to site-N)"
        return Request("swarm", action="move", service=u.service, site=site, missing=missing or _no(u))
    wide = _SWARM_WIDE.search(masked) or _PER_SITE.search(masked)
    if _SWARM_SCALE.search(masked) and (wide or u.sites):
        more = re.search(rf"\b{_NUMBER}\s+(more|additional|extra|fewer|less)\b", masked)
        replicas = None if more else _first_int((*_REPLICAS, rf"\b{_NUMBER}\s+_svc_"), masked)
        delta = None
        if more:
            delta = _number(more.group(1)) * (-1 if more.group(2) in ("fewer", "less") else 1)
        elif replicas is None:
            if re.search(r"\b(up|out|more|grow)\b", masked):
                delta = 1
            elif re.search(r"\b(down|fewer|less|shrink)\b", masked):
                delta = -1
        missing = _no(u)
        if _PER_SITE.search(masked):
            missing = (
                "a total replica count for the swarm (the coordinator spreads the replicas over the sites; "
                "it sets no count per site)"
            )
        elif replicas is None and delta is None:
            missing = "a replica count (… to N replicas across the swarm)"
        return Request(
            "swarm",
            action="scale",
            service=u.service,
            replicas=replicas,
            replicas_delta=delta,
            site=u.sites[0] if u.sites else None,
            missing=missing,
        )
    if _LOCAL_CHANGE.search(masked) and (wide or u.sites):
        return Request("swarm", action="elsewhere", service=u.service, site=u.sites[0] if u.sites else None)
    return None


def _no(u: Utterance) -> str | None:
    return None if u.service else "a service"


def _swarm_read(u: Utterance, lexicon: Lexicon) -> Request | None:
    """Swarm questions: the coordinator ("which site is the leader?", "who is the coordinator?")
    → swarm_ops leader; placements ("where does inference run?", "show placements", "what runs on
    site-2?") → placements; load ("how loaded is the swarm?", "swarm load", "which site is
    busiest?") → load; the sites ("list the sites", "show the swarm", "is site-2 healthy?") →
    sites. A question about a swarm change ("should I move inference to site-2?") reads the
    placements instead; another site's logs, cache or latency are answered in words (only that
    site's agent reads them)."""
    masked = u.masked
    site = u.sites[0] if u.sites else None
    if _LEADER.search(masked):
        return Request("swarm", action="leader")
    if _placements_asked(u, masked, site):
        return Request("swarm", action="placements", service=u.service, site=site)
    if _LOADED.search(masked):
        return Request("swarm", action="load", site=site)
    if _LOCAL_READ.search(masked):
        return Request("swarm", action="elsewhere", service=u.service, site=site)
    if _SITES.search(masked) or (site and not u.service):
        return Request("swarm", action="sites", site=site)
    return None


def _placements_asked(u: Utterance, masked: str, site: str | None) -> bool:
    """Whether a swarm question asks where services run: placement words ("where", "placed"); a
    service said to run or be somewhere ("which sites run sensor", "is sensor on site-2?"); what
    runs on a site ("what runs on site-2?"); or a question about moving or scaling it."""
    if _PLACED.search(masked):
        return True
    if _RUNS.search(masked) and (u.service or (site and re.search(r"\b(what|which)\b", masked))):
        return True
    if u.service and re.search(r"\b(on|at)\s+(the\s+)?_site_", masked) and not _LOCAL_READ.search(masked):
        return True
    return u.reading and bool(_MOVE.search(masked) or _SWARM_SCALE.search(masked))


@dataclass(frozen=True)
class IntentRule:
    """A trigger pattern (searched in the masked text) and the extractor that builds the request.

    An extractor may return None to let the next rule try. Rules that change the site are
    skipped for questions, conditionals and negations. A `fallback` rule matches a bare service or
    instance mention; such a clause has no intent of its own (it never starts a compound part).
    """

    name: IntentName
    pattern: str
    extract: Callable[[Utterance, Lexicon], Request | None]
    changes_site: bool = False
    fallback: bool = False
    trigger: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trigger", re.compile(self.pattern))


RULES: tuple[IntentRule, ...] = (
    IntentRule(
        "alerts",
        r"\b(alerts?|alarms?|alerting|incidents?|pages|paging|ack|acked|acknowledge[sd]?|acknowledging)\b",
        _alerts,
    ),
    IntentRule(
        "help",
        r"^\s*(help|\?|commands|menu)\s*[.!?]*\s*$|\bwhat can you do\b|\bwhat can (i|we) (ask|say)\b|"
        r"\bwhat do you (understand|know|support)\b|\bcommands\b|\bhow do (i|we) use (you|this)\b",
        _help,
    ),
    IntentRule(
        "swarm",
        _SWARM_CONTEXT + r"|\b(move[sd]?|moving|migrat\w*|relocat\w*)\b",
        _swarm_change,
        changes_site=True,
    ),
    IntentRule(
        "cache",
        r"\b(caches?|cached|namespaces?|key|entry|entries|flush\w*|evictions?|redis)\b|\bhit (ratio|rate)\b",
        _cache,
    ),
    # After the cache: a value or key that looks like a site id ("set key k to site-2 …") is the cache's.
    IntentRule("swarm", _SWARM_CONTEXT, _swarm_read),
    IntentRule(
        "scale",
        rf"\b(scale[sd]?|scaling|replicas?|resize|bump)\b|"
        rf"\b(set|change|make|put|grow|shrink|increase|decrease|reduce)\b.*\b_svc_\b.*\bto\s+{_NUMBER}\b|"
        r"\b(grow|shrink)\s+(the\s+)?_svc_\b",
        _scale,
        changes_site=True,
    ),
    IntentRule(
        "restart",
        r"\b(re-?start|reboot|bounce|recycle|reload|kick|cycle)\b",
        _restart,
        changes_site=True,
    ),
    IntentRule(
        "stop",
        r"\b(stop|kill|shut\s*down|terminate|halt|take\s+down|bring\s+down|get\s+rid\s+of)\b|"
        r"\b(take|bring|shut|turn|switch)\s+(the\s+)?_(svc|inst)_\s+(down|off)\b|"
        r"\b(remove|delete|destroy)\s+(the\s+)?(instance\s+)?_inst_",
        _stop,
        changes_site=True,
    ),
    IntentRule(
        "start",
        r"\b(start|launch|spin\s+up|bring\s+up|fire\s+up|boot|add|run)\b.*"
        r"\b(_svc_|instances?|replicas?|another|more)\b|\banother\b|\bbring\s+(the\s+)?_svc_\s+back\b",
        _start,
        changes_site=True,
    ),
    IntentRule(
        "logs",
        r"\b(logs?|logging|tail|stdout|stderr|journal|output|print(ed|ing)?|console)\b",
        _logs,
    ),
    IntentRule(
        "latency",
        r"\b(latenc(y|ies)|slow\w*|sluggish|lag\w*|p50|p95|p99|percentiles?|response\s+times?|errors?|"
        r"failing|failures?|timeouts?|5\d\d|requests?|throughput|rps|qps|traffic|fast|speed|"
        r"responsive\w*|performance|perf|rejects?|rejected|turned\s+away|capacity)\b",
        _latency,
    ),
    IntentRule("gpu", r"\b(gpus?|cuda|vram|nvidia|accelerators?|graphics)\b", _gpu),
    IntentRule(
        "host",
        r"\b(cpus?|cores?|memory|ram|mem|load|disk|storage|space|network|bandwidth|resources?|usage|"
        r"utili[sz]ation|metrics?|host|machine|busy|headroom)\b",
        _host,
    ),
    IntentRule(
        "status",
        r"\b(status|overview|health\w*|running|summary|report|instances?|list|replicas?|up|down|site|"
        r"services?|containers?|processes|ps|state|alive|dead|broken|problems?|issues?|wrong|uptime|"
        r"deployed|everything|ok|okay|fine|alright)\b|\bhow('s| is| are)\b|\bwhat'?s (up|going on|happening)\b|"
        r"\bgoing on\b",
        _status,
    ),
    IntentRule("status", r"\b(_svc_|_inst_)\b", _status, fallback=True),
)

_MAX_PIECES = 16
"""A message cut into more pieces than this is read as one request (it bounds the parse's work)."""

_MERGEABLE = frozenset({"status", "latency", "gpu", "host"})
"""Adjacent parts of one of these (read) intents are one request ("latency and errors of sensor");
two changes stay two parts ("restart sensor-1 and restart sensor-2")."""


_BARE_CACHE = re.compile(r"\s*(the\s+)?_svc_\s+(caches?|namespaces?)\s*[.!?]*\s*")


def _mergeable(first: Request, second: Request, second_u: Utterance) -> bool:
    """Whether two adjacent parts are one request: the same intent from `_MERGEABLE`, or a cache
    flush/stats followed by a bare "X cache" ("flush the sensor and inference caches")."""
    if first.intent != second.intent:
        return False
    if first.intent == "cache":
        return (
            first.key is None
            and first.action in ("flush", "stats")
            and bool(_BARE_CACHE.fullmatch(second_u.masked))
        )
    return first.intent in _MERGEABLE


_CONNECTING = (
    r"\s|[,;&]|\b(?:and|then|also|plus|as well as|the|both|caches?|namespaces?|services?|instances?|"
    r"replicas?|copies|more|new|additional|extra|another|to|at)\b|" + rf"\b{_NUMBER}\b"
)
_CONNECTOR = re.compile(rf"(?:{_CONNECTING})*")


_SWARM_CONNECTOR = re.compile(
    rf"(?:{_CONNECTING}|\b_site_\b|\b(?:on|onto|into|from|off|over|across|in|swarm|sites?|cluster|all)\b)*"
)
"""Between services moved or scaled together: also site ids and the words that place them."""


def coordinated(u: Utterance, lexicon: Lexicon, connector: re.Pattern[str] = _CONNECTOR) -> tuple[str, ...]:
    """The services named together with the first mention, as a list ("sensor and inference",
    "sensor to 3 and inference to 2", "the sensor cache and the inference cache"); a service named
    for another reason ("restart sensor because inference is slow") is not one of them."""
    if u.inherited:
        return u.direct_services
    tokens = list(re.finditer(r"_(svc|inst)_", u.masked))
    mentions = iter(lexicon.mentions(u.low))
    run: list[str] = []
    for index, token in enumerate(tokens):
        service = next(mentions, None) if token.group(1) == "svc" else None
        if index and not connector.fullmatch(u.masked[tokens[index - 1].end() : token.start()]):
            break
        if service is not None and service not in run:
            run.append(service)
    return tuple(run)


class IntentParser:
    """Reads operator text into a `Request` with `RULES`, or None when nothing matches."""

    def __init__(self, services: Sequence[str], kinds: Mapping[str, str] | None = None) -> None:
        self.lexicon = Lexicon(services, kinds)

    def parse(self, text: str) -> Request | None:
        """The request in `text` (a compound one for several clauses), or None."""
        whole = Utterance.read(text, self.lexicon)
        if _SMALL_TALK.match(whole.low) or _OFF_TOPIC.search(whole.low) or _INJECTION.search(whole.low):
            return None
        parts = self._clauses(whole)
        if parts is None:
            single = self._match(whole)[0]
            if single is None:
                return None
            parts = self._fan_out(single, whole)
        unique: list[Request] = []
        for part in parts:
            if part not in unique:
                unique.append(part)
        if len(unique) == 1:
            return unique[0]
        if len(unique) > MAX_PARTS:
            return Request(
                "compound", missing=f"at most {MAX_PARTS} requests in one message (send the rest separately)"
            )
        return Request("compound", parts=tuple(unique))

    # -- one clause ------------------------------------------------------------------------------

    def _match(self, u: Utterance) -> tuple[Request | None, bool]:
        """The first rule's request for `u`, and whether a non-fallback rule made it."""
        for rule in RULES:
            if rule.changes_site and u.reading:
                continue
            if rule.trigger.search(u.masked):
                request = rule.extract(u, self.lexicon)
                if request is not None:
                    return request, not rule.fallback
        return None, False

    def _read(self, text: str, whole: Utterance) -> Utterance:
        """A clause, read on its own but reading-only when the whole message is."""
        u = Utterance.read(text, self.lexicon)
        return replace(u, question=u.question or whole.question, negated=u.negated or whole.negated)

    def _inherit(self, u: Utterance, before: Request | None) -> Utterance:
        """`u` with the services/instances of the clause before when it names none of its own
        and refers back ("its logs") or cannot do without them ("… then restart")."""
        if before is None or u.services or not (before.subjects or before.instance_ids):
            return u
        pronoun = _PRONOUN.search(u.low)
        request = self._match(u)[0]
        needs = request is None or (request.missing is not None and "service" in request.missing)
        if not (pronoun or needs):
            return u
        masked = u.masked
        if pronoun:
            masked = _PRONOUN.sub(" _inst_ " if before.instance_ids else " _svc_ ", masked)
        return replace(
            u,
            masked=masked,
            services=before.subjects,
            instances=before.instance_ids,
            direct_services=() if before.instance_ids else before.subjects,
            inherited=True,
        )

    # -- compound messages ------------------------------------------------------------------------

    def _split(self, raw: str) -> list[tuple[int, int]]:
        """The spans of `raw` between separators that are not inside a quote, a JSON value or a
        name."""
        low = raw.lower()
        if len(low) != len(raw):
            return [(0, len(raw))]
        kept = [m.span() for m in _ATOMS.finditer(raw)] + self.lexicon.spans(low)
        pieces, start = [], 0
        for match in _SEPARATOR.finditer(low):
            if any(a < match.end() and match.start() < b for a, b in kept):
                continue
            pieces.append((start, match.start()))
            start = match.end()
        pieces.append((start, len(raw)))
        return [(a, b) for a, b in pieces if raw[a:b].strip()]

    def _clauses(self, whole: Utterance) -> list[Request] | None:
        """The parts of a message of several clauses with an intent each; None for one clause."""
        raw = whole.raw
        pieces = self._split(raw)
        if not 2 <= len(pieces) <= _MAX_PIECES:
            return None
        # A piece without an intent of its own ("inference to 2", "b") belongs to the one before.
        spans: list[tuple[int, int, bool]] = []
        for start, end in pieces:
            own = self._match(self._read(raw[start:end], whole))[1]
            if spans and (not own or not spans[-1][2]):
                spans[-1] = (spans[-1][0], end, own or spans[-1][2])
            else:
                spans.append((start, end, own))
        # A piece that completes the one before ("set key k to a" + "b in the sensor cache") too.
        index = 0
        while index + 1 < len(spans):
            first = self._match(self._read(raw[spans[index][0] : spans[index][1]], whole))[0]
            second = self._match(self._read(raw[spans[index + 1][0] : spans[index + 1][1]], whole))[0]
            joined = self._match(self._read(raw[spans[index][0] : spans[index + 1][1]], whole))[0]
            if (
                first is not None
                and first.missing
                and (second is None or second.intent == first.intent)
                and joined is not None
                and not joined.missing
            ):
                spans[index : index + 2] = [(spans[index][0], spans[index + 1][1], True)]
            else:
                index += 1
        if len(spans) < 2:
            return None
        parsed: list[tuple[int, int, Request, Utterance]] = []
        for start, end, _ in spans:
            entry = self._segment(raw, start, end, whole, parsed[-1][2] if parsed else None)
            if entry is None:
                return None
            if parsed and _mergeable(parsed[-1][2], entry[2], entry[3]):
                before = parsed[-2][2] if len(parsed) > 1 else None
                merged = self._segment(raw, parsed[-1][0], end, whole, before)
                if merged is not None and merged[2].intent == entry[2].intent:
                    parsed[-1] = merged
                    continue
            parsed.append(entry)
        # A part that lacks the service the next one names takes it ("restart and show logs of
        # sensor-1").
        for index in range(len(parsed) - 2, -1, -1):
            start, end, request, _ = parsed[index]
            if request.missing and "service" in request.missing:
                again = self._segment(raw, start, end, whole, parsed[index + 1][2])
                if again is not None:
                    parsed[index] = again
        parts: list[Request] = []
        for _, _, request, u in parsed:
            parts += self._fan_out(request, u)
        return parts

    def _segment(
        self, raw: str, start: int, end: int, whole: Utterance, before: Request | None
    ) -> tuple[int, int, Request, Utterance] | None:
        u = self._inherit(self._read(raw[start:end], whole), before)
        request = self._match(u)[0]
        return None if request is None else (start, end, request, u)

    def _fan_out(self, request: Request, u: Utterance) -> list[Request]:
        """One request per service when a per-service change names several together ("restart
        sensor and inference", "scale sensor to 3 and inference to 2", "flush the sensor and
        inference caches"), and one logs request per instance ("logs of sensor-1 and sensor-2")."""
        if request.missing:
            return [request]
        intent = request.intent
        together = coordinated(u, self.lexicon)
        if intent in ("restart", "stop", "logs"):
            owners = {_owner(i, self.lexicon) for i in request.instance_ids}
            uncovered = [s for s in together if s not in owners]
            parts: list[Request] = []
            if intent == "logs" and len(u.instances) > 1:
                parts += [
                    replace(request, instance_ids=(i,), service=_owner(i, self.lexicon)) for i in u.instances
                ]
            elif request.instance_ids:
                parts.append(request)
            parts += [replace(request, service=s, instance_ids=()) for s in uncovered]
            return parts or [request]
        if intent == "swarm" and request.action in SWARM_CHANGES:
            together = coordinated(u, self.lexicon, _SWARM_CONNECTOR)
            if len(together) <= 1:
                return [request]
            if request.action == "scale":
                counts = self._replicas_by_service(u)
                return [
                    replace(request, service=s, replicas=counts.get(s, request.replicas)) for s in together
                ]
            targets: dict[str, str | None] = {}
            for service, target in zip(self.lexicon.mentions(u.low), move_targets(u), strict=False):
                targets.setdefault(service, target)
            return [replace(request, service=s, site=targets.get(s) or request.site) for s in together]
        if intent == "scale" and len(together) > 1:
            counts = self._replicas_by_service(u)
            return [replace(request, service=s, replicas=counts.get(s, request.replicas)) for s in together]
        if intent == "start" and len(together) > 1:
            counts = self._starts_by_service(u)
            return [replace(request, service=s, count=counts.get(s, request.count)) for s in together]
        if (
            intent == "cache"
            and request.key is None
            and request.action in ("flush", "stats")
            and _namespace(u.raw) is None
            and len(together) > 1
        ):
            return [replace(request, namespace=s) for s in together]
        return [request]

    def _starts_by_service(self, u: Utterance) -> dict[str, int]:
        """The count written just before each service ("start 2 more sensors and 1 more inference")."""
        windows = re.split(r"_svc_", u.masked)[:-1]
        counts: dict[str, int] = {}
        for service, window in zip(self.lexicon.mentions(u.low), windows, strict=False):
            count = _first_int((rf"\b{_NUMBER}\s+(?:(?:more|new|additional|extra)\s+)?$",), window)
            if count is not None and service not in counts:
                counts[service] = count
        return counts

    def _replicas_by_service(self, u: Utterance) -> dict[str, int]:
        """The replica count written after each service ("sensor to 3 and inference to 2")."""
        windows = re.split(r"_svc_", u.masked)[1:]
        counts: dict[str, int] = {}
        for service, window in zip(self.lexicon.mentions(u.low), windows, strict=False):
            count = _first_int(_REPLICAS, window)
            if count is not None and service not in counts:
                counts[service] = count
        return counts
