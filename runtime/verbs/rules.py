"""`iotrt rules check|test`: validate rules, or run them offline against messages.

    iotrt rules check configs/door.rules.yaml
    iotrt rules test configs/door.rules.yaml --input visit.yaml

`test` prints what would fire and what it would do (commands, publishes, notifications), on a
simulated clock, so rules can be tried before they are deployed. Nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from iotrt.recording import Recording, RecordingError
from iotrt.rules.actions import Fired, Log, Publish, RuleDisabled, RuleError, SendCommand, Skipped, StateSet
from iotrt.rules.api import load_rules
from iotrt.rules.engine import Engine
from iotrt.rules.replay import Entry, load_messages, replay
from iotrt.rules.source import RulesError
from iotrt.yamlcheck import Issue


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Guide: docs/rules.md. Exit status: 0 ok, 1 invalid rules or messages."
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="validate a rules file (YAML or .py)",
                           description="Validate a rules file and list its rules.")
    test = sub.add_parser("test", help="run rules against messages and print what would fire",
                          description="Run rules against messages on a simulated clock and print "
                                      "what would fire. Nothing is sent anywhere.")
    for p in (check, test):
        p.add_argument("rules", type=Path, help="rules file: .yaml/.yml, or .py (Python rules)")
        p.add_argument("--python", type=Path, action="append", default=[], metavar="FILE",
                       help="also load Python rules from FILE (repeatable)")
    check.add_argument("--graph", type=Path, metavar="GRAPH",
                       help="also check the rules against the wiring of the rules node of GRAPH "
                            "that runs them: trigger topics, command and publish outputs")
    test.add_argument("--input", "-i", type=Path, required=True, metavar="MESSAGES",
                      help="messages: YAML/JSON list of {t, topic, data}, .jsonl, or an "
                           ".mcap recording (iotrt record; times from the capture stamps)")
    test.add_argument("--start", type=_datetime, default=None, metavar="DATETIME",
                      help="wall-clock time at t=0 for time-of-day triggers "
                           "(default: today 00:00 local; e.g. 2026-05-01T07:29)")
    test.add_argument("--until", type=float, default=None, metavar="SECONDS",
                      help="keep the clock running to this time (default: the last message)")
    test.add_argument("--gap", type=float, default=0.1, metavar="SECONDS",
                      help="spacing of messages that give no t (default: 0.1)")
    test.add_argument("--all", action="store_true",
                      help="also show skipped firings (cooldown, mode), log actions and "
                           "rule variables changed by set actions")
    test.add_argument("--json", action="store_true", help="one JSON object per line")


def _datetime(text: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date/time like 2026-05-01T07:29, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    try:
        ruleset = load_rules(args.rules, python=args.python)
    except RulesError as exc:
        print(f"iotrt rules: {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    if args.action == "check":
        problems, notes = ([], []) if args.graph is None else _wiring(args.rules, ruleset,
                                                                     args.graph)
        if problems:
            print(f"iotrt rules: {len(problems)} problem(s):", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
        for note in notes:
            print(f"note: {note}")
        print(f"OK: {len(ruleset.rules)} rule(s) in {args.rules}"
              + (f", wired as in {args.graph}" if args.graph is not None else ""))
        for rule in ruleset.rules:
            print(f"  {rule.id:24} {rule.where}  {rule.description}".rstrip())
        return 0
    engine = Engine(ruleset)
    try:
        entries = (_recorded(args.input, engine.topics()) if args.input.suffix == ".mcap"
                   else load_messages(args.input, gap=args.gap))
    except RulesError as exc:
        for problem in exc.problems:
            print(f"iotrt rules: {problem}", file=sys.stderr)
        return 1
    except RecordingError as exc:
        print(f"iotrt rules: {exc}", file=sys.stderr)
        return 1
    triggers = engine.topics()   # a topic node/output also matches triggers on `output`
    missing = sorted({e.topic for e in entries if e.topic and e.topic not in triggers
                      and e.topic.rsplit("/", 1)[-1] not in triggers})
    start = args.start or dt.datetime.combine(dt.date.today(), dt.time())
    results = replay(engine, entries, start, until=args.until)
    shown = [(t, a) for t, a in results
             if args.all or not isinstance(a, (Skipped, Log, StateSet))]
    for t, action in shown:
        print(json.dumps(_as_json(t, action), default=str) if args.json else _as_text(t, action))
    if not args.json:
        fired = Counter(a.rule for _, a in results if isinstance(a, Fired))
        errors = sum(isinstance(a, RuleError) for _, a in results)
        summary = ", ".join(f"{rule} x{n}" for rule, n in fired.items()) or "nothing fired"
        disabled = [a.rule for _, a in results if isinstance(a, RuleDisabled)]
        print(f"-- {len(entries)} message(s): {summary}"
              + (f"; {errors} rule error(s)" if errors else "")
              + (f"; disabled: {', '.join(disabled)}" if disabled else ""))
        if missing:
            print(f"-- note: no rule triggers on topic(s) {', '.join(missing)}")
    return 0


def _wiring(rules: Path, ruleset: Any, graph_path: Path) -> tuple[list, list]:
    """(problems, notes) of the rules against each node of the graph that runs them: a node
    whose SPEC names a `rules_param`, set to this file (the SPEC's `check_wiring` checks)."""
    from iotrt.graph import GraphError, load_graph  # only with --graph: it loads pynng

    try:
        graph = load_graph(graph_path, check_node_files=False)
    except GraphError as exc:
        return exc.issues, []
    target = rules.resolve()
    nodes = [n for n in graph.nodes.values()
             if n.spec is not None and n.spec.rules_param is not None
             and n.spec.rules_param in n.params
             and (graph.path.parent / n.params[n.spec.rules_param]).resolve() == target]
    if not nodes:
        return [Issue(str(graph_path), 1, f"no rules node of this graph runs {rules}")], []
    found = [n.spec.check_wiring(ruleset.rules, n, graph) for n in nodes]
    return [p for problems, _ in found for p in problems], [n for _, notes in found for n in notes]


def _recorded(path: Path, triggers: set[str]) -> list[Entry]:
    """The messages of a recording that a rule triggers on (by topic or output name), timed
    by their capture stamps as the rules node's `clock: capture` does."""
    rec = Recording(path)
    wanted = {t for t in rec.info().topics if t in triggers or t.rsplit("/", 1)[-1] in triggers}
    entries: list[Entry] = []
    first = None
    for m in rec.messages(wanted):
        first = m.stamp_ns if first is None else first
        t = max((m.stamp_ns - first) / 1e9, entries[-1].t if entries else 0.0)
        entries.append(Entry(t, m.topic, m.data))
    return entries


def _compact(data: Any) -> str:
    return json.dumps(data, default=str, separators=(", ", ": "))


def _as_text(t: float, action: Any) -> str:
    head = f"{t:9.3f}s  {action.rule:22}"
    match action:
        case Fired(_, trigger, queued):
            return f"{head} fired ({trigger})" + (" - queued" if queued else "")
        case SendCommand(_, output, data, label):
            return f"{head}   {label} {output} {_compact(data)}"
        case Publish(_, output, data):
            return f"{head}   publish {output} {_compact(data)}"
        case Log(_, text):
            return f"{head}   log {text}"
        case StateSet(_, values):
            return f"{head}   set " + ", ".join(f"{k} = {_compact(v)}" for k, v in values.items())
        case Skipped(_, reason):
            return f"{head} skipped: {reason}"
        case RuleError(_, where, message):
            return f"{head} ERROR at {where}: {message}"
        case RuleDisabled(_, where, reason):
            return f"{head} DISABLED at {where}: {reason}"
    raise TypeError(action)


def _as_json(t: float, action: Any) -> dict[str, Any]:
    kind = {Fired: "fired", SendCommand: "command", Publish: "publish", Log: "log", StateSet: "set",
            Skipped: "skipped", RuleError: "error", RuleDisabled: "disabled"}[type(action)]
    fields = dict(vars(action)) if hasattr(action, "__dict__") else {
        f: getattr(action, f) for f in action.__dataclass_fields__}
    return {"t": round(t, 6), "kind": kind, **fields}
