"""`trigger: {at: "07:30"}`: once a day, when the local wall clock passes a time of day."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from iotrt.rules.parsing import check_keys, line_of, time_of_day
from iotrt.rules.triggers.base import Clock, TriggerKind


def next_time_of_day(after: dt.datetime, at: dt.time) -> dt.datetime:
    """The first datetime strictly after `after` whose time of day is `at`."""
    candidate = dt.datetime.combine(after.date(), at)
    if candidate <= after:
        candidate += dt.timedelta(days=1)
    return candidate


@dataclass(frozen=True)
class TimeTrigger(TriggerKind):
    KEY = "at"
    timed = True
    topic = None  # the clock alone

    at: dt.time

    @classmethod
    def parse(cls, d: Mapping, line: int) -> TimeTrigger:
        check_keys(d, ("at",), "a time trigger", line)
        return cls(time_of_day(d["at"], line_of(d, "at", line)))

    def describe(self) -> str:
        return f"at {self.at.isoformat()}"

    def due(self, state: None, clock: Clock) -> float | None:
        if clock.prev_wall is None:  # the wall clock is read at the first call
            return None
        return clock.now + (next_time_of_day(clock.wall, self.at) - clock.wall).total_seconds()

    def on_time(self, state: None, clock: Clock) -> tuple[dict, str] | None:
        if clock.prev_wall is None or next_time_of_day(clock.prev_wall, self.at) > clock.wall:
            return None
        return {"kind": "time", "at": str(self.at)}, self.describe()
