"""`iotrt replay FILE --graph GRAPH`: run a graph with recorded topics in place of their nodes.

    iotrt replay visit.mcap --graph configs/door.yaml                  # real time
    iotrt replay visit.mcap --graph configs/door.yaml --rate max --compare

The nodes that published the played topics (default: every recorded topic) are not started;
downstream nodes get the recorded messages with their recorded stamps, and rules run on the
recording's clock. The replay has its own runtime and state folders (the live graph may keep
running); it stops once the recording is played and the graph has settled. `--compare` then
diffs its decisions (rule firings, commands) with the live journal's over the same span.
Guide: docs/record.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from iotrt.graph import GraphError, load_graph
from iotrt.journal import Journal, JournalError
from iotrt.recording import Info, Recording, RecordingError
from iotrt.replay import DECISION_KINDS, ReplayError, compare, decisions, replay_graph
from iotrt.rundir import default_runtime_root
from iotrt.supervisor import Supervisor

log = logging.getLogger("iotrt.replay")

EXIT_DIFFERENT = 3


def _rate(text: str) -> float:
    if text == "max":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"rate must be a positive number or 'max', not {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, not {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Guide: docs/record.md. Exit status: 0 done (and identical with "
                     "--compare), 1 bad recording or graph (nothing started), 2 could not start, "
                     f"{EXIT_DIFFERENT} --compare found differences.")
    parser.add_argument("file", metavar="FILE", help="the MCAP recording")
    parser.add_argument("--graph", required=True, metavar="GRAPH", help="graph YAML file")
    parser.add_argument("--rate", type=_rate, default=1.0, metavar="N|max",
                        help="1 real time (default), N times faster, max as fast as possible")
    parser.add_argument("--topics", default="", metavar="T1,T2",
                        help="recorded topics to play (default: all); their nodes do not start")
    parser.add_argument("--start", type=_seconds, default=0.0, metavar="S",
                        help="skip the first S seconds of the recording")
    parser.add_argument("--end", type=_seconds, default=0.0, metavar="S",
                        help="stop S seconds after the recording's start (default: its end)")
    parser.add_argument("--partial", action="store_true",
                        help="play a truncated recording up to where it ends")
    parser.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                        help="the replay's state folder, with its journal (default: a new "
                             "temporary folder)")
    parser.add_argument("--settle", type=_seconds, default=1.0, metavar="S",
                        help="after the last message, stop once the journal is quiet for S s")
    parser.add_argument("--compare", action="store_true",
                        help="compare the decisions with the live graph's journal")
    parser.add_argument("--log-level", default=None,
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="log level of the nodes (default: WARNING)")


def run(args: argparse.Namespace) -> int:
    try:
        info = Recording(args.file, partial=args.partial).check()
    except RecordingError as exc:
        print(f"iotrt replay: {exc}; nothing was started", file=sys.stderr)
        return 1
    try:
        graph = load_graph(args.graph, check_node_files=True)
    except GraphError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"iotrt replay: {args.graph} is invalid; nothing was started", file=sys.stderr)
        return 1
    runtime_dir = default_runtime_root() / f"replay-{os.getpid()}"
    state_dir = args.state_dir or Path(tempfile.gettempdir()) / "iotrt-replay-unused"
    try:
        plan = replay_graph(graph, info, topics=[t for t in args.topics.split(",") if t],
                            rate=args.rate, start_s=args.start, end_s=args.end,
                            partial=args.partial, runtime_dir=runtime_dir,
                            state_dir=state_dir / graph.name)
    except ReplayError as exc:
        print(f"iotrt replay: {exc}; nothing was started", file=sys.stderr)
        return 1
    if args.state_dir is None:   # a fresh folder, made only once the replay can start
        state_dir = Path(tempfile.mkdtemp(prefix=f"iotrt-replay-{graph.name}-"))
        plan.graph.state_dir = state_dir / graph.name
    level = args.log_level or ("DEBUG" if args.verbose else "WARNING")
    logging.getLogger("iotrt").setLevel(level)
    print(f"replaying {len(plan.played)} topic(s) of {args.file} "
          f"(not started: {', '.join(plan.replaced + plan.idle)}); journal: "
          f"{plan.graph.journal_path}", file=sys.stderr)
    for topic in plan.silent:
        print(f"iotrt replay: note: {topic} is read by a started node but its node is "
              f"replaced and it was not recorded: nothing arrives on it", file=sys.stderr)
    sup = Supervisor(plan.graph, log_level=level)
    watcher = threading.Thread(target=_stop_when_done, daemon=True,
                               args=(sup, plan.graph.journal_path, plan.graph.source,
                                     args.settle))
    watcher.start()
    try:
        code = sup.run()     # a SupervisorError (exit 2) is reported by iotrt.cli
    finally:
        _remove_empty(runtime_dir)
    if code != 0:
        return code
    replayed = _journal_decisions(plan.graph.journal_path, None, None)
    counts = ", ".join(f"{k} {len(v)}" for k, v in sorted(replayed.items())) or "no decisions"
    print(f"replay done: {counts}", file=sys.stderr)
    if not args.compare:
        return 0
    return _compare(graph.journal_path, info, args, replayed)


def _stop_when_done(sup: Supervisor, journal: Path, source: str, settle_s: float) -> None:
    """Stop the supervisor once the replay node reported the end and the journal went quiet,
    or at once (exit 1) if the replay node ended without reporting it (e.g. a bad message)."""
    reader = None
    last_id, quiet_since, done = 0, time.monotonic(), False
    while not sup.stopping:
        time.sleep(0.1)
        if reader is None:
            try:
                reader = Journal.open_readonly(journal)
            except JournalError:
                continue     # the supervisor has not created it yet
        try:
            events = reader.query(after_id=last_id)
        except JournalError:
            continue
        if events:
            last_id = events[-1].id
            quiet_since = time.monotonic()
            done = done or any(e.kind == "replay_done" for e in events)
            if not done and any(e.kind == "lifecycle" and e.node == source
                                and e.fields.get("state") in ("exited", "failed")
                                for e in events):
                sup.request_stop("the replay node ended before the recording was played",
                                 code=1)
        elif done and time.monotonic() - quiet_since >= settle_s:
            sup.request_stop("the recording was played")
    if reader is not None:
        reader.close()


def _journal_decisions(path: Path, since: int | None, until: int | None) -> dict:
    reader = Journal.open_readonly(path)
    try:
        events = [e for e in reader.query(since=since) if e.kind in DECISION_KINDS
                  and (until is None or e.t_ns <= until)]
    finally:
        reader.close()
    return decisions(events)


def _compare(live_journal: Path, info: Info, args: argparse.Namespace, replayed: dict) -> int:
    start = info.start_ns + int(args.start * 1e9)
    end = info.start_ns + int(args.end * 1e9) if args.end else info.end_ns
    since, until = info.wall_ns(start), info.wall_ns(end)
    try:
        live = _journal_decisions(live_journal, since, until)
    except JournalError as exc:
        print(f"iotrt replay: cannot compare: {exc}", file=sys.stderr)
        return 1
    notes = []
    if info.drops:
        notes.append(f"the recorder dropped {info.drops} message(s): the live nodes saw "
                     f"messages the replay does not have")
    notes.append("decisions caused by messages before the recorded span (a `for:` count, a "
                 "cooldown) differ at its start: use --start at a quiet moment")
    notes.append("rules on clock 'monotonic' live, or with time-of-day conditions, depend on "
                 "when messages arrived, not on the recording (docs/record.md)")
    diff = compare(live, replayed, notes)
    if not diff:
        total = ", ".join(f"{k} {len(v)}" for k, v in sorted(live.items())) or "no decisions"
        print(f"identical to the live run: {total}")
        return 0
    print("different from the live run:")
    for line in diff:
        print(f"  {line}")
    return EXIT_DIFFERENT


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass     # not empty (the supervisor left something) or already gone
