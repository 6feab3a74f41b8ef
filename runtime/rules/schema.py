"""The rules schema: YAML (or Python-given) dicts -> small frozen dataclasses, with file:line errors.

A rules file:

    state: {armed: true}              # optional initial rule variables
    python: [more_rules.py]           # optional Python rule files, relative to this file
    rules:
      - id: unlock_for_owner
        trigger: {message: faces}
        condition: any(f.name != "unknown" and f.score > 0.8 for f in msg.faces)
        for: {count: 2}
        cooldown: 4s
        mode: single
        actions:
          - command: lock
            args: {action: unlock, duration_s: 5}

Every check happens here, once, at load: unknown keys (with a close-match suggestion), wrong
types, bad durations and every expression (compiled by the sandbox). All mistakes are collected
and raised together as one RulesError.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from iotrt.rules.expressions import Expression, ExpressionError, compile_expression
from iotrt.rules.source import LocatedDict, LocatedList, Problem
from iotrt.yamlcheck import suggest

# Variables an expression can use (documented in docs/rules.md).
NAMES = ("msg", "topic", "trigger", "state", "last", "hour", "minute", "weekday")

MODES = ("single", "restart", "queued", "parallel")


# --- triggers -------------------------------------------------------------------------------

@dataclass(frozen=True)
class MessageTrigger:
    topic: str


@dataclass(frozen=True)
class ThresholdTrigger:
    """Fires when `value` enters the range (above/below) from outside it: on the edge."""

    topic: str
    value: Expression
    above: float | None
    below: float | None

    def inside(self, x: float) -> bool:
        return (self.above is None or x > self.above) and (self.below is None or x < self.below)


@dataclass(frozen=True)
class AbsentTrigger:
    """Fires once when `topic` has been silent for `seconds`; the next message re-arms it."""

    topic: str
    seconds: float


@dataclass(frozen=True)
class IntervalTrigger:
    seconds: float


@dataclass(frozen=True)
class TimeTrigger:
    """Fires when the wall clock passes `at` (local time), once a day."""

    at: dt.time


Trigger = Union[MessageTrigger, ThresholdTrigger, AbsentTrigger, IntervalTrigger, TimeTrigger]


# --- actions --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interpolated:
    """A string with ${expr} parts: literal strings and expressions, joined at render time."""

    parts: tuple[str | Expression, ...]


@dataclass(frozen=True)
class CommandStep:
    output: str
    args: Any  # template: data whose strings may hold ${expr}
    label: str = "command"  # "command" or "notify" (sugar for a command to a notifier)


@dataclass(frozen=True)
class PublishStep:
    output: str
    data: Any


@dataclass(frozen=True)
class DelayStep:
    seconds: float


@dataclass(frozen=True)
class SetStep:
    values: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class ConditionStep:
    expr: Expression


@dataclass(frozen=True)
class LogStep:
    message: Any


Step = Union[CommandStep, PublishStep, DelayStep, SetStep, ConditionStep, LogStep]


# --- rules ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hold:
    """`for:` the condition must hold this long, or for this many consecutive evaluations."""

    seconds: float | None = None
    count: int | None = None


@dataclass(frozen=True)
class RuleDef:
    id: str
    triggers: tuple[Trigger, ...]
    conditions: tuple[Expression | Callable[..., Any], ...] = ()
    steps: tuple[Step, ...] = ()
    func: Callable[..., Any] | None = None  # a Python rule's body (instead of steps)
    hold: Hold | None = None
    cooldown: float = 0.0
    mode: str = "single"
    max: int = 10
    edge: bool = True
    quiet: bool = False  # successful firings and commands: DEBUG log, not journaled
    description: str = ""
    file: str = "<rules>"
    line: int = 0
    # Compared on reload: a rule whose definition did not change keeps its runtime state.
    fingerprint: str = field(default="", compare=False)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class RuleSet:
    rules: list[RuleDef]
    state: dict[str, Any]
    python_files: list[str]


# --- parsing --------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|sec|m|min|h)?\s*$")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
_TOPIC = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")  # an input name or a bus topic
_TEMPLATE = re.compile(r"\$\{(.*?)\}")


class _Invalid(Exception):
    """One problem at one line; collected into RulesError by the caller."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def parse_duration(value: Any, line: int = 0) -> float:
    """'5s', '250ms', '2min', '1h' or a number of seconds -> seconds (float, >= 0)."""
    if isinstance(value, bool):
        raise _Invalid(line, f"expected a duration like '5s', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value)) if isinstance(value, str) else None
        if not m:
            raise _Invalid(line, f"expected a duration like '5s', '250ms' or '2min', got {value!r}")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise _Invalid(line, f"a duration must be a finite number >= 0, got {value!r}")
    return seconds


def _line(obj: Any, key: Any, default: int) -> int:
    if isinstance(obj, (LocatedDict, LocatedList)):
        return obj.line_of(key)
    return default


def _check_keys(d: Mapping, allowed: tuple[str, ...], what: str, line: int) -> None:
    for key in d:
        if key not in allowed:
            hint = suggest(key, allowed)
            raise _Invalid(_line(d, key, line),
                           f"unknown key '{key}' in {what}{hint}; allowed: {', '.join(allowed)}")


def _mapping(value: Any, what: str, line: int) -> Mapping:
    if not isinstance(value, Mapping):
        raise _Invalid(line, f"{what} must be a mapping, got {type(value).__name__}")
    return value


def _name(value: Any, what: str, line: int) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise _Invalid(line, f"{what} must be a name (letters, digits, _ . -), got {value!r}")
    return value


def _topic(value: Any, what: str, line: int) -> str:
    if not isinstance(value, str) or not _TOPIC.match(value):
        raise _Invalid(line, f"{what} must be an input name or a topic like node/output, got {value!r}")
    return value


def _expr(value: Any, what: str, line: int) -> Expression:
    try:
        return compile_expression(value, NAMES)
    except ExpressionError as exc:
        raise _Invalid(line, f"{what}: {exc} in {value!r}") from None


def _number(value: Any, what: str, line: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(line, f"{what} must be a number, got {value!r}")
    return float(value)


def _time_of_day(value: Any, line: int) -> dt.time:
    try:
        return dt.time.fromisoformat(str(value))
    except ValueError:
        raise _Invalid(line, f"expected a time of day like \"07:30\" or \"22:15:00\", got {value!r}") from None


_TRIGGER_KINDS = ("message", "threshold", "absent", "interval", "at")


def parse_trigger(raw: Any, line: int) -> Trigger:
    if isinstance(raw, str):  # shorthand: a topic name is a message trigger
        return MessageTrigger(_topic(raw, "trigger topic", line))
    d = _mapping(raw, "a trigger", line)
    line = getattr(d, "line", line)
    kinds = [k for k in _TRIGGER_KINDS if k in d]
    if len(kinds) != 1:
        raise _Invalid(line, f"a trigger needs exactly one of: {', '.join(_TRIGGER_KINDS)}")
    kind = kinds[0]
    at = _line(d, kind, line)
    if kind == "message":
        _check_keys(d, ("message",), "a message trigger", line)
        return MessageTrigger(_topic(d["message"], "message topic", at))
    if kind == "threshold":
        _check_keys(d, ("threshold", "value", "above", "below"), "a threshold trigger", line)
        if "above" not in d and "below" not in d:
            raise _Invalid(line, "a threshold trigger needs 'above', 'below' or both")
        above = _number(d["above"], "above", _line(d, "above", line)) if "above" in d else None
        below = _number(d["below"], "below", _line(d, "below", line)) if "below" in d else None
        value = _expr(d.get("value", "msg"), "threshold value", _line(d, "value", line))
        return ThresholdTrigger(_topic(d["threshold"], "threshold topic", at), value, above, below)
    if kind == "absent":
        _check_keys(d, ("absent", "for"), "an absent trigger", line)
        if "for" not in d:
            raise _Invalid(line, "an absent trigger needs 'for: DURATION'")
        seconds = parse_duration(d["for"], _line(d, "for", line))
        if seconds <= 0:
            raise _Invalid(_line(d, "for", line), "an absent trigger's 'for' must be > 0")
        return AbsentTrigger(_topic(d["absent"], "absent topic", at), seconds)
    if kind == "interval":
        _check_keys(d, ("interval",), "an interval trigger", line)
        seconds = parse_duration(d["interval"], at)
        if seconds <= 0:
            raise _Invalid(at, "an interval must be > 0")
        return IntervalTrigger(seconds)
    _check_keys(d, ("at",), "a time trigger", line)
    return TimeTrigger(_time_of_day(d["at"], at))


def parse_template(value: Any, line: int) -> Any:
    """Data whose strings may contain ${expr}; "${expr}" alone keeps the value's type."""
    if isinstance(value, str):
        parts: list[str | Expression] = []
        pos = 0
        for m in _TEMPLATE.finditer(value):
            if m.start() > pos:
                parts.append(value[pos:m.start()])
            parts.append(_expr(m.group(1), "template", line))
            pos = m.end()
        if not parts:
            return value
        if pos < len(value):
            parts.append(value[pos:])
        if len(parts) == 1 and isinstance(parts[0], Expression):
            return parts[0]
        return Interpolated(tuple(parts))
    if isinstance(value, Mapping):
        return {k: parse_template(v, _line(value, k, line)) for k, v in value.items()}
    if isinstance(value, list):
        return [parse_template(v, _line(value, i, line)) for i, v in enumerate(value)]
    return value


_STEP_KEYS = {
    "command": ("command", "args"),
    "notify": ("notify", "message", "data"),
    "publish": ("publish", "data"),
    "delay": ("delay",),
    "set": ("set",),
    "condition": ("condition",),
    "log": ("log",),
}


def parse_step(raw: Any, line: int) -> Step:
    d = _mapping(raw, "an action", line)
    line = getattr(d, "line", line)
    kinds = [k for k in _STEP_KEYS if k in d]
    if len(kinds) != 1:
        raise _Invalid(line, f"an action needs exactly one of: {', '.join(_STEP_KEYS)}")
    kind = kinds[0]
    _check_keys(d, _STEP_KEYS[kind], f"a {kind} action", line)
    at = _line(d, kind, line)
    if kind == "command":
        args = d.get("args", {})
        _mapping(args, "command args", _line(d, "args", line))
        return CommandStep(_name(d["command"], "command output", at),
                           parse_template(args, _line(d, "args", line)))
    if kind == "notify":
        if "message" not in d:
            raise _Invalid(line, "a notify action needs 'message'")
        data = dict(_mapping(d.get("data", {}), "notify data", _line(d, "data", line)))
        data["message"] = d["message"]
        return CommandStep(_name(d["notify"], "notify output", at),
                           parse_template(data, _line(d, "message", line)), label="notify")
    if kind == "publish":
        return PublishStep(_name(d["publish"], "publish output", at),
                           parse_template(d.get("data", {}), _line(d, "data", line)))
    if kind == "delay":
        return DelayStep(parse_duration(d["delay"], at))
    if kind == "set":
        values = _mapping(d["set"], "set", at)
        return SetStep(tuple(
            (_name(k, "variable", _line(values, k, at)), parse_template(v, _line(values, k, at)))
            for k, v in values.items()))
    if kind == "condition":
        return ConditionStep(_expr(d["condition"], "condition", at))
    return LogStep(parse_template(d["log"], at))


_RULE_KEYS = ("id", "description", "trigger", "condition", "for", "cooldown", "mode", "max",
              "edge", "quiet", "actions")


def parse_hold(raw: Any, line: int) -> Hold:
    if isinstance(raw, Mapping):
        _check_keys(raw, ("count", "seconds"), "for", line)
        if len(raw) != 1:
            raise _Invalid(line, "for: give either {count: N} or a duration")
        if "count" in raw:
            n = raw["count"]
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise _Invalid(line, f"for: count must be an integer >= 1, got {n!r}")
            return Hold(count=n)
        return Hold(seconds=parse_duration(raw["seconds"], line))
    return Hold(seconds=parse_duration(raw, line))


def as_list(raw: Any) -> list:
    return list(raw) if isinstance(raw, list) else [raw]


def parse_rule(d: Any, line: int, file: str, body: Callable | None = None) -> RuleDef:
    """One rule from a mapping. Python rules pass their function as `body` instead of actions."""
    d = _mapping(d, "a rule", line)
    line = getattr(d, "line", line)
    _check_keys(d, _RULE_KEYS, "a rule", line)
    rule_id = _name(d.get("id"), "rule id", _line(d, "id", line))
    if "trigger" not in d:
        raise _Invalid(line, f"rule '{rule_id}' needs a 'trigger'")
    raw_triggers = as_list(d["trigger"])
    tline = _line(d, "trigger", line)
    triggers = tuple(parse_trigger(t, _line(d["trigger"], i, tline))
                     for i, t in enumerate(raw_triggers))
    conditions: list[Expression | Callable] = []
    cline = _line(d, "condition", line)
    for i, c in enumerate(as_list(d.get("condition", []))):
        conditions.append(c if callable(c) else _expr(c, "condition", _line(d["condition"], i, cline)))
    hold = parse_hold(d["for"], _line(d, "for", line)) if "for" in d else None
    cooldown = parse_duration(d.get("cooldown", 0), _line(d, "cooldown", line))
    mode = d.get("mode", "single")
    if mode not in MODES:
        raise _Invalid(_line(d, "mode", line), f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    limit = d.get("max", 10)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise _Invalid(_line(d, "max", line), f"max must be an integer >= 1, got {limit!r}")
    edge = d.get("edge", True)
    if not isinstance(edge, bool):
        raise _Invalid(_line(d, "edge", line), f"edge must be true or false, got {edge!r}")
    quiet = d.get("quiet", False)
    if not isinstance(quiet, bool):
        raise _Invalid(_line(d, "quiet", line), f"quiet must be true or false, got {quiet!r}")
    steps: tuple[Step, ...] = ()
    if body is None:
        if "actions" not in d:
            raise _Invalid(line, f"rule '{rule_id}' needs 'actions'")
        raw_steps = d["actions"]
        aline = _line(d, "actions", line)
        if not isinstance(raw_steps, list) or not raw_steps:
            raise _Invalid(aline, "actions must be a non-empty list")
        steps = tuple(parse_step(s, _line(raw_steps, i, aline)) for i, s in enumerate(raw_steps))
    description = d.get("description", "")
    return RuleDef(
        id=rule_id, triggers=triggers, conditions=tuple(conditions), steps=steps, func=body,
        hold=hold, cooldown=cooldown, mode=mode, max=limit, edge=edge, quiet=quiet,
        description=str(description), file=file, line=line,
        # A Python rule's code cannot be compared: a reloaded one always starts afresh.
        fingerprint=repr(dict(d)) if body is None else f"python:{id(body)}",
    )


def parse_rules_document(doc: Any, file: str) -> tuple[RuleSet, list[Problem]]:
    """The whole YAML document -> RuleSet and the problems found (empty when valid)."""
    problems: list[Problem] = []
    if doc is None:
        return RuleSet([], {}, []), [Problem(file, 1, "the rules file is empty")]
    if isinstance(doc, list):  # a bare list of rules is accepted too
        holder = LocatedDict(rules=doc)
        holder.file, holder.line, holder.key_lines = file, getattr(doc, "line", 1), {}
        doc = holder
    if not isinstance(doc, Mapping):
        return RuleSet([], {}, []), [Problem(file, 1, "a rules file is a mapping with a 'rules' list")]
    try:
        _check_keys(doc, ("rules", "state", "python"), "the rules file", 1)
    except _Invalid as exc:
        problems.append(Problem(file, exc.line, str(exc)))
    state = doc.get("state", {})
    if not isinstance(state, Mapping):
        problems.append(Problem(file, _line(doc, "state", 1), "state must be a mapping"))
        state = {}
    python_files = as_list(doc.get("python", []))
    for i, p in enumerate(python_files):
        if not isinstance(p, str) or not p.endswith(".py"):
            problems.append(Problem(file, _line(doc.get("python"), i, _line(doc, "python", 1)),
                                    f"python: expected a path to a .py file, got {p!r}"))
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, list):
        problems.append(Problem(file, _line(doc, "rules", 1), "'rules' must be a list of rules"))
        raw_rules = []
    rules: list[RuleDef] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_rules):
        line = _line(raw_rules, i, 1)
        try:
            rule = parse_rule(raw, line, file)
        except _Invalid as exc:
            problems.append(Problem(file, exc.line, str(exc)))
            continue
        if rule.id in seen:
            problems.append(Problem(file, rule.line,
                                    f"duplicate rule id '{rule.id}' (first at line {seen[rule.id]})"))
            continue
        seen[rule.id] = rule.line
        rules.append(rule)
    return RuleSet(rules, dict(state), [p for p in python_files if isinstance(p, str)]), problems
