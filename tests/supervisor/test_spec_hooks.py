"""Kind-specific needs come from a node's SPEC, never from its kind's name (issue 18, item 3):
a user's own node declares them as the built-in rules node does, and the graph, `iotrt
validate`, `iotrt rules check --graph` and the reload path honour them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from iotrt.cli import main
from iotrt.graph import GraphError, load_graph
from iotrt.spec import NodeSpec, Param, SpecError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# A user's node that reads a "program" file: it checks the file at validation, reloads it on
# SIGHUP, and can have it checked against its wiring by `iotrt rules check --graph`.
PROGRAM_NODE = '''\
from pathlib import Path

from iotrt.node import NodeSpec, Param
from iotrt.yamlcheck import Issue


def check_program(params, base_dir, node=None, graph=None):
    path = Path(base_dir) / params["program"]
    lines = path.read_text().splitlines()
    return [Issue(str(path), i, f"node '{node.id}': 'bad' is not a step")
            for i, line in enumerate(lines, 1) if line.strip() == "bad"]


def wiring(rules, node, graph):
    return [], [f"{node.id} runs {len(rules)} rule(s)"]


SPEC = NodeSpec(params=[Param("program", str)], check_files=check_program, reloadable=True,
                rules_param="program", check_wiring=wiring)


def main(node):
    for _ in node:
        pass
'''


def graph_with_program(tmp_path: Path, program: str) -> Path:
    (tmp_path / "program_node.py").write_text(PROGRAM_NODE)
    (tmp_path / "steps.yaml").write_text(program)
    graph = tmp_path / "g.yaml"
    graph.write_text(textwrap.dedent("""\
        name: hooks
        runtime_dir: run
        state_dir: state
        nodes:
          - id: plain
            run: program_node.py
            params: {program: steps.yaml}
          - id: prog
            run: program_node.py
            params: {program: steps.yaml}
    """))
    return graph


def test_check_files_reports_a_users_file_at_its_line(tmp_path, capsys):
    graph = graph_with_program(tmp_path, "ok\nbad\nok\n")
    load_graph(graph)                      # node files are checked only when asked for
    with pytest.raises(GraphError) as exc:
        load_graph(graph, check_node_files=True)
    assert [str(i) for i in exc.value.issues] == [
        f"{tmp_path / 'steps.yaml'}:2: node 'plain': 'bad' is not a step",
        f"{tmp_path / 'steps.yaml'}:2: node 'prog': 'bad' is not a step"]
    assert main(["validate", str(graph)]) == 1
    assert "steps.yaml:2: node 'prog': 'bad' is not a step" in capsys.readouterr().err
    (tmp_path / "steps.yaml").write_text("ok\n")
    assert main(["validate", str(graph)]) == 0


def test_reloadable_nodes_come_from_the_spec(tmp_path):
    graph = load_graph(graph_with_program(tmp_path, "ok\n"))
    assert graph.reloadable_nodes() == ["plain", "prog"]
    door = load_graph(CONFIGS / "door.yaml")
    assert door.reloadable_nodes() == [n.id for n in door.nodes.values() if n.kind == "rules"]
    assert door.reloadable_nodes()          # the door graph has a rules node


def test_rules_check_finds_nodes_by_their_rules_param(tmp_path, capsys):
    graph = graph_with_program(tmp_path, "ok\n")
    rules = tmp_path / "steps.yaml"
    rules.write_text((CONFIGS / "door.rules.yaml").read_text())
    assert main(["rules", "check", str(rules), "--graph", str(graph)]) == 0
    out = capsys.readouterr().out
    assert "note: plain runs 4 rule(s)" in out and "note: prog runs 4 rule(s)" in out


def test_rules_param_needs_its_wiring_check_and_a_declared_param():
    with pytest.raises(SpecError, match="give both or neither"):
        NodeSpec(params=[Param("program", str)], rules_param="program")
    with pytest.raises(SpecError, match="not a declared parameter"):
        NodeSpec(rules_param="program", check_wiring=lambda rules, node, graph: ([], []))


def test_the_kind_registry_is_the_runtimes_way_into_the_nodes():
    """`iotrt enroll` finds the identity kind's enrolment module through its SPEC (the
    registry iotrt.kinds), not by importing iotrt.nodes; a former kind name resolves to the
    kind it is now."""
    from iotrt import kinds

    assert kinds.spec("identity").enroll == "iotrt.nodes.perception"
    assert kinds.resolve("command") == kinds.resolve("program") == (
        "program", "iotrt.nodes.action.program")
    assert kinds.resolve("no-such-kind") is None
    with pytest.raises(SpecError, match="unknown node kind 'identiy' \\(did you mean 'identity'"):
        kinds.spec("identiy")
