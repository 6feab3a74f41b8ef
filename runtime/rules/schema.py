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
types, bad durations and every expression (compiled by the sandbox). Each trigger kind parses
its own options (iotrt.rules.triggers); the checks they share are in iotrt.rules.parsing. All
mistakes are collected and raised together as one RulesError.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from iotrt.rules.expressions import Expression
from iotrt.rules.parsing import Invalid, check_keys, expression, line_of, mapping, name, parse_duration
from iotrt.rules.source import LocatedDict, Problem
from iotrt.rules.triggers import TriggerKind, parse_trigger

MODES = ("single", "restart", "queued", "parallel")


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
    """`for:` the condition must hold this long, or for this many consecutive evaluations, or
    (with `within`) be true at this many triggers within a sliding window of seconds."""

    seconds: float | None = None
    count: int | None = None
    within: float | None = None


@dataclass(frozen=True)
class RuleDef:
    id: str
    triggers: tuple[TriggerKind, ...]
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
    # Where each trigger and each action step is written (for checks against the graph).
    trigger_lines: tuple[int, ...] = field(default=(), compare=False)
    condition_lines: tuple[int, ...] = field(default=(), compare=False)
    step_lines: tuple[int, ...] = field(default=(), compare=False)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class RuleSet:
    rules: list[RuleDef]
    state: dict[str, Any]
    python_files: list[str]


# --- parsing --------------------------------------------------------------------------------

_TEMPLATE = re.compile(r"\$\{(.*?)\}")


def parse_template(value: Any, line: int) -> Any:
    """Data whose strings may contain ${expr}; "${expr}" alone keeps the value's type."""
    if isinstance(value, str):
        parts: list[str | Expression] = []
        pos = 0
        for m in _TEMPLATE.finditer(value):
            if m.start() > pos:
                parts.append(value[pos:m.start()])
            parts.append(expression(m.group(1), "template", line))
            pos = m.end()
        if not parts:
            return value
        if pos < len(value):
            parts.append(value[pos:])
        if len(parts) == 1 and isinstance(parts[0], Expression):
            return parts[0]
        return Interpolated(tuple(parts))
    if isinstance(value, Mapping):
        return {k: parse_template(v, line_of(value, k, line)) for k, v in value.items()}
    if isinstance(value, list):
        return [parse_template(v, line_of(value, i, line)) for i, v in enumerate(value)]
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
    d = mapping(raw, "an action", line)
    line = getattr(d, "line", line)
    kinds = [k for k in _STEP_KEYS if k in d]
    if len(kinds) != 1:
        raise Invalid(line, f"an action needs exactly one of: {', '.join(_STEP_KEYS)}")
    kind = kinds[0]
    check_keys(d, _STEP_KEYS[kind], f"a {kind} action", line)
    at = line_of(d, kind, line)
    if kind == "command":
        args = d.get("args", {})
        mapping(args, "command args", line_of(d, "args", line))
        return CommandStep(name(d["command"], "command output", at),
                           parse_template(args, line_of(d, "args", line)))
    if kind == "notify":
        if "message" not in d:
            raise Invalid(line, "a notify action needs 'message'")
        data = dict(mapping(d.get("data", {}), "notify data", line_of(d, "data", line)))
        data["message"] = d["message"]
        return CommandStep(name(d["notify"], "notify output", at),
                           parse_template(data, line_of(d, "message", line)), label="notify")
    if kind == "publish":
        return PublishStep(name(d["publish"], "publish output", at),
                           parse_template(d.get("data", {}), line_of(d, "data", line)))
    if kind == "delay":
        return DelayStep(parse_duration(d["delay"], at))
    if kind == "set":
        values = mapping(d["set"], "set", at)
        return SetStep(tuple(
            (name(k, "variable", line_of(values, k, at)), parse_template(v, line_of(values, k, at)))
            for k, v in values.items()))
    if kind == "condition":
        return ConditionStep(expression(d["condition"], "condition", at))
    return LogStep(parse_template(d["log"], at))


_RULE_KEYS = ("id", "description", "trigger", "condition", "for", "cooldown", "mode", "max",
              "edge", "quiet", "actions")


def parse_hold(raw: Any, line: int) -> Hold:
    if isinstance(raw, Mapping):
        check_keys(raw, ("count", "within", "seconds"), "for", line)
        if ("count" in raw) == ("seconds" in raw) or "within" in raw and "count" not in raw:
            raise Invalid(line, "for: give {count: N}, {count: N, within: DURATION} or a duration")
        if "count" in raw:
            n = raw["count"]
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise Invalid(line, f"for: count must be an integer >= 1, got {n!r}")
            within = None
            if "within" in raw:
                within = parse_duration(raw["within"], line_of(raw, "within", line))
                if within <= 0:
                    raise Invalid(line_of(raw, "within", line), "for: within must be > 0")
            return Hold(count=n, within=within)
        return Hold(seconds=parse_duration(raw["seconds"], line))
    return Hold(seconds=parse_duration(raw, line))


def as_list(raw: Any) -> list:
    return list(raw) if isinstance(raw, list) else [raw]


def parse_rule(d: Any, line: int, file: str, body: Callable | None = None) -> RuleDef:
    """One rule from a mapping. Python rules pass their function as `body` instead of actions."""
    d = mapping(d, "a rule", line)
    line = getattr(d, "line", line)
    check_keys(d, _RULE_KEYS, "a rule", line)
    rule_id = name(d.get("id"), "rule id", line_of(d, "id", line))
    if "trigger" not in d:
        raise Invalid(line, f"rule '{rule_id}' needs a 'trigger'")
    raw_triggers = as_list(d["trigger"])
    tline = line_of(d, "trigger", line)
    trigger_lines = tuple(line_of(d["trigger"], i, tline) for i in range(len(raw_triggers)))
    triggers = tuple(parse_trigger(t, at) for t, at in zip(raw_triggers, trigger_lines))
    conditions: list[Expression | Callable] = []
    cline = line_of(d, "condition", line)
    condition_lines = tuple(line_of(d["condition"], i, cline)
                            for i in range(len(as_list(d.get("condition", [])))))
    for c, at in zip(as_list(d.get("condition", [])), condition_lines):
        conditions.append(c if callable(c) else expression(c, "condition", at))
    hold = parse_hold(d["for"], line_of(d, "for", line)) if "for" in d else None
    cooldown = parse_duration(d.get("cooldown", 0), line_of(d, "cooldown", line))
    mode = d.get("mode", "single")
    if mode not in MODES:
        raise Invalid(line_of(d, "mode", line), f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    limit = d.get("max", 10)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise Invalid(line_of(d, "max", line), f"max must be an integer >= 1, got {limit!r}")
    edge = d.get("edge", True)
    if not isinstance(edge, bool):
        raise Invalid(line_of(d, "edge", line), f"edge must be true or false, got {edge!r}")
    quiet = d.get("quiet", False)
    if not isinstance(quiet, bool):
        raise Invalid(line_of(d, "quiet", line), f"quiet must be true or false, got {quiet!r}")
    steps: tuple[Step, ...] = ()
    step_lines: tuple[int, ...] = ()
    if body is None:
        if "actions" not in d:
            raise Invalid(line, f"rule '{rule_id}' needs 'actions'")
        raw_steps = d["actions"]
        aline = line_of(d, "actions", line)
        if not isinstance(raw_steps, list) or not raw_steps:
            raise Invalid(aline, "actions must be a non-empty list")
        step_lines = tuple(line_of(raw_steps, i, aline) for i in range(len(raw_steps)))
        steps = tuple(parse_step(s, at) for s, at in zip(raw_steps, step_lines))
    description = d.get("description", "")
    return RuleDef(
        id=rule_id, triggers=triggers, conditions=tuple(conditions), steps=steps, func=body,
        hold=hold, cooldown=cooldown, mode=mode, max=limit, edge=edge, quiet=quiet,
        description=str(description), file=file, line=line,
        # A Python rule's code cannot be compared: a reloaded one always starts afresh.
        fingerprint=repr(dict(d)) if body is None else f"python:{id(body)}",
        trigger_lines=trigger_lines, condition_lines=condition_lines, step_lines=step_lines,
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
        check_keys(doc, ("rules", "state", "python"), "the rules file", 1)
    except Invalid as exc:
        problems.append(Problem(file, exc.line, str(exc)))
    state = doc.get("state", {})
    if not isinstance(state, Mapping):
        problems.append(Problem(file, line_of(doc, "state", 1), "state must be a mapping"))
        state = {}
    python_files = as_list(doc.get("python", []))
    for i, p in enumerate(python_files):
        if not isinstance(p, str) or not p.endswith(".py"):
            problems.append(Problem(file, line_of(doc.get("python"), i, line_of(doc, "python", 1)),
                                    f"python: expected a path to a .py file, got {p!r}"))
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, list):
        problems.append(Problem(file, line_of(doc, "rules", 1), "'rules' must be a list of rules"))
        raw_rules = []
    rules: list[RuleDef] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_rules):
        line = line_of(raw_rules, i, 1)
        try:
            rule = parse_rule(raw, line, file)
        except Invalid as exc:
            problems.append(Problem(file, exc.line, str(exc)))
            continue
        if rule.id in seen:
            problems.append(Problem(file, rule.line,
                                    f"duplicate rule id '{rule.id}' (first at line {seen[rule.id]})"))
            continue
        seen[rule.id] = rule.line
        rules.append(rule)
    return RuleSet(rules, dict(state), [p for p in python_files if isinstance(p, str)]), problems
