"""`iotrt rules check|test`: offline runs of rules against messages."""

from __future__ import annotations

import json
from pathlib import Path

from iotrt.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOOR = str(ROOT / "configs" / "door.rules.yaml")

VISIT = """\
- {t: 0.0, topic: faces, data: {faces: [{name: owner, score: 0.93, known: true}]}}
- {t: 0.1, topic: faces, data: {faces: [{name: owner, score: 0.95, known: true}]}}
- {t: 0.2, topic: faces, data: {faces: []}}
- {t: 5.0, topic: faces, data: {faces: [{name: unknown, score: 0.6, known: false}]}}
- {t: 5.1, topic: faces, data: {faces: [{name: unknown, score: 0.6, known: false}]}}
- {t: 5.2, topic: faces, data: {faces: [{name: unknown, score: 0.7, known: false}]}}
"""


def test_door_rules_on_a_visit(tmp_path, capsys):
    msgs = tmp_path / "visit.yaml"
    msgs.write_text(VISIT)
    assert main(["rules", "test", DOOR, "--input", str(msgs)]) == 0
    out = capsys.readouterr().out.splitlines()
    fired = [line.split() for line in out if " fired " in line]
    assert [(f[0], f[1]) for f in fired] == [("0.100s", "unlock_for_enrolled"), ("5.200s", "visitor")]
    assert any('command lock {"action": "unlock", "duration_s": 5, "who": "owner"}' in line
               for line in out)
    assert any("notify doorbell" in line and "not enrolled" in line for line in out)
    assert out[-1] == "-- 6 message(s): unlock_for_enrolled x1, visitor x1"


def test_json_output_and_all(tmp_path, capsys):
    msgs = tmp_path / "visit.yaml"
    msgs.write_text(VISIT + "- {t: 0.3, topic: faces, data: {faces: [{name: owner, score: 0.9, known: true}]}}\n"
                    .replace("0.3", "5.3"))
    assert main(["rules", "test", DOOR, "--input", str(msgs), "--json", "--all"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["kind"] for r in rows} >= {"fired", "command", "publish"}
    assert rows[0] == {"t": 0.1, "kind": "fired", "rule": "unlock_for_enrolled",
                       "trigger": "message faces", "queued": False}


def test_delays_absences_and_time_of_day_on_the_simulated_clock(tmp_path, capsys):
    rules = tmp_path / "r.yaml"
    rules.write_text("""\
rules:
  - id: porch_light
    trigger: {at: "07:30"}
    actions: [{command: light, args: {on: false}}]
  - id: camera_silent
    trigger: {absent: frames, for: 30s}
    actions:
      - notify: webhook
        message: camera silent
      - delay: 1min
      - log: still silent?
""")
    msgs = tmp_path / "m.jsonl"
    msgs.write_text('{"stamp_ns": 1000000000, "topic": "frames", "data": {}}\n'
                    '{"stamp_ns": 2000000000, "topic": "frames", "data": {}}\n')
    code = main(["rules", "test", str(rules), "--input", str(msgs), "--until", "120",
                 "--start", "2026-05-01T07:29:30", "--all"])
    assert code == 0
    out = capsys.readouterr().out
    assert "   30.000s  porch_light            fired (at 07:30:00)" in out
    assert "   31.000s  camera_silent          fired (no message on frames for 30s)" in out
    assert "   91.000s  camera_silent            log still silent?" in out


def test_invalid_rules_exit_1_with_file_and_line(tmp_path, capsys):
    rules = tmp_path / "bad.yaml"
    rules.write_text("rules:\n  - id: a\n    trigger: m\n    condition: msg.__class__\n"
                     "    actions: [{log: x}]\n")
    msgs = tmp_path / "m.yaml"
    msgs.write_text("[]\n")
    assert main(["rules", "test", str(rules), "--input", str(msgs)]) == 1
    err = capsys.readouterr().err
    assert f"{rules}:4: condition: attributes starting with '_'" in err


def test_invalid_messages_exit_1_with_file_and_line(tmp_path, capsys):
    msgs = tmp_path / "m.yaml"
    msgs.write_text("- {t: 1, topic: faces, data: {}}\n- {t: 0.5, topic: faces}\n"
                    "- {t: 2, topc: faces}\n")
    assert main(["rules", "test", DOOR, "--input", str(msgs)]) == 1
    err = capsys.readouterr().err
    assert f"{msgs}:2: t=0.5 goes back in time" in err
    assert f"{msgs}:3: unknown keys ['topc']" in err


def test_check_lists_rules(capsys):
    assert main(["rules", "check", DOOR]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: 4 rule(s)")
    assert "door.rules.yaml:6" in out


def test_reads_what_iotrt_echo_printed(tmp_path, capsys):
    recorded = tmp_path / "faces.log"
    recorded.write_text(
        '--- identity/faces seq=7 src=identity age=1.2ms\n'
        '{"faces": [{"name": "owner", "score": 0.9, "known": true}]}\n'
        '--- identity/faces seq=8 src=identity age=1.1ms\n'
        '{"faces": [{"name": "owner", "score": 0.91, "known": true}]}\n')
    assert main(["rules", "test", DOOR, "--input", str(recorded)]) == 0
    out = capsys.readouterr().out
    assert "    0.100s  unlock_for_enrolled    fired (message faces)" in out
    recorded.write_text("--- identity/faces seq=7 src=identity age=1.2ms\n{not json\n")
    assert main(["rules", "test", DOOR, "--input", str(recorded)]) == 1
    assert f"{recorded}:2: bad JSON after line 1" in capsys.readouterr().err


def test_all_shows_state_changes_and_now(tmp_path, capsys):
    rules = tmp_path / "r.yaml"
    rules.write_text("""\
state: {visits: 0}
rules:
  - id: count
    trigger: faces
    condition: len(msg.faces) > 0
    actions:
      - set: {visits: "${state.visits + 1}", seen_at: "${now}"}
  - id: gone
    trigger: {interval: 10s}
    condition: state.get("seen_at") is not None and now - state.seen_at > 8
    actions: [{set: {seen_at: null}}]
""")
    msgs = tmp_path / "m.yaml"
    msgs.write_text(VISIT)
    assert main(["rules", "test", str(rules), "--input", str(msgs), "--until", "20"]) == 0
    assert " set " not in capsys.readouterr().out  # only with --all
    assert main(["rules", "test", str(rules), "--input", str(msgs), "--until", "20", "--all"]) == 0
    sets = [line.split(None, 2) for line in capsys.readouterr().out.splitlines() if " set " in line]
    assert sets == [["0.000s", "count", "set visits = 1, seen_at = 0.0"],
                    ["5.000s", "count", "set visits = 2, seen_at = 5.0"],
                    ["20.000s", "gone", "set seen_at = null"]]
