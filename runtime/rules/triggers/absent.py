"""`trigger: {absent: heartbeat, for: 10s}`: an input silent for a while.

Fires once when no message came on the input for `for` (counted from the engine's start or the
last message); the next message re-arms it. The rule sees `trigger.seconds` of silence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from iotrt.rules.parsing import Invalid, check_keys, line_of, parse_duration, topic
from iotrt.rules.triggers.base import EPS, Clock, Evaluate, TriggerKind


class _State:
    __slots__ = ("seen", "fired")

    def __init__(self, seen: float) -> None:
        self.seen, self.fired = seen, False


@dataclass(frozen=True)
class AbsentTrigger(TriggerKind):
    KEY = "absent"
    timed = True

    topic: str
    seconds: float

    @classmethod
    def parse(cls, d: Mapping, line: int) -> AbsentTrigger:
        check_keys(d, ("absent", "for"), "an absent trigger", line)
        if "for" not in d:
            raise Invalid(line, "an absent trigger needs 'for: DURATION'")
        seconds = parse_duration(d["for"], line_of(d, "for", line))
        if seconds <= 0:
            raise Invalid(line_of(d, "for", line), "an absent trigger's 'for' must be > 0")
        return cls(topic(d["absent"], "absent topic", line_of(d, "absent", line)), seconds)

    def describe(self) -> str:
        return f"no message on {self.topic} for {self.seconds:g}s"

    def start(self, now: float) -> _State:
        return _State(now)

    def on_message(self, state: _State, names: dict, now: float, evaluate: Evaluate) -> None:
        state.seen, state.fired = now, False  # a message re-arms it
        return None

    def due(self, state: _State, clock: Clock) -> float | None:
        return None if state.fired else state.seen + self.seconds

    def on_time(self, state: _State, clock: Clock) -> tuple[dict, str] | None:
        if state.fired or clock.now - state.seen + EPS < self.seconds:
            return None
        state.fired = True
        return ({"kind": "absent", "topic": self.topic, "seconds": clock.now - state.seen},
                self.describe())
