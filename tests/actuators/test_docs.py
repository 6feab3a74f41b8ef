"""docs/actuators.md stays true to the code: every parameter documented, the graph example valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from iotrt.nodes import NODES
from iotrt.spec import load_spec

DOC = (Path(__file__).resolve().parents[2] / "docs" / "actuators.md").read_text()
KINDS = ("lock", "motor", "webhook", "program", "mqtt", "log")


def section(kind: str) -> str:
    """The text of the doc's section on `kind` (its own heading, or its bullet)."""
    heading = re.search(rf"^## `{kind}`.*?(?=^## )", DOC, re.S | re.M)
    if heading:
        return heading.group(0)
    bullet = re.search(rf"^- \*\*{kind}\*\*.*?(?=^- \*\*|^## )", DOC, re.S | re.M)
    assert bullet, f"docs/actuators.md has no section on {kind}"
    return bullet.group(0)


@pytest.mark.parametrize("kind", KINDS)
def test_every_parameter_is_documented(kind):
    text = section(kind)
    params = [p.name for p in load_spec(NODES[kind]).params]
    missing = [name for name in params if f"`{name}`" not in text]
    assert not missing, f"{kind}: parameters missing from docs/actuators.md: {missing}"


def test_documented_tables_name_only_real_parameters():
    for kind in ("lock", "motor"):
        names = set(re.findall(r"^\| `(\w+)`", section(kind), re.M))
        names |= set(re.findall(r"^\| `\w+`, `(\w+)`", section(kind), re.M))
        real = {p.name for p in load_spec(NODES[kind]).params}
        assert names <= real, f"{kind}: documented but not parameters: {names - real}"


def test_graph_example_is_a_valid_graph(tmp_path):
    from iotrt.graph import load_graph

    (example,) = [b for b in re.findall(r"```yaml\n(.*?)```", DOC, re.S) if "kind: lock" in b]
    (tmp_path / "door.rules.yaml").write_text(
        "rules:\n  - id: r\n    trigger: {message: faces}\n"
        "    actions:\n      - command: lock\n        args: {action: lock}\n")
    (tmp_path / "door.yaml").write_text("name: door\n" + example)
    env = {"IOTRT_RUNTIME_DIR": "/tmp/iotrt-doc", "IOTRT_STATE_DIR": str(tmp_path / "state")}
    graph = load_graph(tmp_path / "door.yaml", environ=env)
    assert graph.nodes["door"].kind == "lock"


def test_the_custom_actuator_example_works(tmp_path, monkeypatch):
    from iotrt.node import Node

    (code,) = [b for b in re.findall(r"```python\n(.*?)```", DOC, re.S) if "# buzzer.py" in b]
    (tmp_path / "buzzer.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    node = Node.for_test("buzzer", params={"max_beep_s": 0.2})
    node.feed_command("commands", {"beep_s": 0.05}).feed_command("commands", {"beep": 1})
    node.feed_command("commands", {"beep_s": 5}).run()
    assert [a["ok"] for a in node.acks] == [True, False, False]
    assert node.acks[0]["beeps"] == 1 and "outside 0.05..0.2" in node.acks[2]["error"]
    assert [kind for kind, _ in node.records] == [
        "command_received", "command_applied", "command_received", "command_refused",
        "command_received", "command_refused"]
