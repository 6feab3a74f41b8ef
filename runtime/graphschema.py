"""The graph file's schema: one pass over the composed YAML tree that checks every key, type,
node kind, param and wire, records each problem with its line, and builds the `Graph`.

Used through `iotrt.graph.load_graph`; the format is documented in docs/graph.md.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from yaml.nodes import MappingNode, SequenceNode

from iotrt.bus import AddressError, check_address, short_ipc_address
from iotrt.codec import MAX_QUEUE
from iotrt.config import ENV_RUNTIME_DIR, shared_threads, state_root
from iotrt.graphmodel import Graph, NodeDef, Wire
from iotrt.hints import suggest
from iotrt.kinds import KINDS, RENAMED, RENAMED_MODULES, resolve
from iotrt.rundir import default_runtime_root
from iotrt.spec import WILDCARD, SpecError
from iotrt.states import RESTART_POLICIES, Backoff, Intensity, Policy
from iotrt.yamlcheck import INVALID, Checker, line_of

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_PORT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
_WIRE_RE = re.compile(r"^([^/\s]+)/([^/\s]+)$")

# A simulated sensor (the sim doorstep shows the owner's photo every few seconds) must never
# drive real hardware; this graph key, loud on purpose, is the only way to allow it.
SIM_OVERRIDE = "unsafe_simulated_sensors_with_real_hardware"

TOP_KEYS = {
    "name": "graph name: [a-z0-9_-], used in paths, topics and the systemd unit name",
    "description": "free text",
    "runtime_dir": "where sockets live (default: $RUNTIME_DIRECTORY or $XDG_RUNTIME_DIR/iotrt)",
    "state_dir": "where state lives (default: $STATE_DIRECTORY or ~/.local/state/iotrt)",
    "supervisor": "health and restart settings",
    "nodes": "the list of nodes",
    "optimize": "Python optimisation of the node processes: 0 (default), 1 (no asserts) or 2 (no "
                "asserts, no docstrings: about 2 MB less per process)",
    SIM_OVERRIDE: "true lets simulated sensors run in a graph that drives real hardware (unsafe)",
}
NODE_KEYS = (
    "id", "kind", "run", "params", "inputs", "outputs", "commands", "env",
    "restart", "critical", "cpus", "nice", "threads", "start_timeout_s", "process",
)
INPUT_KEYS = ("from", "queue")
MAX_NODES = 2000   # far above any device's graph; bounds the time and memory of validation


class GraphReader:
    """One pass over the composed tree; every method records issues and keeps going."""

    def __init__(self, check: Checker, path: Path, environ: Mapping[str, str], spec_loader):
        self.check = check
        self.path = path
        self.environ = environ
        self.spec_loader = spec_loader
        self.specs: dict[str, Any] = {}

    def read(self, root) -> Graph | None:
        c = self.check
        top = c.mapping(root, "the graph", TOP_KEYS)
        if top is INVALID:
            return None
        name = "graph"
        if "name" not in top:
            c.error(root, "the graph has no 'name' (e.g. 'name: door')")
        else:
            name_node = top["name"][1]
            value = c.text(name_node, "name")
            if value is not INVALID and not _NAME_RE.match(value):
                c.error(name_node, f"name '{value}': use 1-32 of a-z 0-9 _ - (it names files and a systemd unit)")
            elif value is not INVALID:
                name = value
        description = c.text(top["description"][1], "description") if "description" in top else ""
        policy = self._policy(top["supervisor"][1]) if "supervisor" in top else Policy()
        runtime_dir = self._dir(top, "runtime_dir", None) or self._default_runtime_root(root)
        runtime_dir /= name
        state_dir = self._dir(top, "state_dir", state_root(self.environ)) / name
        self._check_ipc_length(runtime_dir, top.get("runtime_dir", (root, root))[1])
        if "nodes" not in top:
            c.error(root, "the graph has no 'nodes' list")
            return None
        nodes = self._nodes(top["nodes"][1], policy)
        self._check_wiring(nodes)
        override = (c.value(top[SIM_OVERRIDE][1], bool, SIM_OVERRIDE) if SIM_OVERRIDE in top
                    else False)
        if override is not True:
            self._check_sim_vs_hardware(nodes)
        optimize = self._optimize(top["optimize"][1]) if "optimize" in top else 0
        return Graph(name, self.path.resolve(), runtime_dir, state_dir, policy, nodes,
                     description if description is not INVALID else "", optimize)

    def _optimize(self, node) -> int:
        value = self.check.number(node, "optimize", int, minimum=0)
        if value is INVALID:
            return 0
        if value > 2:
            self.check.error(node, f"optimize: must be 0, 1 or 2 (Python's -O levels), got {value}")
            return 0
        return value

    def _default_runtime_root(self, root) -> Path:
        """The default socket root; without systemd or XDG one is made (iotrt.rundir)."""
        try:
            return default_runtime_root(self.environ)
        except OSError as exc:   # RuntimeDirError too: a state root others can tamper with
            self.check.error(root, f"cannot set up the default runtime folder: {exc} (set "
                                   f"runtime_dir, or {ENV_RUNTIME_DIR})")
            return Path("/nonexistent")

    def _dir(self, top, key: str, default: Path | None) -> Path | None:
        if key not in top:
            return default
        value = self.check.text(top[key][1], key)
        if value is INVALID:
            return default
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def _check_ipc_length(self, runtime_dir: Path, where) -> None:
        try:   # every socket name has the same length, so one check covers them all
            check_address(short_ipc_address(runtime_dir, "", "", ""))
        except AddressError as exc:
            self.check.error(where, f"runtime folder '{runtime_dir}': {exc} (or {ENV_RUNTIME_DIR})")

    def _policy(self, node) -> Policy:
        c = self.check
        m = c.mapping(node, "supervisor", Policy.__dataclass_fields__)
        if m is INVALID:
            return Policy()
        values: dict[str, Any] = {}
        for key, (_, v) in m.items():
            if key == "backoff":
                values[key] = self._sub(v, Backoff, "supervisor.backoff")
            elif key == "intensity":
                values[key] = self._sub(v, Intensity, "supervisor.intensity")
            else:
                got = c.number(v, f"supervisor.{key}", float, minimum=0.01)
                if got is not INVALID:
                    values[key] = got
        policy = Policy(**values)
        if policy.liveness_s < 2 * policy.heartbeat_s:
            where = m.get("liveness_s", m.get("heartbeat_s"))[1]
            c.error(where, f"supervisor: liveness_s ({policy.liveness_s:g}) must be at least twice "
                           f"heartbeat_s ({policy.heartbeat_s:g}), or healthy nodes count as hung")
        if policy.backoff.initial_s > policy.backoff.max_s:
            c.error(m["backoff"][1], f"supervisor.backoff: initial_s ({policy.backoff.initial_s:g}) "
                                     f"is above max_s ({policy.backoff.max_s:g})")
        return policy

    def _sub(self, node, cls, what: str):
        m = self.check.mapping(node, what, cls.__dataclass_fields__)
        if m is INVALID:
            return cls()
        values = {}
        for key, (_, v) in m.items():
            typ = int if cls.__dataclass_fields__[key].type == "int" else float
            minimum = 1.0 if key == "factor" else (0 if typ is int else 0.01)
            got = self.check.number(v, f"{what}.{key}", typ, minimum=minimum)
            if got is not INVALID:
                values[key] = got
        return cls(**values)

    # -- nodes --------------------------------------------------------------------------------

    def _nodes(self, node, policy: Policy) -> dict[str, NodeDef]:
        c = self.check
        items = c.sequence(node, "nodes")
        if items is INVALID:
            return {}
        if not items:
            c.error(node, "'nodes' is empty: a graph needs at least one node")
        if len(items) > MAX_NODES:
            c.error(node, f"{len(items)} nodes; a graph holds at most {MAX_NODES}")
            return {}
        nodes: dict[str, NodeDef] = {}
        first_line: dict[str, int] = {}
        for item in items:
            n = self._node(item, policy)
            if n is None:
                continue
            if n.id in nodes:
                c.error(item, f"duplicate node id '{n.id}' (first at line {first_line[n.id]})")
                continue
            nodes[n.id] = n
            first_line[n.id] = n.line
        self._check_processes(nodes)
        threads = shared_threads(len({n.process for n in nodes.values()}))
        for n in nodes.values():
            if n.threads == 0:   # not set: share the cores out so processes do not fight
                n.threads = threads
        return nodes

    def _node(self, item, policy: Policy) -> NodeDef | None:
        c = self.check
        m = c.mapping(item, _node_label(item), NODE_KEYS)
        if m is INVALID:
            return None
        if "id" not in m:
            c.error(item, "node without 'id'")
            return None
        nid = c.text(m["id"][1], "id")
        if nid is INVALID:
            return None
        if not _ID_RE.match(nid):
            c.error(m["id"][1], f"node id '{nid}': use 1-64 of A-Z a-z 0-9 _ - (no '/'; '_' first is reserved)")
            return None
        what = f"node '{nid}'"
        kind, target, spec = self._target(m, item, what)
        n = NodeDef(
            id=nid, kind=kind, target=target or "", spec=spec, params={}, inputs={}, outputs=[],
            commands={}, env={}, threads=0, start_timeout_s=policy.start_timeout_s,
            line=line_of(item),
        )
        if "process" in m:
            name = c.text(m["process"][1], f"{what}: process")
            if name is not INVALID and not _ID_RE.match(name):
                name = c.error(m["process"][1], f"{what}: process '{name}': use 1-64 of "
                                                 "A-Z a-z 0-9 _ - (it names an OS process)")
            n.process = _ok(name, nid)
            n.process_line = line_of(m["process"][1])
        n.outputs = self._outputs(m, spec, what)
        n.params = self._params(m.get("params"), spec, what, item)
        if "inputs" in m:
            n.inputs = self._inputs(m["inputs"][1], spec, what)
        if "commands" in m:
            n.commands = self._commands(m["commands"][1], spec, what)
        if "env" in m:
            n.env = self._env(m["env"][1], what)
        if "restart" in m:
            n.restart = _ok(c.choice(m["restart"][1], f"{what}: restart", RESTART_POLICIES), n.restart)
        if "critical" in m:
            n.critical = _ok(c.value(m["critical"][1], bool, f"{what}: critical"), n.critical)
        if "cpus" in m:
            n.cpus = self._cpus(m["cpus"][1], what)
        if "nice" in m:
            nice = c.number(m["nice"][1], f"{what}: nice", int, minimum=-20)
            if nice is not INVALID and nice > 19:
                nice = c.error(m["nice"][1], f"{what}: nice must be between -20 and 19")
            n.nice = _ok(nice, None)
        if "threads" in m:
            n.threads = _ok(c.number(m["threads"][1], f"{what}: threads", int, minimum=1), 0)
        if "start_timeout_s" in m:
            n.start_timeout_s = _ok(
                c.number(m["start_timeout_s"][1], f"{what}: start_timeout_s", float, minimum=0.1),
                n.start_timeout_s,
            )
        return n

    def _target(self, m, item, what: str) -> tuple[str | None, str | None, Any]:
        """(kind, target, spec) from `kind:` or `run:`; spec is None when it cannot be read
        (target None too when the kind or path itself is wrong)."""
        c = self.check
        if ("kind" in m) == ("run" in m):
            c.error(item, f"{what}: give exactly one of 'kind' (a built-in node) or 'run' "
                          "(module:function or a .py file)")
            return None, None, None
        if "kind" in m:
            node = m["kind"][1]
            kind = c.text(node, f"{what}: kind")
            if kind is INVALID:
                return None, None, None
            found = resolve(kind)
            if found is None:
                c.error(node, f"{what}: unknown kind '{kind}'{suggest(kind, KINDS)}; "
                              f"built-in kinds: {', '.join(sorted(KINDS))}")
                return kind, None, None
            if kind in RENAMED:
                c.note(node, f"{what}: kind '{kind}' is now called '{found[0]}' (it works as "
                             f"before; write 'kind: {found[0]}' to silence this note)")
            kind, target = found
        else:
            node = m["run"][1]
            kind = None
            run = c.text(node, f"{what}: run")
            if run is INVALID:
                return None, None, None
            if run.endswith(".py"):
                p = (self.path.parent / Path(run).expanduser()).resolve()
                if not p.is_file():
                    c.error(node, f"{what}: run: no such file '{p}'")
                    return None, None, None
                target = str(p)
            elif re.match(r"^[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?$", run):
                target = run
                module, colon, function = run.partition(":")
                if module in RENAMED_MODULES:
                    target = RENAMED_MODULES[module] + colon + function
                    c.note(node, f"{what}: module '{module}' is now '{RENAMED_MODULES[module]}' "
                                 f"(it works as before; write 'run: {target}' to silence this note)")
            else:
                c.error(node, f"{what}: run: '{run}' is neither 'package.module:function' nor a .py file")
                return None, None, None
        if target not in self.specs:
            self.specs[target] = INVALID
            try:
                self.specs[target] = self.spec_loader(target)
            except SpecError as exc:
                c.error(node, f"{what}: {exc}")
            except Exception as exc:  # noqa: BLE001 - a node module failing at import is the user's to see
                c.error(node, f"{what}: importing '{target}' failed: {type(exc).__name__}: {exc}")
        spec = self.specs[target]
        return kind, target, (None if spec is INVALID else spec)

    def _outputs(self, m, spec, what: str) -> list[str]:
        """The SPEC's outputs; a SPEC with the output "*" takes its names from `outputs:`."""
        c = self.check
        declared = [] if spec is None else [o for o in spec.outputs if o != WILDCARD]
        open_ended = spec is None or WILDCARD in spec.outputs
        if "outputs" not in m:
            return declared
        items = c.sequence(m["outputs"][1], f"{what}: outputs")
        names = list(declared)
        for item in [] if items is INVALID else items:
            name = c.text(item, f"{what}: outputs")
            if name is INVALID:
                continue
            if not open_ended and name not in declared:
                c.error(item, f"{what}: output '{name}' is not one of the node's outputs "
                              f"({', '.join(declared) or 'none'}){suggest(name, declared)}")
            elif not _PORT_RE.match(name):
                c.error(item, f"{what}: output name '{name}': use letters, digits, _ and -")
            elif name not in names:
                names.append(name)
        return names

    def _params(self, node, spec, what: str, item) -> dict[str, Any]:
        """The node's params, checked by the Node API's validator (NodeSpec.check_params),
        each problem at its line: an unknown name at the name, a wrong value at the value."""
        c = self.check
        given = {} if node is None else c.mapping(node[1], f"{what}: params")
        if given is INVALID or spec is None:   # spec None: the target is already reported
            return {}
        values: dict[str, Any] = {}
        for key, (_, vnode) in given.items():
            p = spec.param(key)
            values[key] = c.plain(vnode, f"{what}: params.{key}", text=p is not None and p.type is str)
        reported = [key for key, value in values.items() if value is INVALID]
        params, problems = spec.check_params(
            {k: v for k, v in values.items() if v is not INVALID}, reported)
        for problem in problems:
            knode, vnode = given.get(problem.param, (item, item))
            c.error({"unknown": knode, "invalid": vnode}.get(problem.kind, item), f"{what}: {problem}")
        return params

    def _wire(self, node, what: str) -> Wire | None:
        c = self.check
        text = c.text(node, what)
        if text is INVALID:
            return None
        match = _WIRE_RE.match(text)
        if not match:
            c.error(node, f"{what}: '{text}' should be 'node/output'")
            return None
        return Wire(match.group(1), match.group(2), None, line_of(node))

    def _inputs(self, node, spec, what: str) -> dict[str, Wire]:
        c = self.check
        m = c.mapping(node, f"{what}: inputs")
        out: dict[str, Wire] = {}
        for name, (knode, v) in ({} if m is INVALID else m).items():
            if spec is not None and not spec.has_port("inputs", name):
                c.error(knode, f"{what}: unknown input '{name}'{suggest(name, spec.inputs)}; "
                               f"inputs: {', '.join(spec.inputs) or 'none'}")
                continue
            queue = None
            src = v
            if isinstance(v, MappingNode):
                sub = c.mapping(v, f"{what}: inputs.{name}", INPUT_KEYS)
                if sub is INVALID:
                    continue
                if "from" not in sub:
                    c.error(v, f"{what}: inputs.{name} needs 'from: node/output'")
                    continue
                src = sub["from"][1]
                if "queue" in sub:
                    qnode = sub["queue"][1]
                    queue = c.number(qnode, f"{what}: inputs.{name}.queue", int, minimum=1)
                    if queue is INVALID:
                        continue
                    if queue > MAX_QUEUE:
                        c.error(qnode, f"{what}: inputs.{name}.queue: at most {MAX_QUEUE} "
                                       f"messages, got {queue}")
                        continue
            wire = self._wire(src, f"{what}: inputs.{name}")
            if wire is not None:
                out[name] = Wire(wire.node, wire.output, queue, wire.line)
        return out

    def _commands(self, node, spec, what: str) -> dict[str, list[Wire]]:
        c = self.check
        m = c.mapping(node, f"{what}: commands")
        out: dict[str, list[Wire]] = {}
        for name, (knode, v) in ({} if m is INVALID else m).items():
            if spec is not None and not spec.has_port("commands_in", name):
                c.error(knode, f"{what}: unknown command input '{name}'{suggest(name, spec.commands_in)}; "
                               f"command inputs: {', '.join(spec.commands_in) or 'none'}")
                continue
            sources = v.value if isinstance(v, SequenceNode) else [v]   # one source or a list
            wires = [self._wire(s, f"{what}: commands.{name}") for s in sources]
            out[name] = [w for w in wires if w is not None]
        return out

    def _env(self, node, what: str) -> dict[str, str]:
        c = self.check
        m = c.mapping(node, f"{what}: env")
        env = {}
        for key, (_, v) in ({} if m is INVALID else m).items():
            value = c.text(v, f"{what}: env.{key}")
            if value is not INVALID:
                env[key] = value
        return env

    def _cpus(self, node, what: str) -> list[int] | None:
        c = self.check
        items = c.sequence(node, f"{what}: cpus")
        if items is INVALID:
            return None
        available = sorted(os.sched_getaffinity(0))
        cpus = []
        for item in items:
            cpu = c.number(item, f"{what}: cpus", int, minimum=0)
            if cpu is not INVALID and cpu not in available:
                c.error(item, f"{what}: cpus: CPU {cpu} does not exist here (CPUs: {available})")
            elif cpu is not INVALID:
                cpus.append(cpu)
        return cpus or None

    def _check_processes(self, nodes: dict[str, NodeDef]) -> None:
        """Process groups: a safety-critical node (SPEC safety=True) runs alone, and what is
        per process (CPU affinity, niceness, environment) must agree within a group."""
        c = self.check
        groups: dict[str, list[NodeDef]] = {}
        for n in nodes.values():
            groups.setdefault(n.process, []).append(n)
        for name, members in groups.items():
            if len(members) < 2:
                continue
            for n in members:
                if n.spec is not None and n.spec.safety:
                    others = ", ".join(m.id for m in members if m is not n)
                    c.error(n.process_line or n.line,
                            f"node '{n.id}' ({n.kind or n.target}) is safety-critical and runs "
                            f"in a process of its own; it cannot share process '{name}' with "
                            f"{others} (remove the 'process:' key that joins them)")
            first = members[0]
            for n in members[1:]:
                for attr in ("cpus", "nice"):
                    if getattr(n, attr) != getattr(first, attr):
                        c.error(n.line, f"node '{n.id}': {attr} differs from node "
                                        f"'{first.id}' in the same process '{name}'; "
                                        f"{attr} is per process")
                for key, value in n.env.items():
                    if first.env.get(key, value) != value:
                        c.error(n.line, f"node '{n.id}': env.{key} differs from node "
                                        f"'{first.id}' in the same process '{name}'; the "
                                        f"environment is per process")

    # -- wiring across nodes ----------------------------------------------------------------------

    def _check_wiring(self, nodes: dict[str, NodeDef]) -> None:
        c = self.check
        fed_by: dict[str, str] = {}
        for n in nodes.values():
            for name, wire in n.inputs.items():
                self._check_source(nodes, wire, f"node '{n.id}': inputs.{name}", "outputs")
            for name, wires in n.commands.items():
                for wire in wires:
                    if not self._check_source(nodes, wire, f"node '{n.id}': commands.{name}", "commands_out"):
                        continue
                    if wire.topic in fed_by:
                        c.error(wire.line, f"node '{n.id}': commands.{name}: '{wire.topic}' already feeds "
                                           f"{fed_by[wire.topic]}; a command output goes to one actuator")
                    fed_by[wire.topic] = f"'{n.id}/{name}'"

    def _check_sim_vs_hardware(self, nodes: dict[str, NodeDef]) -> None:
        """Refuse a graph where a node may publish simulated data while another drives real
        hardware (each node's SPEC says which, from its params)."""
        def says(n: NodeDef, what: str) -> bool:
            declared = getattr(n.spec, what, None) if n.spec is not None else None
            try:
                return bool(declared and declared(n.params))
            except KeyError:   # the param it looks at is invalid, and already reported
                return False

        real = [n.id for n in nodes.values() if says(n, "hardware")]
        if not real:
            return
        for n in nodes.values():
            if says(n, "simulated"):
                self.check.error(n.line, (
                    f"node '{n.id}' may publish SIMULATED data (with these params; a source "
                    f"that falls back to simulation counts) while {', '.join(map(repr, real))} "
                    f"drive{'s' if len(real) == 1 else ''} REAL hardware: a simulated scene "
                    f"could open a real door or move a real motor. Give '{n.id}' a real source "
                    f"(e.g. a camera's source: device), or the actuators their sim driver; to "
                    f"allow it anyway, set '{SIM_OVERRIDE}: true' at the top of the graph"))

    def _check_source(self, nodes, wire: Wire, what: str, attr: str) -> bool:
        c = self.check
        if wire.node not in nodes:
            c.error(wire.line, f"{what}: no node '{wire.node}'{suggest(wire.node, nodes)}")
            return False
        src = nodes[wire.node]
        if src.spec is None:
            return True   # its kind or run target is already reported as wrong
        if attr == "outputs":
            names = src.outputs
        elif src.spec.has_port("commands_out", wire.output):
            return True    # named, or "*": any command output the graph wires
        else:
            names = list(src.spec.commands_out)
        if wire.output not in names:
            label = "output" if attr == "outputs" else "command output"
            c.error(wire.line, f"{what}: node '{wire.node}' has no {label} '{wire.output}'"
                               f"{suggest(wire.output, names)}; it has: {', '.join(names) or 'none'}")
            return False
        return True


def _node_label(item) -> str:
    """"node 'cam'" for messages about a node entry, before its keys are checked."""
    if isinstance(item, MappingNode):
        for key, value in item.value:
            if getattr(key, "value", None) == "id" and isinstance(getattr(value, "value", None), str):
                return f"node '{value.value}'"
    return "node"


def _ok(value, default):
    return default if value is INVALID else value
