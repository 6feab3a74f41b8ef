"""Attack 10: hostile graph files gave tracebacks instead of errors - a 396-byte billion-laughs
graph passed `validate` and `up` ate memory until MemoryError; YAML nested 500 deep raised
RecursionError; `python: [1]` in rules params a TypeError; a 1,500-node chain listed in reverse
a RecursionError in `up` and `unit`; any number of nodes validated. Each is now one clear
file:line error (or, for the chain, simply works), in bounded time and memory."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from iotrt.graph import GraphError, load_graph
from iotrt.graphschema import MAX_NODES, MAX_QUEUE
from iotrt.local import LocalQueue
from iotrt.verbs.unit import dependency_levels, render

TEST_NODE = Path(__file__).parents[1] / "supervisor" / "graphs" / "nodes" / "testnode.py"

def write(tmp_path: Path, text: str, name: str = "g.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def validate(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """`iotrt validate` in a process of its own, with its memory capped at 1 GiB."""
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30)); "
            "from iotrt.cli import main; sys.exit(main(['validate', sys.argv[1]]))")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path,
                          env={"IOTRT_RUNTIME_DIR": str(tmp_path / "rt"), "HOME": str(tmp_path),
                               "PATH": "/usr/bin:/bin"})


def billion_laughs() -> str:
    lines = ["name: bomb", 'lol: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    # a list param: `validate` took it, and `up` expanded it into the node's config
    lines += ["nodes:", "  - id: wheels", "    kind: motor", "    params: {motors: *l9}"]
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_one_error_not_a_memory_error(tmp_path):
    g = write(tmp_path, billion_laughs())
    out = validate(g, tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr + out.stdout
    assert f"{g}:" in out.stdout + out.stderr and "alias" in out.stdout + out.stderr


@pytest.mark.parametrize("style", ["block", "flow"])
def test_deep_nesting_is_one_error_not_a_recursion_error(tmp_path, style):
    if style == "flow":
        deep = "x: " + "[" * 600 + "]" * 600
    else:
        deep = "\n".join("  " * i + f"k{i}:" for i in range(600)) + " 1"
    g = write(tmp_path, "name: deep\nnodes: []\n" + deep + "\n")
    with pytest.raises(GraphError, match=r"g\.yaml:\d+: lists and mappings nest deeper"):
        load_graph(g)


def test_recursive_alias_is_one_error(tmp_path):
    g = write(tmp_path, "name: loop\nnodes: &n [*n]\n")
    with pytest.raises(GraphError, match=r"g\.yaml:2: an alias refers to a collection that contains it"):
        load_graph(g)


def test_rules_python_param_of_the_wrong_type_is_one_error(tmp_path):
    write(tmp_path, "rules: []\n", "r.yaml")
    g = write(tmp_path, textwrap.dedent("""\
        name: door
        nodes:
          - id: rules
            kind: rules
            params:
              rules: r.yaml
              python: [1]
        """))
    with pytest.raises(GraphError) as err:
        load_graph(g, check_node_files=True)
    assert f"{g}:7:" in str(err.value) and "must be a list of text, got an integer 1" in str(err.value)


def chain(n: int) -> str:
    """n test nodes, each fed by the previous one, listed last first."""
    lines = ["name: chain", "nodes:"]
    for i in reversed(range(n)):
        lines += [f"  - id: n{i}", f"    run: {TEST_NODE}"]
        if i:
            lines.append(f"    inputs: {{in: n{i - 1}/out}}")
    return "\n".join(lines) + "\n"


def test_a_1500_node_chain_in_reverse_orders_without_recursion(tmp_path, monkeypatch):
    monkeypatch.setenv("IOTRT_RUNTIME_DIR", str(tmp_path / "rt"))
    g = load_graph(write(tmp_path, chain(1500)))
    deps = g.dependencies()                       # what `up` orders the start by
    assert deps["n1499"] == {"n1498"} and deps["n0"] == set()
    assert dependency_levels(g) == 1500           # what `unit` sizes the start timeout by
    assert "iotrt" in render(g)


def test_node_count_is_capped(tmp_path):
    g = write(tmp_path, "name: many\nnodes:\n" + "".join(
        f"  - {{id: n{i}, run: {TEST_NODE}}}\n" for i in range(MAX_NODES + 1)))
    with pytest.raises(GraphError, match=rf"g\.yaml:3: {MAX_NODES + 1} nodes; a graph holds at most"):
        load_graph(g)


def test_an_oversized_file_is_one_error(tmp_path):
    g = write(tmp_path, "name: big\n# " + "x" * (2 * 1024 * 1024) + "\nnodes: []\n")
    with pytest.raises(GraphError, match=r"g\.yaml:1: the file has \d+ characters"):
        load_graph(g)


@pytest.mark.parametrize("where", ["optimize: {n}\n", "nodes:\n  - id: a\n    kind: lock\n    threads: {n}\n",
                                   "nodes:\n  - id: a\n    kind: lock\n    params:\n      max_unlock_s: ${{BIG}}\n"])
def test_a_huge_integer_is_one_error_not_a_traceback(tmp_path, where):
    """An integer of 400 or 5,000 digits raised OverflowError (a finite-number check) or
    ValueError (Python's 4,300-digit limit) out of `iotrt validate`."""
    for digits in (400, 5000):
        text = "name: big\n" + where.format(n="9" * digits)
        if "nodes:" not in text:
            text += "nodes:\n  - id: a\n    kind: lock\n"
        path = write(tmp_path, text)
        out = subprocess.run([sys.executable, "-m", "iotrt", "validate", str(path)], capture_output=True,
                             text=True, timeout=120, cwd=tmp_path,
                             env={"IOTRT_RUNTIME_DIR": str(tmp_path / "rt"), "HOME": str(tmp_path),
                                  "PATH": "/usr/bin:/bin", "BIG": "9" * digits})
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert f"an integer of {digits} characters: too large" in out.stdout + out.stderr


@pytest.mark.parametrize("where, tagged", [
    ("optimize: {v}\n", "!!int 0x"),
    ("nodes:\n  - id: a\n    kind: lock\n    params:\n      max_unlock_s: {v}\n", "!!float abc"),
    ("nodes:\n  - id: a\n    kind: lock\n    params:\n      max_unlock_s: {v}\n", "!!bool maybe"),
    ("nodes:\n  - id: a\n    kind: lock\n    params:\n      max_unlock_s: [1, {v}]\n", "!!int abc"),
    ("nodes:\n  - id: a\n    kind: lock\n  - id: b\n    run: x.py\n    inputs:\n"
     "      in: {{from: a/state, queue: {v}}}\n", "!!int abc"),
    ("nodes:\n  - id: a\n    kind: clip\n    params:\n      ring_mb: {v}\n", "!!timestamp 2020-99-99"),
])
def test_an_explicitly_tagged_value_that_cannot_be_read_is_one_error(tmp_path, where, tagged):
    """`!!float abc` and the like made PyYAML's constructors raise ValueError (or KeyError,
    AttributeError) out of `iotrt validate`, with a traceback."""
    text = "name: tagged\n" + where.format(v=tagged)
    if "nodes:" not in text:
        text += "nodes:\n  - id: a\n    kind: lock\n"
    with pytest.raises(GraphError) as err:
        load_graph(write(tmp_path, text))
    line = next(i for i, s in enumerate(text.splitlines(), 1) if tagged in s)
    assert f"g.yaml:{line}:" in str(err.value) and "unreadable value" in str(err.value)


HOSTILE_RULES = {
    "deep": ("rules:\n  - id: a\n    trigger: m\n    actions: " + "[" * 3000 + "]" * 3000 + "\n",
             r"r\.yaml:4: lists and mappings nest deeper than 64 levels"),
    "alias bomb": ('a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
        f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]\n" for p, n in zip("abcdefgh", "bcdefghi"))
        + "rules: *i\n", r"r\.yaml:\d+: with its aliases expanded this holds more than"),
    "huge": ("rules: []\n# " + "x" * (2 * 1024 * 1024) + "\n", r"r\.yaml:1: the file has \d+ characters"),
}


@pytest.mark.parametrize("kind", list(HOSTILE_RULES))
def test_a_hostile_rules_file_is_one_error_in_the_graph_that_names_it(tmp_path, kind):
    """A rules file had none of the graph file's bounds: 3,000 nested lists raised RecursionError
    out of `iotrt validate` and `iotrt rules check`; a 546-byte alias bomb took 2.4 GB."""
    text, expected = HOSTILE_RULES[kind]
    write(tmp_path, text, "r.yaml")
    g = write(tmp_path, "name: door\nnodes:\n  - id: rules\n    kind: rules\n"
                        "    params: {rules: r.yaml}\n")
    out = validate(g, tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert re.search(expected, out.stdout + out.stderr), out.stdout + out.stderr


@pytest.mark.parametrize("queue", [MAX_QUEUE + 1, 100000000000])
def test_an_input_queue_beyond_what_the_transports_hold_is_one_error(tmp_path, queue):
    """`queue: 100000000000` validated, and only the node's subscriber refused it at start."""
    g = write(tmp_path, f"name: q\nnodes:\n  - {{id: a, run: {TEST_NODE}}}\n"
                        f"  - id: b\n    run: {TEST_NODE}\n"
                        f"    inputs: {{in: {{from: a/out, queue: {queue}}}}}\n")
    with pytest.raises(GraphError, match=rf"g\.yaml:6: .*inputs\.in\.queue: at most {MAX_QUEUE}"):
        load_graph(g)


def test_the_largest_queue_a_graph_accepts_is_one_the_transports_take():
    LocalQueue("ipc:///nowhere/q", queue=MAX_QUEUE).close()
    with pytest.raises(ValueError, match="between 1 and"):
        LocalQueue("ipc:///nowhere/q", queue=MAX_QUEUE + 1)
