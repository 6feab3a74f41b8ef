"""The framework backends on the ONNX backend node tests: answer right, or refuse to load.

Each case the compiler's conformance list includes (tests/compiler/onnx_conformance.json) is
compiled once; the numpy backend (which passes the ONNX reference on all of them) is the
reference, and onnxruntime and opencv run the artifact's exported ONNX payload. A backend may
refuse a graph (BackendUnavailable, e.g. a construct cv2.dnn is known to get wrong), which is
what keeps `auto` and explicit users from wrong answers; it may never load and answer wrong.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("iotrt.compiler.frontends.onnx")

from onnx import TensorProto, numpy_helper
from onnx.backend.test.loader import load_model_tests

from iotrt.compiler import bake_constants, build_artifact
from iotrt.compiler.frontends import onnx as onnx_frontend
from iotrt.engine import BackendUnavailable, autotune
from iotrt.engine import onnxruntime as ort_backend
from iotrt.engine import opencv as cv_backend
from iotrt.engine.numpy import NumpyModel

_path = Path(__file__).resolve().parents[1] / "compiler" / "test_onnx_conformance.py"
_spec = importlib.util.spec_from_file_location("compiler_conformance", _path)
conformance = importlib.util.module_from_spec(_spec)
sys.modules["compiler_conformance"] = conformance
_spec.loader.exec_module(conformance)

CASES = {t.name + "_cpu": t for t in load_model_tests(kind="node")}
BACKENDS = {"onnxruntime": ort_backend, "opencv": cv_backend}
TOL = 1e-3


def compiled(name: str):
    """(artifact with its ONNX payload, live inputs) for one node test, as the compiler's
    conformance test builds it (weight operands baked in as constants)."""
    case = CASES[name]
    model = case.model
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    feeds = {
        n: numpy_helper.to_array(v) if isinstance(v, TensorProto) else np.asarray(v)
        for n, v in zip(names, case.data_sets[0][0])
    }
    baked = {k: v for k, v in feeds.items() if k in conformance.weight_inputs(model)}
    live = {k: v for k, v in feeds.items() if k not in baked}
    graph = bake_constants(onnx_frontend.load_model(model, {k: v.shape for k, v in live.items()}), baked)
    art, _ = build_artifact(graph, {"name": name, "format": "onnx", "sha256": ""})
    live = {s.name: live[s.name].astype(s.dtype) for s in art.inputs}
    return art, live


def outcome(backend: str, name: str) -> str:
    art, live = compiled(name)
    want = NumpyModel(art).run(live)
    try:
        model = BACKENDS[backend].load(art, threads=1)
    except BackendUnavailable:
        return "refused"
    err = autotune.disagreement(want, model.run(live))
    assert err <= TOL, f"{backend} loaded {name} and answered wrong (off by {err:.3g})"
    return "ok"


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_conformance_case_is_right_or_refused(backend):
    results = {name: outcome(backend, name) for name in conformance.INCLUDED}
    ok = sum(r == "ok" for r in results.values())
    refused = sorted(n for n, r in results.items() if r == "refused")
    print(f"\n{backend}: {ok} right, {len(refused)} refused of {len(results)}")
    if backend == "onnxruntime":
        # onnxruntime itself fails this reference case; everything else must run
        assert refused == ["test_resize_downsample_scales_linear_align_corners_cpu"]
    else:
        assert ok >= 160, refused  # cv2.dnn runs most float graphs
        assert "test_conv_with_strides_padding_cpu" not in refused
