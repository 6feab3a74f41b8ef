"""The static memory plan, property-tested: random graphs run through the planned arena give
the same results as evaluating every node into its own fresh array.

If the planner let two live tensors share bytes, aliased a concat input that someone else
rewrites, or freed a buffer too early, some random graph here computes a different number.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotrt.compiler import build_artifact
from iotrt.engine.numpy import NumpyModel
from iotrt.modelformat.ir import Op, OpGraph, OpNode, TensorSpec
from iotrt.modelformat.kernels import KERNELS

H = W = 4


@st.composite
def graphs(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    channels = {"x": 2}
    consts: dict[str, np.ndarray] = {}
    nodes: list[OpNode] = []
    for i in range(draw(st.integers(1, 14))):
        names = sorted(channels)
        a = draw(st.sampled_from(names))
        kind = draw(st.sampled_from(["relu", "sigmoid", "add", "concat", "conv", "conv_relu"]))
        out = f"t{i}"
        if kind in ("relu", "sigmoid"):
            op = Op.RELU if kind == "relu" else Op.SIGMOID
            nodes.append(OpNode(op, out, (a,), (out,)))
            channels[out] = channels[a]
        elif kind == "add":
            same = [n for n in names if channels[n] == channels[a]]
            b = draw(st.sampled_from(same))
            nodes.append(OpNode(Op.ADD, out, (a, b), (out,)))
            channels[out] = channels[a]
        elif kind == "concat":
            b = draw(st.sampled_from(names))
            if channels[a] + channels[b] > 8:
                continue
            nodes.append(OpNode(Op.CONCAT, out, (a, b), (out,), {"axis": 1}))
            channels[out] = channels[a] + channels[b]
        else:
            cout = draw(st.integers(1, 4))
            k = draw(st.sampled_from([1, 3]))
            w = f"w{i}"
            consts[w] = rng.standard_normal((cout, channels[a], k, k)).astype(np.float32)
            attrs = {"pads": [k // 2] * 4}
            conv_out = out if kind == "conv" else f"c{i}"
            nodes.append(OpNode(Op.CONV, out, (a, w), (conv_out,), attrs))
            if kind == "conv_relu":  # fusable into the conv
                nodes.append(OpNode(Op.RELU, out + "/relu", (conv_out,), (out,)))
            channels[out] = cout
    produced = [o for n in nodes for o in n.outputs if o in channels]
    if not produced:
        nodes.append(OpNode(Op.RELU, "only", ("x",), ("t_only",)))
        produced = ["t_only"]
    outputs = sorted(set(draw(st.lists(st.sampled_from(produced), max_size=3))) | {produced[-1]})
    return OpGraph(nodes, [TensorSpec("x", (1, 2, H, W))], outputs, consts)


def reference(graph: OpGraph, x: np.ndarray) -> dict[str, np.ndarray]:
    values = {"x": x, **graph.consts}
    for node in graph.nodes:
        for name, value in zip(node.outputs, KERNELS[node.op.value]([values[i] for i in node.inputs], node.attrs)):
            values[name] = np.array(value)
    return {o: values[o] for o in graph.outputs}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(), st.integers(0, 1000))
def test_planned_arena_computes_what_fresh_arrays_compute(graph, seed):
    art, _ = build_artifact(graph, {"name": "random", "format": "onnx", "sha256": ""})
    model = NumpyModel(art)
    rng = np.random.default_rng(seed)
    for _ in range(2):  # a second run catches state left behind by the first
        x = rng.standard_normal((1, 2, H, W)).astype(np.float32)
        expected = reference(graph, x)
        got = model.run({"x": x})
        for name in graph.outputs:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5,
                                       err_msg=name)
    # the arena never exceeds giving every activation its own bytes
    g = art.graph
    own = sum(math.prod(g.shapes[n]) * 4 for n in art.memory.offsets)
    assert art.memory.arena_bytes <= own + 64 * len(art.memory.offsets)


def test_a_concat_input_read_after_the_concat_keeps_its_bytes():
    """a and b are written into c's bytes; c dies after d, but a is still read by g: c's bytes
    must stay reserved until then even though f (allocated after c's last use) wants them."""
    rng = np.random.default_rng(0)
    w = {k: rng.standard_normal(s).astype(np.float32) for k, s in
         {"wa": (2, 2, 1, 1), "wb": (2, 2, 1, 1), "wd": (2, 4, 1, 1), "wf": (2, 2, 1, 1)}.items()}
    nodes = [OpNode(Op.CONV, "a", ("x", "wa"), ("a",)), OpNode(Op.CONV, "b", ("x", "wb"), ("b",)),
             OpNode(Op.CONCAT, "c", ("a", "b"), ("c",), {"axis": 1}),
             OpNode(Op.CONV, "d", ("c", "wd"), ("d",)), OpNode(Op.CONV, "f", ("d", "wf"), ("f",)),
             OpNode(Op.ADD, "g", ("a", "f"), ("g",))]
    graph = OpGraph(nodes, [TensorSpec("x", (1, 2, H, W))], ["g"], w)
    art, _ = build_artifact(graph, {"name": "t", "format": "onnx", "sha256": ""})
    assert art.memory.offsets["a"] == art.memory.offsets["c"]  # a really lives inside c
    x = rng.standard_normal((1, 2, H, W)).astype(np.float32)
    np.testing.assert_allclose(NumpyModel(art).run({"x": x})["g"], reference(graph, x)["g"],
                               rtol=1e-5, atol=1e-5)
