"""The `program` actuator: run a program for each command. An argv list, never a shell.

``argv: [/usr/local/bin/chime, --person, "{person}"]``: each ``{name}`` is replaced by the
command's field ``name`` *inside its own argument*, so a value with spaces or shell characters
stays one argument and is never interpreted. The full command is also given to the program as
JSON on its standard input. The program is killed after ``timeout_s``. Exit status 0 acks
``ok: true`` with the (truncated) output; anything else acks ``ok: false`` and is journaled as
``command_failed`` with the end of its stderr.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from iotrt.node import Node, NodeSpec, Param
from iotrt.nodes.action.actuator import CommandRefused, DriverError, fill, has_fields, serve

OUTPUT_LIMIT = 2048  # bytes of stdout/stderr kept in the ack and the journal

SPEC = NodeSpec(
    doc="run a program (argv list, no shell) for each command, with a timeout",
    commands_in={"commands": "a map; its fields fill {name} placeholders in argv"},
    params=[
        Param("argv", list, doc="program and arguments, e.g. [/usr/bin/aplay, chime.wav]"),
        Param("timeout_s", float, 10.0, "kill the program after this long", min=0.01),
        Param("cwd", str, "", "working directory (default: the graph file's folder)"),
    ],
)


def _tail(data: bytes) -> str:
    return data[-OUTPUT_LIMIT:].decode("utf-8", "replace")


class RunProgram:
    def __init__(self, argv: list, timeout_s: float = 10.0, cwd: str | None = None) -> None:
        if not argv or not all(isinstance(a, (str, int, float)) for a in argv):
            raise ValueError(f"argv must be a non-empty list of strings, got {argv!r}")
        self.argv = [str(a) for a in argv]
        if has_fields(self.argv[0]):
            raise ValueError(f"argv[0] {self.argv[0]!r}: the program cannot come from a "
                             f"command's fields; placeholders go in the arguments")
        if shutil.which(self.argv[0]) is None:
            raise ValueError(f"argv[0] {self.argv[0]!r} is not an executable program (give "
                             f"an absolute path or a name on PATH)")
        self.timeout_s, self.cwd = timeout_s, cwd or None

    def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        argv = [self.argv[0]]
        for template in self.argv[1:]:
            arg = fill(template, command, "argument")
            # A field that becomes a whole argument must not turn into an option of the program
            # ("--output=/etc/x"); a template that itself starts with "-" is the graph's choice.
            if has_fields(template) and arg.startswith("-") and not template.startswith("-"):
                raise CommandRefused(f"argument {template!r} would start with '-' ({arg!r}): "
                                     f"a command's field cannot add an option")
            argv.append(arg)
        try:
            stdin = json.dumps(command, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise CommandRefused(f"the command cannot be passed as JSON: {exc}") from exc
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, cwd=self.cwd,
                                  timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise DriverError(f"{argv[0]} did not finish within {self.timeout_s:g} s and was "
                              f"killed") from exc
        except OSError as exc:
            raise DriverError(f"cannot run {argv[0]}: {exc}") from exc
        if done.returncode != 0:
            raise DriverError(f"{argv[0]} exited with status {done.returncode}: "
                              f"{_tail(done.stderr).strip()}")
        return {"returncode": 0, "stdout": _tail(done.stdout)}

    def close(self) -> None:
        pass  # each program runs to completion (or is killed) inside apply


def main(node: Node) -> None:
    p = node.params
    serve(node, lambda: RunProgram(p["argv"], p["timeout_s"], p["cwd"]))
