"""Log actuator."""

from __future__ import annotations

import json
import logging

from iotrt.nodes.action.actuator import execute
from iotrt.nodes.action.log import LogCommands


def test_logs_and_appends(tmp_path, caplog):
    logger = logging.getLogger("iotrt.test.log")
    sink = LogCommands(logger, "warning", str(tmp_path / "out" / "commands.jsonl"))
    with caplog.at_level(logging.WARNING, logger="iotrt.test.log"):
        kind, ack = execute(sink, {"person": "ana", "score": 0.9})
    sink.close()
    assert kind == "command_applied" and ack == {"ok": True, "logged": True}
    assert '"person": "ana"' in caplog.text
    (row,) = [json.loads(x) for x in (tmp_path / "out" / "commands.jsonl").read_text().splitlines()]
    assert row["command"] == {"person": "ana", "score": 0.9} and row["t_ns"] > 0
