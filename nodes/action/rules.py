"""The rule-engine node: runs a rules file (YAML or Python) against its inputs.

Graph wiring (the rule node's ports come from its rules file, so its SPEC accepts any name):

    - id: rules
      kind: rules
      params: {rules: door.rules.yaml}          # relative to the graph file
      inputs: {faces: identity/faces}           # triggers name the input (or the topic)
    # an actuator's command input is wired to a command output of the rule node, named as the
    # rules' `command:`/`notify:` actions name it (see docs/graph.md for the YAML shape)

Messages and timer ticks go through the pure `Engine` in this node's event loop. Publishes
happen inline; commands go to one worker thread per command output, so waiting for a slow
actuator's acknowledgement never holds up the other rules (nor the other actuators). Every
decision is journaled: rule_fired, command_sent, command_acked, command_failed, rule_error,
rule_disabled, rules_reloaded, rules_reload_failed (a rule with `quiet: true` journals only its
failures).
SIGHUP reloads the rules; a bad file is reported and the running rules stay.
"""

from __future__ import annotations

import ast
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from iotrt.node import Node, NodeError, NodeSpec, Param
from iotrt.rules import (
    TICK,
    CommandStep,
    Engine,
    Expression,
    Fired,
    Interpolated,
    Log,
    Message,
    Problem,
    Publish,
    PublishStep,
    RuleDisabled,
    RuleError,
    RulesError,
    SendCommand,
    Skipped,
    StateSet,
    load_rules,
)
from iotrt.yamlcheck import suggest

SPEC = NodeSpec(
    doc="rule engine: triggers, conditions and actions from a rules file (YAML or Python)",
    inputs={"*": "any stream a rule triggers on (by this input name or by its topic)"},
    outputs={"*": "messages the rules' publish actions send"},
    commands_out={"*": "actuators the rules' command and notify actions drive"},
    params=[
        Param("rules", str, doc="rules file (.yaml, or .py for Python rules), relative to the "
                                "graph file"),
        Param("python", list, [], "more Python rule files to load", items=str),
        Param("tick_s", float, 0.05, "resolution of holds, delays, absences, intervals",
              min=0.005, max=5.0),
        Param("command_timeout_s", float, 1.0, "wait this long for an ack before a retry",
              min=0.01, max=60.0),
        Param("command_retries", int, 4, "retries of an unacknowledged command", min=0,
              max=100),
        Param("command_expiry_s", float, 3.0,
              "drop a command still queued after this long, and stop its retries then "
              "(never unlock late)", min=0.1, max=3600.0),
        Param("expr_timeout_ms", float, 50.0, "time budget of one expression evaluation",
              min=1.0, max=10_000.0),
        Param("expr_strikes", int, 3, "budget overruns after which a rule is disabled (until "
                                      "the next reload)", min=1),
        Param("clock", str, "monotonic",
              "rule time: when a message arrives (monotonic), or its capture stamp (capture: "
              "decisions then replay exactly; time advances only with messages)",
              choices=("monotonic", "capture")),
    ],
    # the functions are defined below; a lambda looks them up when the graph calls it
    check_files=lambda params, base_dir, **where: check(params, base_dir, **where),
    reloadable=True,
    rules_param="rules",
    check_wiring=lambda rules, node, graph: check_wiring(rules, node, graph),
)

DECISIONS = "decisions"  # the optional per-message output (see RuleNode.__init__)
_DICT_METHODS = frozenset({"get", "keys", "values", "items"})  # as the sandbox allows them
# A rule that keeps failing is logged and journaled at most this often.
ERROR_REPORT_EVERY_S = 60.0
_STOP = object()


@dataclass
class _Queued:
    action: SendCommand
    queued_at: float


class CommandSender:
    """One worker thread per command output: send, wait for the ack, journal the outcome."""

    def __init__(self, node: Node, timeout_s: float, retries: int, expiry_s: float) -> None:
        self.node, self.timeout_s, self.retries, self.expiry_s = node, timeout_s, retries, expiry_s
        self.quiet: frozenset[str] = frozenset()  # rules whose successes are not journaled
        self._queues: dict[str, queue.Queue] = {}
        self._threads: list[threading.Thread] = []

    def submit(self, action: SendCommand) -> None:
        q = self._queues.get(action.output)
        if q is None:
            q = self._queues[action.output] = queue.Queue()
            t = threading.Thread(target=self._work, args=(action.output, q),
                                 name=f"command-{action.output}", daemon=True)
            self._threads.append(t)
            t.start()
        q.put(_Queued(action, time.monotonic()))

    def _work(self, output: str, q: queue.Queue) -> None:
        while (item := q.get()) is not _STOP:
            try:
                self._send(item)
            except NodeError as exc:
                # the command could not be journaled as it is (data no message can carry, e.g.
                # a set a Python rule built): it is not sent, and the worker goes on
                a = item.action
                self.node.log.warning("rule %s: %s %s not sent: %s", a.rule, a.label, a.output, exc)
                self.node.record("command_failed", rule=a.rule, output=a.output, error=str(exc))

    def _budget(self, remaining_s: float) -> tuple[float, int]:
        """(timeout per attempt, retries) so that every attempt, and the wait for its ack,
        ends before the command expires: a retry must never deliver an unlock late."""
        attempts = min(self.retries + 1, int(remaining_s / self.timeout_s))
        if attempts == 0:  # less than one full timeout left: one shorter attempt
            return remaining_s, 0
        return self.timeout_s, attempts - 1

    def _send(self, item: _Queued) -> None:
        a, node = item.action, self.node
        waited = time.monotonic() - item.queued_at
        if waited > self.expiry_s:
            node.record("command_failed", rule=a.rule, output=a.output, data=a.data,
                        error=f"expired after {waited:.1f}s in the queue (actuator busy or down)")
            return
        quiet = a.rule in self.quiet
        if quiet:
            node.log.debug("rule %s: %s %s %s", a.rule, a.label, a.output, a.data)
        else:
            node.record("command_sent", rule=a.rule, output=a.output, data=a.data, label=a.label)
        timeout_s, retries = self._budget(self.expiry_s - waited)
        try:
            ack = node.command(a.output, a.data, timeout_s=timeout_s, retries=retries)
        except NodeError as exc:
            node.log.warning("rule %s: %s %s failed: %s", a.rule, a.label, a.output, exc)
            node.record("command_failed", rule=a.rule, output=a.output, error=str(exc))
            return
        if ack.get("ok"):
            if not quiet:
                node.record("command_acked", rule=a.rule, output=a.output, ack=ack)
        else:
            node.log.warning("rule %s: %s refused: %s", a.rule, a.output, ack.get("error"))
            node.record("command_failed", rule=a.rule, output=a.output,
                        error=str(ack.get("error", "refused")), ack=ack)

    def close(self, wait_s: float) -> None:
        """Let queued commands finish (up to wait_s in total), then stop the workers."""
        for q in self._queues.values():
            q.put(_STOP)
        deadline = time.monotonic() + wait_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))


class RuleNode:
    """The glue between the Node API and the engine: executes actions, reloads, reports."""

    def __init__(self, node: Node) -> None:
        self.node = node
        p = node.params
        self.rules_path = Path(p["rules"])
        self.python = [Path(x) for x in p["python"]]
        self.engine = Engine(self._load(), timeout_s=p["expr_timeout_ms"] / 1000.0,
                             max_strikes=p["expr_strikes"])
        self.sender = CommandSender(node, p["command_timeout_s"], p["command_retries"],
                                    p["command_expiry_s"])
        self.sender.quiet = self._quiet_rules()
        self.commanding = self._commanding_rules()
        self._last_report: dict[str, float] = {}
        # A graph may declare an output `decisions`: one message per evaluated input, carrying
        # that input's capture stamp and trace, so capture -> decision latency is measurable
        # (bench/e2e.py) and `iotrt echo rules/decisions` shows what each message caused.
        self.decisions = DECISIONS in node.config.outputs
        self.capture_clock = p["clock"] == "capture"
        self._t = 0.0   # clock "capture": the rule time so far (never goes back)
        self._check_wiring()

    def _load(self):
        return load_rules(self.rules_path, python=self.python)

    def _quiet_rules(self) -> frozenset[str]:
        return frozenset(r.id for r in self.engine.rules if r.quiet)

    def _commanding_rules(self) -> frozenset[str]:
        """Rules with a command step: the supervisor's console shows each command they send
        (iotrt.console), so their firing line would say the same thing twice."""
        return frozenset(r.id for r in self.engine.rules
                         if any(isinstance(step, CommandStep) for step in r.steps))

    def _check_wiring(self) -> None:
        """Warn (at start and reload) about rules that name ports the graph did not wire."""
        cfg, log = self.node.config, self.node.log
        if not (cfg.inputs or cfg.commands_out or cfg.outputs):
            return  # standalone or a test harness: nothing is wired by a graph
        names = set(cfg.inputs) | {ep.topic for ep in cfg.inputs.values() if ep.topic}
        for topic in sorted(self.engine.topics() - names):
            log.warning("rules trigger on %r, which is not an input of node %r (inputs: %s)",
                        topic, self.node.id, ", ".join(cfg.inputs) or "none")
        commands, publishes = self.engine.outputs()
        for out in sorted(commands - set(cfg.commands_out)):
            log.warning("rules command %r, but no actuator is wired to that command output", out)
        for out in sorted(publishes - set(cfg.outputs) - {DECISIONS}):
            log.warning("rules publish on %r, but no node subscribes to it", out)

    def _capture_time(self, stamp_ns: int | None) -> float:
        """Clock "capture" (iotrt replay, docs/record.md): the message's capture stamp is the
        time; what fell due before it (holds, delays) runs first, at its own due time."""
        t = max(self._t, (stamp_ns or 0) / 1e9)
        while (due := self.engine.next_due()) is not None and due < t:
            self._t = max(self._t, due)
            for action in self.engine.handle(TICK, self._t):
                self.execute(action)
        self._t = t
        return t

    def handle(self, event: Any) -> None:
        now = time.monotonic()
        if self.capture_clock and event.kind == "timer":
            return   # time stands still between messages
        if event.kind == "input":
            if self.capture_clock:
                now = self._capture_time(event.stamp_ns)
            env = event.envelope
            aliases = (env.topic,) if env is not None and env.topic else ()
            actions = self.engine.handle(Message(event.name, event.data, aliases), now)
            for action in actions:
                self.execute(action)
            if self.decisions:
                self.node.publish(DECISIONS, {
                    "input": event.name, "actions": len(actions),
                    "fired": [a.rule for a in actions if isinstance(a, Fired)]})
            return
        elif event.kind == "timer":
            actions = self.engine.handle(TICK, now)
        elif event.kind == "reload":
            self.reload()
            return
        else:
            return
        for action in actions:
            self.execute(action)

    def execute(self, action: Any) -> None:
        node = self.node
        match action:
            case Fired(rule, trigger, queued):
                # A quiet rule (e.g. one feeding a motor's dead-man every 200 ms) would flood
                # the log and the journal; its failures are still reported in full.
                quiet = rule in self.sender.quiet
                level = logging.DEBUG if quiet or rule in self.commanding else logging.INFO
                node.log.log(level, "rule %s fired (%s)%s", rule, trigger,
                             " - queued" if queued else "")
                if not quiet:
                    node.record("rule_fired", rule=rule, trigger=trigger, queued=queued)
            case SendCommand():
                self.sender.submit(action)
            case Publish(rule, output, data):
                try:
                    node.publish(output, data)
                except NodeError as exc:
                    self.report(rule, f"publish on {output!r} failed: {exc}")
            case Log(rule, text):
                node.log.info("rule %s: %s", rule, text)
            case Skipped(rule, reason):
                node.log.debug("rule %s skipped: %s", rule, reason)
            case StateSet(rule, values):
                node.log.debug("rule %s set %s", rule, values)
            case RuleError(rule, where, message):
                self.report(rule, f"{message} (rule at {where})")
            case RuleDisabled(rule, where, reason):
                node.log.error("rule %s (at %s) disabled: %s", rule, where, reason)
                node.record("rule_disabled", rule=rule, where=where, reason=reason)

    def report(self, rule: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last_report.get(rule, -ERROR_REPORT_EVERY_S) < ERROR_REPORT_EVERY_S:
            return
        self._last_report[rule] = now
        self.node.log.warning("rule %s: %s", rule, message)
        self.node.record("rule_error", rule=rule, error=message)

    def reload(self) -> None:
        try:
            ruleset = self._load()
        except RulesError as exc:
            self.node.log.error("reload of %s failed; the running rules stay:\n  %s",
                                self.rules_path, "\n  ".join(map(str, exc.problems)))
            self.node.record("rules_reload_failed", file=str(self.rules_path),
                             problems=[str(p) for p in exc.problems])
            return
        except Exception as exc:   # logged and journaled, not swallowed: see below
            # Whatever else loading raises (a bug, MemoryError), a reload must not kill the
            # node: the supervisor would restart it on the same file, over and over, with no
            # rules running at all. The rules that run now are still valid.
            self.node.log.exception("reload of %s failed; the running rules stay",
                                    self.rules_path)
            self.node.record("rules_reload_failed", file=str(self.rules_path),
                             problems=[f"{self.rules_path}: {type(exc).__name__}: {exc}"])
            return
        self.engine.replace(ruleset)
        self.sender.quiet = self._quiet_rules()
        self.commanding = self._commanding_rules()
        self._check_wiring()
        ids = [r.id for r in ruleset.rules]
        self.node.log.info("reloaded %d rule(s) from %s", len(ids), self.rules_path)
        self.node.record("rules_reloaded", file=str(self.rules_path), rules=ids)


def check(params: dict, base_dir: str | Path, node: Any = None, graph: Any = None
          ) -> list[Problem]:
    """Every problem of the rules a graph gives this node (str(): "file:line: message").

    For graph validation (`iotrt validate`, `iotrt up`; the SPEC's `check_files`):
    `params` are the node's validated params and `base_dir` the graph file's folder (the
    node's working directory when it runs). With the node's definition and its `graph`, the
    rules are also checked against the node's wiring (see `check_wiring`), and a rules file
    that does not exist is reported at the graph's line that names it.
    """
    if "rules" not in params:
        return []  # the missing or invalid param is already reported by the graph
    base = Path(base_dir)
    rules_path = base / params["rules"]
    if graph is not None and node is not None and not rules_path.is_file():
        return [_missing_file(rules_path, params["rules"], node, graph)]
    try:
        ruleset = load_rules(rules_path, python=[base / p for p in params.get("python", [])])
    except RulesError as exc:
        return exc.problems
    if graph is None or node is None:
        return []
    return check_wiring(ruleset.rules, node, graph)[0]


def _missing_file(path: Path, named: str, node: Any, graph: Any) -> Problem:
    """A rules file that does not exist, at the graph line of `rules:`, with did-you-mean
    among the rules-like files of its folder (as the graph would name them)."""
    folder = Path(named).parent
    nearby = sorted(str(folder / p.name) for p in path.parent.glob("*")
                    if p.suffix in (".yaml", ".yml", ".py") and p.is_file()) \
        if path.parent.is_dir() else []
    return Problem(str(graph.path), _param_line(graph.path, node.id, "rules", node.line),
                   f"node '{node.id}': rules file '{named}' does not exist ({path})"
                   f"{suggest(named, nearby)}")


def _param_line(graph_path: Path, node_id: str, key: str, default: int) -> int:
    """The line of `params: {key: ...}` of node `node_id` in the graph file."""
    try:
        root = yaml.compose(graph_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return default
    nodes = _child(root, "nodes")
    for item in nodes.value if isinstance(nodes, yaml.SequenceNode) else []:
        ident = _child(item, "id")
        if isinstance(ident, yaml.ScalarNode) and ident.value == node_id:
            params = _child(item, "params")
            value = _child(params, key)
            if value is not None:
                return value.start_mark.line + 1
    return default


def _child(node: Any, key: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def check_wiring(rules: list, node: Any, graph: Any) -> tuple[list[Problem], list[Problem]]:
    """Rules that name ports the graph did not wire to this node, at the rules' file:line:
    a trigger on a topic that is neither an input's name nor its topic, a command or notify
    to an output no actuator's command input is wired to, a publish on an output the node
    does not declare; and `msg.FIELD` in a rule whose every trigger is an input whose
    messages' fields are known (the SPEC of the node feeding it documents its output as
    `{a, b: ..., c}`) where FIELD is not one of them. (A Python rule's body is not read: its
    triggers are checked.)

    Returns (problems, notes): a name close to a wired one is a typo and a problem (`face`
    for the input `faces`: the rule could never fire); one unlike any wired name is a note,
    since one rules file may serve graphs with and without an optional part (a door graph
    without Home Assistant or a snapshot camera), and the node warns about it when it starts.
    """
    inputs = {name: wire.topic for name, wire in node.inputs.items()}
    topics = sorted(set(inputs) | set(inputs.values()))
    commands = sorted({wire.output for other in graph.nodes.values()
                       for wires in other.commands.values() for wire in wires
                       if wire.node == node.id})
    outputs = list(node.outputs)
    problems: list[Problem] = []
    notes: list[Problem] = []

    def found(rule: Any, line: int, name: str, wired: list[str], what: str) -> None:
        hint = suggest(name, wired)
        (problems if hint else notes).append(Problem(rule.file, line, what + hint))

    for rule in rules:
        tlines = rule.trigger_lines or (rule.line,) * len(rule.triggers)
        for trig, line in zip(rule.triggers, tlines):
            if trig.topic is not None and trig.topic not in topics:
                found(rule, line, trig.topic, topics,
                      f"rule '{rule.id}' triggers on '{trig.topic}', which is not an input of "
                      f"node '{node.id}' (inputs: {_listing(inputs)})")
        fields = _rule_fields(rule, node, graph)
        if fields is not None:
            for field, line in _message_fields_used(rule):
                if field not in fields:
                    found(rule, line, field, sorted(fields),
                          f"rule '{rule.id}' reads msg.{field}, but the messages it triggers on "
                          f"have the fields {', '.join(sorted(fields))}")
        for step, line in zip(rule.steps, rule.step_lines or (rule.line,) * len(rule.steps)):
            if isinstance(step, CommandStep) and step.output not in commands:
                found(rule, line, step.output, commands,
                      f"rule '{rule.id}' sends {step.label} '{step.output}', but no actuator's "
                      f"command input is wired to {node.id}/{step.output} "
                      f"(wired: {', '.join(commands) or 'none'})")
            elif (isinstance(step, PublishStep) and step.output not in outputs
                  and step.output != DECISIONS):
                found(rule, line, step.output, outputs,
                      f"rule '{rule.id}' publishes on '{step.output}', which is not an output "
                      f"of node '{node.id}' (outputs: {', '.join(outputs) or 'none'})")
    return problems, notes


def message_fields(doc: Any) -> frozenset[str] | None:
    """The top-level fields of messages a SPEC documents as `{a, b: [..], c: {..}}`, or None
    when the description is not of that shape (then nothing is known about the fields)."""
    if not isinstance(doc, str) or not doc.startswith("{") or not doc.endswith("}"):
        return None
    parts, depth, start = [], 0, 1
    for i, ch in enumerate(doc[1:-1], 1):
        depth += (ch in "[{(") - (ch in "]})")
        if ch == "," and depth == 0:
            parts.append(doc[start:i])
            start = i + 1
    parts.append(doc[start:-1])
    keys = [part.split(":", 1)[0].strip() for part in parts]
    return frozenset(keys) if all(k.isidentifier() for k in keys) else None


def _rule_fields(rule: Any, node: Any, graph: Any) -> frozenset[str] | None:
    """The fields of every message that can trigger `rule`, if all its triggers are inputs of
    `node` fed by an output whose SPEC documents them; else None."""
    by_topic = {**{name: wire for name, wire in node.inputs.items()},
                **{wire.topic: wire for wire in node.inputs.values()}}
    fields: set[str] = set()
    for trig in rule.triggers:
        wire = by_topic.get(trig.topic) if trig.topic is not None else None
        source = graph.nodes.get(wire.node) if wire is not None else None
        spec = getattr(source, "spec", None)
        known = message_fields(spec.outputs.get(wire.output)) if spec is not None else None
        if known is None:
            return None
        fields |= known
    return frozenset(fields) if rule.triggers else None


def _message_fields_used(rule: Any) -> list[tuple[str, int]]:
    """(field, line) of every `msg.field` in the rule's expressions (conditions, trigger
    values, action templates); `msg.get(...)` and the other dict methods are not fields."""
    found: list[tuple[str, int]] = []

    def walk(value: Any, line: int) -> None:
        if isinstance(value, Expression):
            bound = {n.id for c in ast.walk(value.tree) if isinstance(c, ast.comprehension)
                     for n in ast.walk(c.target) if isinstance(n, ast.Name)}
            if "msg" in bound:
                return  # a comprehension's own `msg`: not the message
            for n in ast.walk(value.tree):
                if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                        and n.value.id == "msg" and n.attr not in _DICT_METHODS):
                    found.append((n.attr, line))
        elif isinstance(value, Interpolated):
            for part in value.parts:
                walk(part, line)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v, line)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v, line)

    tlines = rule.trigger_lines or (rule.line,) * len(rule.triggers)
    for trig, line in zip(rule.triggers, tlines):
        walk(getattr(trig, "value", None), line)
    clines = rule.condition_lines or (rule.line,) * len(rule.conditions)
    for cond, line in zip(rule.conditions, clines):
        walk(cond, line)
    for step, line in zip(rule.steps, rule.step_lines or (rule.line,) * len(rule.steps)):
        walk([getattr(step, name, None) for name in ("args", "data", "message", "expr")]
             + [v for _, v in getattr(step, "values", ())], line)
    return found


def _listing(inputs: dict[str, str]) -> str:
    return ", ".join(f"{name} ({topic})" for name, topic in inputs.items()) or "none"


def main(node: Node) -> None:
    try:
        rules = RuleNode(node)
    except RulesError as exc:
        for problem in exc.problems:
            node.log.error("%s", problem)
        raise SystemExit(f"node {node.id!r}: the rules file has {len(exc.problems)} problem(s)") from exc
    node.log.info("%d rule(s) loaded from %s", len(rules.engine.rules), rules.rules_path)
    node.ready()
    p = node.params
    tick_ns = int(p["tick_s"] * 1e9)
    node.alarm("tick", time.monotonic())     # a first tick starts the engine's clocks
    try:
        for event in node:
            rules.handle(event)
            # Sleep until the engine has something due (a hold, a delay, an absence, an
            # interval) or the next message: an idle rule node does not wake. Due times are
            # rounded up to the tick_s grid, so a burst of messages does not re-arm every µs.
            # (On clock "capture" due times are capture stamps: they run when a message
            # arrives, so no alarm.)
            due = None if rules.capture_clock else rules.engine.next_due()
            node.alarm("tick", None if due is None else
                       -(-int(due * 1e9) // tick_ns) * tick_ns / 1e9)
    finally:
        # Commands already decided still go out (bounded by one full retry cycle).
        rules.sender.close(wait_s=p["command_timeout_s"] * (p["command_retries"] + 1))
