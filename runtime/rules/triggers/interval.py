"""`trigger: {interval: 5s}`: every N seconds (monotonic) from the engine's start."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from iotrt.rules.parsing import Invalid, check_keys, line_of, parse_duration
from iotrt.rules.triggers.base import EPS, Clock, TriggerKind


class _State:
    __slots__ = ("next_at",)

    def __init__(self, next_at: float) -> None:
        self.next_at = next_at


@dataclass(frozen=True)
class IntervalTrigger(TriggerKind):
    KEY = "interval"
    timed = True
    topic = None  # the clock alone

    seconds: float

    @classmethod
    def parse(cls, d: Mapping, line: int) -> IntervalTrigger:
        check_keys(d, ("interval",), "an interval trigger", line)
        at = line_of(d, "interval", line)
        seconds = parse_duration(d["interval"], at)
        if seconds <= 0:
            raise Invalid(at, "an interval must be > 0")
        return cls(seconds)

    def describe(self) -> str:
        return f"every {self.seconds:g}s"

    def start(self, now: float) -> _State:
        return _State(now + self.seconds)

    def due(self, state: _State, clock: Clock) -> float:
        return state.next_at

    def on_time(self, state: _State, clock: Clock) -> tuple[dict, str] | None:
        due = state.next_at
        if clock.now + EPS < due:
            return None
        # Catch up to the next slot after now: missed slots fire once, not N times.
        missed = max(0, int((clock.now - due) // self.seconds))
        state.next_at = due + (missed + 1) * self.seconds
        return {"kind": "interval"}, self.describe()
