"""The door's rules in a real graph under `iotrt up`: identity stand-in -> rules -> sim lock.

Checks the whole path a user relies on: the rule node unlocks the (sim) lock for an enrolled
face, never for an unknown one, journals every step, and `iotrt reload` of a broken rules file
keeps the running rules.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import wait_for

from iotrt.journal import JOURNAL_FILE, JournalReader

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).parent / "nodes" / "faces_source.py"

GRAPH = """\
name: rulesdoor
supervisor: {{heartbeat_s: 0.5}}
nodes:
  - id: identity
    run: {source}
    params: {{face_file: {face_file}, period_s: 0.05}}
  - id: rules
    kind: rules
    params: {{rules: door.rules.yaml}}
    inputs: {{faces: identity/faces}}
  - id: door
    kind: lock
    params: {{driver: sim, max_unlock_s: 10}}
    commands: {{commands: rules/lock}}
  - id: phone
    kind: log
    commands: {{commands: rules/doorbell}}
"""


@pytest.fixture
def graph(tmp_path):
    run_root = Path(tempfile.mkdtemp(prefix="iotrt-g", dir="/tmp"))  # short ipc paths
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env.update(IOTRT_RUNTIME_DIR=str(run_root), IOTRT_STATE_DIR=str(tmp_path / "state"))
    face = tmp_path / "face.txt"
    face.write_text("")
    shutil.copy(ROOT / "configs" / "door.rules.yaml", tmp_path / "door.rules.yaml")
    path = tmp_path / "door.yaml"
    path.write_text(GRAPH.format(source=SOURCE, face_file=face))
    log = open(tmp_path / "up.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "iotrt", "up", str(path)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        yield proc, env, face, tmp_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        shutil.rmtree(run_root, ignore_errors=True)


def events(tmp_path: Path, kind: str, rule: str | None = None):
    journal = next((tmp_path / "state").rglob(JOURNAL_FILE), None)
    if journal is None:
        return []
    reader = JournalReader(journal)
    try:
        return reader.query(kind=kind, rule=rule)
    finally:
        reader.close()


def test_door_rules_in_a_running_graph(graph):
    proc, env, face, tmp_path = graph
    log = tmp_path / "up.log"
    wait_for(lambda: "rule(s) loaded" in log.read_text(), 30, f"the rules node:\n{log.read_text()}")
    # a visitor: announced through the notifier, the lock is never commanded
    face.write_text("unknown")
    wait_for(lambda: events(tmp_path, "rule_fired", "visitor"), 20, "the visitor rule")
    wait_for(lambda: events(tmp_path, "command_acked", "visitor"), 10, "the notification's ack")
    assert events(tmp_path, "command_sent", "unlock_for_enrolled") == []
    # the owner: the lock applies an unlock with a duration, then the ack is journaled
    face.write_text("owner")
    applied = wait_for(lambda: [e for e in events(tmp_path, "command_applied")
                                if e.node == "door"], 20, "the lock applying the unlock")
    assert applied[0].fields["command"]["action"] == "unlock"
    assert applied[0].fields["command"]["duration_s"] == 5
    wait_for(lambda: events(tmp_path, "command_acked", "unlock_for_enrolled"), 10, "the ack")
    # a broken rules file on `iotrt reload`: refused, the running rules stay
    face.write_text("")
    (tmp_path / "door.rules.yaml").write_text("rules:\n  - id: x\n    trigger: faces\n")
    out = subprocess.run([sys.executable, "-m", "iotrt", "reload", "--graph",
                          str(tmp_path / "door.yaml")], env=env, capture_output=True, text=True)
    assert out.returncode == 1, out.stdout + out.stderr          # reload waits for the answer
    assert "door.rules.yaml:2: rule 'x' needs 'actions'" in out.stderr
    failed = wait_for(lambda: events(tmp_path, "rules_reload_failed"), 10, "the refused reload")
    assert "door.rules.yaml:2: rule 'x' needs 'actions'" in failed[0].fields["problems"][0]
    before = len(events(tmp_path, "rule_fired", "unlock_for_enrolled"))
    face.write_text("owner")  # fires again once the rule's 4 s cooldown has passed
    wait_for(lambda: len(events(tmp_path, "rule_fired", "unlock_for_enrolled")) > before, 20,
             "the old rules still unlocking after the refused reload")
    assert proc.poll() is None


BROKEN_GRAPH = """\
name: brokenrules
nodes:
  - id: rules
    kind: rules
    params: {rules: door.rules.yaml}
  - id: door
    kind: lock
    params: {driver: sim, max_unlock_s: 10}
    commands: {commands: rules/lock}
"""


def test_validate_and_up_report_the_rules_file_problems_and_start_nothing(tmp_path, capsys):
    import psutil

    from iotrt.cli import main
    from iotrt.graph import GraphError, load_graph

    graph = tmp_path / "door.yaml"
    graph.write_text(BROKEN_GRAPH)
    rules = tmp_path / "door.rules.yaml"
    rules.write_text("rules:\n  - id: a\n    trigger: faces\n    mode: often\n"
                     "    actions: [{command: lock, args: {n: '${msg.n +}'}}]\n")
    load_graph(graph)  # `iotrt reload`, `down`, `events` must work with a broken rules file
    with pytest.raises(GraphError) as err:
        load_graph(graph, check_node_files=True)
    shown = [str(i) for i in err.value.issues]
    assert any(s.startswith(f"{rules}:4: mode must be one of") for s in shown), shown
    assert main(["validate", str(graph)]) == 1
    assert f"{rules}:4: mode must be one of" in capsys.readouterr().err
    assert main(["up", str(graph)]) == 1
    printed = capsys.readouterr().err
    assert f"{rules}:4: " in printed and "nothing was started" in printed
    assert psutil.Process().children() == []
    rules.write_text("rules:\n  - {id: a, trigger: faces, actions: [{command: lock, args: {}}]}\n")
    assert main(["validate", str(graph)]) == 0
    assert "OK" in capsys.readouterr().out
