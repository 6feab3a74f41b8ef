"""The device-side half of the ONNX payload: initializers encoded without the onnx package.

`onnx` and onnxruntime are used here only as independent readers of what we write.
"""

from __future__ import annotations

import numpy as np
import pytest

from iotrt.modelformat import onnxpayload
from iotrt.modelformat.errors import BackendUnavailable

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def conv_model_without_weights() -> bytes:
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]),
            helper.make_node("Reshape", ["y", "shape"], ["z"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 100])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnxpayload.MAGIC + b'{"initializers": ["w", "b", "shape"]}\n' + model.SerializeToString()


@pytest.mark.parametrize(
    "value",
    [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 7.5,
        np.array([3, -1, 2**40], np.int64),
        np.float32(2.5).reshape(()),  # a scalar: no dims at all
        np.array([[True, False]]),
        np.arange(-5, 5, dtype=np.int8),
        np.linspace(-1, 1, 7).astype(np.float16),
        np.zeros((0, 3), np.float32),
        np.arange(300, dtype=np.float32).reshape(3, 100).T,  # not contiguous
    ],
)
def test_initializer_round_trips_through_onnx(value):
    model = onnx.ModelProto()
    model.ParseFromString(onnxpayload.initializer_bytes("t", value))
    (init,) = model.graph.initializer
    assert init.name == "t"
    got = numpy_helper.to_array(init)
    assert got.dtype == value.dtype and got.shape == value.shape
    np.testing.assert_array_equal(got, value)


def test_completed_model_runs_in_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(1)
    consts = {
        "w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "b": rng.normal(size=4).astype(np.float32),
        "shape": np.array([1, 100], np.int64),
        "unused": np.ones(1000, np.float32),  # not named by the payload: not embedded
    }
    model = onnxpayload.onnx_model_bytes(conv_model_without_weights(), consts)
    parsed = onnx.load_from_string(model)
    assert [i.name for i in parsed.graph.initializer] == ["w", "b", "shape"]
    x = rng.normal(size=(1, 3, 5, 5)).astype(np.float32)
    (z,) = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # 1,3,5,5,3,3
    expect = np.einsum("ncijkl,ockl->noij", windows, consts["w"]) + consts["b"][None, :, None, None]
    np.testing.assert_allclose(z, expect.reshape(1, 100), rtol=1e-5, atol=1e-5)


def test_missing_constant_and_foreign_payload_are_clear_errors():
    with pytest.raises(BackendUnavailable, match=r"lacks: \['w'"):
        onnxpayload.onnx_model_bytes(conv_model_without_weights(), {"b": np.zeros(4, np.float32)})
    with pytest.raises(BackendUnavailable, match="format"):
        onnxpayload.unpack(b"\x08\x07 some other bytes")
    with pytest.raises(BackendUnavailable, match="no ONNX type"):
        onnxpayload.initializer_bytes("c", np.zeros(2, np.complex64))
