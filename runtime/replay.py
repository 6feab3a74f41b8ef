"""Replay: a graph derived from a recording, and the comparison of its decisions with the live run.

`replay_graph(graph, info, ...)` returns a copy of `graph` in which the nodes that published the
played topics are not started; one replay source node (iotrt.nodes.observe.replay) publishes
the recorded messages on those topics' addresses instead, with their recorded stamps. Nodes
that then feed nobody (e.g. a detector whose only consumer is replaced) are not started
either. Every node whose SPEC has a `clock` param with the choice "capture" (the rules node)
runs on the recording's clock. The derived graph has its own runtime and state folders, so a
replay never touches the live graph's sockets or journal.

`compare(live, replayed)` diffs two lists of decisions (from the journals) and says why they
differ where it can tell.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iotrt import errors
from iotrt.graph import EVENTS_TOPIC, Graph, NodeDef
from iotrt.recording import Info
from iotrt.spec import load_spec

REPLAY_TARGET = "iotrt.nodes.observe.replay"
# Receive queue of inputs fed by a played topic that is not a frame stream: deep enough that
# `--rate max` loses none of a burst (latest-wins still applies to frames).
REPLAY_QUEUE = 1024
CAPTURE_CLOCK = "capture"


class ReplayError(errors.StorageError):
    """A recording that does not fit the graph; str() is one line."""


class ReplayGraph(Graph):
    """A graph whose replaced nodes' topics are published by the replay node `source`."""

    source: str = "replay"
    played: tuple[str, ...] = ()

    # The start order looks nodes up by a wire's node id; the replaced nodes are gone, so it
    # sees them through the replay node. (Kept in step with iotrt.graph's own; the replay
    # tests exercise it: dependencies, process_dependencies, node_config.)

    def _raw_dependencies(self) -> dict[str, set[str]]:
        """Start order: a wire from a replaced node waits for the replay node instead."""
        deps = {nid: set() for nid in self.nodes}
        for n in self.nodes.values():
            for wire in n.inputs.values():
                deps[n.id].add(wire.node if wire.node in self.nodes else self.source)
            for wires in n.commands.values():
                for wire in wires:
                    if wire.node in self.nodes:
                        deps[wire.node].add(n.id)
        return deps

    def topics(self) -> dict[str, str]:
        out = super().topics()
        for topic in self.played:
            node, output = topic.split("/", 1)
            out[topic] = self.output_address(node, output)
        return out


@dataclass(frozen=True)
class Plan:
    graph: ReplayGraph
    played: list[str]        # topics the replay node publishes
    replaced: list[str]      # nodes not started: their topics are played
    idle: list[str]          # nodes not started: nothing started consumes their outputs
    silent: list[str]        # topics a started node reads whose publisher is replaced, unplayed


def replay_graph(graph: Graph, info: Info, *, topics: list[str] | None = None,
                 rate: float = 1.0, start_s: float = 0.0, end_s: float = 0.0,
                 partial: bool = False, runtime_dir: Path, state_dir: Path) -> Plan:
    """The derived graph that replays `info`'s file; ReplayError when they do not fit."""
    recorded = sorted(info.topics)
    if not recorded:
        raise ReplayError(f"{info.path}: the recording holds no messages")
    graph_topics = {f"{n.id}/{o}" for n in graph.nodes.values() for o in n.outputs}
    wanted = topics if topics else [t for t in recorded if t != EVENTS_TOPIC]
    not_recorded = [t for t in wanted if t not in info.topics]
    if not_recorded:
        raise ReplayError(f"{info.path}: no topic {', '.join(not_recorded)} in the recording "
                          f"(it has {', '.join(recorded)})")
    unknown = [t for t in wanted if t not in graph_topics]
    if unknown:
        raise ReplayError(f"{info.path}: topic {', '.join(unknown)} is not in graph "
                          f"'{graph.name}' ({graph.path}); choose topics with --topics "
                          f"(the graph has {', '.join(sorted(graph_topics))})")
    replaced = sorted({t.split("/", 1)[0] for t in wanted})
    kept = {nid: n for nid, n in graph.nodes.items() if nid not in replaced}
    idle = _prune(graph, kept)
    for nid in idle:
        del kept[nid]

    source = "replay"
    while source in graph.nodes:
        source += "-"
    consumers = {t: 0 for t in wanted}
    nodes: dict[str, NodeDef] = {}
    for nid, n in kept.items():
        n = copy.deepcopy(n)
        for name, w in n.inputs.items():
            if w.topic in consumers:
                consumers[w.topic] += 1
                if info.topics[w.topic].encoding != "jpeg":
                    n.inputs[name] = dataclasses.replace(w, queue=max(w.queue or 0, REPLAY_QUEUE))
        clock = next((p for p in (n.spec.params if n.spec else []) if p.name == "clock"), None)
        if clock is not None and CAPTURE_CLOCK in (clock.choices or ()):
            n.params["clock"] = CAPTURE_CLOCK
        nodes[nid] = n
    silent = sorted({w.topic for n in nodes.values() for w in n.inputs.values()
                     if w.node in replaced and w.topic not in consumers})

    spec = load_spec(REPLAY_TARGET)
    derived = ReplayGraph(graph.name, graph.path, runtime_dir, state_dir, graph.policy, nodes,
                          graph.description, optimize=graph.optimize)
    derived.source, derived.played = source, tuple(wanted)
    params = spec.validate_params({
        "file": str(Path(info.path).resolve()), "rate": rate, "start_s": start_s,
        "end_s": end_s, "partial": partial,
        "topics": {t: {"address": derived.output_address(*t.split("/", 1)),
                       "subscribers": consumers[t],
                       "queue": None if info.topics[t].encoding == "jpeg" else REPLAY_QUEUE}
                   for t in wanted},
    }, f"node '{source}'")
    nodes[source] = NodeDef(
        id=source, kind="replay", target=REPLAY_TARGET, spec=spec, params=params, inputs={},
        outputs=[], commands={}, env={}, restart="never", critical=False, threads=1,
        start_timeout_s=graph.policy.start_timeout_s)
    return Plan(derived, list(wanted), replaced, idle, silent)


def _prune(graph: Graph, kept: dict[str, NodeDef]) -> list[str]:
    """Nodes whose outputs fed only nodes that no longer start, and that drive no actuator."""
    idle: list[str] = []
    changed = True
    while changed:
        changed = False
        for nid, n in kept.items():
            if nid in idle or not n.outputs or n.commands:
                continue
            drives = any(w.node == nid for o in graph.nodes.values() for ws in o.commands.values()
                         for w in ws)
            consumers = {o.id for o in graph.nodes.values()
                         for w in o.inputs.values() if w.node == nid}
            if drives or not consumers:
                continue
            if not any(c in kept and c not in idle for c in consumers):
                idle.append(nid)
                changed = True
    return idle


# --- comparing decisions ---------------------------------------------------------------------

DECISION_KINDS = ("rule_fired", "command_sent")


def decisions(events: list[Any]) -> dict[str, list[tuple]]:
    """The decisions in journal events, per stream that has an order of its own: rule firings
    in order, and the commands per command output (each output has its own sender thread, so
    commands to different actuators are not ordered among themselves)."""
    out: dict[str, list[tuple]] = {}
    for e in events:
        f = e.fields
        if e.kind == "rule_fired":
            out.setdefault("rule firings", []).append((f.get("rule"), f.get("trigger")))
        elif e.kind == "command_sent":
            out.setdefault(f"commands to {f.get('output')}", []).append(
                (f.get("rule"), f.get("label"), f.get("data")))
    return out


def compare(live: dict[str, list[tuple]], replayed: dict[str, list[tuple]],
            notes: list[str] = ()) -> list[str]:
    """Lines describing every difference (empty: identical). `notes` are known causes."""
    lines: list[str] = []
    for stream in sorted(set(live) | set(replayed)):
        a, b = live.get(stream, []), replayed.get(stream, [])
        if a == b:
            continue
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        lines.append(f"{stream}: live {len(a)}, replay {len(b)}; first difference at #{first + 1}: "
                     f"live {a[first] if first < len(a) else 'nothing'}, "
                     f"replay {b[first] if first < len(b) else 'nothing'}")
    if lines:
        lines += [f"  possible cause: {n}" for n in notes]
    return lines
