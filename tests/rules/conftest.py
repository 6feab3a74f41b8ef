"""Helpers for the rule tests: build an engine from YAML text and drive it with a fake clock."""

from __future__ import annotations

import datetime as dt
import textwrap

import pytest

from iotrt.rules import TICK, Engine, Fired, Message, SendCommand, loads_rules


class Driver:
    """An engine plus a fake clock: monotonic seconds and a wall clock that move together."""

    def __init__(self, yaml_text: str, wall: dt.datetime = dt.datetime(2026, 1, 5, 12, 0)) -> None:
        self.engine = Engine(loads_rules(textwrap.dedent(yaml_text), "test.rules.yaml"))
        self.t = 0.0
        self.wall0 = wall
        self.log: list[tuple[float, object]] = []

    def at(self, t: float, topic: str | None = None, data=None) -> list:
        """Move the clock to t (ticking on the way through every due time), then deliver."""
        while (due := self.engine.next_due()) is not None and due < t:
            self._handle(TICK, due)
        return self._handle(Message(topic, data) if topic else TICK, t)

    def tick(self, t: float) -> list:
        """Move the clock to t in one step, as a late or sparse caller would."""
        return self._handle(TICK, t)

    def _handle(self, event, t: float) -> list:
        assert t >= self.t, "the fake clock never goes back"
        self.t = t
        out = self.engine.handle(event, t, self.wall0 + dt.timedelta(seconds=t))
        self.log.extend((t, a) for a in out)
        return out

    def fired(self, rule: str | None = None) -> list[float]:
        return [t for t, a in self.log if isinstance(a, Fired) and (rule is None or a.rule == rule)]

    def commands(self) -> list[tuple[float, object]]:
        return [(t, a.data) for t, a in self.log if isinstance(a, SendCommand)]


@pytest.fixture(scope="session")
def driver():
    return Driver
