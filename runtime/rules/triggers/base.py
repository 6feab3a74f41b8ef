"""What every rule trigger kind provides; the engine knows triggers only through this.

A trigger kind is a frozen dataclass deriving from `TriggerKind`, in its own module, listed in
`iotrt.rules.triggers.REGISTRY` under the YAML key that selects it. It holds the trigger's
parsed options (its schema is `parse`); its mutable state per rule lives in the object that
`start` returns, which the engine keeps with the rule (and keeps across a reload that leaves
the rule unchanged).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from iotrt import errors
from iotrt.rules.expressions import Expression

# Times are float seconds: 8.1 - 4.1 is 3.9999999999999996. Comparisons of elapsed time
# against a duration allow this much, so "for 4s" means 4 s even after rounding.
EPS = 1e-9

# evaluate(expr, names): an expression evaluated for the rule, its budget overruns counted.
Evaluate = Callable[[Expression, dict], Any]


class TriggerError(errors.ConfigError):
    """A trigger could not decide on this message (its value expression failed): reported as
    the rule's error, the other rules carry on."""


@dataclass(frozen=True)
class Clock:
    """The engine's clocks at one call: monotonic seconds, the local wall clock, and the wall
    clock at the previous call (None at the first)."""

    now: float
    wall: dt.datetime
    prev_wall: dt.datetime | None


class TriggerKind:
    """Base of the trigger kinds. Subclasses set KEY and override what they use."""

    KEY: ClassVar[str]  # the YAML key that selects this kind: `trigger: {KEY: ...}`
    # Messages on this input (or topic) are given to the trigger; None: the clock alone. (Each
    # kind sets it: a field, or `topic = None`; a default here would become the fields' default.)
    topic: str | None
    # Every message on `topic` is a hit with the message's own variables (no on_message call).
    every_message: ClassVar[bool] = False
    # The trigger fires on time too: the engine asks it `due` and calls `on_time`.
    timed: ClassVar[bool] = False

    @classmethod
    def parse(cls, d: Mapping, line: int) -> TriggerKind:
        """The trigger from its YAML mapping (raise parsing.Invalid with a line)."""
        raise NotImplementedError

    def describe(self) -> str:
        """What fired, for the journal: 'message faces', 'every 5s'..."""
        raise NotImplementedError

    def start(self, now: float) -> Any:
        """The trigger's state for one rule, when the engine starts (monotonic `now`)."""
        return None

    def on_message(self, state: Any, names: dict, now: float, evaluate: Evaluate) -> str | None:
        """A message on `topic`: the description of the hit, or None if it is not one.
        `names` are the expression variables for this message (its `trigger` dict is this
        trigger's own: add to it what the rule's conditions and actions may read)."""
        return None

    def due(self, state: Any, clock: Clock) -> float | None:
        """The next monotonic time at which on_time would fire (None: nothing pending)."""
        return None

    def on_time(self, state: Any, clock: Clock) -> tuple[dict, str] | None:
        """Time passed: (the `trigger` variables, the description) if it fires now."""
        return None
