"""docs/home-assistant.md matches the code: its copy of door.yaml's bridge node and of the door's
Home Assistant rule are the real ones, and its parameter table lists every parameter."""

from __future__ import annotations

import re
from pathlib import Path

from iotrt.nodes.action.homeassistant import SPEC

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "home-assistant.md").read_text()
TEXT_BLOCKS = re.findall(r"^```text\n(.*?)^```", DOC, re.S | re.M)


def shown(needle: str) -> str:
    block, = [b for b in TEXT_BLOCKS if needle in b]
    return block


def test_the_door_yaml_excerpt_is_the_real_one():
    excerpt = shown("kind: homeassistant")
    assert excerpt in (ROOT / "configs" / "door.yaml").read_text()


def test_the_rule_excerpt_is_in_the_door_rules():
    rules = (ROOT / "configs" / "door.rules.yaml").read_text()
    excerpt = shown("id: unlock_from_home_assistant").splitlines()
    lines = iter(rules.splitlines())
    for line in excerpt:                 # the excerpt's lines appear in order (a description
        assert any(line == real for real in lines), line    # line may be left out)


def test_every_parameter_is_in_the_table():
    table = DOC.split("## Parameters", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(\w+)`", " ".join(row.split("|")[1] for row in
                                                     table.splitlines() if row.startswith("| `"))))
    assert documented == {p.name for p in SPEC.params}
