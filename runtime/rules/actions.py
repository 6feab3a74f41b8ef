"""What goes into the rule engine (messages, ticks) and what comes out (actions, notes).

The engine returns `SendCommand`, `Publish` and `Log` actions for the caller to carry out, and
`Fired`, `Skipped`, `StateSet`, `RuleError` and `RuleDisabled` notes to journal or log. A Python
rule sees a `RuleContext`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iotrt.rules.engine import Engine
    from iotrt.rules.schema import RuleDef


# --- what goes in -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Message:
    """A message on an input. `aliases` are other names for the same stream (its bus topic)."""

    topic: str
    data: Any
    aliases: tuple[str, ...] = ()


class Tick:
    """Only time passes."""

    def __repr__(self) -> str:
        return "TICK"


TICK = Tick()


# --- what comes out ---------------------------------------------------------------------------

@dataclass(slots=True, frozen=True)  # frozen: the engine hands out one per trigger
class Fired:
    rule: str
    trigger: str
    queued: bool = False


@dataclass(slots=True)
class Skipped:
    rule: str
    reason: str


@dataclass(slots=True)
class SendCommand:
    """A `command:` or `notify:` step (or `ctx.command`/`ctx.notify`): send `data` as an
    actuator command on the command output `output` (the rules node does, acknowledged)."""

    rule: str
    output: str
    data: Any
    label: str = "command"  # "notify" for notify actions


@dataclass(slots=True)
class Publish:
    rule: str
    output: str
    data: Any


@dataclass(slots=True)
class Log:
    rule: str
    text: str


@dataclass(slots=True)
class RuleError:
    rule: str
    where: str
    message: str


@dataclass(slots=True)
class StateSet:
    """A `set:` action changed rule variables (shown by `iotrt rules test --all`)."""

    rule: str
    values: dict[str, Any]


@dataclass(slots=True)
class RuleDisabled:
    """The rule overran its expression budget too often; it stays off until the next reload."""

    rule: str
    where: str
    reason: str


Action = Fired | Skipped | SendCommand | Publish | Log | StateSet | RuleError | RuleDisabled


# --- the context a Python rule sees -----------------------------------------------------------

class RuleContext:
    """What a Python rule (or a Python condition) gets: the message, state, and action methods.

    `msg` is the message data (a dict for most messages), `topic` its input name, `trigger` a
    dict describing what fired, `state` the rules' shared variables (writable), `last` the
    latest data per topic, `now` monotonic seconds and `wall` the local datetime.
    """

    def __init__(self, engine: Engine, rule: RuleDef, names: dict[str, Any]) -> None:
        self.rule = rule.id
        self.msg = names["msg"]
        self.topic = names["topic"]
        self.trigger = names["trigger"]
        self.state = engine.state
        self.last = engine.last
        self.now = engine.now
        self.wall = engine.wall
        self.actions: list[Action] = []

    def command(self, output: str, data: Any = None) -> None:
        """Send `data` to the actuator wired to command output `output` (acknowledged)."""
        self.actions.append(SendCommand(self.rule, output, {} if data is None else data))

    def notify(self, output: str, message: str, **data: Any) -> None:
        self.actions.append(SendCommand(self.rule, output, {**data, "message": message}, "notify"))

    def publish(self, output: str, data: Any = None) -> None:
        self.actions.append(Publish(self.rule, output, {} if data is None else data))

    def log(self, text: str) -> None:
        self.actions.append(Log(self.rule, str(text)))
