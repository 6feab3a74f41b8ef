"""The numpy backend's convolution steps and the fusions planned around them.

Which path a conv takes (see docs/compile.md, "The numpy backend"): a 1x1 stride-1 conv is one
GEMM on its input; depthwise and grouped convs (and dense ones on a few channels with a large
kernel) run on "wide rows" of zero-bordered phase planes (`_build_wide`), with a 1x1 conv that
alone reads a depthwise conv in the same step (`pointwise_after_depthwise`); large 3x3 stride-1
dense convs run as Winograd F(4x4, 3x3) or F(2x2, 3x3) (`_build_winograd`); every other conv
builds an im2col matrix from the kernel's shifted slices, then one GEMM.

numpy only: this module ships to the device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from iotrt.engine import winograd
from iotrt.modelformat.errors import EngineError
from iotrt.modelformat.ir import Op, OpNode
from iotrt.modelformat.kernels import KERNELS, spatial_pads

if TYPE_CHECKING:
    from iotrt.engine.numpy import NumpyModel

Step = Callable[[], None]


def activation_step(m: NumpyModel, y: np.ndarray, attrs: dict) -> Callable[[], None] | None:
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


# A dense conv on a few channels with a large kernel (a first layer on RGB: 3 x 5x5 or 7x7)
# builds its im2col matrix from phase planes (a copy per plane) rather than one copy per tap:
# BlazeFace's first conv 340 -> 190 us; convs with more channels or 3x3 kernels gain nothing.
WIDE_DENSE_CHANNELS = 4
WIDE_DENSE_TAPS = 25
WIDE_BLOCK_BYTES = 3 << 19  # 1.5 MiB
WINOGRAD_BLOCK_BYTES = 2 << 20


def column_parts(cols: int) -> list[slice]:
    """A GEMM's output columns split where OpenBLAS's kernel (16 columns at a time) would take
    a slow edge path for one left-over column: 49 columns (a 7x7 map) as 48 + 1 runs 3-15%
    faster (ResNet-50's last stage), 17, 33 and 81 likewise (measured up to 256 columns: wider
    GEMMs hide the edge); other widths stay whole."""
    if cols % 16 == 1 and 16 < cols <= 256:
        return [slice(0, cols - 1), slice(cols - 1, cols)]
    return [slice(None)]


def _ranges(out_n: int, in_n: int, offset: int, stride: int) -> tuple[int, int]:
    """Output index range [lo, hi) whose input index o*stride + offset lies in [0, in_n)."""
    lo = max(0, -(offset // stride))     # ceil(-offset / stride)
    hi = min(out_n, (in_n - 1 - offset) // stride + 1) if in_n - 1 - offset >= 0 else 0
    return lo, max(lo, hi)


def channel_shuffles(g) -> tuple[dict[str, tuple[str, int, int]], set[str]]:
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
    """A conv `build_conv` runs with `_build_wide` (depthwise, kernel larger than 1x1)."""
    if node.op is not Op.CONV or node.inputs[1] not in g.consts:
        return False
    if len(node.inputs) > 2 and node.inputs[2] and node.inputs[2] not in g.consts:
        return False
    w = g.consts[node.inputs[1]]
    return w.ndim == 4 and int(node.attrs.get("group", 1)) > 1 and w.shape[1] == 1 and w.shape[2] * w.shape[3] > 1


def pointwise_after_depthwise(g, arena_bytes: Callable[[str], range]) -> dict[str, OpNode]:
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


def channel_pads_into_adds(g, arena_bytes, pointwise) -> dict[str, tuple[str, str, int]]:
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


# activations that commute with a max: max(act(x)) == act(max(x)) for a non-decreasing act
_MONOTONIC = (None, "Relu", "Clip")


def bias_after_max_pool(g, pointwise) -> dict[str, list[OpNode]]:
    """Convs whose output (alone, or through a channel Concat of several convs) is read only by
    a MaxPool: a per-channel bias and a non-decreasing activation commute with the max, so the
    pool applies them to its output (4x fewer values after a 3x3 stride-2 pool) and the convs
    skip them (SqueezeNet's first conv and fire 3 and 5, ResNet's first conv).

    Returns MaxPool node name -> its convs in channel order.
    """
    users, producers = g.consumers(), g.producers()
    fused = set(pointwise) | {pw.name for pw in pointwise.values()}
    out: dict[str, list[OpNode]] = {}
    for pool in g.nodes:
        x = pool.inputs[0] if pool.inputs else ""
        if (pool.op is not Op.MAX_POOL or len(pool.outputs) > 1 or pool.attrs.get("storage_order", 0)
                or len(g.shapes.get(x, ())) != 4 or g.dtypes.get(x) not in ("float32", "float64")
                or not _only_reader(g, users, x, pool)):
            continue
        src = producers.get(x)
        if src is not None and src.op is Op.CONCAT and src.attrs.get("axis") in (1, -3) \
                and not src.attrs.get("activation") \
                and all(_only_reader(g, users, i, src) for i in src.inputs):
            convs = [producers.get(i) for i in src.inputs]
        else:
            convs = [src]
        if not all(c is not None and c.op is Op.CONV and c.name not in fused
                   and c.inputs[1] in g.consts
                   and (len(c.inputs) < 3 or not c.inputs[2] or c.inputs[2] in g.consts)
                   for c in convs):
            continue
        acts = {(c.attrs.get("activation"), c.attrs.get("act_min"), c.attrs.get("act_max")) for c in convs}
        if len(acts) != 1 or next(iter(acts))[0] not in _MONOTONIC:
            continue
        out[pool.name] = convs
    return out


def _only_reader(g, users, tensor: str, node: OpNode) -> bool:
    return tensor not in g.outputs and [u.name for u in users.get(tensor, [])] == [node.name]


def _overlap(a: range, b: range) -> bool:
    return max(a.start, b.start) < min(a.stop, b.stop)


def build_generic(m: NumpyModel, node: OpNode) -> Step:
    kernel = KERNELS[node.op.value]
    args = [m.t(i) for i in node.inputs]
    outs = [m.t(o) for o in node.outputs]
    attrs = node.attrs

    def step() -> None:
        for dst, res in zip(outs, kernel(args, attrs)):
            np.copyto(dst, res)
    return step


def build_conv(m: NumpyModel, node: OpNode) -> Step:
    x, w = m.t(node.inputs[0]), m.t(node.inputs[1])
    b = m.t(node.inputs[2]) if len(node.inputs) > 2 else None
    y = m.t(node.outputs[0])
    if x.ndim != 4 or not m.is_const(node.inputs[1]) or (b is not None and not m.is_const(node.inputs[2])):
        return build_generic(m, node)
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
    deferred = node.name in m._deferred  # the MaxPool reading y adds the bias and activation
    bias = None if b is None or deferred else b.reshape(mo, 1).astype(dtype)
    yflat = y.reshape(n, mo, ho * wo)
    act = None if deferred else activation_step(m, y, a)

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
        gemms = [(xg[k][..., part], yg[k][..., part]) for k in range(n) for part in column_parts(h * wd)]

        def step_1x1() -> None:
            for xk, yk in gemms:
                np.matmul(w1, xk, out=yk)
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
                         activation_step(m, yp, pw.attrs))
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
                   [(cols[:, part], y[i].reshape(mo, ho * wo)[:, part]) for part in column_parts(ho * wo)])
                  for i in range(n)]
        bound.extend([cols, zeros, images])

    def step_im2col() -> None:
        if not bound:
            bind()
        cols, zeros, images = bound
        for strip in zeros:
            strip.fill(0)
        for copies, gemms in images:
            for dst, src in copies:
                np.copyto(dst, src)
            for part, yk in gemms:
                np.matmul(wb, part, out=yk)
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
    this conv's output (see `pointwise_after_depthwise`) runs as one GEMM on the whole wide
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
