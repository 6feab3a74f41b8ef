"""Reference kernels: the meaning of every IR op, written plainly in numpy.

The compiler folds constants and infers shapes by calling these, and the numpy backend uses
them for ops it has no faster path for, so the two can never disagree. Semantics are ONNX's.
Each kernel is `fn(inputs, attrs) -> list of outputs`; an absent optional input is `None`.
Attribute defaults are ONNX's; front ends store inputs in the newest opset's form.

numpy only: this module ships to the device.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np

from iotrt.modelformat.errors import KernelError

Kernel = Callable[[list, dict], list]

# onnx.TensorProto.DataType -> numpy dtype (Cast's `to`)
ONNX_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
               7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32,
               13: np.uint64}


# ---- convolution and pooling geometry -------------------------------------------------------


def spatial_pads(
    in_sizes: tuple[int, ...], attrs: dict, kernel: tuple[int, ...]
) -> tuple[list[int], list[int]]:
    """(begin pads, end pads) per spatial axis, resolving `auto_pad` like ONNX."""
    n = len(in_sizes)
    strides = attrs.get("strides") or [1] * n
    dil = attrs.get("dilations") or [1] * n
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(in_sizes, kernel, strides, dil):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small = total // 2
            b = small if auto == "SAME_UPPER" else total - small
            begin.append(b)
            end.append(total - b)
        return begin, end
    if auto == "VALID":
        return [0] * n, [0] * n
    pads = attrs.get("pads") or [0] * (2 * n)
    return list(pads[:n]), list(pads[n:])


def out_sizes(in_sizes, kernel, attrs, begin, end) -> list[int]:
    n = len(in_sizes)
    strides = attrs.get("strides") or [1] * n
    dil = attrs.get("dilations") or [1] * n
    ceil = bool(attrs.get("ceil_mode", 0))
    outs = []
    for size, k, s, d, b, e in zip(in_sizes, kernel, strides, dil, begin, end):
        span = size + b + e - (k - 1) * d - 1
        o = (-(-span // s) if ceil else span // s) + 1
        if ceil and (o - 1) * s >= size + b:  # the last window would start inside the end pad
            o -= 1
        outs.append(o)
    return outs


def _windows(xp: np.ndarray, kernel, strides, dil, outs):
    """Yield (kernel offset, strided view of xp) for each kernel position."""
    lead = (slice(None),) * (xp.ndim - len(kernel))
    for offs in itertools.product(*(range(k) for k in kernel)):
        idx = tuple(
            slice(o * d, o * d + (n - 1) * s + 1, s)
            for o, d, s, n in zip(offs, dil, strides, outs)
        )
        yield offs, xp[lead + idx]


def _pad_to(x: np.ndarray, begin, end_needed, value) -> np.ndarray:
    """Pad the spatial axes of x by `begin` and to reach the sizes windows need (may crop)."""
    n = len(begin)
    widths = [(0, 0)] * (x.ndim - n) + [(b, max(0, e)) for b, e in zip(begin, end_needed)]
    xp = np.pad(x, widths, mode="constant", constant_values=value)
    crop = tuple(slice(None) for _ in range(x.ndim - n)) + tuple(
        slice(0, xp.shape[x.ndim - n + i] + min(0, e)) for i, e in enumerate(end_needed)
    )
    return xp[crop]


def _geometry(x, kernel, attrs):
    in_sizes = x.shape[2:]
    n = len(in_sizes)
    strides = attrs.get("strides") or [1] * n
    dil = attrs.get("dilations") or [1] * n
    begin, end = spatial_pads(in_sizes, attrs, kernel)
    outs = out_sizes(in_sizes, kernel, attrs, begin, end)
    need = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(outs, strides, kernel, dil)]
    end_needed = [nd - sz - b for nd, sz, b in zip(need, in_sizes, begin)]
    return strides, dil, begin, end, outs, end_needed


def apply_activation(y: np.ndarray, attrs: dict) -> np.ndarray:
    """A fused activation (set by passes.fuse_activations), applied in place."""
    act = attrs.get("activation")
    if act is None:
        return y
    if act == "Relu":
        np.maximum(y, 0, out=y)
    elif act == "Clip":
        np.clip(y, attrs["act_min"], attrs["act_max"], out=y)
    elif act == "LeakyRelu":
        np.multiply(y, np.where(y < 0, attrs["act_alpha"], 1).astype(y.dtype), out=y)
    else:
        raise KernelError(f"unknown fused activation {act!r}")
    return y


def conv(ins, a):
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    if x.ndim < 3:
        raise KernelError(f"Conv needs an input with spatial axes, got shape {x.shape}")
    group = int(a.get("group", 1))
    kernel = tuple(a.get("kernel_shape") or w.shape[2:])
    strides, dil, begin, _, outs, end_needed = _geometry(x, kernel, a)
    n, c = x.shape[:2]
    m = w.shape[0]
    if c != w.shape[1] * group or m % group:
        raise KernelError(f"Conv weight {w.shape} does not fit input {x.shape} with group={group}")
    xp = _pad_to(x, begin, end_needed, 0)
    npos = math.prod(kernel)
    cols = np.empty((n, c, npos) + tuple(outs), dtype=x.dtype)
    for i, (_, view) in enumerate(_windows(xp, kernel, strides, dil, outs)):
        cols[:, :, i] = view
    cg, mg = c // group, m // group
    cols = cols.reshape(n, group, cg * npos, -1)
    wg = w.reshape(group, mg, cg * npos)
    y = np.matmul(wg[None], cols).reshape((n, m) + tuple(outs))
    if b is not None:
        y += b.reshape((1, m) + (1,) * len(outs))
    return [apply_activation(y.astype(x.dtype, copy=False), a)]


def max_pool(ins, a):
    x = ins[0]
    kernel = tuple(a["kernel_shape"])
    strides, dil, begin, _, outs, end_needed = _geometry(x, kernel, a)
    lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    xp = _pad_to(x, begin, end_needed, lowest)
    y = None
    for _, view in _windows(xp, kernel, strides, dil, outs):
        y = view.copy() if y is None else np.maximum(y, view, out=y)
    return [y]


def avg_pool_divisor(in_shape: tuple[int, ...], a: dict) -> np.ndarray:
    """Per output position, how many taps AveragePool divides by: the window's positions inside
    the input, or inside input + explicit pads with count_include_pad; never the positions
    that only ceil_mode added. Shape (1, 1, *output spatial)."""
    kernel = tuple(a["kernel_shape"])
    ones = np.ones((1, 1) + tuple(in_shape[2:]), dtype=np.float64)
    strides, dil, begin, end, outs, end_needed = _geometry(ones, kernel, a)
    if a.get("count_include_pad", 0):
        ones = np.pad(ones, [(0, 0), (0, 0)] + list(zip(begin, end)), constant_values=1)
        mask = _pad_to(ones, [0] * len(begin), [e - pe for e, pe in zip(end_needed, end)], 0)
    else:
        mask = _pad_to(ones, begin, end_needed, 0)
    count = np.zeros((1, 1) + tuple(outs))
    for _, view in _windows(mask, kernel, strides, dil, outs):
        count += view
    return count


def average_pool(ins, a):
    x = ins[0]
    kernel = tuple(a["kernel_shape"])
    strides, dil, begin, _, outs, end_needed = _geometry(x, kernel, a)
    xp = _pad_to(x, begin, end_needed, 0)
    y = np.zeros(x.shape[:2] + tuple(outs), dtype=x.dtype)
    for _, view in _windows(xp, kernel, strides, dil, outs):
        y += view
    return [(y / avg_pool_divisor(x.shape, a)).astype(x.dtype)]


# ---- elementwise ----------------------------------------------------------------------------


def _div(a, b):
    if np.issubdtype(a.dtype, np.integer):
        return np.trunc(a / b).astype(a.dtype)
    return a / b


def _binary(fn):
    return lambda ins, a: [apply_activation(np.asarray(fn(ins[0], ins[1])), a)]


def _unary(fn):
    return lambda ins, a: [np.asarray(fn(ins[0], a)).astype(ins[0].dtype, copy=False)]


def _sigmoid(x, a):
    # exp of a negative magnitude only, so large |x| neither overflows nor warns
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def clip(ins, a):
    x = ins[0]
    lo = ins[1] if len(ins) > 1 and ins[1] is not None else None
    hi = ins[2] if len(ins) > 2 and ins[2] is not None else None
    y = x
    if lo is not None:
        y = np.maximum(y, lo)
    if hi is not None:
        y = np.minimum(y, hi)
    return [np.array(y, dtype=x.dtype)]


def softmax(ins, a):
    x = ins[0]
    axis = a.get("axis", -1)
    if a.get("legacy"):  # opset < 13: softmax over the input flattened to 2-D at `axis`
        axis = axis % x.ndim if x.ndim else 0
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        return [softmax([flat], {"axis": 1})[0].reshape(x.shape)]
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return [e / e.sum(axis=axis, keepdims=True)]


def lrn(ins, a):
    x = ins[0]
    size = int(a["size"])
    alpha, beta, bias = a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)
    sq = np.square(x)
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    padded = np.pad(sq, [(0, 0), (lo, hi)] + [(0, 0)] * (x.ndim - 2))
    acc = np.zeros_like(x)
    for i in range(size):
        acc += padded[:, i : i + x.shape[1]]
    return [(x / (bias + alpha / size * acc) ** beta).astype(x.dtype)]


def batch_norm(ins, a):
    x, scale, bias, mean, var = ins[:5]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = scale / np.sqrt(var + a.get("epsilon", 1e-5))
    y = (x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)
    return [y.astype(x.dtype)]


def gemm(ins, a):
    A, B = ins[0], ins[1]
    C = ins[2] if len(ins) > 2 else None
    if a.get("transA", 0):
        A = A.T
    if a.get("transB", 0):
        B = B.T
    y = a.get("alpha", 1.0) * (A @ B)
    if C is not None:
        y = y + a.get("beta", 1.0) * C
    return [apply_activation(np.asarray(y, dtype=ins[0].dtype), a)]


# ---- shape and data movement ----------------------------------------------------------------


def reshape_target(in_shape, shape, allowzero=0) -> tuple[int, ...]:
    shape = [int(s) for s in shape]
    if not allowzero:
        shape = [in_shape[i] if s == 0 else s for i, s in enumerate(shape)]
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        shape[shape.index(-1)] = math.prod(in_shape) // known if known else 0
    if math.prod(shape) != math.prod(in_shape):
        raise KernelError(f"cannot reshape {tuple(in_shape)} to {tuple(shape)}")
    return tuple(shape)


def reshape(ins, a):
    return [ins[0].reshape(reshape_target(ins[0].shape, ins[1], a.get("allowzero", 0)))]


def flatten(ins, a):
    x = ins[0]
    axis = a.get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


def squeeze(ins, a):
    x = ins[0]
    axes = ins[1] if len(ins) > 1 and ins[1] is not None else None
    if axes is None:
        return [x.reshape([s for s in x.shape if s != 1])]
    return [np.squeeze(x, axis=tuple(int(i) for i in axes))]


def unsqueeze(ins, a):
    x = ins[0]
    axes = sorted(int(i) % (x.ndim + len(ins[1])) for i in ins[1])
    shape = list(x.shape)
    for ax in axes:
        shape.insert(ax, 1)
    return [x.reshape(shape)]


def transpose(ins, a):
    perm = a.get("perm") or list(range(ins[0].ndim))[::-1]
    return [np.ascontiguousarray(ins[0].transpose(perm))]


def concat(ins, a):
    return [apply_activation(np.concatenate(ins, axis=a["axis"]), a)]


def pad(ins, a):
    x, pads = ins[0], [int(p) for p in ins[1]]
    value = ins[2] if len(ins) > 2 and ins[2] is not None and ins[2].size else 0
    axes = ins[3] if len(ins) > 3 and ins[3] is not None else range(x.ndim)
    axes = [int(ax) % x.ndim for ax in axes]
    k = len(axes)
    widths = [(0, 0)] * x.ndim
    for i, ax in enumerate(axes):
        widths[ax] = (pads[i], pads[i + k])
    # Negative pads crop; np.pad only grows, so crop first.
    crop = tuple(slice(max(0, -b), x.shape[i] - max(0, -e)) for i, (b, e) in enumerate(widths))
    x = x[crop]
    widths = [(max(0, b), max(0, e)) for b, e in widths]
    mode = a.get("mode", "constant")
    if mode == "constant":
        return [np.pad(x, widths, mode="constant", constant_values=np.asarray(value).item())]
    if mode not in ("edge", "reflect", "wrap"):
        raise KernelError(f"unknown Pad mode {mode!r}")
    return [np.pad(x, widths, mode=mode)]


def _resize_axis(x, axis, out_size, scale, roi_lo, roi_hi, a):
    """Resize one axis (ONNX Resize semantics for nearest and linear)."""
    in_size = x.shape[axis]
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    o = np.arange(out_size, dtype=np.float64)
    if ctm == "half_pixel":
        src = (o + 0.5) / scale - 0.5
    elif ctm == "pytorch_half_pixel":
        src = (o + 0.5) / scale - 0.5 if out_size > 1 else np.zeros_like(o)
    elif ctm == "align_corners":
        # ONNX uses the unrounded resized length (in_size * scale) here
        length = in_size * scale
        src = o * (in_size - 1) / (length - 1) if out_size > 1 else np.zeros_like(o)
    elif ctm == "asymmetric":
        src = o / scale
    elif ctm == "half_pixel_symmetric":
        adj = out_size / (scale * in_size)
        src = (in_size / 2) * (1 - adj) + (o + 0.5) / scale - 0.5
    elif ctm == "tf_crop_and_resize":
        if out_size > 1:
            src = roi_lo * (in_size - 1) + o * (roi_hi - roi_lo) * (in_size - 1) / (out_size - 1)
        else:
            src = np.full_like(o, 0.5 * (roi_lo + roi_hi) * (in_size - 1))
    else:
        raise KernelError(f"unsupported coordinate_transformation_mode {ctm!r}")
    mode = a.get("mode", "nearest")
    if mode == "nearest":
        nm = a.get("nearest_mode", "round_prefer_floor")
        if nm == "round_prefer_floor":
            idx = np.where(src - np.floor(src) == 0.5, np.floor(src), np.round(src))
        elif nm == "round_prefer_ceil":
            idx = np.where(src - np.floor(src) == 0.5, np.ceil(src), np.round(src))
        elif nm == "floor":
            idx = np.floor(src)
        elif nm == "ceil":
            idx = np.ceil(src)
        else:
            raise KernelError(f"unknown nearest_mode {nm!r}")
        idx = np.clip(idx, 0, in_size - 1).astype(np.int64)
        return np.take(x, idx, axis=axis)
    if mode != "linear":
        raise KernelError(f"unsupported Resize mode {mode!r} (nearest and linear are supported)")
    outside = (src < 0) | (src > in_size - 1)
    src = np.clip(src, 0, in_size - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, in_size - 1)
    shape = [-1 if i == axis else 1 for i in range(x.ndim)]
    w = (src - lo).reshape(shape)
    out = np.take(x, lo, axis=axis) * (1 - w) + np.take(x, hi, axis=axis) * w
    if ctm == "tf_crop_and_resize" and outside.any():
        # separable: a point outside the crop on any axis ends up as the fill value
        out = np.where(outside.reshape(shape), a.get("extrapolation_value", 0.0), out)
    return out.astype(x.dtype)


def _resize_targets(x, axes, scales, sizes, policy) -> dict[int, tuple[int, float]]:
    """axis -> (output size, scale) for the resized axes."""
    if sizes is not None:
        ratios = [float(sizes[i]) / x.shape[ax] for i, ax in enumerate(axes)]
        if policy == "stretch":
            return {ax: (int(sizes[i]), ratios[i]) for i, ax in enumerate(axes)}
        pick = {"not_larger": min, "not_smaller": max}.get(policy)
        if pick is None:
            raise KernelError(f"unknown keep_aspect_ratio_policy {policy!r}")
        r = pick(ratios)
        return {ax: (int(x.shape[ax] * r + 0.5), r) for ax in axes}
    if scales is not None:
        return {ax: (int(math.floor(x.shape[ax] * float(scales[i]))), float(scales[i]))
                for i, ax in enumerate(axes)}
    raise KernelError("Resize needs scales or sizes")


def resize(ins, a):
    x = ins[0]
    given = [ins[i] if len(ins) > i and ins[i] is not None and ins[i].size else None
             for i in (1, 2, 3)]
    roi, scales, sizes = given
    if a.get("antialias", 0):
        raise KernelError("Resize antialias is not supported")
    axes = [int(ax) % x.ndim for ax in a.get("axes") or range(x.ndim)]
    targets = _resize_targets(x, axes, scales, sizes, a.get("keep_aspect_ratio_policy", "stretch"))
    y = x
    for k, ax in enumerate(axes):
        size, scale = targets[ax]
        if size == x.shape[ax] and scale == 1.0:
            continue
        lo = float(roi[k]) if roi is not None else 0.0
        hi = float(roi[k + len(axes)]) if roi is not None else 1.0
        y = _resize_axis(y, ax, size, scale, lo, hi, a)
    return [np.ascontiguousarray(y)]


def constant_of_shape(ins, a):
    value = np.asarray(a.get("value", np.zeros(1, np.float32))).reshape(-1)
    return [np.full([int(s) for s in ins[0]], value[0], dtype=value.dtype)]


def shape(ins, a):
    dims = ins[0].shape
    start, end = a.get("start", 0), a.get("end", None)
    return [np.array(dims[start:end], dtype=np.int64)]


KERNELS: dict[str, Kernel] = {
    "Add": _binary(np.add),
    "AveragePool": average_pool,
    "BatchNormalization": batch_norm,
    "Cast": lambda ins, a: [ins[0].astype(ONNX_DTYPES[a["to"]])],
    "CastLike": lambda ins, a: [ins[0].astype(ins[1].dtype)],
    "Clip": clip,
    "Concat": concat,
    "ConstantOfShape": constant_of_shape,
    "Conv": conv,
    "Dequantize": lambda ins, a: [ins[0].astype(np.float32)],
    "Div": _binary(_div),
    "Flatten": flatten,
    "Gather": lambda ins, a: [np.take(ins[0], ins[1].astype(np.int64), axis=a.get("axis", 0))],
    "Gemm": gemm,
    "GlobalAveragePool": lambda ins, a: [
        ins[0].mean(axis=tuple(range(2, ins[0].ndim)), keepdims=True, dtype=ins[0].dtype)
    ],
    "GlobalMaxPool": lambda ins, a: [ins[0].max(axis=tuple(range(2, ins[0].ndim)), keepdims=True)],
    "Identity": lambda ins, a: [ins[0]],
    "LeakyRelu": _unary(lambda x, a: np.where(x < 0, x * a.get("alpha", 0.01), x)),
    "LRN": lrn,
    "MatMul": lambda ins, a: [np.matmul(ins[0], ins[1])],
    "MaxPool": max_pool,
    "Mul": _binary(np.multiply),
    "Pad": pad,
    "PRelu": lambda ins, a: [np.where(ins[0] < 0, ins[0] * ins[1], ins[0]).astype(ins[0].dtype)],
    "Relu": _unary(lambda x, a: np.maximum(x, 0)),
    "Reshape": reshape,
    "Resize": resize,
    "Shape": shape,
    "Sigmoid": _unary(_sigmoid),
    "Softmax": softmax,
    "Squeeze": squeeze,
    "Sub": _binary(np.subtract),
    "Sum": lambda ins, a: [apply_activation(np.asarray(sum(ins[1:], ins[0].copy())), a)],
    "Tanh": _unary(lambda x, a: np.tanh(x)),
    "Transpose": transpose,
    "Unsqueeze": unsqueeze,
}
