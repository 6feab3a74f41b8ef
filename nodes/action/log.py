"""Log actuator: write each command to the node's log (and, optionally, a JSON-lines file).

Useful as the action of a rule while it is being tried out, and as the simplest example of an
actuator. Every command is journaled like any other, so ``iotrt events`` shows it too.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from iotrt.node import Node, NodeSpec, Param
from iotrt.nodes.action.actuator import serve

SPEC = NodeSpec(
    doc="log each command (and append it to a JSON-lines file if one is given)",
    commands_in={"commands": "any map"},
    params=[
        Param("level", str, "info", "log level", choices=("debug", "info", "warning", "error")),
        Param("file", str, "", "also append each command to this JSON-lines file"),
    ],
)


class LogCommands:
    def __init__(self, logger: logging.Logger, level: str = "info", file: str = "") -> None:
        self.logger, self.level = logger, getattr(logging, level.upper())
        self._file = None
        if file:
            Path(file).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(file, "a", encoding="utf-8")

    def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        text = json.dumps(command, default=str, ensure_ascii=False)
        self.logger.log(self.level, "command %s", text)
        if self._file is not None:
            self._file.write(json.dumps({"t_ns": time.time_ns(), "command": command},
                                        default=str, ensure_ascii=False) + "\n")
            self._file.flush()
        return {"logged": True}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def main(node: Node) -> None:
    serve(node, lambda: LogCommands(node.log, node.params["level"], node.params["file"]))
