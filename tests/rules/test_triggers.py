"""Trigger kinds are modules behind one interface: the engine works with a new kind unchanged."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from iotrt.rules import Engine, Fired, Log, Message, RuleError, RulesError, loads_rules, triggers
from iotrt.rules.parsing import check_keys, line_of, topic
from iotrt.rules.triggers import REGISTRY, TriggerKind


def test_every_registered_kind_is_selected_by_its_own_key():
    for key, kind in REGISTRY.items():
        assert issubclass(kind, TriggerKind) and kind.KEY == key
        assert kind.__module__ == f"iotrt.rules.triggers.{kind.__module__.rsplit('.', 1)[1]}"


class _Last:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = None


@dataclass(frozen=True)
class ChangeTrigger(TriggerKind):
    """A kind written for this test: fires when a message field changes value."""

    KEY = "change"

    topic: str
    field: str

    @classmethod
    def parse(cls, d: Mapping, line: int) -> ChangeTrigger:
        check_keys(d, ("change", "field"), "a change trigger", line)
        return cls(topic(d["change"], "change topic", line_of(d, "change", line)), d["field"])

    def describe(self) -> str:
        return f"{self.topic}.{self.field} changed"

    def start(self, now: float) -> _Last:
        return _Last()

    def on_message(self, state, names, now, evaluate):
        value = names["msg"].get(self.field)
        changed, state.value = value != state.value, value
        if changed:
            names["trigger"]["value"] = value
            return self.describe()
        return None


def test_a_new_kind_is_a_class_and_a_registry_line(monkeypatch):
    monkeypatch.setitem(REGISTRY, "change", ChangeTrigger)  # the registry line
    engine = Engine(loads_rules("""
rules:
  - id: mode
    trigger: {change: robot, field: mode}
    actions: [{log: "mode ${trigger.value}"}]
"""))
    logs = []
    for t, mode in enumerate(["idle", "idle", "drive", "drive", "idle"]):
        out = engine.handle(Message("robot", {"mode": mode}), float(t))
        logs += [a.text for a in out if isinstance(a, Log)]
        assert not [a for a in out if isinstance(a, RuleError)]
    assert logs == ["mode idle", "mode drive", "mode idle"]
    assert engine.topics() == {"robot"}


def test_unknown_kind_lists_the_registered_ones():
    with pytest.raises(RulesError, match="exactly one of: message, threshold, absent, interval, at"):
        loads_rules("rules: [{id: r, trigger: {chnage: x}, actions: [{log: x}]}]")


def test_a_kinds_own_checks_report_the_line():
    with pytest.raises(RulesError) as err:
        loads_rules("rules:\n  - id: r\n    trigger: {absent: x}\n    actions: [{log: x}]\n")
    assert ":3: an absent trigger needs 'for: DURATION'" in str(err.value.problems[0])


def test_threshold_value_error_is_the_rules_error_and_others_go_on():
    engine = Engine(loads_rules("""
rules:
  - {id: t, trigger: {threshold: m, value: msg.d, below: 1}, actions: [{log: t}]}
  - {id: m, trigger: m, actions: [{log: m}]}
"""))
    out = engine.handle(Message("m", {"d": "near"}), 0.0)
    assert [a.text for a in out if isinstance(a, Log)] == ["m"]
    assert [a.message for a in out if isinstance(a, RuleError)][0].startswith("threshold value:")
    out = engine.handle(Message("m", {"d": 0.5}), 1.0)
    assert [a.trigger for a in out if isinstance(a, Fired) and a.rule == "t"] == [
        "threshold m: msg.d < 1 (value 0.5)"]


def test_the_engine_names_no_trigger_kind():
    import inspect

    import iotrt.rules.engine as engine

    source = inspect.getsource(engine)
    for kind in REGISTRY.values():
        assert kind.__name__ not in source
    assert set(triggers.__all__) >= {k.__name__ for k in REGISTRY.values()}
