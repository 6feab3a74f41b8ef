"""ONNX backend node tests (onnx.backend.test.BackendTest) on the compiler + numpy engine.

The tests run are exactly those listed in onnx_conformance.json ("included"); the tests of the
claimed ops that are not run are listed there too ("excluded", each with its reason). The
count is asserted, so a list that silently matches nothing fails.

The compiler compiles for static shapes with constant weights: operands in WEIGHT_INPUTS (conv
weights, a Reshape's shape, Pad's pads, ...) are bound to the test's input values as constants
before compiling, the way a deployed model carries them as initializers.

Regenerate the lists after upgrading onnx or adding an op (then review the diff and update the
asserted count): python tests/compiler/test_onnx_conformance.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx.backend.base import Backend, BackendRep  # noqa: E402
from onnx.backend.test import BackendTest  # noqa: E402

from iotrt.compiler import UnsupportedOpError, bake_constants, build_artifact  # noqa: E402
from iotrt.compiler.frontends import onnx as onnx_frontend  # noqa: E402
from iotrt.engine.numpy import NumpyModel  # noqa: E402

LISTS = Path(__file__).with_name("onnx_conformance.json")

# op -> input positions that must be compile-time constants
WEIGHT_INPUTS = {
    "BatchNormalization": (1, 2, 3, 4), "Clip": (1, 2), "ConstantOfShape": (0,), "Conv": (1, 2),
    "Dropout": (1, 2), "Gemm": (1, 2), "Pad": (1, 2, 3), "PRelu": (1,), "Reshape": (1,),
    "Resize": (1, 2, 3), "Squeeze": (1,), "Unsqueeze": (1,),
}


def weight_inputs(model) -> set[str]:
    names = set()
    for node in model.graph.node:
        for pos in WEIGHT_INPUTS.get(node.op_type, ()):
            if pos < len(node.input) and node.input[pos]:
                names.add(node.input[pos])
    return names


class _Rep(BackendRep):
    def __init__(self, model):
        self.model = model

    def run(self, inputs, **kwargs):
        g = self.model.graph
        init = {i.name for i in g.initializer}
        names = [i.name for i in g.input if i.name not in init]
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            feeds = dict(zip(names, inputs))
        feeds = {k: np.asarray(v) for k, v in feeds.items()}
        baked = {k: v for k, v in feeds.items() if k in weight_inputs(self.model)}
        live = {k: v for k, v in feeds.items() if k not in baked}
        graph = onnx_frontend.load_model(self.model, {k: v.shape for k, v in live.items()})
        graph = bake_constants(graph, baked)
        art, _ = build_artifact(graph, {"name": "conformance", "format": "onnx", "sha256": ""})
        out = NumpyModel(art).run(live)
        return [out[o.name] for o in g.output]


class IotrtBackend(Backend):
    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs):
        return _Rep(model)

    @classmethod
    def run_node(cls, node, inputs, device: str = "CPU", outputs_info=None, **kwargs):
        raise NotImplementedError("node tests run through prepare()")


def _lists() -> dict:
    if not LISTS.exists():  # only while regenerating it; test_lists_are_consistent then fails
        return {"included": [], "excluded": {}, "included_count": 0}
    return json.loads(LISTS.read_text())


def _node_case(names: list[str]):
    bt = BackendTest(IotrtBackend, __name__)
    for name in names:
        bt.include(f"^{re.escape(name)}$")
    return bt.test_cases["OnnxBackendNodeModelTest"]


LIST = _lists()
INCLUDED = sorted(LIST["included"])
# Held in a dict: a module-level TestCase class would be collected by pytest as a whole.
_CASES = {"node": _node_case(INCLUDED)}


def test_lists_are_consistent():
    excluded = LIST["excluded"]
    assert len(INCLUDED) == LIST["included_count"] == 263
    assert not set(INCLUDED) & set(excluded)
    assert all(reason.strip() for reason in excluded.values())
    # every listed name is a real generated test: a pattern that selects nothing fails here
    for name in INCLUDED + sorted(excluded):
        assert callable(getattr(_CASES["node"], name, None)), f"{name} is not an ONNX backend node test"


@pytest.mark.parametrize("name", INCLUDED)
def test_onnx_node(name):
    case = _CASES["node"](name)
    getattr(case, name)()


def _candidates() -> list[str]:
    """Node tests whose graph contains an op the compiler claims."""
    from onnx.backend.test.loader import load_model_tests

    claimed = set(onnx_frontend.SUPPORTED)
    out = []
    for t in load_model_tests(kind="node"):
        model = t.model if t.model is not None else onnx.load(Path(t.model_dir) / "model.onnx")
        if {n.op_type for n in model.graph.node} & claimed:
            out.append(t.name + "_cpu")
    return sorted(out)


# Why a candidate that fails is excluded: (pattern on the test name, reason). The first match
# wins; a failing test that matches none stops the regeneration.
EXCLUSION_RULES = [
    (r"^test_cast(like)?_.*(FLOAT8|FLOAT4|INT4|INT2|UINT4|UINT2|BFLOAT16|E8M0)",
     "8/4/2-bit float/int or bfloat16 types have no numpy dtype: the runner hands such data "
     "over already converted, so the test would not exercise the type"),
    (r"training", "training mode (batch statistics / random dropout); the compiler targets "
     "inference"),
    (r"argmax", "MaxPool's Indices output is not supported"),
    (r"antialias", "Resize antialias is not implemented"),
    (r"cubic", "Resize cubic mode is not implemented (nearest and linear are)"),
    (r"sequence|identity_opt", "sequence and optional types are not tensors; the IR has tensors "
     "only"),
]


def _regenerate() -> dict:
    """Run every candidate; passing ones are included, failing ones excluded with a reason."""
    case = _node_case(_candidates())
    included, excluded = [], {}
    for name in _candidates():
        rule = next((reason for pattern, reason in EXCLUSION_RULES if re.search(pattern, name)),
                    None)
        if rule and name.startswith("test_cast"):  # excluded whatever the outcome
            excluded[name] = rule
            continue
        try:
            getattr(case(name), name)()
            included.append(name)
            continue
        except UnsupportedOpError as exc:
            excluded[name] = f"needs op {exc.op}, which the compiler does not support"
            continue
        except Exception as exc:  # any other failure needs a reviewed reason
            if rule is None:
                raise SystemExit(f"{name} fails with no exclusion rule: {exc!r}") from exc
        excluded[name] = rule
    return {"included_count": len(included), "included": included, "excluded": excluded}


if __name__ == "__main__":
    lists = _regenerate()
    LISTS.write_text(json.dumps(lists, indent=1) + "\n")
    print(f"{lists['included_count']} included, {len(lists['excluded'])} excluded -> {LISTS}")
