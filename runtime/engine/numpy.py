"""The numpy backend: runs an artifact's plan with preallocated buffers.

At load, every node becomes a closure bound to fixed views of one activation arena (offsets from
the artifact's memory plan) and to its prepared weights, so `run` is a flat loop over closures
that allocates nothing for convolutions, pooling and elementwise ops in steady state (rare ops
fall back to the reference kernels, which allocate).

Convolution: a 1x1 stride-1 conv is one GEMM on the input as it lies. Depthwise and grouped
convs (and dense ones on a few channels with a large kernel) copy the input once into zero-bordered phase
planes and build their im2col matrix from "wide rows" of them (see `_build_wide`): one strided
copy per plane with long inner loops, then one batched `np.matmul(..., out=)` over the groups.
Other convs build the im2col matrix from the kernel's shifted slices (only the border strips
that fall into padding are zeroed), then one GEMM. The scratch buffers are shared by all convs;
outputs go straight into their arena slot (often a concat slice), and the bias and fused
activation are applied in place.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from iotrt.engine import winograd
from iotrt.engine.backend import limit_blas_threads
from iotrt.modelformat.artifact import Artifact
from iotrt.modelformat.errors import EngineError, InputError, KernelError
from iotrt.modelformat.ir import VIEW_OPS, Op, OpNode, TensorSpec
from iotrt.modelformat.kernels import KERNELS, avg_pool_divisor, out_sizes, spatial_pads

Step = Callable[[], None]
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


def _activation(m: NumpyModel, y: np.ndarray, attrs: dict) -> Callable[[], None] | None:
    act = attrs.get("activation")
    if act == "Relu":
        rows, zeros = m.relu_operands(y)
        return lambda: np.maximum(rows, zeros, out=rows)
    if act == "Clip":
        lo, hi = attrs["act_min"], attrs["act_max"]
        return lambda: np.clip(y, lo, hi, out=y)
    if act == "LeakyRelu":
        alpha = y.dtype.type(attrs["act_alpha"])
        return lambda: np.maximum(y, y * alpha, out=y) if alpha <= 1 else np.minimum(y, y * alpha, out=y)
    return None


ZERO_ROW = 64 * 1024  # bytes: 16384 float32 zeros
# A dense conv on a few channels with a large kernel (a first layer on RGB: 3 x 5x5 or 7x7)
# builds its im2col matrix from phase planes (a copy per plane) rather than one copy per tap:
# BlazeFace's first conv 340 -> 190 us; convs with more channels or 3x3 kernels gain nothing.
WIDE_DENSE_CHANNELS = 4
WIDE_DENSE_TAPS = 25
WIDE_BLOCK_BYTES = 3 << 19  # 1.5 MiB
WINOGRAD_BLOCK_BYTES = 2 << 20


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


def _ranges(out_n: int, in_n: int, offset: int, stride: int) -> tuple[int, int]:
    """Output index range [lo, hi) whose input index o*stride + offset lies in [0, in_n)."""
    lo = max(0, -(offset // stride))     # ceil(-offset / stride)
    hi = min(out_n, (in_n - 1 - offset) // stride + 1) if in_n - 1 - offset >= 0 else 0
    return lo, max(lo, hi)


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
        self._shuffled, self._skipped = _channel_shuffles(g)
        self._pointwise = _pointwise_after_depthwise(g, self._bytes)
        self._skipped |= {pw.name for pw in self._pointwise.values()}
        self._padded = _channel_pads_into_adds(g, self._bytes, self._pointwise)
        self._skipped |= {pad for pad, _, _ in self._padded.values()}
        self._steps: list[tuple[OpNode, Step]] = []
        for node in g.nodes:
            if node.name in self._skipped:
                continue
            builder = BUILDERS.get(node.op, _build_generic)
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


# ---- builders: node -> closure over fixed views ---------------------------------------------


def _channel_shuffles(g) -> tuple[dict[str, tuple[str, int, int]], set[str]]:
    """ShuffleNet's channel shuffle, Reshape (n, c, h, w) -> (n, g, c/g, h, w), Transpose
    (0, 2, 1, 3, 4), Reshape back, read only by depthwise convs: those convs read the shuffled
    channels straight from the unshuffled tensor while they copy it into their planes anyway,
    so the Transpose (and the copy it makes) disappears.

    Returns (shuffled tensor -> (source tensor, g, c/g), names of the nodes that need no step).
    """
    producers, users = g.producers(), g.consumers()
    shuffled: dict[str, tuple[str, int, int]] = {}
    skipped: set[str] = set()
    for t in g.nodes:
        if t.op is not Op.TRANSPOSE or list(t.attrs.get("perm") or []) != [0, 2, 1, 3, 4]:
            continue
        r1 = producers.get(t.inputs[0])
        after = users.get(t.outputs[0], [])
        if r1 is None or r1.op is not Op.RESHAPE or len(after) != 1 or after[0].op is not Op.RESHAPE:
            continue
        r2 = after[0]
        src, out = r1.inputs[0], r2.outputs[0]
        if (src not in g.shapes or len(g.shapes[src]) != 4 or g.shapes[out] != g.shapes[src]
                or {t.outputs[0], out, r1.outputs[0]} & set(g.outputs)
                or len(users.get(r1.outputs[0], [])) != 1):
            continue
        n, c, h, w = g.shapes[src]
        _, groups, per, _, _ = g.shapes[t.inputs[0]]
        convs = users.get(out, [])
        if not convs or not all(_is_plane_conv(g, conv) for conv in convs):
            continue
        shuffled[out] = (src, groups, per)
        skipped.update((t.name, r2.name))
    return shuffled, skipped


def _is_plane_conv(g, node: OpNode) -> bool:
    """A conv `_build_conv` runs with `_build_wide` (depthwise, kernel larger than 1x1)."""
    if node.op is not Op.CONV or node.inputs[1] not in g.consts:
        return False
    if len(node.inputs) > 2 and node.inputs[2] and node.inputs[2] not in g.consts:
        return False
    w = g.consts[node.inputs[1]]
    return w.ndim == 4 and int(node.attrs.get("group", 1)) > 1 and w.shape[1] == 1 and w.shape[2] * w.shape[3] > 1


def _pointwise_after_depthwise(g, arena_bytes: Callable[[str], range]) -> dict[str, OpNode]:
    """Depthwise convs whose only reader is a 1x1 conv (MobileNet/BlazeFace blocks): the 1x1
    conv runs inside the depthwise step, on its un-cropped "wide rows" output (see
    `_build_wide`), so the depthwise result is never cropped into its own tensor.

    The 1x1 conv's output is then written earlier than the memory plan assumed: only where no
    node in between reads or writes bytes it occupies.

    Returns depthwise node name -> the 1x1 conv node (which then needs no step of its own).
    """
    users = g.consumers()
    order = {node.name: i for i, node in enumerate(g.nodes)}
    fused: dict[str, OpNode] = {}
    for dw in g.nodes:
        if not _is_plane_conv(g, dw) or dw.attrs.get("activation") or dw.outputs[0] in g.outputs:
            continue
        after = users.get(dw.outputs[0], [])
        if len(after) != 1:
            continue
        pw = after[0]
        a = pw.attrs
        if (pw.op is not Op.CONV or pw.inputs[0] != dw.outputs[0] or pw.inputs[1] not in g.consts
                or (len(pw.inputs) > 2 and pw.inputs[2] and pw.inputs[2] not in g.consts)
                or g.consts[pw.inputs[1]].shape[2:] != (1, 1) or int(a.get("group", 1)) != 1
                or any(s != 1 for s in a.get("strides") or [1, 1]) or any(a.get("pads") or [0])
                or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID")
                or g.shapes[pw.outputs[0]][2:] != g.shapes[dw.outputs[0]][2:]):
            continue
        out = arena_bytes(pw.outputs[0])
        between = g.nodes[order[dw.name] + 1:order[pw.name]]
        if any(_overlap(out, arena_bytes(t)) for node in between for t in node.inputs + node.outputs if t):
            continue
        fused[dw.name] = pw
    return fused


def _channel_pads_into_adds(g, arena_bytes, pointwise) -> dict[str, tuple[str, str, int]]:
    """BlazeFace's residual Add(zero-pad of x to more channels, y): the Add reads x for the
    first channels and copies the rest of y, so the Pad (a copy of x and a fill) disappears.

    x is then read later than the memory plan assumed: only where no step in between writes
    bytes x occupies, and where the Add's output does not partly overlap x.
    Returns padded tensor -> (Pad node name, x, x's channel count).
    """
    users, producers = g.consumers(), g.producers()
    order = {node.name: i for i, node in enumerate(g.nodes)}
    moved = {pw.name for pw in pointwise.values()}
    padded: dict[str, tuple[str, str, int]] = {}
    for pad in g.nodes:
        if pad.op is not Op.PAD or pad.attrs.get("mode", "constant") != "constant":
            continue
        ins = list(pad.inputs) + ["", "", ""]
        x, out = ins[0], pad.outputs[0]
        if ins[3] or ins[1] not in g.consts or (ins[2] and (ins[2] not in g.consts or g.consts[ins[2]].any())):
            continue
        shape = g.shapes.get(x, ())
        pads = [int(p) for p in g.consts[ins[1]]]
        if len(shape) < 2 or len(pads) != 2 * len(shape) or any(pads[:len(shape)]) \
                or any(p for i, p in enumerate(pads[len(shape):]) if i != 1) or out in g.outputs:
            continue
        after = users.get(out, [])
        if len(after) != 1 or after[0].op is not Op.ADD or after[0].inputs[0] == after[0].inputs[1]:
            continue
        add = after[0]
        other = add.inputs[1] if add.inputs[0] == out else add.inputs[0]
        y = add.outputs[0]
        if not (g.shapes.get(other) == g.shapes.get(y) == g.shapes[out]) or g.dtypes.get(y) != g.dtypes.get(x):
            continue
        xb, yb = arena_bytes(x), arena_bytes(y)
        if _overlap(xb, yb) and not (xb.start == yb.start and shape[0] == 1):
            continue
        ob = arena_bytes(other)
        if _overlap(ob, yb) and ob.start != yb.start:
            continue
        writes = []
        for node in g.nodes[order[pad.name] + 1:order[add.name]]:
            if node.name in moved:
                continue  # ran with its depthwise conv
            writes += node.outputs
            if node.name in pointwise:
                writes += pointwise[node.name].outputs
        if any(_overlap(xb, arena_bytes(t)) for t in writes) or producers.get(x) is None and not xb:
            continue
        padded[out] = (pad.name, x, shape[1])
    return padded


def _overlap(a: range, b: range) -> bool:
    return max(a.start, b.start) < min(a.stop, b.stop)


def _build_generic(m: NumpyModel, node: OpNode) -> Step:
    kernel = KERNELS[node.op.value]
    args = [m.t(i) for i in node.inputs]
    outs = [m.t(o) for o in node.outputs]
    attrs = node.attrs

    def step() -> None:
        for dst, res in zip(outs, kernel(args, attrs)):
            np.copyto(dst, res)
    return step


def _build_view(m: NumpyModel, node: OpNode) -> Step | None:
    if m.same_bytes(node.inputs[0], node.outputs[0]):
        return None  # the memory plan made the output a view of the input
    return _build_generic(m, node)


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
    act = _activation(m, y, node.attrs)

    def step() -> None:
        for dst, x in copies:
            np.copyto(dst, x)
        if act:
            act()
    return step


def _build_conv(m: NumpyModel, node: OpNode) -> Step:
    x, w = m.t(node.inputs[0]), m.t(node.inputs[1])
    b = m.t(node.inputs[2]) if len(node.inputs) > 2 else None
    y = m.t(node.outputs[0])
    if x.ndim != 4 or not m.is_const(node.inputs[1]) or (b is not None and not m.is_const(node.inputs[2])):
        return _build_generic(m, node)
    a = node.attrs
    n, c, h, wd = x.shape
    mo, cg, kh, kw = w.shape
    group = int(a.get("group", 1))
    sh, sw = a.get("strides") or [1, 1]
    dh, dw = a.get("dilations") or [1, 1]
    (pt, pl), _ = spatial_pads((h, wd), a, (kh, kw))
    ho, wo = y.shape[2:]
    dtype = x.dtype
    shifts = []  # per kernel tap: (tap index, output window, input window, zero strips)
    for i in range(kh):
        for j in range(kw):
            y0, y1 = _ranges(ho, h, i * dh - pt, sh)
            x0, x1 = _ranges(wo, wd, j * dw - pl, sw)
            iy = slice(y0 * sh + i * dh - pt, (y1 - 1) * sh + i * dh - pt + 1, sh) if y1 > y0 else slice(0, 0)
            ix = slice(x0 * sw + j * dw - pl, (x1 - 1) * sw + j * dw - pl + 1, sw) if x1 > x0 else slice(0, 0)
            strips = [(slice(0, y0), slice(None)), (slice(y1, None), slice(None)),
                      (slice(y0, y1), slice(0, x0)), (slice(y0, y1), slice(x1, None))]
            strips = [s for s in strips if _nonempty(s, ho, wo)]
            shifts.append((i * kw + j, (slice(y0, y1), slice(x0, x1)), (iy, ix), strips))
    bias = None if b is None else b.reshape(mo, 1).astype(dtype)
    yflat = y.reshape(n, mo, ho * wo)
    act = _activation(m, y, a)

    def finish() -> None:
        if bias is not None:
            np.add(yflat, bias, out=yflat)
        if act:
            act()

    mg = mo // group
    if kh == kw == 1 and sh == sw == 1 and pt == pl == 0 and (ho, wo) == (h, wd):
        # 1x1: the input already is the im2col matrix
        w1 = np.ascontiguousarray(w.reshape(group, mg, cg))
        xg = x.reshape(n, group, cg, h * wd)
        yg = y.reshape(n, group, mg, ho * wo)

        def step_1x1() -> None:
            for k in range(n):
                np.matmul(w1, xg[k], out=yg[k])
            finish()
        return step_1x1

    tile = None
    if group == 1 and kh == kw == 3 and sh == sw == 1 and dh == dw == 1:
        tile = winograd.tile_for(c, mo, ho, wo, dtype.itemsize)
    if tile:
        return _build_winograd(m, x, w, y, bias, act, (pt, pl), tile)

    shuffle = m._shuffled.get(node.inputs[0])
    if group > 1 or (c <= WIDE_DENSE_CHANNELS and kh * kw >= WIDE_DENSE_TAPS):
        if shuffle is not None:
            src, g, per = shuffle
            shuffle = (m.t(src), g, per)
        pointwise = None
        pw = m._pointwise.get(node.name)
        if pw is not None:
            # the depthwise bias goes through the 1x1 conv: W (d + b_dw) + b = W d + (W b_dw + b)
            wp = m.t(pw.inputs[1]).reshape(-1, mo).astype(np.float64)
            bp = np.zeros(len(wp)) if len(pw.inputs) < 3 or not pw.inputs[2] else m.t(pw.inputs[2])
            if bias is not None:
                bp = bp + wp @ bias.reshape(mo).astype(np.float64)
            yp = m.t(pw.outputs[0])
            bias, act = None, None
            pointwise = (m.t(pw.inputs[1]).reshape(-1, mo), bp.reshape(-1, 1, 1).astype(dtype), yp,
                         _activation(m, yp, pw.attrs))
        return _build_wide(m, x, w, y, bias, act, group, (sh, sw), (dh, dw), (pt, pl), shuffle,
                           pointwise)
    if shuffle is not None:
        raise EngineError(f"conv '{node.name}' was expected to read its channel shuffle itself")

    # im2col: cols[c, tap] = the input shifted by the tap (only the border strips that fall into
    # the padding are zeroed), then one GEMM. (Carrying the bias through the GEMM as a row of
    # ones saves SqueezeNet 4% but needs a copy of the weights: peak RSS must not grow.)
    taps = kh * kw
    rows = c * taps
    wb = w.reshape(mo, rows)
    m._scratch.need((rows, ho * wo), dtype)
    scratch = m._scratch
    bound: list = []

    def bind() -> None:
        cols = scratch.view((rows, ho * wo), dtype)
        by_tap = cols.reshape(c, taps, ho, wo)
        zeros = [by_tap[:, tap, sy, sx] for tap, _, _, strips in shifts for sy, sx in strips]
        images = [([(by_tap[:, tap, oy, ox], x[i][:, iy, ix]) for tap, (oy, ox), (iy, ix), _ in shifts],
                   y[i].reshape(mo, ho * wo)) for i in range(n)]
        bound.extend([cols, zeros, images])

    def step_im2col() -> None:
        if not bound:
            bind()
        cols, zeros, images = bound
        for strip in zeros:
            strip.fill(0)
        for copies, yk in images:
            for dst, src in copies:
                np.copyto(dst, src)
            np.matmul(wb, cols, out=yk)
        finish()
    return step_im2col


def _build_winograd(m: NumpyModel, x, w, y, bias, act, begin, t: int) -> Step:
    """A 3x3 stride-1 conv as Winograd F(t x t, 3x3) (see winograd.py), four GEMMs per image:

    the input is copied into a zero-bordered plane covering whole tiles; one strided copy
    gathers the a*a positions of every a x a input tile (a = t + 2; tiles overlap by 2), one
    GEMM transforms them all, a*a batched GEMMs over the channels multiply them by the
    transformed filters, one GEMM transforms the products back, and t*t strided adds (one per
    output position within a tile) write the output tiles into y with the bias.
    """
    n, c, h, wd = x.shape
    mo = w.shape[0]
    ho, wo = y.shape[2:]
    pt, pl = begin
    a = t + 2
    th, tw = -(-ho // t), -(-wo // t)
    hp, wp = th * t + 2, tw * t + 2
    dtype = x.dtype
    item = dtype.itemsize
    u = winograd.filter_transform(w, t)
    bb, aa = winograd.input_matrix(t, dtype), winograd.output_matrix(t, dtype)
    r0, r1 = _ranges(hp, h, -pt, 1)
    q0, q1 = _ranges(wp, wd, -pl, 1)
    inner = (slice(r0, r1), slice(q0, q1))
    src = (slice(r0 - pt, r1 - pt), slice(q0 - pl, q1 - pl))
    strips = [(slice(0, r0), slice(None)), (slice(r1, None), slice(None)),
              (slice(r0, r1), slice(0, q0)), (slice(r0, r1), slice(q1, None))]
    strips = [s for s in strips if _nonempty(s, hp, wp)]
    # Tiles go through in blocks of tile rows whose intermediates stay within WINOGRAD_BLOCK_BYTES
    # (near the L2 cache, and no more scratch than im2col needed). The gathered tiles and the
    # products share one region, their transforms another.
    per_row = (a * a * max(c, mo) + max(a * a * c, t * t * mo)) * tw * item
    tb = max(1, min(th, WINOGRAD_BLOCK_BYTES // per_row))
    parts = [((c, hp, wp), dtype), ((a * a * max(c, mo) * tb * tw,), dtype),
             ((max(a * a * c, t * t * mo) * tb * tw,), dtype)]
    m._scratch.need_parts(parts)
    scratch = m._scratch
    bias3 = None if bias is None else bias.reshape(mo, 1, 1)
    bound: list = []

    def bind() -> None:
        plane, first, second = scratch.parts(parts)
        tiles_view = np.lib.stride_tricks.as_strided(
            plane, (a, a, c, th, tw), (wp * item, item, hp * wp * item, t * wp * item, t * item),
            writeable=False)
        blocks = []
        for ty0 in range(0, th, tb):
            nb = min(th, ty0 + tb) - ty0
            tiles_b = nb * tw
            d = first[:a * a * c * tiles_b].reshape(a, a, c, nb, tw)
            v = second[:a * a * c * tiles_b].reshape(a * a, c, tiles_b)
            prod = first[:a * a * mo * tiles_b].reshape(a * a, mo, tiles_b)
            out = second[:t * t * mo * tiles_b].reshape(t, t, mo, nb, tw)
            # output (t*ty + i, t*tx + j) of every tile of the block that lies inside y
            scatter = []
            for k in range(n):
                for i in range(t):
                    for j in range(t):
                        dst = y[k][:, i::t, j::t][:, ty0:ty0 + nb]
                        scatter.append((out[i, j, :, :dst.shape[1], :dst.shape[2]], dst, k))
            blocks.append((tiles_view[:, :, :, ty0:ty0 + nb], d, d.reshape(a * a, c * tiles_b), v,
                           v.reshape(a * a, c * tiles_b), prod, prod.reshape(a * a, mo * tiles_b),
                           out.reshape(t * t, mo * tiles_b), scatter))
        bound.extend([plane[(slice(None),) + inner], [plane[:, sy, sx] for sy, sx in strips],
                      [x[k][(slice(None),) + src] for k in range(n)], blocks])

    def step() -> None:
        if not bound:
            bind()
        interior, zero_strips, images, blocks = bound
        for k, xk in enumerate(images):
            np.copyto(interior, xk)
            for strip in zero_strips:
                strip.fill(0)
            for tiles_view, d, d2, v, v2, prod, prod2, out2, scatter in blocks:
                np.copyto(d, tiles_view)
                np.matmul(bb, d2, out=v2)
                np.matmul(u, v, out=prod)
                np.matmul(aa, prod2, out=out2)
                for res, dst, image in scatter:
                    if image != k:
                        continue
                    if bias3 is None:
                        np.copyto(dst, res)
                    else:
                        np.add(res, bias3, out=dst)
        if act:
            act()
    return step


def _build_wide(m: NumpyModel, x, w, y, bias, act, group, strides, dil, begin, shuffle=None,
                pointwise=None) -> Step:
    """Convolution on "wide rows" of zero-bordered phase planes.

    The input is copied once into phase planes (one plane for stride 1; for stride s, plane
    (a, b) holds padded rows a, a+s, ... and columns b, b+s, ...), laid out so that each kernel
    tap reads a *contiguous* run of its plane: output (oy, ox) of tap (i, j) sits at flat index
    oy * width + ox + the tap's offset. Output rows are computed `width` wide (the extra columns
    wrap into the next row and are dropped), so one strided copy per plane builds the whole
    im2col matrix with long inner loops, one batched matmul over the groups reduces it (for a
    depthwise conv, a 1 x taps GEMV per channel), and the crop to the real width is fused with
    the bias add.

    `shuffle` = (source, g, c/g): x is source's channel shuffle, read from source directly.
    `pointwise` = (weights (M, mo), bias (M, 1, 1), output, activation): a 1x1 conv that reads
    this conv's output (see `_pointwise_after_depthwise`) runs as one GEMM on the whole wide
    output, and only its result is cropped (with its bias); y is never written.
    """
    n, c, h, wd = x.shape
    mo, cg, kh, kw = w.shape
    mg = mo // group
    ho, wo = y.shape[2:]
    (sh, sw), (dh, dw), (pt, pl) = strides, dil, begin
    dtype = x.dtype
    item = dtype.itemsize
    # tap (i, j) reads plane ((i*dh) % sh, (j*dw) % sw) at row/column offset ((i*dh)//sh, (j*dw)//sw)
    qh = [(i * dh) // sh for i in range(kh)]
    qw = [(j * dw) // sw for j in range(kw)]
    rows, width = ho + qh[-1] + 1, wo + qw[-1]  # one slack row: the last tap reads past the end
    span = ho * width
    planes = sorted({((i * dh) % sh, (j * dw) % sw) for i in range(kh) for j in range(kw)})
    fills = []  # per plane: (plane index, destination window, source window, zero strips)
    for p, (ra, cb) in enumerate(planes):
        r0, r1 = _ranges(rows, h, ra - pt, sh)
        q0, q1 = _ranges(width, wd, cb - pl, sw)
        src = (slice(r0 * sh + ra - pt, (r1 - 1) * sh + ra - pt + 1, sh) if r1 > r0 else slice(0, 0),
               slice(q0 * sw + cb - pl, (q1 - 1) * sw + cb - pl + 1, sw) if q1 > q0 else slice(0, 0))
        strips = [(slice(0, r0), slice(None)), (slice(r1, None), slice(None)),
                  (slice(r0, r1), slice(0, q0)), (slice(r0, r1), slice(q1, None))]
        strips = [s for s in strips if _nonempty(s, rows, width)]
        fills.append((p, (slice(r0, r1), slice(q0, q1)), src, strips))
    # taps grouped by plane; within a plane the offsets step evenly in i and in j
    order, groups = [], []
    for p, (ra, cb) in enumerate(planes):
        ii = [i for i in range(kh) if (i * dh) % sh == ra]
        jj = [j for j in range(kw) if (j * dw) % sw == cb]
        groups.append((p, len(order), ii, jj))
        order += [i * kw + j for i in ii for j in jj]
    taps = len(order)
    wt = np.ascontiguousarray(w.reshape(group, mg, cg, kh * kw)[..., order].reshape(group, mg, cg * taps))
    bias3 = None if bias is None else bias.reshape(mo, 1, 1)
    # Groups go through in blocks sized so that this conv's scratch stays within what the plain
    # im2col matrix needed (peak memory must not grow) or within WIDE_BLOCK_BYTES: one block
    # for small layers (each block costs ~20 us of calls: BlazeFace's 8x8 ones took 2), one to
    # four for large ones.
    planes_bytes = len(planes) * c * rows * width * item
    per_group = (cg * taps + mg) * span * item
    # with a fused 1x1 conv, the whole wide output and the 1x1 conv's take scratch too
    fused_bytes = 0 if pointwise is None else (mo + len(pointwise[0])) * span * item
    budget = max(c * taps * ho * wo * item - planes_bytes - fused_bytes, WIDE_BLOCK_BYTES)
    gb = max(1, min(group, budget // per_group))
    # A dense conv (one group) goes through in blocks of output rows whose im2col matrix stays
    # near a core's L2 cache: ResNet-50's 7x7 RGB conv needs 11 -> 2.5 MB of scratch (and runs
    # a little faster); BlazeFace's 5x5 one stays a single block.
    rb = ho if group > 1 else max(1, min(ho, WIDE_BLOCK_BYTES // (cg * taps * width * item)))
    blocks = [(g0, min(group, g0 + gb), r0, min(ho, r0 + rb))
              for g0 in range(0, group, gb) for r0 in range(0, ho, rb)]
    parts = [((len(planes), c, rows, width), dtype), ((gb * cg * taps * rb * width,), dtype),
             ((gb * mg * rb * width if pointwise is None else mo * span,), dtype)]
    if pointwise is not None:
        parts.append(((len(pointwise[0]), span), dtype))
    m._scratch.need_parts(parts)
    scratch = m._scratch
    bound: list = []
    fused: list = []

    def bind() -> None:
        plane, cols, acc = scratch.parts(parts)[:3]
        if pointwise is not None:
            wp, bp, yp, _ = pointwise
            pw_out = scratch.parts(parts)[3]
            fused.extend([wp, acc.reshape(mo, span), pw_out,
                          pw_out.reshape(-1, ho, width)[:, :, :wo], bp, yp])
        cs = plane.strides[1]
        fill_views = []
        for k in range(n):
            for p, dst, src, strips in fills:
                pk, xk = plane[p], x[k]
                if shuffle is not None:
                    source, g, per = shuffle
                    xk = source[k].reshape(g, per, h, wd).transpose(1, 0, 2, 3)
                    pk = pk.reshape(per, g, rows, width)
                fill_views.append((k, pk[..., dst[0], dst[1]], xk[..., src[0], src[1]],
                                   [pk[..., sy, sx] for sy, sx in strips]))
        for g0, g1, r0, r1 in blocks:
            c0, c1, nb = g0 * cg, g1 * cg, g1 - g0
            sb = (r1 - r0) * width  # this block's output rows, each `width` wide
            colsb = cols[:(c1 - c0) * taps * sb].reshape(c1 - c0, taps, sb)
            o0, o1 = g0 * mg, g1 * mg
            accb = (acc[:nb * mg * sb] if pointwise is None else acc[o0 * sb:o1 * sb]).reshape(nb, mg, sb)
            copies = []
            for p, i0, ii, jj in groups:
                base = plane[p, c0:c1].reshape(-1)[(qh[ii[0]] + r0) * width + qw[jj[0]]:]
                si = (qh[ii[1]] - qh[ii[0]]) * width * item if len(ii) > 1 else 0
                sj = (qw[jj[1]] - qw[jj[0]]) * item if len(jj) > 1 else 0
                src = np.lib.stride_tricks.as_strided(
                    base, (c1 - c0, len(ii), len(jj), sb), (cs, si, sj, item), writeable=False)
                dst = colsb[:, i0:i0 + len(ii) * len(jj)].reshape(c1 - c0, len(ii), len(jj), sb)
                copies.append((dst, src))
            wide = None if pointwise is not None else accb.reshape(nb * mg, r1 - r0, width)[:, :, :wo]
            b = None if bias3 is None else bias3[o0:o1]
            bound.append((copies, wt[g0:g1], colsb.reshape(nb, cg * taps, sb), accb,
                          wide, b, (slice(o0, o1), slice(r0, r1))))
        bound.append(fill_views)

    def step() -> None:
        if not bound:
            bind()
        fill_views = bound[-1]
        for k in range(n):
            yk = y[k]
            for kk, dst, src, strips in fill_views:
                if kk == k:
                    np.copyto(dst, src)
                    for strip in strips:
                        strip.fill(0)
            for copies, wb, cols, acc, wide, b, out in bound[:-1]:
                for dst, src in copies:
                    np.copyto(dst, src)
                np.matmul(wb, cols, out=acc)
                if wide is None:
                    continue
                if b is None:
                    np.copyto(yk[out], wide)
                else:
                    np.add(wide, b, out=yk[out])
            if fused:
                wp, acc2, pw_out, pw_wide, bp, yp = fused
                np.matmul(wp, acc2, out=pw_out)
                np.add(pw_wide, bp, out=yp[k])
        if act:
            act()
        if pointwise is not None and pointwise[3]:
            pointwise[3]()
    return step


def _nonempty(strip, ho, wo) -> bool:
    sy, sx = strip
    return len(range(ho)[sy]) > 0 and len(range(wo)[sx]) > 0


def _build_pool(m: NumpyModel, node: OpNode) -> Step:
    x, y = m.t(node.inputs[0]), m.t(node.outputs[0])
    a = node.attrs
    if x.ndim != 4 or a.get("storage_order", 0) or len(node.outputs) > 1:
        return _build_generic(m, node)
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
    if (ph, pw) == x.shape[2:] and begin == [0, 0]:
        xp, interior = x, None
    else:
        xp = np.full(x.shape[:2] + (ph, pw), fill, dtype=x.dtype)
        interior = xp[:, :, begin[0]:begin[0] + x.shape[2], begin[1]:begin[1] + x.shape[3]]
    # Separable: reduce over the kernel's rows first (kh - 1 ops on whole rows, which numpy
    # vectorises), then over its columns (kw - 1 ops on strided views of data already shrunk
    # by the vertical stride): kh + kw - 2 passes instead of kh * kw - 1.
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, strides, dil, outs
    combine = np.maximum if is_max else np.add
    rows = [xp[:, :, i * dh:i * dh + (ho - 1) * sh + 1:sh, :need[1]] for i in range(kh)]
    scratch = m._scratch
    part = [(x.shape[:2] + (ho, need[1]), x.dtype)]
    if kh > 1:
        scratch.need_parts(part)
    cols: list = []
    inv_count = None if is_max else (1.0 / avg_pool_divisor(x.shape, a)).astype(x.dtype)

    def bind() -> None:
        v1 = scratch.parts(part)[0] if kh > 1 else rows[0]
        cols.extend(v1[..., j * dw:j * dw + (wo - 1) * sw + 1:sw] for j in range(kw))
        cols.append(v1)

    def step() -> None:
        if not cols:
            bind()
        if interior is not None:
            np.copyto(interior, x)
        v1 = cols[-1]
        if kh > 1:
            combine(rows[0], rows[1], out=v1)
            for v in rows[2:]:
                combine(v1, v, out=v1)
        if kw > 1:
            combine(cols[0], cols[1], out=y)
            for v in cols[2:kw]:
                combine(y, v, out=y)
        else:
            np.copyto(y, cols[0])
        if inv_count is not None:
            np.multiply(y, inv_count, out=y)
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
    # y = zero-pad(x) + other (see `_channel_pads_into_adds`)
    i = padded[0]
    _, src, c = m._padded[node.inputs[i]]
    other_name = node.inputs[1 - i]
    x, other, y = m.t(src), m.t(other_name), m.t(node.outputs[0])
    head, tail = (slice(None), slice(0, c)), (slice(None), slice(c, None))
    yh, oh, yt, ot = y[head], other[head], y[tail], other[tail]
    copy_tail = not m.same_bytes(other_name, node.outputs[0])
    act = _activation(m, y, node.attrs)

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
            return _build_generic(m, node)
        act = _activation(m, y, node.attrs)

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
        return _build_generic(m, node)
    act = _activation(m, y, node.attrs)

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
        return _build_generic(m, node)
    rows, zeros = m.relu_operands(y)
    xrows = x.reshape(rows.shape)
    return lambda: np.maximum(xrows, zeros, out=rows)


def _build_clip(m: NumpyModel, node: OpNode) -> Step:
    ins = list(node.inputs) + ["", ""]
    if any(ins[i] and not m.is_const(ins[i]) for i in (1, 2)):
        return _build_generic(m, node)
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
        return _build_generic(m, node)
    pads = [int(p) for p in m.t(ins[1])]
    value = m.t(ins[2]) if ins[2] and m.t(ins[2]).size else 0
    n = x.ndim
    if min(pads) < 0:
        return _build_generic(m, node)
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
        return _build_generic(m, node)
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
        return _build_generic(m, node)
    At = A.T if a.get("transA", 0) else A
    # A transposed weight stays a view (BLAS takes either order), so the weights are not copied
    Bt = B.T if a.get("transB", 0) else B
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if alpha != 1.0:
        Bt = (Bt * alpha).astype(y.dtype)
    Cs = None if C is None else (C if beta == 1.0 else C * beta).astype(y.dtype, copy=False)
    act = _activation(m, y, a)

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
    Op.CONV: _build_conv,
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
