"""Discovery configs against Home Assistant's documented MQTT discovery schema, and the command
gate's handling of whatever arrives on a command topic. No broker needed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from iotrt.nodes.action.hadiscovery import (
    BridgedTopic,
    Layout,
    event_payload,
    lock_payload,
    rules_event_types,
    who_payloads,
)
from iotrt.nodes.action.homeassistant import MAX_BAD_CODES, BadCommand, CommandGate
from iotrt.rules import load_rules

ROOT = Path(__file__).resolve().parents[2]

# What Home Assistant's MQTT integration requires of a discovered entity, per component, from
# its platform schemas (homeassistant/components/mqtt/<component>.py; docs at
# home-assistant.io/integrations/<component>.mqtt): MQTT_RW_SCHEMA requires command_topic,
# MQTT_RO_SCHEMA requires state_topic; event adds event_types; image needs exactly one of
# image_topic / url_topic (vol.Exclusive + validate_topic_required).
REQUIRED = {
    "lock": [{"command_topic"}],
    "event": [{"state_topic", "event_types"}],
    "sensor": [{"state_topic"}],
    "binary_sensor": [{"state_topic"}],
    "image": [{"image_topic"}, {"url_topic"}],     # one of these sets, not both
}
EXCLUSIVE = {"image": {"image_topic", "url_topic"}}
# Every entity of a device: a unique_id (device info is only kept for entities that have one),
# device identifiers (or connections), and a topic per availability entry.
COMMON = {"unique_id", "device", "availability"}
ALL_HEALTH = ["camera", "rules", "lock", "homeassistant"]


def door_layout(**kw) -> Layout:
    defaults = dict(graph="door", device_id="iotrt_host_door", device_name="door",
                    version="1.0", locks={"lock": "lock"}, events={"events": "rules"},
                    event_types=("visitor", "unlocked"), faces=("faces", "who"),
                    image=("image", "cam"), has_code=True,
                    bridged={"temp": (BridgedTopic("temp", "Temperature",
                                                   "{{ value_json.c }}", "°C", "temperature"),
                                      "thermo")})
    return Layout(**{**defaults, **kw})


def test_every_config_has_what_home_assistant_requires():
    configs = door_layout().configs(ALL_HEALTH)
    components = {t.split("/")[1] for t in configs}
    assert components == {"lock", "event", "sensor", "image"}
    for topic, config in configs.items():
        prefix, component, device, key, last = topic.split("/")
        assert (prefix, last) == ("homeassistant", "config")
        assert any(req <= config.keys() for req in REQUIRED[component]), (topic, config)
        assert len(EXCLUSIVE.get(component, set()) & config.keys()) <= 1, topic
        assert COMMON <= config.keys(), topic
        assert config["device"]["identifiers"] == ["iotrt_host_door"]
        assert all(a["topic"] for a in config["availability"])
        json.dumps(config)                          # what is published
    ids = [c["unique_id"] for c in configs.values()]
    assert len(ids) == len(set(ids))
    health = [c for c in configs.values() if c.get("entity_category") == "diagnostic"
              and c.get("device_class") == "enum"]
    assert sorted(c["name"] for c in health) == sorted(f"{n} health" for n in ALL_HEALTH)


def test_entities_follow_their_nodes_availability():
    configs = door_layout().configs()
    lock = next(c for t, c in configs.items() if "/lock/" in t)
    assert [a["topic"] for a in lock["availability"]] == ["iotrt/iotrt_host_door/status",
                                                          "iotrt/iotrt_host_door/node/lock/status"]
    assert lock["availability_mode"] == "all"
    assert lock["code_format"]
    assert "code_format" not in next(c for t, c in door_layout(has_code=False).configs().items()
                                     if "/lock/" in t)


def test_configuration_url_and_prefix():
    layout = door_layout(prefix="ha", base="home/door", configuration_url="http://door.local:8080/")
    config = next(iter(layout.configs().values()))
    assert config["device"]["configuration_url"] == "http://door.local:8080/"
    assert all(t.startswith("ha/") for t in layout.configs())
    assert layout.status_topic == "home/door/status"
    assert layout.config_wildcard == "ha/+/iotrt_host_door/+/config"


def test_state_payloads():
    assert json.loads(lock_payload({"locked": False, "relock_in_s": 4.2, "cause": "command"})) \
        == {"locked": False}
    assert lock_payload({"locked": "yes"}) is None and lock_payload([1]) is None
    assert who_payloads({"faces": [{"name": "unknown", "known": False},
                                   {"name": "ana", "known": True}]}) == ("ana", "2")
    assert who_payloads({"faces": [{"name": "unknown", "known": False}]}) == ("unknown", "1")
    assert who_payloads({"faces": [{"name": "ana"}, {"name": "bo", "known": 1}]}) == \
        ("unknown", "2")                            # known must be exactly true
    assert who_payloads({"faces": []}) == ("none", "0")
    assert who_payloads({"faces": "x"}) is None and who_payloads(None) is None
    types = ("visitor",)
    assert json.loads(event_payload({"event": "visitor", "faces": 2}, types)) == \
        {"event_type": "visitor", "faces": 2}
    assert event_payload({"event": "other"}, types) is None
    assert json.loads(event_payload({"event": "visitor", "x": float("nan")}, types)) == \
        {"event_type": "visitor"}


def test_event_types_come_from_the_door_rules():
    ruleset = load_rules(ROOT / "configs" / "door.rules.yaml")
    assert rules_event_types(ruleset, {"events"}) == ["unlocked", "visitor"]
    assert rules_event_types(ruleset, {"other"}) == []


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def gate():
    return CommandGate(door_layout(), "4711", max_payload=128, clock=Clock())


SET = "iotrt/iotrt_host_door/lock/lock/set"


def test_commands_become_messages_for_the_rules(gate):
    assert gate.parse(SET, b'{"command": "UNLOCK", "code": "4711"}') == {
        "entity": "lock", "lock": "lock", "command": "unlock", "code_ok": True,
        "source": "homeassistant"}
    assert gate.parse(SET, b'{"command": "UNLOCK", "code": "4712"}')["code_ok"] is False
    assert gate.parse(SET, b'{"command": "UNLOCK", "code": null}')["code_ok"] is False
    assert gate.parse(SET, b"LOCK")["command"] == "lock"
    assert gate.rejected == 0


@pytest.mark.parametrize("topic, payload, why", [
    (SET, b"x" * 129, "129 bytes"),
    (SET, b"\xff\xfe", "not UTF-8"),
    (SET, b'{"command": ', "bad JSON"),
    (SET, b"[1, 2]", "unknown command"),
    (SET, b'{"command": ["UNLOCK"]}', "unknown command"),
    (SET, b'{"command": "UNLOCK", "code": 4711}', "must be a string"),
    (SET, b"OPEN_SESAME", "unknown command"),
    (SET, b"", "unknown command"),
    (SET + "x", b"UNLOCK", "no entity"),
    (SET, b'{"command": "UNLOCK", "code": "' + b"9" * 10**6 + b'"}', "bytes"),
    (SET, b'{"command": "UNLOCK", "code": "\\ud800"}', "not valid Unicode"),
])
def test_bad_commands_are_counted_and_explained(gate, topic, payload, why):
    with pytest.raises(BadCommand, match=why):
        gate.parse(topic, payload)
    assert gate.rejected == 1


def test_json_nested_too_deep_is_a_bad_command():
    gate = CommandGate(door_layout(), "4711", max_payload=65536, clock=Clock())
    with pytest.raises(BadCommand, match="nested too deep"):
        gate.parse(SET, b'{"command": ' + b"[" * 5_000 + b"]" * 5_000 + b"}")
    assert gate.rejected == 1


def test_too_many_wrong_codes_lock_out_even_the_right_one(gate):
    for _ in range(MAX_BAD_CODES):
        assert not gate.parse(SET, b'{"command": "UNLOCK", "code": "0000"}')["code_ok"]
    assert not gate.parse(SET, b'{"command": "UNLOCK", "code": "4711"}')["code_ok"]
    gate._clock.t += 61
    assert gate.parse(SET, b'{"command": "UNLOCK", "code": "4711"}')["code_ok"]


def test_without_a_code_nothing_is_ok():
    gate = CommandGate(door_layout(has_code=False), "", max_payload=128)
    assert gate.parse(SET, b'{"command": "UNLOCK", "code": ""}')["code_ok"] is False


# -- the bridge between graph messages and the broker, with a recording link -----------------

class Link:
    def __init__(self) -> None:
        self.states: dict[str, bytes | str] = {}
        self.events: list[tuple[str, str]] = []
        self.dropped_events = 0

    def set_state(self, topic, payload) -> None:
        self.states[topic] = payload

    def send_event(self, topic, payload) -> None:
        self.events.append((topic, payload))


def bridge():
    import logging
    from types import SimpleNamespace

    from iotrt.nodes.action.homeassistant import SPEC, Bridge

    layout = door_layout()
    node = SimpleNamespace(params=SPEC.validate_params({}), log=logging.getLogger("t"),
                           published=[], records=[])
    node.publish = lambda out, data, stamp_ns=None: node.published.append((out, data))
    node.record = lambda kind, **fields: node.records.append((kind, fields))
    node.post = lambda name, data: node.posted.append((name, data))
    node.posted = []
    b = Bridge(node, layout, Link(), CommandGate(layout, "4711", 128))
    b.start()
    return b


def test_bridge_states_events_and_snapshot():
    import numpy as np

    b = bridge()
    L = b.layout
    assert sum(t.endswith("/config") for t in b.link.states) == len(L.configs())
    b.on_input("lock", {"locked": False, "cause": "command"})
    assert json.loads(b.link.states[L.lock_state_topic("lock")]) == {"locked": False}
    b.on_input("faces", {"faces": [{"name": "ana", "score": 0.9, "known": True}]})
    assert (b.link.states[L.who_topic], b.link.states[L.faces_topic]) == ("ana", "1")
    b.on_input("image", np.full((480, 640, 3), 200, np.uint8))
    b.on_input("events", {"event": "visitor", "faces": 1})
    assert json.loads(b.link.events[0][1])["event_type"] == "visitor"
    jpeg = b.link.states[L.image_topic]
    assert jpeg[:2] == b"\xff\xd8" and len(jpeg) < 20_000
    for bad in (("lock", "locked"), ("faces", {"faces": 3}), ("events", {"event": "x"}),
                ("temp", {"a": np.zeros(3)}), ("image", np.zeros((2, 2), np.float32))):
        b.on_input(*bad)
    b.on_input("events", {"event": "unlocked"})     # a snapshot of the 2-D frame is refused
    assert b.stats["bad_messages"] == 5            # 4 above (the frame is kept unchecked) + it
    b.on_command(SET, b'{"command": "UNLOCK", "code": "4711"}')
    b.on_command(SET, b"nonsense")
    assert b.node.published == []                   # paho's thread only posts to the loop
    for posted in b.node.posted:
        b.on_post(*posted)
    assert b.node.published == [("commands", {"entity": "lock", "lock": "lock",
                                              "command": "unlock", "code_ok": True,
                                              "source": "homeassistant"})]
    assert json.loads(b.link.states[L.stats_topic])["rejected_commands"] == 1
    assert b.node.records == [("ha_command", {**b.node.published[0][1],
                                              "not_journaled_before": 0})]


def test_a_flood_of_requests_is_journaled_at_a_bounded_rate():
    from iotrt.nodes.action.homeassistant import JOURNAL_PER_MIN

    b = bridge()
    for _ in range(JOURNAL_PER_MIN + 7):
        b.on_command(SET, b'{"command": "UNLOCK", "code": "0"}')
        b.on_post(*b.node.posted.pop())
    assert len(b.node.records) == JOURNAL_PER_MIN and b.unjournaled == 7
    assert len(b.node.published) == JOURNAL_PER_MIN + 7     # the rules still see every one


def test_bridged_topics_and_faces_are_rate_limited_latest_wins():
    b = bridge()
    topic, who = b.layout.bridge_topic("temp"), b.layout.who_topic
    for c in (20, 21, 22):
        b.on_input("temp", {"c": c})
    for names in (["ana"], [], ["bo"]):               # a flickering detector
        b.on_input("faces", {"faces": [{"name": n, "known": True} for n in names]})
    assert json.loads(b.link.states[topic]) == {"c": 20} and b.link.states[who] == "ana"
    b.flush(time.monotonic() + 1.0)                   # the node's timer, once the time passed
    assert json.loads(b.link.states[topic]) == {"c": 22} and b.link.states[who] == "bo"
    assert not b.pending


def layout_params(**kw) -> dict:
    from iotrt.nodes.action.homeassistant import SPEC

    return SPEC.validate_params({"host": "h", **kw})


def test_layout_from_params_and_wiring():
    from iotrt.nodes.action.hadiscovery import make_layout

    inputs = {"lock": "lock/state", "events": "rules/events", "faces": "who/faces",
              "t": "thermo/reading"}
    layout = make_layout(layout_params(rules=str(ROOT / "configs" / "door.rules.yaml"),
                                       bridge={"t": "{{ value_json.c }}"}),
                         "door", "dev", "1.0", inputs)
    assert layout.locks == {"lock": "lock"} and layout.events == {"events": "rules"}
    assert layout.event_types == ("unlocked", "visitor")
    assert layout.faces == ("faces", "who") and layout.image is None
    assert layout.bridged["t"][0].every_s == 1.0 and layout.bridged["t"][1] == "thermo"
    assert layout.uses() == set(inputs)


@pytest.mark.parametrize("params, why", [
    ({"bridge": {"nope": "{{ value }}"}}, "not an input"),
    ({"bridge": {"t": {"name": "x"}}}, "value_template"),
    ({"bridge": {"t": {"template": "x", "colour": "red"}}}, "value_template"),
    ({"bridge": {"t": {"template": "x", "every_s": 0}}}, "every_s"),
    ({"bridge": {"t": {"template": "x", "every_s": True}}}, "every_s"),
    ({"bridge": {"t": 5}}, "value_template"),
    ({"locks": [1]}, "list of input names"),
    ({"event_types": [""]}, "event_types"),
    ({"discovery_prefix": "home/#"}, "no \\+ or #"),
    ({"base_topic": "a/+/b"}, "no \\+ or #"),
    ({"discovery_prefix": "/"}, "must not be empty"),
    ({"rules": "/nonexistent.rules.yaml"}, "cannot read event types"),
])
def test_bad_params_are_explained(params, why):
    from iotrt.nodes.action.hadiscovery import LayoutError, make_layout
    from iotrt.spec import ParamError

    # a bad bridge entry is refused by the params' own check already (ParamError)
    with pytest.raises((LayoutError, ParamError), match=why):
        make_layout(layout_params(**params), "door", "dev", "1.0",
                    {"t": "thermo/reading", "events": "rules/events"})


def test_requests_waiting_for_the_loop_are_bounded():
    from iotrt.nodes.action.homeassistant import MAX_IN_FLIGHT

    b = bridge()
    for _ in range(MAX_IN_FLIGHT + 3):              # the node's loop is stuck: nothing handled
        b.on_command(SET, b"LOCK")
    assert len(b.node.posted) == MAX_IN_FLIGHT and b.gate.rejected == 3
    b.on_post(*b.node.posted.pop())                 # one handled: room for one more
    b.on_command(SET, b"LOCK")
    assert len(b.node.posted) == MAX_IN_FLIGHT and b.gate.rejected == 3


@pytest.mark.parametrize("entry", ['{template: "{{ value }}", every_s: 0}', "{every_s: 1}",
                                   '{template: "{{ value }}", colour: red}', "5"])
def test_a_bridge_entry_the_bridge_refuses_at_start_the_graph_check_refuses_at_its_line(
        tmp_path, entry):
    """The bridge used to refuse these only when it started: validate said OK, then a crash
    loop with no file:line."""
    from iotrt.graph import GraphError, load_graph

    path = tmp_path / "g.yaml"
    path.write_text("name: g\nnodes:\n  - id: ha\n    kind: homeassistant\n    params:\n"
                    f"      bridge:\n        x: {entry}\n")
    with pytest.raises(GraphError) as err:
        load_graph(path)
    assert f"{path}:7" in str(err.value) and "bridge.x: give a value_template" in str(err.value)
