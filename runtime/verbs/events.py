"""`iotrt events`: read the event journal (rule firings, commands, acks, failures).

Opens the journal read-only, so any user who can read the state directory can run it while the
graph is running, without write access and without disturbing the supervisor (the writer).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
from pathlib import Path

from iotrt.control import ControlError
from iotrt.errors import UsageError
from iotrt.journal import JOURNAL_FILE, JournalEntry, JournalError, JournalReader
from iotrt.verbs._graph import add_graph_argument, selected_graph
from iotrt.verbs._graph import journal_path as graph_journal

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: dt.datetime | None = None) -> int:
    """'90s', '10m', '2h', '1d', '1w' ago, or an ISO date/time (local time unless it has an
    offset). Returns wall-clock ns since the epoch."""
    now = now or dt.datetime.now().astimezone()
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if match:
        when = now - dt.timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    else:
        try:
            when = dt.datetime.fromisoformat(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--since {text!r}: use a duration like 30s, 10m, 2h, 1d, 1w or a date/time "
                f"like 2026-05-01 or 2026-05-01T08:30") from None
        if when.tzinfo is None:
            when = when.astimezone()  # naive means local time, as `date` prints it
    return int(when.timestamp() * 1e9)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (f"Which journal: GRAPH (a graph file, or a graph's name under the state "
                     f"root), --state-dir, or --journal. With none of them, the only graph "
                     f"under the state root ($IOTRT_STATE_DIR, $STATE_DIRECTORY or "
                     f"~/.local/state/iotrt) that has a {JOURNAL_FILE}, or among several "
                     f"the one that is running.")
    add_graph_argument(parser, positional=True)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--journal", metavar="PATH", type=Path, help="the journal file")
    where.add_argument("--state-dir", metavar="DIR", type=Path,
                       help="the graph's state directory (holds journal.db)")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep printing new events as they are written (Ctrl-C to stop)")
    parser.add_argument("--since", type=parse_since, metavar="WHEN",
                        help="only events since WHEN: 30s, 10m, 2h, 1d, 1w ago or a date/time")
    parser.add_argument("--rule", help="only events of this rule")
    parser.add_argument("--kind", help="only events of this kind (e.g. command_applied)")
    parser.add_argument("--node", help="only events from this node")
    parser.add_argument("-n", "--lines", type=int, metavar="N",
                        help="only the last N matching events (default: all; 10 with --follow)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def journal_path(args: argparse.Namespace) -> Path:
    """The journal the arguments name; JournalError says what to give when it is unclear."""
    try:
        graph = selected_graph(args)
    except ControlError as exc:
        raise JournalError(str(exc)) from exc
    if graph and (args.journal or args.state_dir):
        raise JournalError("give GRAPH or --journal/--state-dir, not both")
    if args.journal is not None:
        return args.journal
    if args.state_dir is not None:
        return args.state_dir / JOURNAL_FILE
    try:
        return graph_journal(graph)
    except ControlError as exc:
        raise JournalError(str(exc)) from exc


def _value(value) -> str:
    # Plain words stay bare (state=unlocked); anything that could be misread as several fields
    # is quoted, and structures are JSON.
    if isinstance(value, str) and value and not any(c.isspace() or c in '="' for c in value):
        return value
    return json.dumps(value, ensure_ascii=False)


def format_event(event: JournalEntry, as_json: bool) -> str:
    when = dt.datetime.fromtimestamp(event.t_ns / 1e9).astimezone()
    if as_json:
        return json.dumps({**event.to_dict(), "time": when.isoformat(timespec="milliseconds")},
                          ensure_ascii=False)
    fields = " ".join(f"{k}={_value(v)}" for k, v in event.fields.items())
    stamp = when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d}"
    return f"{stamp} #{event.id:<6} {event.kind:<18} {event.node:<12} {fields}".rstrip()


def run(args: argparse.Namespace) -> int:
    lines = args.lines if args.lines is not None else (10 if args.follow else None)
    if lines is not None and lines < 0:
        raise UsageError("-n must be 0 or more")
    filters = {"since": args.since, "rule": args.rule, "kind": args.kind, "node": args.node}
    try:
        reader = JournalReader(journal_path(args))
    except JournalError as exc:
        print(f"iotrt events: {exc}", file=sys.stderr)
        return 1
    try:
        with reader:
            last = reader.last_id()
            for event in reader.query(limit=lines, **filters) if lines != 0 else []:
                print(format_event(event, args.json), flush=args.follow)
                last = max(last, event.id)  # written since last_id(): printed once, not twice
            if args.follow:
                for event in reader.follow(after_id=last, **filters):
                    print(format_event(event, args.json), flush=True)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # `iotrt events | head`: the reader went away; that is not an error.
        sys.stdout = open(os.devnull, "w")
        return 0
    except JournalError as exc:
        print(f"iotrt events: {exc}", file=sys.stderr)
        return 1
    return 0
