"""Command actuator: real programs, argv only, timeouts."""

from __future__ import annotations

import json
import sys
import time

import pytest

from iotrt.nodes.action.actuator import execute
from iotrt.nodes.action.command import RunCommand

ECHO = "import json, sys; print(json.dumps({'argv': sys.argv[1:], 'stdin': sys.stdin.read()}))"


def test_fields_fill_whole_arguments_and_no_shell_runs():
    cmd = RunCommand([sys.executable, "-c", ECHO, "--who", "{person}", "{n}"])
    evil = "ana; touch /tmp/iotrt-pwned $(reboot) `id`"
    kind, ack = execute(cmd, {"person": evil, "n": 3})
    assert kind == "command_applied" and ack["returncode"] == 0
    out = json.loads(ack["stdout"])
    assert out["argv"] == ["--who", evil, "3"]  # one argument, never interpreted
    assert json.loads(out["stdin"]) == {"person": evil, "n": 3}


def test_failure_and_timeout_are_reported():
    failing = RunCommand([sys.executable, "-c", "import sys; sys.exit('jammed')"])
    kind, ack = execute(failing, {})
    assert kind == "command_failed" and "exited with status 1: jammed" in ack["error"]
    slow = RunCommand([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.3)
    t0 = time.monotonic()
    kind, ack = execute(slow, {})
    assert kind == "command_failed" and "did not finish within 0.3 s" in ack["error"]
    assert time.monotonic() - t0 < 5  # killed, not waited for


def test_bad_configuration_and_commands():
    with pytest.raises(ValueError, match="not an executable"):
        RunCommand(["no-such-program-iotrt"])
    with pytest.raises(ValueError, match="non-empty list"):
        RunCommand([])
    with pytest.raises(ValueError, match="cannot come from a command's fields"):
        RunCommand(["{program}", "x"])
    kind, ack = execute(RunCommand([sys.executable, "{script}"]), {"other": 1})
    assert kind == "command_refused" and "needs the field 'script'" in ack["error"]


def test_output_is_truncated():
    cmd = RunCommand([sys.executable, "-c", "print('x' * 100000)"])
    _, ack = execute(cmd, {})
    assert ack["ok"] and 0 < len(ack["stdout"]) <= 2048


def test_a_field_cannot_smuggle_in_an_option():
    cmd = RunCommand([sys.executable, "-c", ECHO, "{person}", "--tag={tag}"])
    kind, ack = execute(cmd, {"person": "--output=/etc/passwd", "tag": "x"})
    assert kind == "command_refused" and "cannot add an option" in ack["error"]
    kind, ack = execute(cmd, {"person": "ana", "tag": "-v"})     # inside the graph's own option
    assert kind == "command_applied"
    assert json.loads(ack["stdout"])["argv"] == ["ana", "--tag=-v"]


@pytest.mark.parametrize("value", [b"\x00raw", float("nan"), float("inf"), {"deep": [b"x"]}])
def test_a_field_json_cannot_carry_is_refused_not_a_crash(value):
    """Commands arrive over msgpack, which carries bytes and NaN: a field that has no
    faithful text form refuses the command (journaled) instead of ending the node."""
    cmd = RunCommand([sys.executable, "-c", ECHO, "{v}"])
    kind, ack = execute(cmd, {"v": value})
    assert kind == "command_refused" and "field 'v'" in ack["error"]
