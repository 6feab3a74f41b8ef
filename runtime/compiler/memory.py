"""Static memory plan: every activation gets a fixed byte offset in one arena.

Tensors whose lifetimes do not overlap share bytes (first-fit over a free list). Three kinds of
tensors take no bytes of their own:
- the output of a view op (Reshape, Flatten, Squeeze, Unsqueeze, Identity) is its input's bytes;
- the output of an elementwise op may take the bytes of an input it reads for the last time;
- an input of a Concat along an axis with only size-1 axes before it is a contiguous slice of
  the Concat's output, so the op producing it writes there directly and the Concat is free
  (unless the Concat has a fused activation and someone else also reads that input).
The engine recognises both by comparing offsets, so the plan is the single source of truth.
"""

from __future__ import annotations

import math

import numpy as np

from iotrt.modelformat.artifact import MemoryPlan
from iotrt.modelformat.ir import VIEW_OPS, Op, OpGraph

ALIGN = 64
# Elementwise ops whose numpy kernels may write their output over an input of the same shape.
IN_PLACE_OPS = frozenset({Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.SUM, Op.RELU, Op.SIGMOID, Op.TANH,
                          Op.CLIP, Op.LEAKY_RELU})


def _nbytes(g: OpGraph, name: str) -> int:
    return math.prod(g.shapes[name]) * np.dtype(g.dtypes[name]).itemsize


def plan_memory(g: OpGraph) -> MemoryPlan:
    producers = g.producers()
    # parent[t] = (storage tensor, byte offset inside it): aliases resolved to their root
    parent: dict[str, tuple[str, int]] = {}
    inputs = {s.name for s in g.inputs}

    def root(name: str) -> tuple[str, int]:
        off = 0
        while name in parent:
            name, delta = parent[name]
            off += delta
        return name, off

    aliased: set[str] = set()
    users = g.consumers()
    for node in g.nodes:
        if node.op in VIEW_OPS and node.inputs[0] not in g.consts:
            parent[node.outputs[0]] = (node.inputs[0], 0)
        elif node.op is Op.CONCAT:
            out = node.outputs[0]
            shape = g.shapes[out]
            axis = node.attrs["axis"] % len(shape)
            if math.prod(shape[:axis]) != 1:
                continue
            off = 0
            for name in node.inputs:
                size = _nbytes(g, name)
                src = producers.get(name)
                if (src is not None and src.op not in VIEW_OPS and name not in aliased
                        and name not in g.outputs and name not in inputs
                        and node.inputs.count(name) == 1 and name not in parent
                        # a fused activation rewrites the slice: only if no one else reads it
                        and ("activation" not in node.attrs or len(users[name]) == 1)
                        and not any(p[0] == name for p in parent.values())):
                    parent[name] = (out, off)
                    aliased.add(name)
                off += size

    # lifetime of each storage root: [first step defined, last step used]
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for s in g.inputs:
        first[s.name] = -1
    for step, node in enumerate(g.nodes):
        for name in node.inputs:
            if name and name not in g.consts:
                r = root(name)[0]
                last[r] = max(last.get(r, step), step)
        for name in node.outputs:
            r = root(name)[0]
            first[r] = min(first.get(r, step), step)
            last.setdefault(r, step)
    end = len(g.nodes)
    for name in g.outputs:
        if name not in g.consts:
            last[root(name)[0]] = end

    free: list[tuple[int, int]] = []  # (offset, size), sorted, merged
    top = 0
    offsets: dict[str, int] = {}
    by_start: dict[int, list[str]] = {}
    by_end: dict[int, list[str]] = {}
    for r in first:
        by_start.setdefault(first[r], []).append(r)
        by_end.setdefault(last.get(r, first[r]), []).append(r)

    def allocate(size: int) -> int:
        nonlocal top
        size = -(-size // ALIGN) * ALIGN
        for i, (off, fsize) in enumerate(free):
            if fsize >= size:
                free[i:i + 1] = [(off + size, fsize - size)] if fsize > size else []
                return off
        off, top = top, top + size
        return off

    def release(off: int, size: int) -> None:
        size = -(-size // ALIGN) * ALIGN
        free.append((off, size))
        free.sort()
        merged: list[tuple[int, int]] = []
        for o, s in free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        free[:] = merged

    inputs_and_outputs = inputs | set(g.outputs)
    handed_over: set[str] = set()  # roots whose bytes an in-place output took

    def in_place_source(step: int, out: str) -> str | None:
        """An input of an elementwise node whose bytes the output can take: same shape and
        dtype, a root of its own, and read for the last time here."""
        node = g.nodes[step]
        if node.op not in IN_PLACE_OPS or out in parent or first.get(out) != step:
            return None
        # Sum adds its inputs in order into the output: only the first two may be overwritten
        candidates = node.inputs[:2] if node.op is Op.SUM else node.inputs
        for name in candidates:
            if (name and name not in g.consts and name not in parent and name not in handed_over
                    and name not in inputs_and_outputs and last.get(name) == step
                    and g.shapes[name] == g.shapes[out] and g.dtypes[name] == g.dtypes[out]
                    and not any(p[0] == name for p in parent.values())):
                return name
        return None

    for step in range(-1, end + 1):
        # allocate before freeing: an op never writes over its own inputs, except elementwise
        # ops, which may write over an input they read for the last time
        for r in sorted(by_start.get(step, []), key=lambda n: -_nbytes(g, n)):
            src = in_place_source(step, r) if 0 <= step < end else None
            if src is not None:
                offsets[r] = offsets[src]
                handed_over.add(src)
            else:
                offsets[r] = allocate(_nbytes(g, r))
        for r in by_end.get(step, []):
            if r not in handed_over:
                release(offsets[r], _nbytes(g, r))

    for name in dict.fromkeys([*first, *parent]):  # a fixed order: the same artifact bytes every run
        r, off = root(name)
        offsets[name] = offsets[r] + off
    return MemoryPlan(offsets, top)
