"""Rule triggers: one module per kind (its schema, state, due time and handling), listed here.

    trigger: {threshold: distance, value: msg.d, below: 0.3}   # the YAML key names the kind

Each kind is a `TriggerKind` (see base.py for the interface the engine uses). Adding a kind is
adding a module with its class and one line to REGISTRY; nothing else names a kind.
"""

from __future__ import annotations

from typing import Any

from iotrt.rules.parsing import Invalid, mapping, topic
from iotrt.rules.triggers.absent import AbsentTrigger
from iotrt.rules.triggers.at import TimeTrigger
from iotrt.rules.triggers.base import EPS, Clock, TriggerError, TriggerKind
from iotrt.rules.triggers.interval import IntervalTrigger
from iotrt.rules.triggers.message import MessageTrigger
from iotrt.rules.triggers.threshold import ThresholdTrigger

REGISTRY: dict[str, type[TriggerKind]] = {
    "message": MessageTrigger,
    "threshold": ThresholdTrigger,
    "absent": AbsentTrigger,
    "interval": IntervalTrigger,
    "at": TimeTrigger,
}

__all__ = ["EPS", "REGISTRY", "AbsentTrigger", "Clock", "IntervalTrigger", "MessageTrigger",
           "ThresholdTrigger", "TimeTrigger", "TriggerError", "TriggerKind", "parse_trigger"]


def parse_trigger(raw: Any, line: int) -> TriggerKind:
    """A trigger from YAML: a mapping with exactly one kind's key, or a bare topic name."""
    if isinstance(raw, str):  # shorthand: a topic name is a message trigger
        return MessageTrigger(topic(raw, "trigger topic", line))
    d = mapping(raw, "a trigger", line)
    line = getattr(d, "line", line)
    kinds = [k for k in REGISTRY if k in d]
    if len(kinds) != 1:
        raise Invalid(line, f"a trigger needs exactly one of: {', '.join(REGISTRY)}")
    return REGISTRY[kinds[0]].parse(d, line)
