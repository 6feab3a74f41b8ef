"""The console's decision lines (iotrt.console): concise, and safe with whatever a node sends."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from iotrt.console import decision_line


def test_decision_lines():
    assert decision_line("faces_seen", "who", {"known": ["owner"], "unknown": 0, "faces": 1}) \
        == "who: recognised owner"
    assert decision_line("faces_seen", "who", {"known": [], "unknown": 2}) == "who: 2 unknown faces"
    assert decision_line("faces_seen", "who", {"known": [], "unknown": 0}) is None
    assert decision_line("command_sent", "rules", {
        "rule": "unlock", "output": "lock", "label": "command",
        "data": {"action": "unlock", "duration_s": 5, "who": "owner"}}) \
        == "rules: rule unlock -> lock: unlock duration_s=5 who=owner"
    assert decision_line("command_sent", "rules", {
        "rule": "visitor", "output": "doorbell", "label": "notify",
        "data": {"event": "visitor"}}) == "rules: rule visitor -> doorbell: notify"
    assert decision_line("command_applied", "lock", {
        "command": {"action": "unlock", "who": "owner"},
        "result": {"ok": True, "state": "unlocked", "relock_in_s": 5.0}}) \
        == "lock: unlocked for 5 s (owner)"
    assert decision_line("actuator_state", "lock", {"locked": True, "cause": "timeout"}) \
        == "lock: re-locked (timeout)"
    assert decision_line("command_applied", "snapshot", {"result": {"path": "/s/1.jpg"}}) \
        == "snapshot: saved /s/1.jpg"
    # not decisions: acknowledgements, receipts, lifecycle, anything unknown
    for kind in ("command_received", "command_acked", "lifecycle", "web_listening", "x"):
        assert decision_line(kind, "n", {"result": {"path": "/p"}}) is None


def test_hostile_records_give_bounded_printable_lines():
    evil = "\x1b[2J\x1b]0;pwned\x07" + "A" * 10_000
    for kind, fields in [
        ("faces_seen", {"known": [evil] * 1000, "unknown": 2 ** 64}),
        ("faces_seen", {"known": "owner", "unknown": float("nan")}),
        ("command_sent", {"rule": evil, "output": [1], "data": {evil: evil}, "label": 3}),
        ("command_applied", {"result": {"state": evil, "relock_in_s": float("inf")},
                             "command": {"who": evil}}),
        ("command_applied", {"result": {"path": evil}}),
        ("command_applied", {"result": "nope"}),
        ("actuator_state", {"locked": "yes"}),
        ("command_failed", {}),
        ("rules_reloaded", {"rules": 7}),
        ("rule_error", {"rule": None, "error": evil}),
    ]:
        line = decision_line(kind, evil, fields)
        if line is not None:
            assert line.isprintable() and len(line) < 700, (kind, line[:100])
    assert decision_line("faces_seen", "who", {"known": "owner", "unknown": 2 ** 64}) \
        == "who: 18446744073709551616 unknown faces"   # shown as sent, never raises


def test_log_lines_carry_a_time_unless_journald_stamps_them():
    code = "from iotrt.console import setup_logging; import logging; setup_logging(); " \
           "logging.getLogger('iotrt.x').info('hello')"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    plain = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} INFO iotrt\.x: hello\n", plain.stderr)
    journald = subprocess.run([sys.executable, "-c", code], env={**env, "JOURNAL_STREAM": "8:9"},
                              capture_output=True, text=True)
    assert journald.stderr == "INFO iotrt.x: hello\n"
