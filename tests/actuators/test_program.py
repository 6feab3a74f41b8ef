"""The `program` actuator: real programs, argv only, timeouts."""

from __future__ import annotations

import json
import sys
import time

import pytest

from iotrt.nodes.action.actuator import execute
from iotrt.nodes.action.program import RunProgram

ECHO = "import json, sys; print(json.dumps({'argv': sys.argv[1:], 'stdin': sys.stdin.read()}))"


def test_fields_fill_whole_arguments_and_no_shell_runs():
    cmd = RunProgram([sys.executable, "-c", ECHO, "--who", "{person}", "{n}"])
    evil = "ana; touch /tmp/iotrt-pwned $(reboot) `id`"
    kind, ack = execute(cmd, {"person": evil, "n": 3})
    assert kind == "command_applied" and ack["returncode"] == 0
    out = json.loads(ack["stdout"])
    assert out["argv"] == ["--who", evil, "3"]  # one argument, never interpreted
    assert json.loads(out["stdin"]) == {"person": evil, "n": 3}


def test_failure_and_timeout_are_reported():
    failing = RunProgram([sys.executable, "-c", "import sys; sys.exit('jammed')"])
    kind, ack = execute(failing, {})
    assert kind == "command_failed" and "exited with status 1: jammed" in ack["error"]
    slow = RunProgram([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.3)
    t0 = time.monotonic()
    kind, ack = execute(slow, {})
    assert kind == "command_failed" and "did not finish within 0.3 s" in ack["error"]
    assert time.monotonic() - t0 < 5  # killed, not waited for


def test_bad_configuration_and_commands():
    with pytest.raises(ValueError, match="not an executable"):
        RunProgram(["no-such-program-iotrt"])
    with pytest.raises(ValueError, match="non-empty list"):
        RunProgram([])
    with pytest.raises(ValueError, match="cannot come from a command's fields"):
        RunProgram(["{program}", "x"])
    kind, ack = execute(RunProgram([sys.executable, "{script}"]), {"other": 1})
    assert kind == "command_refused" and "needs the field 'script'" in ack["error"]


def test_output_is_truncated():
    cmd = RunProgram([sys.executable, "-c", "print('x' * 100000)"])
    _, ack = execute(cmd, {})
    assert ack["ok"] and 0 < len(ack["stdout"]) <= 2048


def test_a_field_cannot_smuggle_in_an_option():
    cmd = RunProgram([sys.executable, "-c", ECHO, "{person}", "--tag={tag}"])
    kind, ack = execute(cmd, {"person": "--output=/etc/passwd", "tag": "x"})
    assert kind == "command_refused" and "cannot add an option" in ack["error"]
    kind, ack = execute(cmd, {"person": "ana", "tag": "-v"})     # inside the graph's own option
    assert kind == "command_applied"
    assert json.loads(ack["stdout"])["argv"] == ["ana", "--tag=-v"]


@pytest.mark.parametrize("value", [b"\x00raw", float("nan"), float("inf"), {"deep": [b"x"]}])
def test_a_field_json_cannot_carry_is_refused_not_a_crash(value):
    """Commands arrive over msgpack, which carries bytes and NaN: a field that has no
    faithful text form refuses the command (journaled) instead of ending the node."""
    cmd = RunProgram([sys.executable, "-c", ECHO, "{v}"])
    kind, ack = execute(cmd, {"v": value})
    assert kind == "command_refused" and "field 'v'" in ack["error"]


# `kind: command` is the program actuator's former name: it must keep working exactly as
# `kind: program` (same module, params, behaviour), with a one-line note from each verb that
# reads the graph file.
FORMER_KIND_GRAPH = """
    name: progtest
    nodes:
      - id: old
        kind: command
        params: {argv: [%(python)s, echo.py, "{person}"]}
      - id: new
        kind: program
        params: {argv: [%(python)s, echo.py, "{person}"]}
""" % {"python": sys.executable}


def test_the_former_kind_name_validates_as_program_with_a_note(tmp_path, capsys):
    import textwrap

    from iotrt.cli import main
    from iotrt.graph import load_graph

    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(FORMER_KIND_GRAPH))
    env = {"IOTRT_RUNTIME_DIR": "/tmp/iotrt-prog", "IOTRT_STATE_DIR": str(tmp_path / "state")}
    graph = load_graph(path, environ=env)
    old, new = graph.nodes["old"], graph.nodes["new"]
    assert (old.kind, old.target, old.params) == (new.kind, new.target, new.params)
    assert old.kind == "program" and old.target == "iotrt.nodes.action.program"
    assert [str(n) for n in graph.notes] == [
        f"{path}:5: note: node 'old': kind 'command' is now called 'program' (it works as "
        f"before; write 'kind: program' to silence this note)"]

    capsys.readouterr()
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr()
    assert out.err.count("note:") == 1 and f"{path}:5: note: node 'old': kind 'command'" in out.err
    assert "OK (graph 'progtest', 2 nodes" in out.out


def test_the_former_kind_name_runs_as_program_under_up(supervised, h):
    from iotrt.command import CommandClient

    sup = supervised(FORMER_KIND_GRAPH, files={"echo.py": ECHO})
    for node in ("old", "new"):
        with CommandClient(sup.command_address(node)) as client:
            ack = h.wait_for(lambda c=client: c.call({"person": "ana"}, timeout_s=0.5,
                                                     retries=40), timeout=30,
                             what=f"the {node} program actuator to answer")
        assert ack["ok"] and json.loads(ack["stdout"])["argv"] == ["ana"], ack
    sup.wait_log("note: node 'old': kind 'command' is now called 'program'")
    assert sup.text.count("note:") == 1, sup.text


# Every verb that reads a graph file says so once, on stderr; what scripts read on stdout (a
# drawing, a unit, a verb's answers) is the same as for `kind: program`.
def _former_kind_file(tmp_path):
    import textwrap

    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(FORMER_KIND_GRAPH))
    return path


def _former_kind_note(path) -> str:
    return (f"{path}:5: note: node 'old': kind 'command' is now called 'program' (it works as "
            f"before; write 'kind: program' to silence this note)")


@pytest.mark.parametrize("fmt", ["mermaid", "dot"])
def test_iotrt_graph_notes_the_former_kind_name_on_stderr_not_in_the_drawing(tmp_path, capsys,
                                                                             fmt):
    from iotrt.cli import main
    from iotrt.graph import load_graph
    from iotrt.verbs.graph import FORMATS

    path = _former_kind_file(tmp_path)
    capsys.readouterr()
    assert main(["graph", str(path), "--format", fmt]) == 0
    out = capsys.readouterr()
    assert out.err.splitlines() == [_former_kind_note(path)]
    assert out.out == FORMATS[fmt](load_graph(path)) + "\n"
    assert out.out.startswith("flowchart LR\n" if fmt == "mermaid" else 'digraph "progtest" {\n')
    assert "(program)" in out.out and "note:" not in out.out


def test_iotrt_unit_notes_the_former_kind_name_on_stderr_not_in_the_unit(tmp_path, capsys):
    from iotrt.cli import main
    from iotrt.graph import load_graph
    from iotrt.verbs.unit import render

    path = _former_kind_file(tmp_path)
    python = "/opt/iotrt/venv/bin/python"
    capsys.readouterr()
    assert main(["unit", str(path), "--python", python]) == 0
    out = capsys.readouterr()
    assert out.err.splitlines() == [_former_kind_note(path)]
    assert out.out == render(load_graph(path), python=python)
    assert f"ExecStart={python} -m iotrt up {path}" in out.out and "note:" not in out.out


def test_iotrt_reload_notes_the_former_kind_name_on_stderr(supervised):
    import subprocess

    sup = supervised(FORMER_KIND_GRAPH, files={"echo.py": ECHO})
    sup.wait_log("all 2 nodes up", 60)
    done = subprocess.run([sys.executable, "-m", "iotrt", "reload", "old", "-g", str(sup.path)],
                          env=sup.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.splitlines() == [_former_kind_note(sup.path)]
    assert done.stdout == "reload sent to old\n"     # not reloadable: no answer to wait for


def test_the_former_module_path_runs_the_program_actuator_with_a_note(tmp_path):
    """A graph may name a built-in node by module (`run:`); the former module path of the
    program actuator keeps working, with the same kind of note."""
    import textwrap

    from iotrt.graph import load_graph

    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent("""
        name: progtest
        nodes:
          - id: old
            run: iotrt.nodes.action.command
            params: {argv: [%s, echo.py]}
    """ % sys.executable))
    env = {"IOTRT_RUNTIME_DIR": "/tmp/iotrt-prog", "IOTRT_STATE_DIR": str(tmp_path / "state")}
    graph = load_graph(path, environ=env)
    assert graph.nodes["old"].target == "iotrt.nodes.action.program"
    assert [str(n) for n in graph.notes] == [
        f"{path}:5: note: node 'old': module 'iotrt.nodes.action.command' is now "
        f"'iotrt.nodes.action.program' (it works as before; write "
        f"'run: iotrt.nodes.action.program' to silence this note)"]
