"""The graph model: nodes, their wires, the addresses and start order a graph implies, and the
config each node process gets. Built by iotrt.graphschema from a graph file; use it through
`iotrt.graph.load_graph`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotrt.bus import short_ipc_address
from iotrt.config import CONTROL_NAME
from iotrt.journal import JOURNAL_FILE
from iotrt.spec import WILDCARD
from iotrt.states import Policy

if TYPE_CHECKING:   # notes are built by the schema's checker; the model only holds them
    from iotrt.yamlcheck import Issue

EVENTS_TOPIC = "_sup/events"


@dataclass(frozen=True)
class Wire:
    """An input (or command input) fed by `node`'s output `output`."""

    node: str
    output: str
    queue: int | None = None        # None: the node's default depth
    line: int = 0

    @property
    def topic(self) -> str:
        return f"{self.node}/{self.output}"


@dataclass
class NodeDef:
    id: str
    kind: str | None                 # built-in kind, or None for `run:`
    target: str                      # module path, "pkg.mod:func" or absolute .py path
    spec: Any                        # the node's NodeSpec (None only in an invalid graph)
    params: dict[str, Any]
    inputs: dict[str, Wire]
    outputs: list[str]
    commands: dict[str, list[Wire]]  # command input -> the command outputs that feed it
    env: dict[str, str]
    restart: str = "on-failure"
    critical: bool = True
    cpus: list[int] | None = None
    nice: int | None = None
    threads: int = 1
    start_timeout_s: float = 60.0
    line: int = 0
    process: str = ""                # the OS process it runs in; "" = its own (named by id)
    process_line: int = 0

    def __post_init__(self) -> None:
        self.process = self.process or self.id

    @property
    def commands_in(self) -> list[str]:
        """Command inputs: those the SPEC names, plus those wired in the graph for "*"."""
        if self.spec is None:
            return list(self.commands)
        named = [c for c in self.spec.commands_in if c != WILDCARD]
        return named + [c for c in self.commands if c not in named]


@dataclass
class Graph:
    name: str
    path: Path
    runtime_dir: Path                # this graph's private socket folder
    state_dir: Path                  # this graph's persistent folder (journal, node state)
    policy: Policy
    nodes: dict[str, NodeDef]
    description: str = ""
    optimize: int = 0                # PYTHONOPTIMIZE of the node processes (0, 1 or 2)
    # What works but should change, "file:line: note: ..." (a kind used by its former name);
    # `iotrt validate` and `iotrt up` print them.
    notes: list[Issue] = field(default_factory=list)

    # -- addresses (short hashed names keep ipc paths under 107 bytes) -----------------------

    def _ipc(self, name: str) -> str:
        return f"ipc://{self.runtime_dir}/{name}"

    def output_address(self, node: str, output: str) -> str:
        return short_ipc_address(self.runtime_dir, self.name, node, output)

    def command_address(self, node: str, command_input: str) -> str:
        # "!" cannot start a port name, so a command input never shares an output's address
        return short_ipc_address(self.runtime_dir, self.name, node, "!" + command_input)

    @property
    def supervisor_address(self) -> str:
        return self._ipc("sup")

    @property
    def control_address(self) -> str:
        return self._ipc(CONTROL_NAME)

    @property
    def journal_address(self) -> str:
        return self._ipc("journal")

    @property
    def events_address(self) -> str:
        return self._ipc("events")

    @property
    def journal_path(self) -> Path:
        return self.state_dir / JOURNAL_FILE

    def topics(self) -> dict[str, str]:
        """Every topic of the graph -> the address its publisher listens on."""
        out = {f"{n.id}/{o}": self.output_address(n.id, o) for n in self.nodes.values() for o in n.outputs}
        out[EVENTS_TOPIC] = self.events_address
        return out

    def reloadable_nodes(self) -> list[str]:
        """The nodes that re-read their files on SIGHUP (SPEC `reloadable`): what the
        supervisor reloads on its own SIGHUP and on `iotrt reload` without a node named."""
        return [n.id for n in self.nodes.values() if n.spec is not None and n.spec.reloadable]

    # -- start order --------------------------------------------------------------------------

    def dependencies(self) -> dict[str, set[str]]:
        """node -> the nodes that must be ready before it starts: its publishers, and the
        actuators its command outputs dial. Nodes on a cycle start together (pub/sub does not
        need the other end to exist; a cycle only loses the ordering between its members)."""
        deps = self._raw_dependencies()
        component = _strongly_connected(deps)
        return {nid: {d for d in ds if component[d] != component[nid]} for nid, ds in deps.items()}

    def _raw_dependencies(self) -> dict[str, set[str]]:
        deps: dict[str, set[str]] = {nid: set() for nid in self.nodes}
        for n in self.nodes.values():
            for wire in n.inputs.values():
                deps[n.id].add(wire.node)
            for wires in n.commands.values():
                for wire in wires:
                    deps[wire.node].add(n.id)   # the rule node dials the actuator
        return deps

    # -- the config each node process gets (see iotrt.protocol) ------------------------------

    def node_config(self, node_id: str, log_level: str = "INFO") -> dict[str, Any]:
        n = self.nodes[node_id]
        commands_out: dict[str, dict] = {}
        for other in self.nodes.values():
            for cin, wires in other.commands.items():
                for wire in wires:
                    if wire.node == node_id:
                        commands_out[wire.output] = {"address": self.command_address(other.id, cin)}
        return {
            "graph": self.name,
            "id": n.id,
            "kind": n.kind,
            "target": n.target,
            "params": n.params,
            "inputs": {name: self._input_endpoint(w, n.process) for name, w in n.inputs.items()},
            "outputs": {
                o: {"address": self.output_address(n.id, o), "topic": f"{n.id}/{o}"} for o in n.outputs
            },
            "commands_in": {c: {"address": self.command_address(n.id, c)} for c in n.commands_in},
            "commands_out": commands_out,
            "supervisor": self.supervisor_address,
            "journal": self.journal_address,
            "heartbeat_s": self.policy.heartbeat_s,
            "runtime_dir": str(self.runtime_dir),
            "state_dir": str(self.state_dir),
            "log_level": log_level,
        }


    # -- processes (process groups: nodes sharing one OS process) ---------------------------

    def processes(self) -> dict[str, list[str]]:
        """OS process name -> the ids of the nodes it runs (a node alone: named by its id)."""
        out: dict[str, list[str]] = {}
        for n in self.nodes.values():
            out.setdefault(n.process, []).append(n.id)
        return out

    def process_dependencies(self) -> dict[str, set[str]]:
        """process -> the processes that must be up before it starts (see dependencies)."""
        procs = {nid: n.process for nid, n in self.nodes.items()}
        deps: dict[str, set[str]] = {p: set() for p in procs.values()}
        for nid, ds in self.dependencies().items():
            deps[procs[nid]].update(procs[d] for d in ds)
        component = _strongly_connected(deps)
        return {p: {d for d in ds if component[d] != component[p]} for p, ds in deps.items()}

    def process_config(self, name: str, log_level: str = "INFO") -> dict[str, Any]:
        """What `python -m iotrt.launch` runs: {"process", "nodes": [node configs]}."""
        return {"process": name,
                "nodes": [self.node_config(nid, log_level) for nid in self.processes()[name]]}

    def _input_endpoint(self, w: Wire, process: str = "") -> dict[str, Any]:
        ep = {"address": self.output_address(w.node, w.output), "topic": w.topic}
        src = self.nodes.get(w.node)    # None: a publisher that `iotrt replay` replaced
        if src is not None and src.process == process:
            ep["local"] = True    # same process: the in-process transport (iotrt.local)
        if w.queue is not None:   # else the node's own default depth
            ep["queue"] = w.queue
        return ep


def _strongly_connected(deps: dict[str, set[str]]) -> dict[str, int]:
    """Tarjan's algorithm: node -> component number (nodes on one cycle share a number).
    Iterative: a long chain of nodes must not exhaust Python's stack."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    comp: dict[str, int] = {}
    stack: list[str] = []
    for root in deps:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        work = [(root, iter(deps[root]))]
        while work:
            v, edges = work[-1]
            for w in edges:
                if w not in index:            # descend into w; v's other edges wait
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    work.append((w, iter(deps[w])))
                    break
                if w not in comp:             # on the stack: same component as v
                    low[v] = min(low[v], index[w])
            else:                             # v is finished
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[v])
                if low[v] == index[v]:
                    while True:
                        w = stack.pop()
                        comp[w] = index[v]
                        if w == v:
                            break
    return comp
