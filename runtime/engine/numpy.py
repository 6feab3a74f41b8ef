"""The numpy backend: runs an artifact's plan with preallocated buffers.

At load, every node becomes a closure bound to fixed views of one activation arena (offsets from
the artifact's memory plan) and to its prepared weights, so `run` is a flat loop over closures
that allocates nothing for convolutions, pooling and elementwise ops in steady state (rare ops
fall back to the reference kernels, which allocate).

Convolutions (and the fusions planned around them) are built in `numpyconv`. The scratch
buffers are shared by all convs; outputs go straight into their arena slot (often a concat
slice), and the bias and fused activation are applied in place.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from iotrt.engine.backend import limit_blas_threads
from iotrt.engine.numpyconv import (
    Step,
    activation_step,
    bias_after_max_pool,
    build_conv,
    build_generic,
    channel_pads_into_adds,
    channel_shuffles,
    pointwise_after_depthwise,
)
from iotrt.modelformat.artifact import Artifact
from iotrt.modelformat.errors import EngineError, InputError, KernelError
from iotrt.modelformat.ir import VIEW_OPS, Op, OpNode, TensorSpec
from iotrt.modelformat.kernels import avg_pool_divisor, out_sizes, spatial_pads

NAME = "numpy"


def unavailable() -> str | None:
    """The numpy backend runs wherever iotrt does."""
    return None


class _Scratch:
    """One buffer shared by every conv's im2col matrix; sized once all steps are built."""

    def __init__(self) -> None:
        self.nbytes = 0
        self.buf = np.empty(0, np.uint8)

    def need(self, shape, dtype) -> None:
        self.nbytes = max(self.nbytes, math.prod(shape) * np.dtype(dtype).itemsize)

    def need_parts(self, parts) -> None:
        self.nbytes = max(self.nbytes, sum(self._aligned(shape, dtype) for shape, dtype in parts))

    def parts(self, parts) -> list[np.ndarray]:
        """Views of consecutive (aligned) regions of the buffer, one per (shape, dtype)."""
        views, off = [], 0
        for shape, dtype in parts:
            n = math.prod(shape) * np.dtype(dtype).itemsize
            views.append(self.buf[off:off + n].view(dtype).reshape(shape))
            off += self._aligned(shape, dtype)
        return views

    @staticmethod
    def _aligned(shape, dtype) -> int:
        return -(-math.prod(shape) * np.dtype(dtype).itemsize // 64) * 64

    def view(self, shape, dtype) -> np.ndarray:
        n = math.prod(shape) * np.dtype(dtype).itemsize
        return self.buf[:n].view(dtype).reshape(shape)


ZERO_ROW = 64 * 1024  # bytes: 16384 float32 zeros
# pooling goes through blocks of channels whose padded planes take about this much
# (SqueezeNet's first 3x3 stride-2 max pool, 64 x 111 x 111: 0.46 -> 0.31 ms with 8 channels)
POOL_BLOCK_BYTES = 400 * 1024


def _row_length(size: int, limit: int) -> int:
    """A divisor of `size` up to `limit` (a power of two), as long as possible (long rows
    vectorise best)."""
    if size <= limit:
        return max(size, 1)
    best = math.gcd(size, limit)
    for n in range(limit, best, -1):
        if size % n == 0:
            return n
    return best


class NumpyModel:
    name = backend = NAME

    def __init__(self, art: Artifact, threads: int = 1):
        # `threads` is accepted for the backend interface; numpy's BLAS pool is sized by the
        # process environment (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS), set by the supervisor.
        self.artifact = art
        self.inputs: list[TensorSpec] = art.inputs
        self.outputs: list[TensorSpec] = art.outputs
        self.meta = art.meta
        g = art.graph
        self._graph = g
        self.arena = np.zeros(art.memory.arena_bytes, dtype=np.uint8)
        self._offsets = art.memory.offsets
        self._views: dict[str, np.ndarray] = {}
        for name, off in self._offsets.items():
            dtype = np.dtype(g.dtypes[name])
            shape = g.shapes[name]
            self._views[name] = self.arena[off:off + math.prod(shape) * dtype.itemsize].view(dtype).reshape(shape)
        self._scratch = _Scratch()
        # np.maximum(y, 0) with a scalar runs an unvectorised loop in numpy 2.x; against a row of
        # zeros broadcast over y viewed as rows it runs the SIMD one (3-5x faster here).
        self._zero_row = np.zeros(ZERO_ROW, np.uint8)
        self._zero_row.flags.writeable = False
        self._shuffled, self._skipped = channel_shuffles(g)
        self._pointwise = pointwise_after_depthwise(g, self._bytes)
        self._skipped |= {pw.name for pw in self._pointwise.values()}
        self._padded = channel_pads_into_adds(g, self._bytes, self._pointwise)
        self._skipped |= {pad for pad, _, _ in self._padded.values()}
        self._pool_bias = bias_after_max_pool(g, self._pointwise)
        self._deferred = {conv.name for convs in self._pool_bias.values() for conv in convs}
        self._steps: list[tuple[OpNode, Step]] = []
        for node in g.nodes:
            if node.name in self._skipped:
                continue
            builder = BUILDERS.get(node.op, build_generic)
            step = builder(self, node)
            if step is not None:
                self._steps.append((node, step))
        self._scratch.buf = np.zeros(self._scratch.nbytes, dtype=np.uint8)

    # -- helpers for builders ----------------------------------------------------------------

    def t(self, name: str) -> np.ndarray | None:
        if not name:
            return None
        if name in self._graph.consts:
            return self._graph.consts[name]
        return self._views[name]

    def relu_operands(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(y viewed as rows, a row of zeros of y's dtype): `np.maximum(rows, zeros, out=rows)`
        is a vectorised in-place Relu of the contiguous array y."""
        n = _row_length(y.size, ZERO_ROW // y.dtype.itemsize)
        zeros = self._zero_row[:n * y.dtype.itemsize].view(y.dtype)
        return y.reshape(-1, n), zeros

    def is_const(self, name: str) -> bool:
        return name in self._graph.consts

    def _bytes(self, name: str) -> range:
        """The arena bytes tensor `name` occupies (empty for constants and graph inputs that
        live outside the arena)."""
        if name not in self._offsets:
            return range(0)
        off = self._offsets[name]
        return range(off, off + self._views[name].nbytes)

    def same_bytes(self, a: str, b: str) -> bool:
        return a in self._offsets and b in self._offsets and self._offsets[a] == self._offsets[b]

    # -- running ---------------------------------------------------------------------------

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; returns fresh arrays (the arena is reused by the next call)."""
        expected = {s.name for s in self.inputs}
        unknown = set(feeds) - expected
        if unknown:
            raise InputError(f"unknown input(s) {sorted(unknown)}; the model's inputs are "
                             f"{[s.name for s in self.inputs]}")
        for spec in self.inputs:
            if spec.name not in feeds:
                raise InputError(f"missing input '{spec.name}' {spec.shape} {spec.dtype}")
            x = np.asarray(feeds[spec.name])
            if tuple(x.shape) != spec.shape:
                raise InputError(f"input '{spec.name}': shape {tuple(x.shape)}, the model was "
                                 f"compiled for {spec.shape} (recompile with --input-shape)")
            if x.dtype != np.dtype(spec.dtype):
                raise InputError(f"input '{spec.name}': dtype {x.dtype}, expected {spec.dtype} "
                                 f"(convert with x.astype(np.{spec.dtype}))")
            if spec.name in self._views:
                np.copyto(self._views[spec.name], x)
        for node, step in self._steps:
            try:
                step()
            except (KernelError, ValueError, FloatingPointError) as exc:
                raise EngineError(f"{node.op.value} node '{node.name}': {exc}") from exc
        out = {}
        for spec in self.outputs:
            src = self.t(spec.name)
            if src is None and spec.name in feeds:
                src = feeds[spec.name]
            out[spec.name] = np.array(src, copy=True)
        return out


    def profile(self, feeds: dict[str, np.ndarray], runs: int) -> list[tuple[OpNode, float]]:
        """Each step's median CPU time in ms over `runs` runs (after one run that binds
        everything), in step order: where a run's time goes (bench/engine.py --profile)."""
        self.run(feeds)
        times: list[list[int]] = [[] for _ in self._steps]
        for _ in range(runs):
            for spent, (_, step) in zip(times, self._steps):
                start = time.process_time_ns()
                step()
                spent.append(time.process_time_ns() - start)
        return [(node, float(np.median(spent)) / 1e6) for (node, _), spent in zip(self._steps, times)]


# ---- builders: node -> closure over fixed views ---------------------------------------------


def _build_view(m: NumpyModel, node: OpNode) -> Step | None:
    if m.same_bytes(node.inputs[0], node.outputs[0]):
        return None  # the memory plan made the output a view of the input
    return build_generic(m, node)


def _build_concat(m: NumpyModel, node: OpNode) -> Step:
    y = m.t(node.outputs[0])
    axis = node.attrs["axis"] % y.ndim
    copies = []
    start = 0
    for name in node.inputs:
        x = m.t(name)
        index = (slice(None),) * axis + (slice(start, start + x.shape[axis]),)
        start += x.shape[axis]
        dst = y[index]
        aliased = (name in m._offsets and node.outputs[0] in m._offsets
                   and dst.flags.c_contiguous
                   and m._offsets[name] == m._offsets[node.outputs[0]] + (
                       dst.__array_interface__["data"][0] - y.__array_interface__["data"][0]))
        if not aliased:
            copies.append((dst, x))
    act = activation_step(m, y, node.attrs)

    def step() -> None:
        for dst, x in copies:
            np.copyto(dst, x)
        if act:
            act()
    return step


def _build_pool(m: NumpyModel, node: OpNode) -> Step:
    x, y = m.t(node.inputs[0]), m.t(node.outputs[0])
    a = node.attrs
    if x.ndim != 4 or a.get("storage_order", 0) or len(node.outputs) > 1:
        generic, finish = build_generic(m, node), _pool_bias_step(m, node, y)
        return generic if finish is None else lambda: (generic(), finish())
    kernel = tuple(a["kernel_shape"])
    strides = a.get("strides") or [1, 1]
    dil = a.get("dilations") or [1, 1]
    begin, end = spatial_pads(x.shape[2:], a, kernel)
    outs = out_sizes(x.shape[2:], kernel, a, begin, end)
    need = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(outs, strides, kernel, dil)]
    is_max = node.op is Op.MAX_POOL
    if is_max:
        fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    else:
        fill = 0
    # A dedicated padded copy, its border filled once; only the interior is rewritten per run.
    ph = max(need[0], begin[0] + x.shape[2])
    pw = max(need[1], begin[1] + x.shape[3])
    if (ph, pw) == x.shape[2:] and begin == [0, 0] and x.flags.c_contiguous:
        xp, interior = x, None
    else:
        xp = np.full(x.shape[:2] + (ph, pw), fill, dtype=x.dtype)
        interior = xp[:, :, begin[0]:begin[0] + x.shape[2], begin[1]:begin[1] + x.shape[3]]
    # Separable, a few channels at a time (a block within POOL_BLOCK_BYTES stays in the L2
    # cache): the max or sum over the kernel's rows runs on the block as one flat array (the
    # rows `i*dh` apart, every row, not only the strided ones: a few long vectorised calls beat
    # thousands of short row-wise ones), a strided copy keeps the rows the stride needs, the
    # reduction over the kernel's columns runs flat on those, and a strided copy (with the
    # average's divisor) writes the columns the stride needs: kh + kw - 2 passes instead of
    # kh * kw - 1. Positions whose window would run past a row or a channel are never kept.
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, strides, dil, outs
    combine = np.maximum if is_max else np.add
    n, c = x.shape[:2]
    cb = max(1, min(c, POOL_BLOCK_BYTES // (ph * pw * x.dtype.itemsize)))
    part = [((cb * ph * pw,), x.dtype), ((cb * ho * need[1],), x.dtype)]
    m._scratch.need_parts(part)
    scratch = m._scratch
    inv = None if is_max else (1.0 / avg_pool_divisor(x.shape, a)).astype(x.dtype).reshape(ho, wo)
    rows_kept = (slice(None), slice(0, (ho - 1) * sh + 1, sh), slice(0, need[1]))
    cols_kept = (slice(None), slice(None), slice(0, (wo - 1) * sw + 1, sw))
    bound: list = []

    def bind() -> None:
        flat, kept = scratch.parts(part)
        for k in range(n):
            for c0 in range(0, c, cb):
                c1 = min(c, c0 + cb)
                src = xp[k, c0:c1]
                length = src.size - (kh - 1) * dh * pw
                vertical = [src.reshape(-1)[i * dh * pw:i * dh * pw + length] for i in range(kh)]
                rows = flat[:src.size].reshape(src.shape) if kh > 1 else src
                v1 = kept[:(c1 - c0) * ho * need[1]]
                length2 = v1.size - (kw - 1) * dw
                horizontal = [v1[j * dw:j * dw + length2] for j in range(kw)]
                cols = (flat[:v1.size] if kw > 1 else v1).reshape(c1 - c0, ho, need[1])
                fill = None if interior is None else (interior[k, c0:c1], x[k, c0:c1])
                bound.append((fill, vertical, flat[:length], rows[rows_kept],
                               v1.reshape(c1 - c0, ho, need[1]), horizontal, flat[:length2],
                               cols[cols_kept], y[k, c0:c1]))

    finish = _pool_bias_step(m, node, y)

    def step() -> None:
        if not bound:
            bind()
        for fill, vertical, vsum, rows, v1, horizontal, hsum, cols, yb in bound:
            if fill is not None:
                np.copyto(*fill)
            if kh > 1:
                combine(vertical[0], vertical[1], out=vsum)
                for v in vertical[2:]:
                    combine(vsum, v, out=vsum)
            np.copyto(v1, rows)
            if kw > 1:
                combine(horizontal[0], horizontal[1], out=hsum)
                for v in horizontal[2:]:
                    combine(hsum, v, out=hsum)
            if inv is None:
                np.copyto(yb, cols)
            else:
                np.multiply(cols, inv, out=yb)
        if finish:
            finish()
    return step


def _pool_bias_step(m: NumpyModel, node: OpNode, y: np.ndarray) -> Step | None:
    """The bias and activation of the convs this MaxPool reads (see `bias_after_max_pool`),
    applied to the pool's output."""
    convs = m._pool_bias.get(node.name)
    if not convs:
        return None
    parts = []
    for conv in convs:
        mo = m._graph.shapes[conv.outputs[0]][1]
        b = m.t(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] else None
        parts.append(np.zeros(mo, y.dtype) if b is None else b.astype(y.dtype))
    bias = np.concatenate(parts).reshape(-1, 1, 1)
    has_bias = any(len(c.inputs) > 2 and c.inputs[2] for c in convs)
    act = activation_step(m, y, convs[0].attrs)

    def step() -> None:
        if has_bias:
            np.add(y, bias, out=y)
        if act:
            act()
    return step


def _build_global_pool(m: NumpyModel, node: OpNode) -> Step:
    x, y = m.t(node.inputs[0]), m.t(node.outputs[0])
    axes = tuple(range(2, x.ndim))
    if node.op is Op.GLOBAL_AVERAGE_POOL:
        if y.dtype.kind == "f" and x.flags.c_contiguous:
            # a GEMV against 1/(h*w): one BLAS pass (np.mean over two axes is ~8x slower)
            n, c = x.shape[:2]
            xs, ys = x.reshape(n, c, -1), y.reshape(n, c)
            inv = np.full(xs.shape[2], 1.0 / xs.shape[2], dtype=y.dtype)
            return lambda: np.matmul(xs, inv, out=ys)
        return lambda: np.mean(x, axis=axes, keepdims=True, out=y)
    return lambda: np.max(x, axis=axes, keepdims=True, out=y)


def _build_add(m: NumpyModel, node: OpNode) -> Step:
    padded = [i for i, name in enumerate(node.inputs[:2]) if name in m._padded]
    if not padded:
        return _build_binary(np.add)(m, node)
    # y = zero-pad(x) + other (see `channel_pads_into_adds`)
    i = padded[0]
    _, src, c = m._padded[node.inputs[i]]
    other_name = node.inputs[1 - i]
    x, other, y = m.t(src), m.t(other_name), m.t(node.outputs[0])
    head, tail = (slice(None), slice(0, c)), (slice(None), slice(c, None))
    yh, oh, yt, ot = y[head], other[head], y[tail], other[tail]
    copy_tail = not m.same_bytes(other_name, node.outputs[0])
    act = activation_step(m, y, node.attrs)

    def step() -> None:
        np.add(oh, x, out=yh)
        if copy_tail:
            np.copyto(yt, ot)
        if act:
            act()
    return step


def _build_binary(fn):
    def build(m: NumpyModel, node: OpNode) -> Step:
        a, b = m.t(node.inputs[0]), m.t(node.inputs[1])
        y = m.t(node.outputs[0])
        if y.dtype.kind != "f" or np.broadcast_shapes(a.shape, b.shape) != y.shape:
            return build_generic(m, node)
        act = activation_step(m, y, node.attrs)

        def step() -> None:
            fn(a, b, out=y)
            if act:
                act()
        return step
    return build


def _build_sum(m: NumpyModel, node: OpNode) -> Step:
    xs = [m.t(i) for i in node.inputs]
    y = m.t(node.outputs[0])
    if len(xs) < 2 or any(x.shape != y.shape for x in xs):
        return build_generic(m, node)
    act = activation_step(m, y, node.attrs)

    def step() -> None:
        np.add(xs[0], xs[1], out=y)
        for x in xs[2:]:
            np.add(y, x, out=y)
        if act:
            act()
    return step


def _build_relu(m: NumpyModel, node: OpNode) -> Step:
    x, y = m.t(node.inputs[0]), m.t(node.outputs[0])
    if x.shape != y.shape or y.dtype.kind != "f":
        return build_generic(m, node)
    rows, zeros = m.relu_operands(y)
    xrows = x.reshape(rows.shape)
    return lambda: np.maximum(xrows, zeros, out=rows)


def _build_clip(m: NumpyModel, node: OpNode) -> Step:
    ins = list(node.inputs) + ["", ""]
    if any(ins[i] and not m.is_const(ins[i]) for i in (1, 2)):
        return build_generic(m, node)
    x, y = m.t(ins[0]), m.t(node.outputs[0])
    lo = m.t(ins[1]) if ins[1] else None
    hi = m.t(ins[2]) if ins[2] else None
    lo = np.asarray(lo if lo is not None else (-np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min))
    hi = np.asarray(hi if hi is not None else (np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).max))
    return lambda: np.clip(x, lo, hi, out=y)


def _build_pad(m: NumpyModel, node: OpNode) -> Step:
    """Constant padding: copy the input into the interior and fill only the border slabs
    (the output's bytes are shared with other tensors, so the border is refilled each run)."""
    ins = list(node.inputs) + ["", "", ""]
    x, y = m.t(ins[0]), m.t(node.outputs[0])
    if (node.attrs.get("mode", "constant") != "constant" or ins[3]
            or not all(not i or m.is_const(i) for i in ins[1:3])):
        return build_generic(m, node)
    pads = [int(p) for p in m.t(ins[1])]
    value = m.t(ins[2]) if ins[2] and m.t(ins[2]).size else 0
    n = x.ndim
    if min(pads) < 0:
        return build_generic(m, node)
    interior = tuple(slice(b, b + s) for b, s in zip(pads[:n], x.shape))
    slabs = []
    for ax in range(n):
        b, e = pads[ax], pads[ax + n]
        if b:
            slabs.append(tuple(slice(0, b) if i == ax else slice(None) for i in range(n)))
        if e:
            slabs.append(tuple(slice(b + x.shape[ax], None) if i == ax else slice(None)
                               for i in range(n)))
    fill = y.dtype.type(np.asarray(value).item())
    dst = y[interior]

    def step() -> None:
        for slab in slabs:
            y[slab] = fill
        np.copyto(dst, x)
    return step


def _build_lrn(m: NumpyModel, node: OpNode) -> Step:
    """LRN without temporaries: the squares go into a channel-padded scratch buffer, their
    window sums straight into the output, which is then turned into x / (bias + k*sum)**beta
    in place (the reference kernel allocates four activation-sized arrays per call)."""
    x, y = m.t(node.inputs[0]), m.t(node.outputs[0])
    if x.ndim < 3 or y.dtype.kind != "f" or m.same_bytes(node.inputs[0], node.outputs[0]):
        return build_generic(m, node)
    a = node.attrs
    size = int(a["size"])
    alpha, beta, bias = a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)
    lo = (size - 1) // 2
    n, c = x.shape[:2]
    part = [((n, c + size - 1) + x.shape[2:], x.dtype)]
    m._scratch.need_parts(part)
    scratch = m._scratch
    dtype = y.dtype.type
    scale, bias, beta = dtype(alpha / size), dtype(bias), dtype(beta)
    bound: list = []

    def step() -> None:
        if not bound:
            sq = scratch.parts(part)[0]
            bound.extend([sq, sq[:, lo:lo + c], [sq[:, i:i + c] for i in range(size)]])
        sq, inner, windows = bound
        sq[:, :lo] = 0
        sq[:, lo + c:] = 0
        np.square(x, out=inner)
        np.copyto(y, windows[0])
        for win in windows[1:]:
            np.add(y, win, out=y)
        np.multiply(y, scale, out=y)
        np.add(y, bias, out=y)
        np.power(y, beta, out=y)
        np.divide(x, y, out=y)
    return step


def _build_transpose(m: NumpyModel, node: OpNode) -> Step:
    x, y = m.t(node.inputs[0]), m.t(node.outputs[0])
    perm = node.attrs.get("perm") or list(range(x.ndim))[::-1]
    xt = x.transpose(perm)
    return lambda: np.copyto(y, xt)


def _build_gemm(m: NumpyModel, node: OpNode) -> Step:
    a = node.attrs
    A, B = m.t(node.inputs[0]), m.t(node.inputs[1])
    C = m.t(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    y = m.t(node.outputs[0])
    if not m.is_const(node.inputs[1]) or (C is not None and not m.is_const(node.inputs[2])):
        return build_generic(m, node)
    At = A.T if a.get("transA", 0) else A
    # A transposed weight stays a view (BLAS takes either order), so the weights are not copied
    Bt = B.T if a.get("transB", 0) else B
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if alpha != 1.0:
        Bt = (Bt * alpha).astype(y.dtype)
    Cs = None if C is None else (C if beta == 1.0 else C * beta).astype(y.dtype, copy=False)
    act = activation_step(m, y, a)

    def step() -> None:
        np.matmul(At, Bt, out=y)
        if Cs is not None:
            np.add(y, Cs, out=y)
        if act:
            act()
    return step


def _build_matmul(m: NumpyModel, node: OpNode) -> Step:
    a, b, y = m.t(node.inputs[0]), m.t(node.inputs[1]), m.t(node.outputs[0])
    return lambda: np.matmul(a, b, out=y)


BUILDERS: dict[Op, Callable[[NumpyModel, OpNode], Step | None]] = {
    Op.ADD: _build_add,
    Op.AVERAGE_POOL: _build_pool,
    Op.CLIP: _build_clip,
    Op.CONCAT: _build_concat,
    Op.CONV: build_conv,
    Op.DIV: _build_binary(np.divide),
    Op.GEMM: _build_gemm,
    Op.GLOBAL_AVERAGE_POOL: _build_global_pool,
    Op.GLOBAL_MAX_POOL: _build_global_pool,
    Op.LRN: _build_lrn,
    Op.MATMUL: _build_matmul,
    Op.MAX_POOL: _build_pool,
    Op.MUL: _build_binary(np.multiply),
    Op.PAD: _build_pad,
    Op.RELU: _build_relu,
    Op.SUB: _build_binary(np.subtract),
    Op.SUM: _build_sum,
    Op.TRANSPOSE: _build_transpose,
    **{op: _build_view for op in VIEW_OPS},
}


def load(art: Artifact, threads: int = 1) -> NumpyModel:
    limit_blas_threads(threads)
    return NumpyModel(art)
