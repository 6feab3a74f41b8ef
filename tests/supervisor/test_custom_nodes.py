"""A user's own node file under a real `iotrt up` (issue 14, item 2): a module with `SPEC` and
`main(node)` runs; a node that ends before it sent ready is never counted as up; a file with
nothing to run is refused before anything starts, at its file:line with a hint."""

from __future__ import annotations

import subprocess
import sys
import textwrap

COUNTER = '''\
"""Counts the messages on its input (a module with SPEC and main(node), as in docs/nodes.md)."""
from iotrt.node import Node, NodeSpec

SPEC = NodeSpec(inputs={"anything": "any message"}, outputs={"total": "{n: int}"})


def main(node: Node) -> None:
    n = 0
    for event in node:
        if event.input == "anything":
            n += 1
            node.publish("total", {"n": n})
'''


def write(folder, name: str, text: str):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_a_module_with_spec_and_main_runs_under_the_supervisor(tmp_path, graph_file, up, env):
    write(tmp_path, "my_nodes/counter.py", COUNTER)
    g = graph_file("""
        name: custom
        nodes:
          - id: src
            run: {node}
          - id: count
            run: my_nodes/counter.py
            inputs: {anything: src/out}
    """)
    u = up(g)
    u.wait_log("all 2 nodes up", timeout=60)
    echo = subprocess.run([sys.executable, "-m", "iotrt", "echo", "count/total", "--graph",
                           str(g), "-n", "2", "--timeout", "30"], env=env, capture_output=True,
                          text=True, timeout=90)
    assert echo.returncode == 0, echo.stderr
    assert '"n": ' in echo.stdout, echo.stdout
    assert "count: starting -> running" in u.text


def test_a_node_that_ends_before_ready_is_never_counted_up(tmp_path, graph_file, up):
    write(tmp_path, "early.py", '''\
        from iotrt.node import NodeSpec

        SPEC = NodeSpec()
        print("early: nothing to do")
    ''')
    g = graph_file("""
        name: early
        nodes:
          - id: src
            run: {node}
          - id: early
            run: early.py
    """)
    u = up(g)
    u.wait_log("1 of 2 nodes up", timeout=60)
    assert "early exited (exited with code 0 before it was ready)" in u.text, u.text
    assert "all 2 nodes up" not in u.text
    u.proc.send_signal(2)
    assert u.wait_exit(60) == 0


def test_a_file_with_nothing_to_run_is_refused_at_its_line(tmp_path, graph_file, env):
    write(tmp_path, "nothing.py", '''\
        """Has a SPEC and its logic, but nothing that runs it."""
        from iotrt.node import NodeSpec

        SPEC = NodeSpec(outputs={"count": "int"})


        def handle(data):
            return len(data)
    ''')
    g = graph_file("""
        name: nothing
        nodes:
          - id: lazy
            run: nothing.py
    """)
    done = subprocess.run([sys.executable, "-m", "iotrt", "up", str(g)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"{g}:5: node 'lazy': {tmp_path / 'nothing.py'}:4: nothing to run" in done.stderr, \
        done.stderr
    assert "def main(node):" in done.stderr
    assert "nothing was started" in done.stderr
