"""Graph files: what a valid one turns into, and a table of malformed ones, each reported with
file:line before any process starts."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import psutil
import pytest

from iotrt.cli import main as cli
from iotrt.graph import GraphError, load_graph
from iotrt.verbs.graph import dot, mermaid

GRAPHS = Path(__file__).parent / "graphs"
DOOR = GRAPHS / "door.yaml"


def test_valid_graph_becomes_node_configs(monkeypatch):
    monkeypatch.setenv("IOTRT_RUNTIME_DIR", "/tmp/iotrt-x")
    monkeypatch.setenv("CAM_PERIOD", "0.25")
    g = load_graph(DOOR)
    assert list(g.nodes) == ["cam", "faces", "rules", "door"]
    assert g.runtime_dir == Path("/tmp/iotrt-x/testdoor")
    cam = g.node_config("cam")
    assert cam["params"] == {"behaviour": "run", "after_s": 0.3, "exit_code": 3,
                             "period_s": 0.25, "marker": ""}          # ${ENV} typed, defaults filled
    faces = g.node_config("faces")
    assert faces["inputs"]["in"] == {"address": cam["outputs"]["out"]["address"],
                                     "topic": "cam/out", "queue": 1}
    assert g.nodes["faces"].threads == 2 and g.nodes["faces"].env == {"FACES_MODE": "fast"}
    rules, door = g.node_config("rules"), g.node_config("door")
    assert "queue" not in rules["inputs"]["faces"]                     # the node's default
    assert rules["commands_out"] == {"lock": door["commands_in"]["commands"]}
    assert door["commands_in"]["commands"]["address"] not in {
        o["address"] for c in map(g.node_config, g.nodes) for o in c["outputs"].values()}
    assert g.nodes["door"].restart == "always"
    json.dumps(cam)                                                    # what the env var carries
    addresses = [a for a in g.topics().values()]
    assert all(len(a[len("ipc://"):].encode()) <= 107 for a in addresses)


def test_start_order_follows_inputs_and_commands():
    g = load_graph(DOOR)
    deps = g.dependencies()
    assert deps == {"cam": set(), "faces": {"cam"}, "rules": {"faces", "door"}, "door": set()}


def test_cycles_are_allowed_and_start_together(tmp_path):
    p = tmp_path / "cycle.yaml"
    p.write_text(textwrap.dedent(f"""
        name: cycle
        nodes:
          - id: a
            run: {GRAPHS}/nodes/testnode.py
            inputs: {{in: b/out}}
          - id: b
            run: {GRAPHS}/nodes/testnode.py
            inputs: {{in: a/out}}
          - id: c
            run: {GRAPHS}/nodes/testnode.py
            inputs: {{in: b/out}}
    """))
    assert load_graph(p).dependencies() == {"a": set(), "b": set(), "c": {"b"}}


def test_threads_default_shares_the_cores(tmp_path):
    g = load_graph(DOOR)
    cores = len(os.sched_getaffinity(0))
    assert g.nodes["cam"].threads == max(1, cores // 4)


def test_mermaid_and_dot_show_every_wire():
    g = load_graph(DOOR)
    m = mermaid(g)
    assert m.startswith("flowchart LR")
    assert "n0 -- out → in --> n1" in m and "n2 -. lock .-> n3" in m
    d = dot(g)
    assert '"cam" -> "faces" [label="out → in"];' in d
    assert '"rules" -> "door" [label="lock", style=dashed];' in d


# -- malformed graphs ---------------------------------------------------------------------------
# Each case is a graph whose offending line is marked "# <-"; the error must name that line.
NODE = f"{GRAPHS}/nodes/testnode.py"
BAD = {
    "yaml syntax": ("""
        name: x
        nodes:
          - id: a
            run: {node}
              params: {}   # <-
    """, "YAML syntax error"),
    "empty file": ("", "the file is empty"),
    "duplicate key": ("""
        name: x
        nodes:
          - id: a
            run: {node}
            params: {after_s: 1}
            params: {after_s: 2}   # <-
    """, "duplicate key 'params' (first at line 5)"),
    "unknown top-level key": ("""
        name: x
        nodez:   # <-
          - id: a
    """, "unknown key 'nodez' (did you mean 'nodes'?)"),
    "unknown node key": ("""
        name: x
        nodes:
          - id: a
            run: {node}
            inptus: {in: a/out}   # <-
    """, "unknown key 'inptus' (did you mean 'inputs'?)"),
    "unknown kind": ("""
        name: x
        nodes:
          - id: a
            kind: camra   # <-
    """, "unknown kind 'camra' (did you mean 'camera'?)"),
    "kind and run": ("""
        name: x
        nodes:
          - id: a   # <-
            kind: camera
            run: {node}
    """, "give exactly one of 'kind'"),
    "missing run file": ("""
        name: x
        nodes:
          - id: a
            run: nodes/nope.py   # <-
    """, "no such file"),
    "param type": ("""
        name: x
        nodes:
          - id: a
            run: {node}
            params: {after_s: fast}   # <-
    """, "params.after_s: must be a number, got text 'fast'"),
    "yaml 1.1 boolean for text": ("""
        name: x
        nodes:
          - id: a
            run: {node}
            params:
              marker: off   # <-
    """, "'off' is read as the boolean False by YAML; if you mean the text, quote it"),
    "restart: on": ("""
        name: x
        nodes:
          - id: a
            run: {node}
            restart: on   # <-
    """, "restart: 'on' is read as the boolean True"),
    "unknown param": ("""
        name: x
        nodes:
          - id: a
            run: {node}
            params:
              aftr_s: 1   # <-
    """, "unknown param 'aftr_s' (did you mean 'after_s'?)"),
    "param choice": ("""
        name: x
        nodes:
          - id: a
            run: {node}
            params: {behaviour: crsh}   # <-
    """, "(did you mean 'crash'?)"),
    "input from missing node": ("""
        name: x
        nodes:
          - id: cam
            run: {node}
          - id: b
            run: {node}
            inputs: {in: cma/out}   # <-
    """, "no node 'cma' (did you mean 'cam'?)"),
    "input from missing output": ("""
        name: x
        nodes:
          - id: cam
            run: {node}
          - id: b
            run: {node}
            inputs:
              in: {from: cam/outt, queue: 2}   # <-
    """, "node 'cam' has no output 'outt' (did you mean 'out'?)"),
    "unknown input name": ("""
        name: x
        nodes:
          - id: cam
            run: {node}
            inputs:
              inn: cam/out   # <-
    """, "unknown input 'inn' (did you mean 'in'?)"),
    "duplicate id": ("""
        name: x
        nodes:
          - id: a
            run: {node}
          - id: a   # <-
            run: {node}
    """, "duplicate node id 'a' (first at line 3)"),
    "ipc path too long": ("""
        name: x
        runtime_dir: /tmp/{long}   # <-
        nodes:
          - id: a
            run: {node}
    """, "the limit is 107"),
    "unset environment variable": ("""
        name: x
        nodes:
          - id: a
            run: {node}
            params:
              after_s: ${IOTRT_TEST_UNSET}   # <-
    """, "environment variable IOTRT_TEST_UNSET is not set"),
    "no name": ("""
        nodes:   # <-
          - id: a
            run: {node}
    """, "the graph has no 'name'"),
    "restart policy": ("""
        name: x
        nodes:
          - id: a
            run: {node}
            restart: sometimes   # <-
    """, "'sometimes' is not one of never, on-failure, always"),
    "nodes not a list": ("""
        name: x
        nodes:
          a: {run: x}   # <-
    """, "nodes must be a list"),
    "command from a data output": ("""
        name: x
        nodes:
          - id: rules
            run: {graphs}/nodes/testnode.py
          - id: door
            run: {graphs}/nodes/actuator.py
            commands: {commands: rules/out}   # <-
    """, "node 'rules' has no command output 'out'"),
    "supervisor key": ("""
        name: x
        supervisor:
          heartbeat: 1   # <-
        nodes:
          - id: a
            run: {node}
    """, "unknown key 'heartbeat' (did you mean 'heartbeat_s'?)"),
    "liveness below two heartbeats": ("""
        name: x
        supervisor:
          heartbeat_s: 1
          liveness_s: 1.5   # <-
        nodes:
          - id: a
            run: {node}
    """, "liveness_s (1.5) must be at least twice heartbeat_s (1)"),
    "backoff upside down": ("""
        name: x
        supervisor:
          backoff: {initial_s: 10, max_s: 5}   # <-
        nodes:
          - id: a
            run: {node}
    """, "initial_s (10) is above max_s (5)"),
    "queue zero": ("""
        name: x
        nodes:
          - id: a
            run: {node}
            inputs:
              in: {from: a/out, queue: 0}   # <-
    """, "queue: must be at least 1"),
    "missing cpu": ("""
        name: x
        nodes:
          - id: a
            run: {node}
            cpus: [0, 999]   # <-
    """, "CPU 999 does not exist"),
    "wire without output": ("""
        name: x
        nodes:
          - id: a
            run: {node}
            inputs: {in: a}   # <-
    """, "'a' should be 'node/output'"),
}


def _write(tmp_path: Path, text: str) -> tuple[Path, int]:
    body = (textwrap.dedent(text).lstrip("\n").replace("{node}", NODE)
            .replace("{graphs}", str(GRAPHS)).replace("{long}", "d" * 100))
    p = tmp_path / "bad.yaml"
    p.write_text(body)
    lines = [i + 1 for i, ln in enumerate(body.splitlines()) if "# <-" in ln]
    return p, lines[0] if lines else 1


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_graph_reports_file_line_and_starts_nothing(case, tmp_path, capsys):
    text, expected = BAD[case]
    path, line = _write(tmp_path, text)
    with pytest.raises(GraphError) as err:
        load_graph(path)
    shown = [str(i) for i in err.value.issues]
    at = re.compile(rf"{re.escape(str(path))}:{line}(:\d+)?: ")   # file:line[:column]:
    assert any(at.match(s) and expected in s for s in shown), shown
    assert cli(["up", str(path)]) == 1
    printed = capsys.readouterr().err
    assert at.search(printed) and "nothing was started" in printed
    assert psutil.Process().children() == []


def test_every_problem_is_reported_not_just_the_first(tmp_path):
    path, _ = _write(tmp_path, """
        name: x
        nodes:
          - id: a
            run: {node}
            params: {after_s: slow, marker: yes}
            restart: sometimes
          - id: b
            kind: camra
    """)
    with pytest.raises(GraphError) as err:
        load_graph(path)
    assert [i.line for i in err.value.issues] == [5, 5, 6, 8]
    assert "4 problems" in str(err.value)


def test_validate_prints_ok_or_every_problem(tmp_path, capsys):
    assert cli(["validate", str(DOOR)]) == 0
    assert "OK (graph 'testdoor', 4 nodes" in capsys.readouterr().out
    path, line = _write(tmp_path, BAD["unknown kind"][0])
    assert cli(["validate", str(path), str(DOOR)]) == 1
    out = capsys.readouterr()
    assert f"{path}:{line}: node 'a': unknown kind 'camra'" in out.err
    assert "INVALID (1 problem)" in out.err and "testdoor" in out.out
    # every verb that takes a graph file reports the same problems instead of a traceback
    for verb in (["ps"], ["down"], ["graph"], ["unit"], ["reload", "--graph"]):
        assert cli([*verb, str(path)]) == 1
        assert f"{path}:{line}: node 'a': unknown kind 'camra'" in capsys.readouterr().err


def test_optimize_sets_the_node_processes_python_level_and_is_checked(tmp_path):
    from iotrt.procs import node_env

    path = tmp_path / "g.yaml"
    body = f"nodes:\n  - id: a\n    run: {GRAPHS}/nodes/testnode.py\n"
    path.write_text("name: opt\noptimize: 2\n" + body)
    graph = load_graph(path)
    assert graph.optimize == 2
    assert node_env(graph, "a", "info", {"PATH": "/bin"})["PYTHONOPTIMIZE"] == "2"
    path.write_text("name: opt\n" + body)
    graph = load_graph(path)
    assert graph.optimize == 0 and "PYTHONOPTIMIZE" not in node_env(graph, "a", "info", {})
    for bad, says in [("3", "must be 0, 1 or 2"), ("true", "expected an integer"), ("-1", "at least 0")]:
        path.write_text(f"name: opt\noptimize: {bad}\n" + body)
        with pytest.raises(GraphError) as err:
            load_graph(path)
        assert f"{path}:2:" in str(err.value) and says in str(err.value)
