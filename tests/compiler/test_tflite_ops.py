"""TFLite front end op by op: small models written with LiteRT's own schema, run by LiteRT.

The models are built with the object API of the schema module that ships with ai-edge-litert
(so the files are what the TFLite toolchain writes), then compiled here and compared with
LiteRT on random inputs. This covers the ops, fused activations, paddings and layouts that
BlazeFace does not use.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
import pytest

S = pytest.importorskip("ai_edge_litert.schema_py_generated")
Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter

from iotrt.compiler import compile_model  # noqa: E402
from iotrt.engine import load  # noqa: E402

RNG = np.random.default_rng(11)
B = S.BuiltinOperator
Opts = S.BuiltinOptions
SAME, VALID = S.Padding.SAME, S.Padding.VALID
RELU, RELU6 = S.ActivationFunctionType.RELU, S.ActivationFunctionType.RELU6


class Model:
    """A one-subgraph TFLite model under construction."""

    def __init__(self):
        self.m = S.ModelT()
        self.m.version = 3
        self.m.buffers = [S.BufferT()]
        self.m.operatorCodes = []
        self.sg = S.SubGraphT()
        self.sg.tensors, self.sg.operators, self.sg.inputs, self.sg.outputs = [], [], [], []
        self.m.subgraphs = [self.sg]

    def tensor(self, name, shape, data=None, dtype=S.TensorType.FLOAT32):
        t = S.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), dtype, 0
        if data is not None:
            buf = S.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.m.buffers.append(buf)
            t.buffer = len(self.m.buffers) - 1
        self.sg.tensors.append(t)
        return len(self.sg.tensors) - 1

    def weight(self, name, value, fp16=False):
        """A float weight; with fp16, stored as float16 behind a DEQUANTIZE like MediaPipe's."""
        if not fp16:
            return self.tensor(name, value.shape, value.astype(np.float32))
        half = self.tensor(name + "_fp16", value.shape, value.astype(np.float16),
                           S.TensorType.FLOAT16)
        out = self.tensor(name, value.shape)
        self.op(B.DEQUANTIZE, [half], [out])
        return out

    def op(self, code, ins, outs, opt_type=Opts.NONE, opts=None):
        codes = [c.builtinCode for c in self.m.operatorCodes]
        if code not in codes:
            oc = S.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
            self.m.operatorCodes.append(oc)
            codes.append(code)
        o = S.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = codes.index(code), list(ins), list(outs)
        o.builtinOptionsType, o.builtinOptions = opt_type, opts
        self.sg.operators.append(o)

    def save(self, path, inputs, outputs):
        self.sg.inputs, self.sg.outputs = list(inputs), list(outputs)
        b = flatbuffers.Builder(1024)
        b.Finish(self.m.Pack(b), file_identifier=b"TFL3")
        path.write_bytes(bytes(b.Output()))
        return path


def options(cls, **fields):
    o = cls()
    for k, v in fields.items():
        setattr(o, k, v)
    return o


def compare(tmp_path, model: Model, inputs, outputs, tol=1e-4):
    src = model.save(tmp_path / "m.tflite", inputs, outputs)
    compile_model(src, tmp_path / "m.iotm")
    ours = load(tmp_path / "m.iotm", backend="numpy")
    interp = Interpreter(str(src))
    interp.allocate_tensors()
    feeds = {}
    for d in interp.get_input_details():
        feeds[d["name"]] = RNG.uniform(-1, 1, d["shape"]).astype(np.float32)
        interp.set_tensor(d["index"], feeds[d["name"]])
    interp.invoke()
    got = ours.run(feeds)
    for d in interp.get_output_details():
        ref = interp.get_tensor(d["index"])
        assert got[d["name"]].shape == ref.shape, d["name"]
        np.testing.assert_allclose(got[d["name"]], ref, rtol=tol, atol=tol, err_msg=d["name"])
    return ours


@pytest.mark.parametrize("padding, stride, act, fp16", [
    (SAME, 2, RELU6, False), (VALID, 1, RELU, True), (SAME, 1, 0, True),
])
def test_conv_as_graph_output(tmp_path, padding, stride, act, fp16):
    m = Model()
    x = m.tensor("x", [1, 9, 10, 3])
    w = m.weight("w", RNG.standard_normal((5, 3, 3, 3)), fp16)
    b = m.weight("b", RNG.standard_normal(5), fp16)
    ho = -(-9 // stride) if padding == SAME else (9 - 3) // stride + 1
    wo = -(-10 // stride) if padding == SAME else (10 - 3) // stride + 1
    y = m.tensor("y", [1, ho, wo, 5])
    m.op(B.CONV_2D, [x, w, b], [y], Opts.Conv2DOptions,
         options(S.Conv2DOptionsT, padding=padding, strideW=stride, strideH=stride,
                 fusedActivationFunction=act, dilationWFactor=1, dilationHFactor=1))
    compare(tmp_path, m, [x], [y])


def test_depthwise_multiplier_prelu_and_pooling(tmp_path):
    m = Model()
    x = m.tensor("x", [1, 8, 8, 3])
    w = m.weight("dw", RNG.standard_normal((1, 3, 3, 6)))
    d = m.tensor("d", [1, 6, 6, 6])
    db = m.weight("db", RNG.standard_normal(6))
    m.op(B.DEPTHWISE_CONV_2D, [x, w, db], [d], Opts.DepthwiseConv2DOptions,
         options(S.DepthwiseConv2DOptionsT, padding=VALID, strideW=1, strideH=1,
                 depthMultiplier=2, dilationWFactor=1, dilationHFactor=1))
    alpha = m.weight("alpha", RNG.uniform(0, 0.5, (1, 1, 6)))
    p = m.tensor("p", [1, 6, 6, 6])
    m.op(B.PRELU, [d, alpha], [p])
    a = m.tensor("a", [1, 3, 3, 6])
    m.op(B.AVERAGE_POOL_2D, [p], [a], Opts.Pool2DOptions,
         options(S.Pool2DOptionsT, padding=SAME, strideW=2, strideH=2, filterWidth=3,
                 filterHeight=3))
    mx = m.tensor("mx", [1, 3, 3, 6])
    m.op(B.MAX_POOL_2D, [p], [mx], Opts.Pool2DOptions,
         options(S.Pool2DOptionsT, padding=VALID, strideW=2, strideH=2, filterWidth=2,
                 filterHeight=2))
    c = m.tensor("c", [1, 3, 3, 12])
    m.op(B.CONCATENATION, [a, mx], [c], Opts.ConcatenationOptions,
         options(S.ConcatenationOptionsT, axis=3))
    compare(tmp_path, m, [x], [c])


@pytest.mark.parametrize("align, half", [(False, False), (True, False), (False, True)])
def test_resize_bilinear_coordinate_modes(tmp_path, align, half):
    m = Model()
    x = m.tensor("x", [1, 5, 4, 2])
    size = m.tensor("size", [2], np.array([9, 7], np.int32), S.TensorType.INT32)
    y = m.tensor("y", [1, 9, 7, 2])
    m.op(B.RESIZE_BILINEAR, [x, size], [y], Opts.ResizeBilinearOptions,
         options(S.ResizeBilinearOptionsT, alignCorners=align, halfPixelCenters=half))
    compare(tmp_path, m, [x], [y])


def test_broadcast_constants_dense_head_and_softmax(tmp_path):
    m = Model()
    x = m.tensor("x", [1, 4, 4, 3])
    scale = m.weight("scale", RNG.standard_normal(3))
    shift = m.weight("shift", RNG.standard_normal(3))
    s = m.tensor("s", [1, 4, 4, 3])
    m.op(B.MUL, [x, scale], [s], Opts.MulOptions, options(S.MulOptionsT, fusedActivationFunction=0))
    t = m.tensor("t", [1, 4, 4, 3])
    m.op(B.SUB, [s, shift], [t], Opts.SubOptions, options(S.SubOptionsT, fusedActivationFunction=RELU))
    g = m.tensor("g", [1, 4, 4, 3])
    m.op(B.LOGISTIC, [t], [g])
    r = m.tensor("r", [1, 48])
    shape = m.tensor("shape", [2], np.array([1, 48], np.int32), S.TensorType.INT32)
    m.op(B.RESHAPE, [g, shape], [r], Opts.ReshapeOptions, options(S.ReshapeOptionsT, newShape=[1, 48]))
    fw = m.weight("fc_w", RNG.standard_normal((10, 48)))
    fb = m.weight("fc_b", RNG.standard_normal(10))
    f = m.tensor("f", [1, 10])
    m.op(B.FULLY_CONNECTED, [r, fw, fb], [f], Opts.FullyConnectedOptions,
         options(S.FullyConnectedOptionsT, fusedActivationFunction=0))
    p = m.tensor("p", [1, 10])
    m.op(B.SOFTMAX, [f], [p], Opts.SoftmaxOptions, options(S.SoftmaxOptionsT, beta=1.0))
    compare(tmp_path, m, [x], [p, f], tol=1e-5)
