"""`python -m iotrt.supervise GRAPH`: the supervisor process, exec'd by `iotrt up` once the graph
has been validated.

Validating a graph imports every node module to read its SPEC, and node modules import numpy,
cv2 and engines. So `iotrt up` validates (node files included), then replaces itself with this
lean entry through exec: the same pid, so systemd's notify socket and watchdog, a terminal's
Ctrl-C and `iotrt down` all see the same process. The entry reads the graph again with each
target's SPEC handed over as JSON in IOTRT_SPECS, instead of importing node modules, and runs
the supervisor: a process without numpy or cv2.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, NoReturn

from iotrt.config import ENV_SPECS
from iotrt.spec import PARAM_TYPES, REQUIRED, NodeSpec, Param

_TYPES = {t.__name__: t for t in PARAM_TYPES}
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# syslog priorities: journald reads a "<N>" line prefix as the line's priority (SyslogLevelPrefix)
PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
              logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """Under systemd: '<3>message' so `journalctl -p err` finds the supervisor's errors."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{PRIORITIES.get(record.levelno, 6)}>{super().format(record)}"


def spec_summary(spec: NodeSpec) -> dict[str, Any]:
    """What the graph needs of a SPEC, as JSON."""
    return {
        "doc": spec.doc, "inputs": spec.inputs, "outputs": spec.outputs,
        "commands_in": spec.commands_in, "commands_out": spec.commands_out,
        "safety": spec.safety, "reloadable": spec.reloadable,
        "params": [{"name": p.name, "type": p.type.__name__, "doc": p.doc,
                    "required": p.default is REQUIRED,
                    "default": None if p.default is REQUIRED else p.default,
                    "choices": None if p.choices is None else list(p.choices),
                    "min": p.min, "max": p.max} for p in spec.params],
    }


def spec_from_summary(d: dict[str, Any]) -> NodeSpec:
    params = [Param(p["name"], _TYPES[p["type"]], REQUIRED if p["required"] else p["default"],
                    p["doc"], None if p["choices"] is None else tuple(p["choices"]),
                    p["min"], p["max"]) for p in d["params"]]
    return NodeSpec(d["doc"], d["inputs"], d["outputs"], d["commands_in"], d["commands_out"],
                    params, safety=d["safety"], reloadable=d["reloadable"])


def exec_supervisor(graph_path: str, specs: dict[str, NodeSpec], log_level: str) -> NoReturn:
    """Replace this process with the lean supervisor for `graph_path` (validated already)."""
    env = dict(os.environ)
    env[ENV_SPECS] = json.dumps({t: spec_summary(s) for t, s in specs.items()}, default=str)
    # NNG's worker threads would each get a malloc arena of their own (see iotrt.procs)
    env.setdefault("MALLOC_ARENA_MAX", "2")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "iotrt.supervise", graph_path, log_level],
              env)


def main(argv: list[str]) -> int:
    from iotrt.lazy import defer_rarely_used

    # e.g. pynng imports asyncio (which imports ssl) for its async API, which the supervisor
    # never uses: ~9 MB of RSS. Deferred, each is imported only if something does use it.
    defer_rarely_used()
    from iotrt.console import setup_logging
    from iotrt.graph import GraphError, load_graph
    from iotrt.supervisor import run_graph

    if len(argv) != 2 or argv[1] not in LEVELS or ENV_SPECS not in os.environ:
        print("iotrt.supervise is started by 'iotrt up GRAPH'", file=sys.stderr)
        return 2
    path, level = argv
    setup_logging(logging.INFO)     # with a timestamp, unless journald stamps the lines
    if os.environ.get("JOURNAL_STREAM"):     # our stderr is journald's (set by systemd)
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    logging.getLogger("iotrt").setLevel(level)
    specs = {t: spec_from_summary(d) for t, d in json.loads(os.environ.pop(ENV_SPECS)).items()}
    try:
        graph = load_graph(path, spec_loader=specs.__getitem__)
    except GraphError as exc:     # changed since `iotrt up` checked it
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    return run_graph(graph, log_level=level)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
