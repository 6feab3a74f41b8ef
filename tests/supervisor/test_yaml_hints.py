"""YAML syntax errors in a graph: the line, the column and a hint in plain words (issue 14)."""

from __future__ import annotations

import pytest

from iotrt.graph import GraphError, load_graph

CASES = {
    "indented too far": (
        "name: g\nnodes:\n  - id: cam\n    kind: camera\n   params:\n      fps: 3\n",
        ":5:4: YAML syntax error:", "check the indentation of line 5"),
    "tab": ("name: g\nnodes:\n  - id: cam\n\tkind: camera\n",
            ":4:1: YAML syntax error:", "replace the tab on line 4 with spaces"),
    "open quote": ('name: g\nnodes:\n  - id: cam\n    kind: camera\n    params:\n'
                   '      uri: "abc\n', ":7:1: YAML syntax error:",
                   "the quote opened on line 6 is never closed"),
    "colon in a value": ("name: g\ndescription: door: front\nnodes: []\n",
                         ":2:18: YAML syntax error:", "put quotes around a value"),
    "open bracket": ("name: g\nnodes:\n  - id: cam\n    kind: camera\n    params: {fps: 3\n",
                     ":6:1: YAML syntax error:", "opened on line 5 is never closed"),
}


@pytest.mark.parametrize("case", CASES)
def test_syntax_error_has_line_column_and_a_plain_hint(case, tmp_path):
    text, where, hint = CASES[case]
    path = tmp_path / "g.yaml"
    path.write_text(text)
    with pytest.raises(GraphError) as info:
        load_graph(path)
    issues = [str(i) for i in info.value.issues]
    assert len(issues) == 1, issues
    assert issues[0].startswith(f"{path}{where}") and hint in issues[0], issues[0]
