"""`trigger: {threshold: distance, value: msg.d, below: 0.3}`: a value entering a range.

Fires on the edge, when `value` (an expression over the message, default the message itself)
goes from outside the range to inside it; the rule sees the value as `trigger.value`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from iotrt.rules.expressions import Expression, ExpressionError
from iotrt.rules.parsing import Invalid, check_keys, expression, line_of, number, topic
from iotrt.rules.triggers.base import Evaluate, TriggerError, TriggerKind


class _State:
    __slots__ = ("inside",)

    def __init__(self) -> None:
        self.inside = False


@dataclass(frozen=True)
class ThresholdTrigger(TriggerKind):
    KEY = "threshold"

    topic: str
    value: Expression
    above: float | None
    below: float | None

    @classmethod
    def parse(cls, d: Mapping, line: int) -> ThresholdTrigger:
        check_keys(d, ("threshold", "value", "above", "below"), "a threshold trigger", line)
        if "above" not in d and "below" not in d:
            raise Invalid(line, "a threshold trigger needs 'above', 'below' or both")
        above = number(d["above"], "above", line_of(d, "above", line)) if "above" in d else None
        below = number(d["below"], "below", line_of(d, "below", line)) if "below" in d else None
        value = expression(d.get("value", "msg"), "threshold value", line_of(d, "value", line))
        return cls(topic(d["threshold"], "threshold topic", line_of(d, "threshold", line)),
                   value, above, below)

    def inside(self, x: float) -> bool:
        return (self.above is None or x > self.above) and (self.below is None or x < self.below)

    def describe(self) -> str:
        rng = " and ".join(s for s in (self.above is not None and f"> {self.above:g}",
                                       self.below is not None and f"< {self.below:g}") if s)
        return f"threshold {self.topic}: {self.value} {rng}"

    def start(self, now: float) -> _State:
        return _State()

    def on_message(self, state: _State, names: dict, now: float, evaluate: Evaluate) -> str | None:
        try:
            value = float(evaluate(self.value, names))
        except (ExpressionError, TypeError, ValueError) as exc:
            raise TriggerError(f"threshold value: {exc}") from None
        inside, was = self.inside(value), state.inside
        state.inside = inside
        if inside and not was:  # the edge, not the level
            names["trigger"]["value"] = value
            return f"{self.describe()} (value {value:g})"
        return None
