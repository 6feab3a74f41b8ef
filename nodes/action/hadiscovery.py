"""Home Assistant MQTT discovery for one iotrt graph: topics, entity configs and state payloads.

Pure: no sockets, no clock. The bridge node (``homeassistant.py``) feeds it the graph's messages
and publishes what it returns; `iotrt mqtt forget` uses the same topics to clear the configs.

One graph is one Home Assistant *device*. Its entities:

==============  =========================================  =====================================
component       what                                       state topic (retained unless noted)
==============  =========================================  =====================================
lock            each lock actuator (its ``state`` output)  ``<base>/lock/<input>/state``
event           events the rules publish (``rules/events``) ``<base>/event/<input>`` (not retained)
sensor          who is at the door, faces in view          ``<base>/who``, ``<base>/faces``
sensor (diag.)  each node's health; the bridge's counters  ``<base>/node/<id>/health``, ...
image           the latest snapshot (JPEG)                 ``<base>/image``
sensor          each bridged topic (params ``bridge``)     ``<base>/bridge/<input>``
==============  =========================================  =====================================

Availability: ``<base>/status`` is "online" (birth, retained) or "offline" (the MQTT last will,
retained); every entity also follows ``<base>/node/<id>/status``, the health of the node its data
comes from, so Home Assistant greys out the lock when the lock node is down.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from iotrt import errors

ONLINE, OFFLINE = "online", "offline"
# Supervisor node states (iotrt.states.State values) -> the health Home Assistant shows.
HEALTH = {"running": "running", "starting": "restarting", "backoff": "restarting",
          "stopping": "restarting", "failed": "failed", "exited": "failed",
          "stopped": "stopped"}
HEALTH_OPTIONS = sorted(set(HEALTH.values()))
# What Home Assistant's lock entity sends (its default payload_lock/unlock/open).
LOCK_COMMANDS = {"LOCK": "lock", "UNLOCK": "unlock", "OPEN": "open"}
LOCK_VALUE_TEMPLATE = ("{% if value_json.jammed %}JAMMED{% elif value_json.locked %}LOCKED"
                       "{% else %}UNLOCKED{% endif %}")
# HA renders this with the command and the code typed in its UI; tojson quotes both safely.
LOCK_COMMAND_TEMPLATE = '{{ {"command": value, "code": code} | tojson }}'
NO_FACE, UNKNOWN = "none", "unknown"

_SLUG = re.compile(r"[^A-Za-z0-9_-]+")
_TOPIC_ROOT = re.compile(r"^[^+#\x00]+$")


class LayoutError(errors.ConfigError, ValueError):
    """The bridge's params do not describe something it can publish."""


def slug(text: str) -> str:
    """A topic- and id-safe form of ``text`` (MQTT discovery ids allow [A-Za-z0-9_-])."""
    return _SLUG.sub("_", text).strip("_") or "x"


@dataclass(frozen=True)
class BridgedTopic:
    """A user-chosen input shown in Home Assistant as a sensor (params ``bridge``)."""

    input: str
    name: str
    template: str                       # HA value_template over the message as JSON
    unit: str = ""
    device_class: str = ""
    every_s: float = 1.0                # publish at most this often (the newest message wins)


@dataclass(frozen=True)
class Layout:
    """What the bridge exposes, decided once from the node's params and wiring."""

    graph: str
    device_id: str                      # HA device identifier (unique per device)
    device_name: str
    prefix: str = "homeassistant"       # discovery prefix
    base: str = ""                      # root of the state topics
    version: str = ""
    configuration_url: str = ""
    locks: dict[str, str] = field(default_factory=dict)    # input -> source node id
    events: dict[str, str] = field(default_factory=dict)   # input -> source node id
    event_types: tuple[str, ...] = ()
    faces: tuple[str, str] | None = None                   # (input, source node)
    image: tuple[str, str] | None = None
    bridged: dict[str, tuple[BridgedTopic, str]] = field(default_factory=dict)
    has_code: bool = False

    def __post_init__(self) -> None:
        if not self.base:
            object.__setattr__(self, "base", f"iotrt/{slug(self.device_id)}")

    # -- topics ----------------------------------------------------------------------------

    @property
    def status_topic(self) -> str:
        return f"{self.base}/status"

    def node_status_topic(self, node: str) -> str:
        return f"{self.base}/node/{slug(node)}/status"

    def health_topic(self, node: str) -> str:
        return f"{self.base}/node/{slug(node)}/health"

    def lock_state_topic(self, name: str) -> str:
        return f"{self.base}/lock/{slug(name)}/state"

    def lock_command_topic(self, name: str) -> str:
        return f"{self.base}/lock/{slug(name)}/set"

    def event_topic(self, name: str) -> str:
        return f"{self.base}/event/{slug(name)}"

    @property
    def who_topic(self) -> str:
        return f"{self.base}/who"

    @property
    def faces_topic(self) -> str:
        return f"{self.base}/faces"

    @property
    def image_topic(self) -> str:
        return f"{self.base}/image"

    @property
    def stats_topic(self) -> str:
        return f"{self.base}/bridge_stats"

    def bridge_topic(self, name: str) -> str:
        return f"{self.base}/bridge/{slug(name)}"

    def config_topic(self, component: str, key: str) -> str:
        return f"{self.prefix}/{component}/{slug(self.device_id)}/{slug(key)}/config"

    @property
    def config_wildcard(self) -> str:
        """Every discovery config of this device (for `iotrt mqtt forget`)."""
        return f"{self.prefix}/+/{slug(self.device_id)}/+/config"

    def uses(self) -> set[str]:
        """The input names this layout reads."""
        return {*self.locks, *self.events, *self.bridged,
                *(x[0] for x in (self.faces, self.image) if x is not None)}

    def command_topics(self) -> dict[str, str]:
        """command topic -> lock input name."""
        return {self.lock_command_topic(n): n for n in self.locks}

    # -- discovery configs -----------------------------------------------------------------

    def _entity(self, key: str, name: str, node: str | None, **extra: Any) -> dict[str, Any]:
        availability = [{"topic": self.status_topic}]
        if node:
            availability.append({"topic": self.node_status_topic(node)})
        device = {"identifiers": [self.device_id], "name": self.device_name,
                  "manufacturer": "iotrt", "model": f"iotrt graph '{self.graph}'",
                  "sw_version": self.version}
        if self.configuration_url:
            device["configuration_url"] = self.configuration_url
        return {"name": name, "unique_id": f"{slug(self.device_id)}_{slug(key)}",
                "device": device, "origin": {"name": "iotrt", "sw_version": self.version},
                "availability": availability, "availability_mode": "all", "qos": 1, **extra}

    def configs(self, nodes: list[str] = ()) -> dict[str, dict[str, Any]]:
        """config topic -> discovery config, for every entity (``nodes``: the graph's nodes
        known from the supervisor, each with a health sensor)."""
        out: dict[str, dict[str, Any]] = {}

        def add(component: str, key: str, config: dict[str, Any]) -> None:
            out[self.config_topic(component, key)] = config

        for name, node in self.locks.items():
            lock = self._entity(f"lock_{name}", _title(name), node,
                                state_topic=self.lock_state_topic(name),
                                value_template=LOCK_VALUE_TEMPLATE,
                                command_topic=self.lock_command_topic(name),
                                command_template=LOCK_COMMAND_TEMPLATE, optimistic=False)
            if self.has_code:
                lock["code_format"] = r"^\d{4,12}$"
            add("lock", f"lock_{name}", lock)
        for name, node in self.events.items():
            add("event", f"event_{name}", self._entity(
                f"event_{name}", _title(name), node, state_topic=self.event_topic(name),
                event_types=list(self.event_types), device_class="doorbell"))
        if self.faces is not None:
            node = self.faces[1]
            add("sensor", "who", self._entity("who", "Who is at the door", node,
                                              state_topic=self.who_topic, icon="mdi:account"))
            add("sensor", "faces", self._entity("faces", "Faces in view", node,
                                                state_topic=self.faces_topic,
                                                state_class="measurement", icon="mdi:face-recognition"))
        if self.image is not None:
            add("image", "snapshot", self._entity("snapshot", "Snapshot", self.image[1],
                                                  image_topic=self.image_topic,
                                                  content_type="image/jpeg"))
        for name, (b, node) in self.bridged.items():
            extra: dict[str, Any] = {"state_topic": self.bridge_topic(name),
                                     "value_template": b.template}
            if b.unit:
                extra["unit_of_measurement"] = b.unit
            if b.device_class:
                extra["device_class"] = b.device_class
            add("sensor", f"bridge_{name}", self._entity(f"bridge_{name}", b.name, node, **extra))
        for key, name in (("rejected_commands", "MQTT commands rejected"),
                          ("dropped_events", "MQTT events dropped")):
            add("sensor", key, self._entity(
                key, name, None, state_topic=self.stats_topic,
                value_template=f"{{{{ value_json.{key} }}}}", entity_category="diagnostic",
                state_class="total_increasing"))
        for node in nodes:
            add("sensor", f"health_{node}", self._entity(
                f"health_{node}", f"{node} health", None, state_topic=self.health_topic(node),
                entity_category="diagnostic", device_class="enum", options=HEALTH_OPTIONS))
        return out


def _title(name: str) -> str:
    return name.replace("_", " ").capitalize()


# -- state payloads: iotrt message -> what goes on the entity's state topic ---------------------

def lock_payload(data: Any) -> str | None:
    """The lock's ``state`` message -> the lock entity's JSON state (None: not a lock state)."""
    if not isinstance(data, dict) or type(data.get("locked")) is not bool:
        return None
    state = {"locked": data["locked"]}
    if data.get("jammed") is True:
        state["jammed"] = True
    return json.dumps(state)


def who_payloads(data: Any) -> tuple[str, str] | None:
    """The identity node's ``faces`` message -> (who, faces in view)."""
    faces = data.get("faces") if isinstance(data, dict) else None
    if not isinstance(faces, list):
        return None
    # An allow-list, as the door's rules: only a face marked known (exactly true) is named.
    known = [f["name"] for f in faces if isinstance(f, dict) and f.get("known") is True
             and isinstance(f.get("name"), str) and f["name"]]
    who = known[0][:255] if known else (UNKNOWN if faces else NO_FACE)
    return who, str(len(faces))


def event_payload(data: Any, event_types: tuple[str, ...], max_bytes: int = 65536) -> str | None:
    """A rules ``events`` message ``{event: visitor, ...}`` -> HA's ``{event_type, ...}``
    (None when it names no known event type: Home Assistant would drop it anyway). Other
    fields become the event's attributes, unless they are not JSON or too long."""
    if not isinstance(data, dict) or not isinstance(data.get("event"), str) \
            or data["event"] not in event_types:
        return None
    attrs = {k: v for k, v in data.items() if k != "event" and isinstance(k, str)}
    try:
        text = json.dumps({"event_type": data["event"], **attrs}, allow_nan=False)
    except (TypeError, ValueError):
        text = ""
    return text if 0 < len(text) <= max_bytes else json.dumps({"event_type": data["event"]})


def health_of(state: str) -> str:
    return HEALTH.get(state, "failed")


def rules_event_types(ruleset: Any, outputs: set[str]) -> list[str]:
    """The ``event`` values the rules publish on ``outputs`` (constant strings only)."""
    from iotrt.rules import PublishStep  # already loaded: `ruleset` comes from it

    found: list[str] = []
    for r in ruleset.rules:
        for step in r.steps:
            if isinstance(step, PublishStep) and step.output in outputs \
                    and isinstance(step.data, dict) and isinstance(step.data.get("event"), str) \
                    and step.data["event"] not in found:
                found.append(step.data["event"])
    return found


BRIDGE_KEYS = {"template", "name", "unit", "device_class", "every_s"}


def bridged_topic(name: str, spec: Any) -> BridgedTopic:
    """One entry of the ``bridge`` param: a value_template, or a map (BRIDGE_KEYS)."""
    spec = {"template": spec} if isinstance(spec, str) else spec
    every = spec.get("every_s", 1.0) if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or not isinstance(spec.get("template"), str) \
            or not set(spec) <= BRIDGE_KEYS or isinstance(every, bool) \
            or not isinstance(every, (int, float)) or not 0.01 <= every <= 86400:
        raise LayoutError(f"bridge.{name}: give a value_template string or a map with template "
                          f"(and optionally name, unit, device_class, every_s from 0.01 to "
                          f"86400)")
    return BridgedTopic(name, str(spec.get("name", name)), spec["template"],
                        str(spec.get("unit", "")), str(spec.get("device_class", "")),
                        float(every))


def bridge_problem(bridge: dict) -> str | None:
    """Why the ``bridge`` param is not acceptable, or None: the graph check asks what the bridge
    asks at start (`bridged_topic`), so a bad entry is refused at its file:line."""
    for name, spec in bridge.items():
        try:
            bridged_topic(str(name), spec)
        except LayoutError as exc:
            return str(exc)
    return None


def make_layout(params: dict, graph: str, device_id: str, version: str,
                inputs: dict[str, str]) -> Layout:
    """The Layout from the bridge's params; ``inputs``: input name -> the topic wired to it."""
    source = {name: topic.split("/")[0] for name, topic in inputs.items()}

    def names(param: str) -> list[str]:
        value = params[param]
        if not all(isinstance(v, str) for v in value):
            raise LayoutError(f"{param} must be a list of input names")
        return [v for v in value if v in source]

    if not params["discovery_prefix"].strip("/"):
        raise LayoutError("discovery_prefix must not be empty (Home Assistant's default: "
                          "homeassistant)")
    for param in ("discovery_prefix", "base_topic"):
        if params[param] and not _TOPIC_ROOT.match(params[param]):
            raise LayoutError(f"{param} {params[param]!r}: no + or # in a topic to publish to")
    bridged = {}
    for name, spec in params["bridge"].items():
        if name not in source:
            raise LayoutError(f"bridge: {name!r} is not an input of this node (inputs: "
                              f"{', '.join(source) or 'none'})")
        bridged[name] = (bridged_topic(name, spec), source[name])
    events = {n: source[n] for n in names("events")}
    event_types = params["event_types"]
    if not all(isinstance(t, str) and t for t in event_types):
        raise LayoutError("event_types must be a list of names")
    if not event_types and params["rules"] and events:
        # only a bridge that reads its event types loads the rule engine and yaml (~4.5 MB)
        from iotrt.rules import RulesError, load_rules
        try:
            ruleset = load_rules(params["rules"])
        except (RulesError, OSError) as exc:
            raise LayoutError(f"cannot read event types from {params['rules']}: {exc}") from exc
        event_types = rules_event_types(ruleset, {inputs[n].split("/", 1)[-1] for n in events})
    faces, image = params["faces"], params["image"]
    return Layout(
        graph=graph, device_id=device_id, device_name=params["device_name"] or graph,
        prefix=params["discovery_prefix"].strip("/"), base=params["base_topic"].strip("/"),
        version=version, configuration_url=params["configuration_url"],
        locks={n: source[n] for n in names("locks")}, events=events,
        event_types=tuple(event_types),
        faces=(faces, source[faces]) if faces in source else None,
        image=(image, source[image]) if image in source else None,
        bridged=bridged)
