"""The kind registry: the runtime's one way into the built-in nodes (`iotrt.nodes`).

A graph's `kind: NAME` and the verbs that serve one kind (`iotrt enroll`) resolve a kind here;
no other module of the runtime imports `iotrt.nodes`. Each kind's module declares a SPEC, and
what the runtime does for one kind comes from hooks in that SPEC (iotrt.spec.NodeSpec), never
from a test of the kind's name.
"""

from __future__ import annotations

from iotrt.hints import suggest
from iotrt.nodes import NODES, RENAMED, RENAMED_MODULES
from iotrt.spec import NodeSpec, SpecError, load_spec

__all__ = ["KINDS", "RENAMED", "RENAMED_MODULES", "resolve", "spec"]

KINDS: dict[str, str] = NODES   # kind -> the module that implements it


def resolve(kind: str) -> tuple[str, str] | None:
    """(the kind's current name, its module) for a kind or a former name of one (RENAMED);
    None for an unknown kind."""
    kind = RENAMED.get(kind, kind)
    return (kind, KINDS[kind]) if kind in KINDS else None


def spec(kind: str) -> NodeSpec:
    """The SPEC of a built-in kind (its module is imported: no node runs)."""
    found = resolve(kind)
    if found is None:
        raise SpecError(f"unknown node kind '{kind}'{suggest(kind, KINDS)}")
    return load_spec(found[1])
