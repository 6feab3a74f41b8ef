"""Rewrites of the IR, each a named function `OpGraph -> OpGraph`; `PIPELINE` lists them in order.

The IR is NCHW throughout (the layout the numpy engine's im2col + GEMM wants: a conv's output
channels are contiguous rows, so convs write straight into concat slices). Front ends whose
source layout differs put Transposes at the graph's boundaries; `cancel_transposes` removes the
pairs that meet, and constant folding applies the rest to the weights, so layout conversion
costs nothing at run time except where the model itself reinterprets memory (a Reshape of NHWC
data) or at the graph's own inputs and outputs.
"""

from __future__ import annotations

import numpy as np

from iotrt.compiler.errors import CompileError
from iotrt.modelformat.errors import KernelError
from iotrt.modelformat.ir import Op, OpGraph, OpNode
from iotrt.modelformat.kernels import KERNELS, out_sizes, spatial_pads


def _arg(g: OpGraph, name: str):
    if not name:
        return None
    if name in g.consts:
        return g.consts[name]
    return np.zeros(g.shapes[name], dtype=g.dtypes[name])


def _conv_shape(g: OpGraph, node: OpNode) -> tuple[int, ...]:
    x, w = g.shapes[node.inputs[0]], g.shapes[node.inputs[1]]
    group = int(node.attrs.get("group", 1))
    if len(x) != len(w) or len(x) < 3 or x[1] != w[1] * group or w[0] % group:
        raise CompileError(f"Conv node '{node.name}': weight {w} does not fit input {x} "
                           f"with group={group}")
    kernel = tuple(node.attrs.get("kernel_shape") or w[2:])
    begin, end = spatial_pads(x[2:], node.attrs, kernel)
    return (x[0], w[0], *out_sizes(x[2:], kernel, node.attrs, begin, end))


def _evaluate(g: OpGraph, node: OpNode, args: list) -> list[np.ndarray]:
    try:
        outs = KERNELS[node.op.value](args, node.attrs)
    except (KernelError, ValueError, IndexError, TypeError) as exc:
        shapes = [None if a is None else tuple(a.shape) for a in args]
        raise CompileError(f"{node.op.value} node '{node.name}' (input shapes {shapes}): {exc}") from exc
    return [np.asarray(o) for o in outs]


def _check_inputs(g: OpGraph, node: OpNode) -> None:
    for i in node.inputs:
        if i and i not in g.shapes and i not in g.consts:
            raise CompileError(f"{node.op.value} node '{node.name}' reads undefined tensor '{i}'")


def fold_constants(g: OpGraph) -> OpGraph:
    """Evaluate every node whose inputs are all constants (weights' DEQUANTIZE and layout
    Transposes, ConstantOfShape, Shape of a static tensor, ...), inferring shapes as it goes."""
    consts = dict(g.consts)
    shapes = {s.name: s.shape for s in g.inputs}
    dtypes = {s.name: s.dtype for s in g.inputs}
    for name, value in consts.items():
        shapes[name], dtypes[name] = tuple(value.shape), value.dtype.name
    work = OpGraph([], g.inputs, g.outputs, consts, shapes, dtypes)

    def bind(name: str, value: np.ndarray) -> None:
        consts[name] = np.asarray(value, order="C")
        shapes[name], dtypes[name] = tuple(value.shape), value.dtype.name

    for node in g.nodes:
        _check_inputs(work, node)
        if node.op is Op.SHAPE and node.inputs[0] in shapes:
            args = [np.zeros(shapes[node.inputs[0]], dtype=np.uint8)]
            bind(node.outputs[0], _evaluate(work, node, args)[0])
        elif all(not i or i in consts for i in node.inputs) and node.op is not Op.IDENTITY:
            for name, value in zip(node.outputs, _evaluate(work, node, [_arg(work, i) for i in node.inputs])):
                bind(name, value)
        else:
            work.nodes.append(node)
            _infer_node(work, node)
    return work


# Operands that decide an output's shape, so they must be known when compiling.
STATIC_OPERANDS = {Op.RESHAPE: (1,), Op.SQUEEZE: (1,), Op.UNSQUEEZE: (1,), Op.PAD: (1,),
                   Op.RESIZE: (1, 2, 3), Op.CONSTANT_OF_SHAPE: (0,)}


def _infer_node(g: OpGraph, node: OpNode) -> None:
    for pos in STATIC_OPERANDS.get(node.op, ()):
        name = node.inputs[pos] if pos < len(node.inputs) else ""
        if name and name not in g.consts:
            raise CompileError(
                f"{node.op.value} node '{node.name}': input {pos} ('{name}') is computed at run "
                "time, but it decides the output's shape and must be a constant (the compiler "
                "plans static shapes)")
    if node.op is Op.CONV:
        g.shapes[node.outputs[0]] = _conv_shape(g, node)
        g.dtypes[node.outputs[0]] = g.dtypes[node.inputs[0]]
        return
    # Everything else is cheap: run the reference kernel on zeros (so shapes can never
    # disagree with what the kernels compute).
    outs = _evaluate(g, node, [_arg(g, i) for i in node.inputs])
    for name, value in zip(node.outputs, outs):
        g.shapes[name], g.dtypes[name] = tuple(value.shape), value.dtype.name


def infer_shapes(g: OpGraph) -> OpGraph:
    """Recompute the shape and dtype of every tensor (after rewrites)."""
    shapes = {s.name: s.shape for s in g.inputs}
    dtypes = {s.name: s.dtype for s in g.inputs}
    for name, value in g.consts.items():
        shapes[name], dtypes[name] = tuple(value.shape), value.dtype.name
    out = OpGraph(list(g.nodes), g.inputs, g.outputs, g.consts, shapes, dtypes)
    for node in out.nodes:
        _check_inputs(out, node)
        _infer_node(out, node)
    return out


def _rename_uses(g: OpGraph, nodes: list[OpNode], old: str, new: str) -> list[OpNode]:
    return [
        n.with_(inputs=tuple(new if i == old else i for i in n.inputs)) if old in n.inputs else n
        for n in nodes
    ]


def remove_identities(g: OpGraph) -> OpGraph:
    """Drop Identity nodes (Dropout arrives as Identity) unless they produce a graph output."""
    alias: dict[str, str] = {}
    nodes = []
    for node in g.nodes:
        node = node.with_(inputs=tuple(alias.get(i, i) for i in node.inputs))
        if node.op is Op.IDENTITY and node.outputs[0] not in g.outputs:
            alias[node.outputs[0]] = node.inputs[0]
        else:
            nodes.append(node)
    return OpGraph(nodes, g.inputs, g.outputs, g.consts, g.shapes, g.dtypes)


def _single_use(g: OpGraph, name: str, users: dict) -> bool:
    return len(users.get(name, [])) == 1 and name not in g.outputs


def fold_batch_norm(g: OpGraph) -> OpGraph:
    """Conv -> BatchNormalization becomes one Conv with rescaled weights and a new bias; a
    BatchNormalization elsewhere becomes a Mul and an Add by constant per-channel vectors."""
    users = g.consumers()
    producers = g.producers()
    consts = dict(g.consts)
    nodes: list[OpNode] = []
    replaced: dict[str, OpNode] = {}  # conv output -> rewritten conv
    for node in g.nodes:
        if node.op is not Op.BATCH_NORM:
            nodes.append(node)
            continue
        x = node.inputs[0]
        if not all(i in consts for i in node.inputs[1:5]):
            raise CompileError(f"BatchNormalization node '{node.name}' has non-constant parameters")
        scale, bias, mean, var = (consts[i].astype(np.float64) for i in node.inputs[1:5])
        inv = scale / np.sqrt(var + node.attrs.get("epsilon", 1e-5))
        conv = producers.get(x)
        if (conv is not None and conv.op is Op.CONV and _single_use(g, x, users)
                and conv.inputs[1] in consts and "activation" not in conv.attrs):
            w = consts[conv.inputs[1]]
            b = consts[conv.inputs[2]].astype(np.float64) if len(conv.inputs) > 2 else 0.0
            wname, bname = f"{conv.name}/w_bn", f"{conv.name}/b_bn"
            consts[wname] = (w * inv.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
            consts[bname] = ((b - mean) * inv + bias).astype(w.dtype)
            new = conv.with_(inputs=(conv.inputs[0], wname, bname), outputs=node.outputs)
            nodes[nodes.index(conv)] = new
            replaced[x] = new
            continue
        shape = (-1,) + (1,) * (len(g.shapes[x]) - 2)
        dtype = g.dtypes[x]
        consts[f"{node.name}/scale"] = inv.reshape(shape).astype(dtype)
        consts[f"{node.name}/shift"] = (bias - mean * inv).reshape(shape).astype(dtype)
        mid = f"{node.name}/scaled"
        nodes.append(OpNode(Op.MUL, node.name + "/mul", (x, f"{node.name}/scale"), (mid,)))
        nodes.append(OpNode(Op.ADD, node.name + "/add", (mid, f"{node.name}/shift"), node.outputs[:1]))
    return infer_shapes(OpGraph(nodes, g.inputs, g.outputs, consts))


def fuse_pads(g: OpGraph) -> OpGraph:
    """A zero Pad of only the spatial axes that feeds a Conv becomes the Conv's own padding."""
    users = g.consumers()
    producers = g.producers()
    drop: set[int] = set()
    nodes = list(g.nodes)
    for idx, node in enumerate(nodes):
        if node.op is not Op.CONV:
            continue
        pad = producers.get(node.inputs[0])
        if pad is None or pad.op is not Op.PAD or not _single_use(g, node.inputs[0], users):
            continue
        if pad.attrs.get("mode", "constant") != "constant" or len(pad.inputs) > 3:
            continue
        value = g.consts.get(pad.inputs[2]) if len(pad.inputs) > 2 and pad.inputs[2] else 0
        pads = g.consts.get(pad.inputs[1])
        if pads is None or value is None or np.any(np.asarray(value) != 0):
            continue
        rank = len(g.shapes[pad.inputs[0]])
        pads = [int(p) for p in pads]
        begin, end = pads[:rank], pads[rank:]
        if begin[:2] != [0, 0] or end[:2] != [0, 0] or min(pads) < 0:
            continue
        kernel = tuple(node.attrs.get("kernel_shape") or g.shapes[node.inputs[1]][2:])
        cb, ce = spatial_pads(g.shapes[node.inputs[0]][2:], node.attrs, kernel)
        attrs = dict(node.attrs, auto_pad="NOTSET",
                     pads=[a + b for a, b in zip(cb, begin[2:])] + [a + b for a, b in zip(ce, end[2:])])
        nodes[idx] = node.with_(inputs=(pad.inputs[0],) + node.inputs[1:], attrs=attrs)
        drop.add(id(pad))
    nodes = [n for n in nodes if id(n) not in drop]
    return infer_shapes(OpGraph(nodes, g.inputs, g.outputs, g.consts))


FUSABLE_PRODUCERS = {Op.CONV, Op.GEMM, Op.ADD, Op.SUM, Op.CONCAT}


def fuse_activations(g: OpGraph) -> OpGraph:
    """Relu / LeakyRelu / constant Clip after a Conv, Gemm, Add, Sum or Concat is applied in place by
    that op instead of reading and writing the whole tensor again."""
    users = g.consumers()
    producers = g.producers()
    nodes = list(g.nodes)
    for act in g.nodes:
        if act.op not in (Op.RELU, Op.LEAKY_RELU, Op.CLIP):
            continue
        src = producers.get(act.inputs[0])
        if src is None or src.op not in FUSABLE_PRODUCERS or "activation" in src.attrs:
            continue
        if not _single_use(g, act.inputs[0], users):
            continue
        extra: dict = {}
        if act.op is Op.LEAKY_RELU:
            extra = {"act_alpha": float(act.attrs.get("alpha", 0.01))}
        elif act.op is Op.CLIP:
            bounds = [act.inputs[i] if len(act.inputs) > i else "" for i in (1, 2)]
            if any(b and b not in g.consts for b in bounds):
                continue
            if any(b and g.consts[b].size != 1 for b in bounds):
                continue
            extra = {"act_min": g.consts[bounds[0]].item() if bounds[0] else -np.inf,
                     "act_max": g.consts[bounds[1]].item() if bounds[1] else np.inf}
        fused = src.with_(outputs=act.outputs, attrs=dict(src.attrs, activation=act.op.value, **extra))
        nodes[nodes.index(src)] = fused
        nodes.remove(act)
        producers[act.outputs[0]] = fused
    return infer_shapes(OpGraph(nodes, g.inputs, g.outputs, g.consts))


def cancel_transposes(g: OpGraph) -> OpGraph:
    """Transpose(Transpose(x)) becomes one Transpose, or nothing when the perms cancel."""
    nodes = list(g.nodes)
    changed = True
    while changed:
        changed = False
        producers = {o: n for n in nodes for o in n.outputs}
        users: dict[str, int] = {}
        for n in nodes:
            for i in n.inputs:
                users[i] = users.get(i, 0) + 1
        for node in nodes:
            first = producers.get(node.inputs[0]) if node.op is Op.TRANSPOSE else None
            if first is None or first.op is not Op.TRANSPOSE or users[first.outputs[0]] != 1:
                continue
            if first.outputs[0] in g.outputs:
                continue
            p1, p2 = first.attrs["perm"], node.attrs["perm"]
            perm = [p1[i] for i in p2]
            nodes.remove(first)
            if perm == sorted(perm) and node.outputs[0] not in g.outputs:
                nodes.remove(node)
                nodes = _rename_uses(g, nodes, node.outputs[0], first.inputs[0])
            else:
                nodes[nodes.index(node)] = node.with_(inputs=first.inputs, attrs={"perm": perm})
            changed = True
            break
    return infer_shapes(OpGraph(nodes, g.inputs, g.outputs, g.consts))


def eliminate_dead(g: OpGraph) -> OpGraph:
    """Drop nodes no graph output depends on, and constants no node reads."""
    known = {o for n in g.nodes for o in n.outputs} | set(g.consts) | {s.name for s in g.inputs}
    for name in g.outputs:
        if name not in known:
            raise CompileError(f"graph output '{name}' is not produced by any node")
    live = set(g.outputs)
    kept: list[OpNode] = []
    for node in reversed(g.nodes):
        if any(o in live for o in node.outputs):
            kept.append(node)
            live.update(i for i in node.inputs if i)
    kept.reverse()
    consts = {k: v for k, v in g.consts.items() if k in live}
    # removing nodes changes no other tensor's shape: keep what is known (maybe nothing yet)
    live.update(s.name for s in g.inputs)  # an unused input is still part of the interface
    shapes = {k: v for k, v in g.shapes.items() if k in live}
    dtypes = {k: v for k, v in g.dtypes.items() if k in live}
    return OpGraph(kept, g.inputs, g.outputs, consts, shapes, dtypes)


# The lowering, in order. Each entry: (name shown in progress output, pass).
PIPELINE = [
    ("eliminate dead nodes", eliminate_dead),  # first, so a dead branch is never evaluated
    ("fold constants", fold_constants),
    ("remove identities", remove_identities),
    ("fold batch norm", fold_batch_norm),
    ("fuse pads", fuse_pads),
    ("fuse activations", fuse_activations),
    ("cancel transposes", cancel_transposes),
    ("fold constants", fold_constants),
    ("eliminate dead nodes", eliminate_dead),
]
