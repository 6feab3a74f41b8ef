"""docs/graph.md lists every node kind the registry has, and no other (issue 14)."""

from __future__ import annotations

import re
from pathlib import Path

from iotrt.nodes import NODES

GRAPH_MD = Path(__file__).resolve().parents[2] / "docs" / "graph.md"


def test_node_kinds_table_matches_the_registry():
    text = GRAPH_MD.read_text()
    section = text.split("## Node kinds", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([a-z_]+)` \|", section, re.M)
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"
    assert set(listed) == set(NODES), (f"missing from docs/graph.md: {sorted(set(NODES) - set(listed))}; "
                                       f"not in iotrt.nodes.NODES: {sorted(set(listed) - set(NODES))}")
