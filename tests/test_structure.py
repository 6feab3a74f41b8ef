"""The package's structure (issue 18).

- Every module imports on its own, in a fresh interpreter: an import cycle held together by
  import order (A works only if B was imported first) or a module that needs an optional package
  at import time shows up here as a failure naming the module, instead of as a crash on a device
  that happens to import things in another order.
- An iotrt module is imported inside a function only where DEFERRED says why. The layers and
  the absence of import cycles are checked by `.ci/lint-imports` (docs/architecture.md).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:     # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"iotrt": ROOT / "runtime", "iotrt.nodes": ROOT / "nodes"}


def modules() -> list[str]:
    found = []
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__main__" or "static" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.append(".".join((package, *parts)))
    return found


def _import(module: str) -> tuple[str, str]:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                          text=True, timeout=120)
    return module, "" if done.returncode == 0 else done.stderr.strip().splitlines()[-1]


def test_every_module_imports_in_a_fresh_interpreter():
    names = modules()
    assert "iotrt.supervisor" in names and "iotrt.nodes.action.lock" in names
    with ThreadPoolExecutor(max_workers=2) as pool:
        failed = {m: err for m, err in pool.map(_import, names) if err}
    assert not failed, "\n".join(f"{m}: {err}" for m, err in sorted(failed.items()))


# (file, iotrt module it imports inside a function) -> why there and not at the top. Only
# optional dependencies and deliberate lazy loads belong here (light by default: a process
# imports numpy, cv2, an engine or a compiler front end only if it uses them). An import moved
# into a function to break an import cycle does not: remove the cycle instead.
DEFERRED = {
    ("runtime/__init__.py", "iotrt.node"):
        "`from iotrt import Node` (PEP 562): `import iotrt` loads neither NNG nor numpy",
    ("runtime/supervise.py", "iotrt.lazy"):
        "`iotrt up` imports this module only to exec it; main() defers rarely used modules "
        "(asyncio, ssl: ~9 MB) before the supervisor's imports load them",
    ("runtime/supervise.py", "iotrt.console"): "after defer_rarely_used() (see iotrt.lazy)",
    ("runtime/supervise.py", "iotrt.graph"): "after defer_rarely_used() (see iotrt.lazy)",
    ("runtime/supervise.py", "iotrt.supervisor"): "after defer_rarely_used() (see iotrt.lazy)",
    ("runtime/verbs/echo.py", "iotrt.recording"):
        "only `iotrt echo FILE.mcap` reads a recording (mcap, numpy); a live topic does not",
    ("runtime/verbs/bench.py", "iotrt.compiler"):
        "compiles only when given a source model (front ends: the optional `compiler` extra)",
    ("nodes/perception/modelcache.py", "iotrt.compiler"):
        "compiles only a source model that is not cached yet; the front ends are the optional "
        "`compiler` extra (an ImportError becomes a ModelError saying so)",
    ("nodes/observe/web.py", "iotrt.nodes.observe.webserver"):
        "reading the SPEC (iotrt up, validate) must not load numpy, OpenCV or the engine: they "
        "load at node start (at the top: +32 MB peak RSS and +170 ms to read the web SPEC)",
    ("nodes/observe/clip.py", "iotrt.recording"):
        "reading the SPEC (iotrt up, validate) must not load numpy, OpenCV or the engine: they load at node start",
    ("nodes/perception/detector.py", "iotrt.nodes.perception.inference"):
        "reading the SPEC (iotrt up, validate) must not load numpy, OpenCV or the engine: they load at node start",
    ("nodes/perception/detector.py", "iotrt.nodes.perception.modelcache"):
        "reading the SPEC (iotrt up, validate) must not load numpy, OpenCV or the engine: they load at node start",
    ("nodes/perception/identity.py", "iotrt.nodes.perception.gallery"):
        "reading the SPEC (iotrt up, validate) must not load numpy, OpenCV or the engine: they load at node start",
    ("nodes/perception/identity.py", "iotrt.nodes.perception.matcher"):
        "reading the SPEC (iotrt up, validate) must not load numpy, OpenCV or the engine: they load at node start",
    ("nodes/perception/identity.py", "iotrt.nodes.perception.modelcache"):
        "reading the SPEC (iotrt up, validate) must not load numpy, OpenCV or the engine: they load at node start",
    ("nodes/action/hadiscovery.py", "iotrt.rules"):
        "the rule engine and yaml (~4.5 MB) only for a bridge that reads its event types from "
        "the rules file",
    ("runtime/verbs/rules.py", "iotrt.graph"):
        "only `iotrt rules check --graph` reads a graph (which loads pynng)",
    ("runtime/engine/__init__.py", "iotrt.engine.autotune"):
        "only backend \"auto\" measures backends (subprocesses, threads, a cache file)",
    **{("nodes/perception/__init__.py", f"iotrt.nodes.perception.{name}"):
       "the package runs before each perception node module; its enrolment entry point (`iotrt "
       "enroll`) loads OpenCV and the engine only when called, so a node that needs neither "
       "(pose) does not"
       for name in ("facefeatures", "gallery", "inference", "matcher", "modelcache")},
}


def _known_modules() -> set[str]:
    return set(modules()) | {"iotrt.models", "iotrt.deploy"}


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
              known: set[str]) -> set[str]:
    """The iotrt modules an import statement in `module` names (a `from P import m` of a
    submodule m counts as P.m)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.split(".")[0] == "iotrt"}
    base = node.module or ""
    if node.level:
        parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
        base = ".".join(parts + ([base] if base else []))
    if base.split(".")[0] != "iotrt":
        return set()
    return {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}


def function_level_imports() -> list[tuple[str, int, str, str]]:
    """(file, line, function, module) for every import of an iotrt module inside a function."""
    known = _known_modules()
    found = set()
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            module = ".".join((package, *(parts[:-1] if is_package else parts)))
            rel = str(path.relative_to(ROOT))
            tree = ast.parse(path.read_text(), filename=rel)
            for func in ast.walk(tree):
                if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(func):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        for name in _imported(node, module, is_package, known):
                            found.add((rel, node.lineno, func.name, name))
    return sorted(found)


def test_function_level_imports_are_deliberate():
    found = function_level_imports()
    assert ("runtime/__init__.py", "iotrt.node") in {(f, m) for f, _, _, m in found}
    unexplained = [f"{f}:{line} in {func}(): {m}" for f, line, func, m in found
                   if (f, m) not in DEFERRED]
    assert not unexplained, (
        "imports of iotrt modules inside functions: move each to the top of its module (remove "
        "the import cycle it breaks), or add it to DEFERRED with the reason\n"
        + "\n".join(unexplained))


def test_every_deferred_import_still_exists():
    found = {(f, m) for f, _, _, m in function_level_imports()}
    stale = sorted(set(DEFERRED) - found)
    assert not stale, f"DEFERRED lists imports that are gone: {stale}"


def test_relative_imports_resolve():
    known = _known_modules()
    stmt = ast.parse("from ..codec import Envelope\nfrom . import gallery").body
    assert _imported(stmt[0], "iotrt.nodes.perception", True, known) == {"iotrt.nodes.codec"}
    assert _imported(stmt[1], "iotrt.nodes.perception.identity", False, known) == {
        "iotrt.nodes.perception.gallery"}
    assert _imported(ast.parse("import numpy, iotrt.bus").body[0], "iotrt.x", False, known) == {
        "iotrt.bus"}


def contract_layers() -> list[set[str]]:
    """The layers of the import contract in pyproject.toml, highest first."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["id"] == "layers")["layers"]
    return [{name.strip().strip("()") for name in re.split(r"[:|]", layer)} for layer in layers]


def diagram_modules(known: set[str]) -> list[str]:
    """The module names in the layer diagram that opens docs/architecture.md, in order (the
    box on the right, about built-in nodes, left out)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    diagram = text.split("```text\n", 1)[1].split("```", 1)[0]
    names = []
    for line in diagram.splitlines():
        drawn = re.split(r"[┌│└]| <", line, maxsplit=1)[0]
        names += [w for w in re.findall(r"[a-z_]+", drawn) if w in known]
    return names


def test_architecture_diagram_matches_the_import_contract():
    layers = contract_layers()
    assert layers[0] == {"nodes"}       # drawn as the box beside the runtime's upper layers
    rank = {name: i for i, layer in enumerate(layers[1:]) for name in layer}
    drawn = diagram_modules(set(rank))
    assert set(drawn) == set(rank), f"in the contract, not drawn: {set(rank) - set(drawn)}"
    out_of_order = [(a, b) for a, b in zip(drawn, drawn[1:]) if rank[a] > rank[b]]
    assert not out_of_order, f"drawn above a layer that is higher in the contract: {out_of_order}"


# The errors of the layers under the Node API. A built-in node catches what the Node API
# raises (iotrt.node: NodeError, NotEncodable, CommandFailed, NoAck) or what a library it uses
# raises (e.g. iotrt.recording.NotRecordable), never these.
TRANSPORT_ERRORS = {"iotrt.codec": {"CodecError", "EncodeError", "DecodeError"},
                    "iotrt.command": {"CommandError", "CommandTimeout"}}


def test_built_in_nodes_catch_the_node_apis_errors_not_the_transports():
    found = []
    for path in sorted(PACKAGES["iotrt.nodes"].rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module in TRANSPORT_ERRORS:
                names = {a.name for a in node.names} & TRANSPORT_ERRORS[node.module]
                found += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in sorted(names)]
            elif isinstance(node, ast.Attribute) and node.attr in set().union(
                    *TRANSPORT_ERRORS.values()):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
    assert not found, "\n".join(found)


def test_the_layout_in_architecture_md_names_every_module():
    """docs/architecture.md's Layout is where the next engineer finds their room: each module
    of runtime/ and of nodes/'s folders is named there (sub-packages of runtime/ by folder)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    layout = text.split("## Layout", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    named = set(re.findall(r"[\w]+\.py\b", layout))
    modules = [p for p in (ROOT / "runtime").glob("*.py")] + list((ROOT / "nodes").glob("*/*.py"))
    missing = sorted(str(p.relative_to(ROOT)) for p in modules
                     if p.name not in named and p.name != "__init__.py")
    assert not missing, f"modules the Layout in docs/architecture.md does not name: {missing}"
