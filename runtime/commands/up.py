"""`iotrt up GRAPH`: validate a graph, then run it under the supervisor until stopped."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from iotrt.graph import GraphError, load_graph
from iotrt.supervisor import run_graph

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# syslog priorities: journald reads a "<N>" line prefix as the line's priority (SyslogLevelPrefix)
PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
              logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """Under systemd: '<3>message' so `journalctl -p err` finds the supervisor's errors."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{PRIORITIES.get(record.levelno, 6)}>{super().format(record)}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", metavar="GRAPH", help="graph YAML file")
    parser.add_argument("--log-level", choices=LEVELS, default=None,
                        help="log level of the nodes (default: INFO, DEBUG with -v)")
    parser.epilog = (
        "Runs in the foreground; Ctrl-C or SIGTERM stops every node (SIGTERM, then SIGKILL "
        "after the graph's stop_grace_s). Exit codes: 0 stopped on request, 1 invalid graph or "
        "a critical node failed for good, 2 could not start (e.g. already running). Under "
        "systemd (Type=notify) it reports READY=1, WATCHDOG=1 and STATUS=.")


def run(args: argparse.Namespace) -> int:
    try:
        graph = load_graph(args.graph, check_node_files=True)
    except GraphError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"iotrt up: {args.graph} is invalid; nothing was started", file=sys.stderr)
        return 1
    level = args.log_level or ("DEBUG" if args.verbose else "INFO")
    logging.getLogger("iotrt").setLevel(level)
    if os.environ.get("JOURNAL_STREAM"):     # our stderr is journald's (set by systemd)
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    return run_graph(graph, log_level=level)
