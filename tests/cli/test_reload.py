"""`iotrt reload` waits for each rules node's answer: "reloaded N rules", or the problems at
file:line and a non-zero exit; a node that is not a rules node only gets the signal."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from helpers import Up

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "rules" / "nodes" / "faces_source.py"

GRAPH = f"""\
name: reloaddoor
supervisor: {{heartbeat_s: 0.5}}
nodes:
  - id: identity
    run: {SOURCE}
    params: {{face_file: face.txt, period_s: 0.2}}
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


def test_reload_reports_the_rules_nodes_answer(env, tmp_path):
    (tmp_path / "face.txt").write_text("")
    rules = tmp_path / "door.rules.yaml"
    shutil.copy(ROOT / "configs" / "door.rules.yaml", rules)
    graph = tmp_path / "door.yaml"
    graph.write_text(GRAPH)
    u = Up(graph, env, tmp_path / "up.log")
    try:
        u.wait_log("all 4 nodes up", 60)
        run = _cli(env)
        ok = run("reload", "-g", str(graph))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert f"rules: reloaded 4 rules from {rules.name}" in ok.stdout, ok.stdout

        rules.write_text("rules:\n  - id: x\n    trigger: faces\n")
        bad = run("reload")                              # the only running graph
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert "door.rules.yaml:2: rule 'x' needs 'actions'" in bad.stderr
        assert "the running rules stay" in bad.stderr

        other = run("reload", "door")                    # not a rules node: nothing to wait for
        assert other.returncode == 0 and "reload sent to door" in other.stdout
    finally:
        if u.proc.poll() is None:
            _cli(env)("down", "-g", str(graph))   # a clean stop takes its nodes down with it
        u.close()


def _cli(env):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "iotrt", *args], env=env,
                              capture_output=True, text=True, timeout=60)
    return run


STEPS_NODE = '''\
"""A user's node that re-reads its steps file on reload, and answers as the SPEC says."""
from pathlib import Path

from iotrt.node import NodeSpec, Param

SPEC = NodeSpec(params=[Param("steps", str)], reloadable=True)


def main(node):
    path = Path(node.params["steps"])
    for event in node:
        if event.kind == "reload":
            steps = path.read_text().split()
            if "bad" in steps:
                node.record("steps_reload_failed", file=str(path),
                            problems=[f"{path}:{steps.index('bad') + 1}: 'bad' is not a step"])
            else:
                node.record("steps_reloaded", file=str(path), steps=steps)
'''


def test_a_users_reloadable_node_is_reloaded_and_answers(env, tmp_path):
    # SPEC reloadable=True, not a kind: `iotrt reload` with no node named reloads it and
    # waits for its journal answer, as it does for a rules node.
    (tmp_path / "steps_node.py").write_text(STEPS_NODE)
    steps = tmp_path / "steps.txt"
    steps.write_text("walk\nturn\n")
    graph = tmp_path / "steps.yaml"
    graph.write_text("name: reloadsteps\nnodes:\n  - id: prog\n    run: steps_node.py\n"
                     "    params: {steps: steps.txt}\n")
    u = Up(graph, env, tmp_path / "up.log")
    try:
        u.wait_log("all 1 nodes up", 60)
        run = _cli(env)
        ok = run("reload", "-g", str(graph), "--timeout", "45")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "prog: reloaded 2 steps from steps.txt" in ok.stdout, ok.stdout
        steps.write_text("walk\nbad\n")
        bad = run("reload", "-g", str(graph), "--timeout", "45")
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert "prog: reload of steps.txt failed; the running steps stay" in bad.stderr
        assert "steps.txt:2: 'bad' is not a step" in bad.stderr
    finally:
        if u.proc.poll() is None:
            _cli(env)("down", "-g", str(graph))
        u.close()
