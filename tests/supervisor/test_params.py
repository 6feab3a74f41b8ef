"""One parameter validator (issue 18, item 6): a graph file and the Node API report the same
mistakes in the same words; the graph adds where each is (file:line)."""

from __future__ import annotations

import textwrap

import pytest

from iotrt.graph import GraphError, load_graph
from iotrt.spec import ParamError, load_spec

NODE = '''\
from iotrt.node import NodeSpec, Param

SPEC = NodeSpec(params=[
    Param("mode", str, "mean", choices=("mean", "max")),
    Param("count", int, 3, min=1, max=10),
    Param("gain", float, 1.0),
    Param("names", list, [], items=str),
    Param("device", str, doc="which camera"),
])


def main(node):
    pass
'''


def test_graph_and_node_api_report_the_same_problems_in_the_same_words(tmp_path):
    (tmp_path / "n.py").write_text(NODE)
    g = tmp_path / "g.yaml"
    g.write_text(textwrap.dedent("""\
        name: p
        runtime_dir: run
        nodes:
          - id: a
            run: n.py
            params:
              mdoe: max
              mode: median
              count: 11
              gain: .nan
              names: [x, 2]
        """))
    with pytest.raises(GraphError) as graph_err:
        load_graph(g)
    from_graph = [(i.line, i.message) for i in graph_err.value.issues]
    with pytest.raises(ParamError) as api_err:
        load_spec(str(tmp_path / "n.py")).validate_params(
            {"mdoe": "max", "mode": "median", "count": 11, "gain": float("nan"),
             "names": ["x", 2]}, "node 'a'")
    assert sorted(m for _, m in from_graph) == sorted(api_err.value.errors)
    assert from_graph == [
        (4, "node 'a': missing required param 'device' (which camera)"),
        (7, "node 'a': unknown param 'mdoe' (did you mean 'mode'?); params: mode, count, gain, "
            "names, device"),
        (8, "node 'a': params.mode: must be one of 'mean', 'max', got 'median' (did you mean "
            "'mean'?)"),
        (9, "node 'a': params.count: must be <= 10, got 11"),
        (10, "node 'a': params.gain: must be a finite number, got nan (NaN and infinity are "
             "refused)"),
        (11, "node 'a': params.names: must be a list of text, got an integer 2 in it"),
    ]
