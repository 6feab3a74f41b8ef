"""What a node declares about itself: ports and typed parameters (`NodeSpec`, `Param`).

A node module defines `SPEC = NodeSpec(...)` at top level and does no work at import time, so
the graph can read and check its interface without running it (`load_spec`). Port maps name ->
one-line description; the name "*" means "any name the graph chooses" (e.g. a rule node whose
inputs and command outputs come from its rules file).
"""

from __future__ import annotations

import ast
import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping

from iotrt.errors import ConfigError
from iotrt.hints import suggest


class SpecError(ConfigError, ValueError):
    """A node target whose SPEC cannot be found or is malformed."""


class ParamError(ConfigError, ValueError):
    """Parameters that do not match a node's SPEC. `errors` lists every problem found."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("; ".join(errors))


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
PARAM_TYPES = (bool, int, float, str, list, dict)
WILDCARD = "*"
# What a value of each param type is called in messages (a YAML user writes no Python types).
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "text",
               list: "a list", dict: "a mapping"}


@dataclass(frozen=True, slots=True)
class Param:
    """A declared parameter. `default=REQUIRED` makes it mandatory; a None default allows None.

    Numbers must be finite (NaN compares false with every bound, so `.nan` would slip past
    `min`/`max` and disable a limit such as a lock's longest unlock); a param that means to take
    NaN or infinity says so with `nonfinite=True`. This holds inside list and dict values too."""

    name: str
    type: type
    default: Any = REQUIRED
    doc: str = ""
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    nonfinite: bool = False
    items: type | None = None     # list params: the type every element must have
    # A last check of a value that passed the others, for what min/max/choices cannot say (a gap
    # in a range, the entries of a mapping): why the value is not acceptable, or None. The graph
    # check asks it too, so the node never meets at start a value the graph accepted.
    check: Callable[[Any], str | None] | None = None

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            names = ", ".join(t.__name__ for t in PARAM_TYPES)
            raise SpecError(f"param {self.name!r}: type must be one of {names}")
        if self.default is not REQUIRED and self.default is not None:
            problem = self.problem(self.default)
            if problem:
                raise SpecError(f"param {self.name!r}: default {self.default!r} {problem}")

    def problem(self, value: Any) -> str | None:
        """Why `value` is not acceptable, or None."""
        if value is None:
            return None if self.default is None else "must not be empty (null)"
        t = self.type
        ok = (
            type(value) is bool if t is bool
            else (isinstance(value, (int, float)) and not isinstance(value, bool)) if t is float
            else (isinstance(value, int) and not isinstance(value, bool)) if t is int
            else isinstance(value, t)
        )
        if not ok:
            quoted = t is str and isinstance(value, (bool, int, float))
            hint = " (quote it in YAML)" if quoted else ""
            return f"must be {_TYPE_WORDS[t]}, got {_describe(value)}{hint}"
        if self.items is not None and isinstance(value, list):
            for v in value:
                if not isinstance(v, self.items) or (isinstance(v, bool)
                                                     and self.items is not bool):
                    return (f"must be a list of {_TYPE_WORDS.get(self.items, self.items.__name__)}, got "
                            f"{_describe(v)} in it")
        if not self.nonfinite and _nonfinite(value):
            return f"must be a finite number, got {value!r} (NaN and infinity are refused)"
        if self.choices is not None and value not in self.choices:
            return (f"must be one of {', '.join(map(repr, self.choices))}, got {value!r}"
                    f"{suggest(value, self.choices)}")
        if self.min is not None and value < self.min:
            return f"must be >= {self.min}, got {value!r}"
        if self.max is not None and value > self.max:
            return f"must be <= {self.max}, got {value!r}"
        return None if self.check is None else self.check(value)


def _describe(value: Any) -> str:
    """A value as a message names it: "text 'fast'", "a boolean True", "a list"."""
    for t in (bool, int, float, str):   # bool first: True is an int too
        if isinstance(value, t):
            word = {bool: "a boolean", int: "an integer", float: "a number", str: "text"}[t]
            return f"{word} {value!r:.60}"
    if value is None:
        return "an empty value (null)"
    return _TYPE_WORDS.get(type(value), f"{type(value).__name__} {value!r:.60}")


@dataclass(frozen=True)
class ParamProblem:
    """One problem with a node's params. `kind` says what it is about, for a reader that
    reports lines: "unknown" (the name `param`), "invalid" (its value), "missing" (the node)."""

    param: str
    kind: str
    message: str

    def __str__(self) -> str:
        return self.message


def _nonfinite(value: Any) -> bool:
    """Whether `value` is, or holds, a float NaN or infinity (iteratively: no recursion)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float):
            if not math.isfinite(v):
                return True
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
    return False


@dataclass(frozen=True)
class NodeSpec:
    doc: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    commands_in: dict[str, str] = field(default_factory=dict)
    commands_out: dict[str, str] = field(default_factory=dict)
    params: list[Param] = field(default_factory=list)
    # Safety-critical (a door lock, motors): runs in a process of its own, never in a process
    # group, and the supervisor enforces the deadlines it reports (node.safety_deadline).
    safety: bool = False
    # Safety declarations, functions of the node's validated params, checked across the graph
    # so that a simulated sensor never drives real hardware: whether the node may publish
    # simulated data (a sensor's sim source, or a source that can fall back to one), and
    # whether it drives real hardware (a lock's GPIO line, a motor controller).
    simulated: Callable[[dict], bool] | None = None
    hardware: Callable[[dict], bool] | None = None
    # Kind-specific needs are declared here, so that the graph, the supervisor and the CLI
    # never name a kind (a user's `run:` node can declare them too).
    check_files: Callable[..., list] | None = None
    """`check_files(params, base_dir, node=None, graph=None) -> [problem]`: the problems in
    the files the node will read (a rules file), found when the graph is validated (`iotrt
    validate`, `iotrt up`) so they are reported before anything starts. `params` are the
    node's validated params, `base_dir` the graph file's folder (the node's working
    directory); with the node's `NodeDef` and the `Graph`, the files can be checked against
    the node's wiring too. Each problem's str() is "file:line: message" and it has `.file`,
    `.line`, `.message` (an `iotrt.yamlcheck.Issue` or `iotrt.rules.Problem`). A param that
    is missing or invalid is already reported by the graph: return [] for it."""
    reloadable: bool = False
    """The node re-reads its files in place on SIGHUP (the event `kind == "reload"`), so the
    supervisor sends it one on its own SIGHUP and on `iotrt reload` (`Graph.reloadable_nodes`
    lists them). It answers each reload in the journal, which `iotrt reload` waits for:
    `WHAT_reloaded` (fields `file`, and `WHAT`: a list of what was loaded, e.g.
    `rules_reloaded` with the rule ids in `rules`) or `WHAT_reload_failed` (fields `file` and
    `problems`, each "file:line: message")."""
    rules_param: str | None = None
    """The param that names the rules file the node runs (iotrt.rules); `iotrt rules check
    FILE --graph GRAPH` finds the nodes running FILE by it, and runs `check_wiring`."""
    check_wiring: Callable[..., tuple[list, list]] | None = None
    """`check_wiring(rules, node, graph) -> (problems, notes)`: a rule set checked against
    the node's wiring in the graph (with `rules_param`)."""
    forget: Callable[[dict, str, float], str] | None = None
    """`forget(params, graph_name, timeout_s) -> summary`: clear what the node left outside
    the device (a Home Assistant bridge: its retained MQTT topics), for `iotrt mqtt forget
    GRAPH` once the graph is stopped. `params` are the node's validated params; it gives up
    after `timeout_s` seconds. Returns a one-line summary ("cleared 9 retained topic(s) of
    device D"); a failure is an `iotrt.errors.IotrtError` whose message says why."""
    enroll: str | None = None
    """For `iotrt enroll` (a node that names people from a gallery of their photos): the name
    of the module that enrolls them (imported only by `iotrt enroll`), with `enroll_methods()
    -> names`, `Method(name, model, mean, std, backend)`, `enroll(path, name, photos, method,
    detector, replace, progress) -> gallery`, `unenroll(path, name, method) -> photos removed`
    and `gallery_listing(path) -> lines`; their failures are `iotrt.errors.IotrtError`s. The
    identity kind's is the package `iotrt.nodes.perception`."""

    def __post_init__(self) -> None:
        names = [p.name for p in self.params]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise SpecError(f"parameters declared twice: {sorted(dup)}")
        if self.rules_param is not None and self.param(self.rules_param) is None:
            raise SpecError(f"rules_param {self.rules_param!r} is not a declared parameter")
        if (self.rules_param is None) != (self.check_wiring is None):
            raise SpecError("rules_param and check_wiring go together: give both or neither")

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def has_port(self, group: str, name: str) -> bool:
        """Whether `name` is a valid port in `group` ("inputs", "outputs", "commands_in", ...)."""
        ports = getattr(self, group)
        return name in ports or WILDCARD in ports

    def check_params(self, params: Mapping[str, Any], reported: Collection[str] = ()
                     ) -> tuple[dict[str, Any], list[ParamProblem]]:
        """The one parameter validator: the Node API (`validate_params`) and the graph file
        (iotrt.graphschema, which places each problem at its line) both use it.

        Returns (the valid params with defaults filled in and ints widened to float where a
        float is declared, every problem found: unknown names, values of the wrong type or
        out of range, required params not given). `reported` names params whose values the
        caller has already found wrong: they count as given, with nothing more to say.
        """
        known = [p.name for p in self.params]
        problems = [ParamProblem(name, "unknown", f"unknown param '{name}'{suggest(name, known)}"
                                                  f"; params: {', '.join(known) or 'none'}")
                    for name in params if name not in known]
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name in reported:
                continue
            if p.name in params:
                value = params[p.name]
                if p.type is float and isinstance(value, int) and not isinstance(value, bool):
                    value = float(value)
                problem = p.problem(value)
                if problem:
                    problems.append(ParamProblem(p.name, "invalid", f"params.{p.name}: {problem}"))
                else:
                    out[p.name] = value
            elif p.default is REQUIRED:
                doc = f" ({p.doc})" if p.doc else ""
                problems.append(ParamProblem(p.name, "missing",
                                             f"missing required param '{p.name}'{doc}"))
            else:
                # copy mutable defaults so a node cannot change its SPEC through params
                d = p.default
                out[p.name] = (list(d) if isinstance(d, list)
                               else dict(d) if isinstance(d, dict) else d)
        return out, problems

    def validate_params(self, params: Mapping[str, Any] | None, where: str = "") -> dict:
        """Check `params` against the declared ones (`check_params`); returns them with
        defaults filled in, or raises ParamError listing every problem, each message prefixed
        with `where` (e.g. "node 'cam'")."""
        out, problems = self.check_params(params or {})
        if problems:
            prefix = f"{where}: " if where else ""
            raise ParamError([f"{prefix}{p}" for p in problems])
        return out


def _spec_of(obj: Any, where: str) -> NodeSpec:
    spec = getattr(obj, "SPEC", None)
    if spec is None:
        raise SpecError(f"{where} defines no SPEC: add `SPEC = NodeSpec(...)` at top level")
    if not isinstance(spec, NodeSpec):
        raise SpecError(f"{where}: SPEC is a {type(spec).__name__}, not a NodeSpec")
    return spec


def _script_spec(path: str) -> NodeSpec:
    """A script's SPEC without running it.

    Executes only the script's top-level imports, function/class definitions and UPPER_CASE
    assignments (SPEC and the constants it uses); the node's own code (`node = Node()`, the
    event loop, `if __name__ == "__main__":`) is skipped.
    """
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except OSError as exc:
        raise SpecError(f"cannot read node script {path}: {exc.strerror}") from exc
    except SyntaxError as exc:
        raise SpecError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from exc

    def keep(stmt: ast.stmt) -> bool:
        if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)):
            return True
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            return all(isinstance(t, ast.Name) and t.id.isupper() for t in targets)
        return False

    body, tree.body = tree.body, [s for s in tree.body if keep(s)]
    namespace: dict[str, Any] = {"__name__": "__iotrt_spec__", "__file__": path}
    try:
        exec(compile(tree, path, "exec"), namespace)  # the user's own file, as import would
    except Exception as exc:
        raise SpecError(f"{path}: reading SPEC failed: {type(exc).__name__}: {exc}") from exc
    spec = _spec_of(type("script", (), {"SPEC": namespace.get("SPEC")}), path)
    check_entry(body, path)
    return spec


def check_entry(body: list[ast.stmt], path: str) -> None:
    """Refuse a node file that would do nothing when run: it needs a `main(node)` function (the
    launcher calls it), an `if __name__ == "__main__":` block, or top-level code that runs the
    node (a `Node(...)`, a loop, a call)."""
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == "main":
            return
        if isinstance(stmt, ast.If) and _is_main_guard(stmt.test):
            return
        if isinstance(stmt, (ast.For, ast.While, ast.With)):
            return
        if isinstance(stmt, ast.Expr) and not isinstance(stmt.value, ast.Constant):
            return
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and any(
                isinstance(n, ast.Call) and _called_name(n.func) == "Node" for n in ast.walk(stmt)):
            return
    spec_line = next((s.lineno for s in body if isinstance(s, ast.Assign)
                      and any(isinstance(t, ast.Name) and t.id == "SPEC" for t in s.targets)), 1)
    raise SpecError(
        f"{path}:{spec_line}: nothing to run: the file has no main(node) function, no "
        f"`if __name__ == \"__main__\":` block and no top-level Node(); add "
        f"`def main(node):` with the node's event loop (docs/nodes.md)")


def _is_main_guard(test: ast.expr) -> bool:
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__" and len(test.comparators) == 1
            and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__")


def _called_name(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else (
        func.attr if isinstance(func, ast.Attribute) else "")


def load_spec(target: str) -> NodeSpec:
    """The SPEC of a node target ("pkg.module", "pkg.module:function" or "path/to/node.py")."""
    if target.endswith(".py"):
        return _script_spec(target)
    module_name, _, func = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise SpecError(f"node module {module_name!r} not found") from exc
        raise SpecError(f"node module {module_name!r} needs {exc.name!r}, which is not "
                        f"installed") from exc
    spec = _spec_of(module, f"module {module_name}")
    entry = func or "main"
    if not callable(getattr(module, entry, None)):
        raise SpecError(f"module {module_name} has no function {entry}(node)")
    return spec

