"""The `iotrt` command line: a thin dispatcher over one module per verb.

Verb modules are imported only when their verb runs, so `iotrt --help` stays fast on a
small board and a verb whose optional extra is missing fails with a message naming the extra
instead of breaking every other verb.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from iotrt import __version__
from iotrt.console import setup_logging
from iotrt.errors import IotrtError, UsageError

# verb -> (module, one-line help). Adding a verb means adding one module and one line here.
VERBS: dict[str, tuple[str, str]] = {
    "up": ("iotrt.verbs.up", "validate a graph and run it under the supervisor"),
    "down": ("iotrt.verbs.down", "stop a running graph"),
    "validate": ("iotrt.verbs.validate", "check a graph file without starting anything"),
    "graph": ("iotrt.verbs.graph", "draw a graph as Mermaid or DOT"),
    "unit": ("iotrt.verbs.unit", "write a systemd unit for a graph"),
    "ps": ("iotrt.verbs.ps", "list the nodes of a running graph"),
    "topics": ("iotrt.verbs.topics", "list the topics of a running graph"),
    "echo": ("iotrt.verbs.echo", "print the messages on a topic"),
    "hz": ("iotrt.verbs.hz", "measure the rate of a topic"),
    "reload": ("iotrt.verbs.reload", "reload the rules of a running graph"),
    "compile": ("iotrt.verbs.compile", "compile an ONNX or TFLite model into an artifact"),
    "bench": ("iotrt.verbs.bench", "measure a model's latency on each engine backend"),
    "enroll": ("iotrt.verbs.enroll", "enroll a person into a face gallery from photos"),
    "rules": ("iotrt.verbs.rules", "test rules offline against recorded messages"),
    "events": ("iotrt.verbs.events", "read the event journal"),
    "record": ("iotrt.verbs.record", "record topics of a running graph to an MCAP file"),
    "replay": ("iotrt.verbs.replay", "run a graph with recorded topics in place of their nodes"),
    "mqtt": ("iotrt.verbs.mqtt", "Home Assistant over MQTT: forget a graph's device"),
}


class VerbUnavailable(UsageError):
    """A verb whose module (or one of its optional dependencies) cannot be imported."""


def _load(verb: str):
    module_name = VERBS[verb][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise VerbUnavailable(f"'iotrt {verb}' is not available in this build") from exc
        raise VerbUnavailable(
            f"'iotrt {verb}' needs the Python package '{exc.name}', which is not installed "
            f"(pip install 'iotrt[...]' with the extra that provides it; see the README)"
        ) from exc


def report(exc: IotrtError, prog: str) -> int:
    """The one place the command line prints an error: 'iotrt VERB: message' on stderr (a
    multi-line message, e.g. every problem of a graph, as it is); returns the exit code."""
    print(f"{prog}: {exc}", file=sys.stderr)
    return exc.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iotrt",
        description="A lightweight runtime for IoT devices that see and act.",
        epilog="Run 'iotrt VERB --help' for the options of one verb.",
    )
    parser.add_argument("--version", action="version", version=f"iotrt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_, help_text) in VERBS.items():
        sub.add_parser(verb, help=help_text, description=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # Parse the verb first; the verb's own module then defines the rest of its arguments.
    ns, rest = parser.parse_known_args(argv)
    if ns.verb is None:
        parser.print_help()
        return 2
    setup_logging(logging.DEBUG if ns.verbose else logging.INFO)
    try:
        module = _load(ns.verb)
    except VerbUnavailable as exc:
        return report(exc, "iotrt")
    verb_parser = argparse.ArgumentParser(
        prog=f"iotrt {ns.verb}", description=VERBS[ns.verb][1]
    )
    module.add_arguments(verb_parser)
    args = verb_parser.parse_args(rest)
    args.verbose = ns.verbose
    try:
        return int(module.run(args) or 0)
    except IotrtError as exc:
        return report(exc, f"iotrt {ns.verb}")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `iotrt echo TOPIC | head`: the reader left; that is how such a pipe ends, not an error.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
