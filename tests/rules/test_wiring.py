"""Rules checked against the graph's wiring of their node (`iotrt validate`, `rules check`).

Each test copies the shipped door graph and its rules into a temp folder, makes one mistake
a user makes, and expects it reported at the rules file's (or the graph's) file:line.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from iotrt.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def door(tmp_path: Path) -> Path:
    for name in ("door.yaml", "door.rules.yaml", "door.gallery.npz"):
        shutil.copy(CONFIGS / name, tmp_path / name)
    return tmp_path


def edit(path: Path, old: str, new: str) -> int:
    """Replace the first line containing `old` (in the part of it that matches); its line."""
    lines = path.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if old in line:
            lines[i] = line.replace(old, new, 1)
            path.write_text("".join(lines))
            return i + 1
    raise AssertionError(f"{old!r} not in {path}")


def problems(capsys) -> list[str]:
    err = capsys.readouterr().err
    return [line.strip() for line in err.splitlines() if ": rule '" in line or ": node '" in line]


def test_the_shipped_door_graph_is_wired_right(door, capsys):
    assert main(["validate", str(door / "door.yaml")]) == 0
    assert main(["rules", "check", str(door / "door.rules.yaml"),
                 "--graph", str(door / "door.yaml")]) == 0
    assert "wired as in" in capsys.readouterr().out


def test_a_trigger_on_a_misspelt_input(door, capsys):
    line = edit(door / "door.rules.yaml", "trigger: {message: faces}", "trigger: {message: face}")
    for argv in (["validate", str(door / "door.yaml")],
                 ["rules", "check", str(door / "door.rules.yaml"), "--graph", str(door / "door.yaml")]):
        assert main(argv) == 1
        (problem,) = problems(capsys)
        assert problem.endswith("(did you mean 'faces'?)")
        assert f"door.rules.yaml:{line}: rule 'unlock_for_enrolled' triggers on 'face', " \
               "which is not an input of node 'rules'" in problem


def test_a_trigger_may_name_the_input_or_its_topic(door, capsys):
    edit(door / "door.rules.yaml", "trigger: {message: faces}", "trigger: {message: who/faces}")
    assert main(["validate", str(door / "door.yaml")]) == 0


def test_a_command_to_an_unwired_output(door, capsys):
    line = edit(door / "door.rules.yaml", "- command: snapshot", "- command: snapshots")
    assert main(["validate", str(door / "door.yaml")]) == 1
    (problem,) = problems(capsys)
    assert f"door.rules.yaml:{line}: rule 'visitor' sends command 'snapshots'" in problem
    assert problem.endswith("(did you mean 'snapshot'?)")


def test_a_port_unlike_any_wired_one_is_a_note(door, capsys):
    # The doorbell is not in this graph: one rules file serves graphs with and without it.
    edit(door / "door.yaml", "commands: {commands: rules/doorbell}", "commands: {}")
    line = next(i for i, text in enumerate((door / "door.rules.yaml").read_text().splitlines(), 1)
                if "notify: doorbell" in text)
    assert main(["validate", str(door / "door.yaml")]) == 0
    capsys.readouterr()
    assert main(["rules", "check", str(door / "door.rules.yaml"),
                 "--graph", str(door / "door.yaml")]) == 0
    assert f"door.rules.yaml:{line}: rule 'visitor' sends notify 'doorbell', but no " \
           "actuator's command input is wired to rules/doorbell" in capsys.readouterr().out


def test_a_publish_on_an_undeclared_output(door, capsys):
    line = edit(door / "door.rules.yaml", "- publish: events", "- publish: event")
    assert main(["rules", "check", str(door / "door.rules.yaml"),
                 "--graph", str(door / "door.yaml")]) == 1
    (problem,) = problems(capsys)
    assert f"door.rules.yaml:{line}: rule 'unlock_for_enrolled' publishes on 'event', which is " \
           "not an output of node 'rules' (outputs: events, decisions, clip)" in problem
    assert problem.endswith("(did you mean 'events'?)")


def test_a_missing_rules_file_is_reported_at_the_graph_line(door, capsys):
    line = edit(door / "door.yaml", "rules: door.rules.yaml", "rules: door.rule.yaml")
    assert main(["validate", str(door / "door.yaml")]) == 1
    (problem,) = problems(capsys)
    assert f"door.yaml:{line}: node 'rules': rules file 'door.rule.yaml' does not exist" in problem
    assert problem.endswith("(did you mean 'door.rules.yaml'?)")


def test_rules_check_needs_a_node_running_the_file(door, capsys):
    other = door / "other.rules.yaml"
    shutil.copy(door / "door.rules.yaml", other)
    assert main(["rules", "check", str(other), "--graph", str(door / "door.yaml")]) == 1
    assert "no rules node of this graph runs" in capsys.readouterr().err


def test_a_misspelt_message_field(door, capsys):
    line = edit(door / "door.rules.yaml", "for f in msg.faces)", "for f in msg.face)")
    assert main(["validate", str(door / "door.yaml")]) == 1
    (problem,) = problems(capsys)
    assert f"door.rules.yaml:{line}: rule 'unlock_for_enrolled' reads msg.face, but the " \
           "messages it triggers on have the fields faces, known," in problem
    assert problem.endswith("(did you mean 'faces'?)")


def test_fields_are_read_from_the_feeding_nodes_spec():
    from iotrt.nodes.action.rules import message_fields
    from iotrt.nodes.perception.identity import SPEC

    assert {"faces", "known", "unknown", "people", "visitors"} <= message_fields(
        SPEC.outputs["faces"])
    assert message_fields("{locked: bool, relock_in_s: float | None, cause: str}") == {
        "locked", "relock_in_s", "cause"}
    assert message_fields("{speeds: {name: -1..1}, cause: str}") == {"speeds", "cause"}
    # not a documented mapping: nothing is known, nothing is checked
    assert message_fields("faces {boxes, scores} or classes {top}") is None
    assert message_fields("RGB uint8 frame (H, W, 3)") is None
    assert message_fields("{x + y}") is None
