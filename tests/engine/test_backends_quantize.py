"""Per-channel int8 weights: the arithmetic, independent of any model."""

from __future__ import annotations

import numpy as np
import pytest

from iotrt.compiler.quantize import quantize
from iotrt.modelformat.quantized import QuantizeError, dequantize


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_error_is_at_most_half_a_step_per_channel(axis):
    rng = np.random.default_rng(0)
    # Channels of very different magnitude: one scale for the whole tensor would crush the small ones.
    w = rng.normal(size=(8, 6, 3, 3)).astype(np.float32)
    w *= np.logspace(-3, 1, w.shape[axis]).reshape([-1 if i == axis % 4 else 1 for i in range(4)])
    t = quantize(w, axis)
    assert t.q.dtype == np.int8 and t.q.shape == w.shape
    assert t.scale.dtype == np.float32 and t.scale.shape == (w.shape[axis],)
    assert np.abs(t.q).max() == 127  # every channel uses the full range
    step = t.scale.reshape([-1 if i == axis % 4 else 1 for i in range(4)])
    err = np.abs(dequantize(t) - w)
    assert np.all(err <= step / 2 + 1e-7 * np.abs(w))


def test_exact_values_survive_and_zero_channels_stay_zero():
    w = np.array([[0, 0, 0], [-127, 0, 127], [-2, 1, 0.5]], np.float32)
    t = quantize(w, 0)
    assert t.scale[0] == 1.0  # all-zero channel: finite scale, zeros back
    np.testing.assert_array_equal(dequantize(t)[:2], w[:2])
    np.testing.assert_array_equal(t.q[2], [-127, 64, 32])  # rint(1 / (2/127)) = 64 (63.5 -> even)


def test_storage_is_a_quarter_plus_scales():
    w = np.ones((64, 16, 3, 3), np.float32)
    t = quantize(w)
    assert t.nbytes == w.size + 64 * 4


@pytest.mark.parametrize("shape,axis", [((), 0), ((3, 4), 2), ((3,), -2)])
def test_bad_axis_is_rejected(shape, axis):
    with pytest.raises(QuantizeError, match="axis"):
        quantize(np.ones(shape, np.float32), axis)


def test_stored_entry_restores_the_dequantized_weight():
    from iotrt.modelformat import quantized as qz

    rng = np.random.default_rng(3)
    w = rng.normal(size=(5, 2, 3, 3)).astype(np.float32)
    t = quantize(w, 0)
    blob = bytearray(b"\xff" * 10)  # something before, as in a real blob

    def put(data: bytes) -> int:
        blob.extend(b"\0" * (-len(blob) % 64))
        offset = len(blob)
        blob.extend(data)
        return offset

    e = qz.entry(t, put)
    assert e["dtype"] == "int8" and e["quant"]["axis"] == 0
    np.testing.assert_array_equal(qz.restore(bytes(blob), e), dequantize(t))
    e["quant"]["scheme"] = "int4-magic"
    with pytest.raises(QuantizeError, match="int4-magic"):
        qz.restore(bytes(blob), e)
