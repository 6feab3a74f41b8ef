"""Python rules: `from iotrt.rules import rule`, and loading a user's rules file.

    from iotrt.rules import rule

    @rule(trigger="faces", condition='any(f.name == "owner" for f in msg.faces)', cooldown="5s")
    def welcome(ctx):
        ctx.command("lock", {"action": "unlock", "duration_s": 5})
        yield "5s"                      # a generator rule: each yield is a delay
        ctx.publish("events", {"event": "door_closed_again"})

The decorator only records the options on the function; `load_rules` imports the file and
validates every decorated function with the same schema as YAML rules, so a Python rule gets
the same triggers, holds, cooldowns and modes, and its mistakes are reported as file:line.
Python rules are trusted code: they run in the rule node's process without the expression
sandbox (a rule stuck in a loop stops the node's heartbeat, and the supervisor restarts it).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import traceback
from _blake2 import blake2s  # hashlib's own blake2s; `import hashlib` loads OpenSSL
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iotrt.rules.parsing import Invalid
from iotrt.rules.schema import RuleDef, RuleSet, parse_rule, parse_rules_document
from iotrt.rules.source import Problem, RulesError, load_located

_MARK = "_iotrt_rule"


@dataclass(frozen=True)
class _RuleOptions:
    options: dict[str, Any]
    file: str
    line: int


def rule(trigger: Any, *, id: str | None = None, condition: Any = None, hold: Any = None,
         cooldown: Any = 0, mode: str = "single", max: int = 10, edge: bool = True,
         quiet: bool = False, description: str = "") -> Callable[[Callable], Callable]:
    """Declare a Python rule. Options mean what they mean in YAML (`hold` is YAML's `for`).

    trigger: a topic name (message trigger), a trigger mapping as in YAML, or a list of them.
    condition: an expression string, a callable `f(ctx) -> bool`, or a list of them.
    The decorated function gets a RuleContext; it may be a generator whose yields are delays.
    """
    def decorate(fn: Callable) -> Callable:
        options: dict[str, Any] = {"id": id or fn.__name__, "trigger": trigger, "mode": mode,
                                   "max": max, "edge": edge, "quiet": quiet,
                                   "cooldown": cooldown,
                                   "description": description or (inspect.getdoc(fn) or "")}
        if condition is not None:
            options["condition"] = condition
        if hold is not None:
            options["for"] = hold
        code = getattr(fn, "__code__", None)
        setattr(fn, _MARK, _RuleOptions(options, code.co_filename if code else "<python>",
                                        code.co_firstlineno if code else 0))
        return fn
    return decorate


def rules_from_module(module: Any, file: str) -> tuple[list[RuleDef], list[Problem]]:
    """Every @rule-decorated function of an imported module, in definition order."""
    rules, problems = [], []
    marked = [fn for fn in vars(module).values() if callable(fn) and hasattr(fn, _MARK)]
    marked.sort(key=lambda fn: getattr(fn, _MARK).line)
    for fn in marked:
        opts: _RuleOptions = getattr(fn, _MARK)
        try:
            rules.append(parse_rule(opts.options, opts.line, file, body=fn))
        except Invalid as exc:
            problems.append(Problem(file, opts.line, f"@rule on {fn.__name__}: {exc}"))
    return rules, problems


def _import_file(path: Path) -> tuple[Any, list[Problem]]:
    file = str(path)
    # A unique module name per file content, so a reload imports the edited file afresh.
    digest = blake2s(path.read_bytes(), digest_size=6).hexdigest()
    name = f"iotrt_user_rules_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        return None, [Problem(file, 1, "cannot import this file as Python")]
    module = importlib.util.module_from_spec(spec)
    try:
        # Compiled here with optimize=0, whatever the process's -O level (a graph's `optimize:`):
        # the user's asserts run and their docstrings stay the rules' descriptions.
        exec(compile(path.read_bytes(), file, "exec", dont_inherit=True, optimize=0), module.__dict__)
    except SyntaxError as exc:
        return None, [Problem(file, exc.lineno or 1, f"Python syntax: {exc.msg}")]
    except Exception as exc:  # noqa: BLE001 - any error importing user code is reported with its line
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == file]
        line = frames[-1].lineno if frames else 1
        return None, [Problem(file, line or 1, f"importing the rules raised {type(exc).__name__}: {exc}")]
    finally:
        sys.modules.pop(name, None)
    return module, []


def load_python_rules(path: str | Path) -> tuple[list[RuleDef], list[Problem]]:
    path = Path(path)
    module, problems = _import_file(path)
    if module is None:
        return [], problems
    return rules_from_module(module, str(path))


def load_rules(path: str | Path, python: list[str | Path] | tuple = ()) -> RuleSet:
    """Load a rules file (.yaml/.yml, or .py for Python rules) plus extra Python rule files.

    Raises RulesError listing every problem (file:line: message); returns a valid RuleSet.
    """
    path = Path(path)
    if not path.is_file():
        raise RulesError([Problem(str(path), 0, "rules file not found")])
    if path.suffix == ".py":
        return _combine(RuleSet([], {}, []), [], [path, *map(Path, python)], str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError([Problem(str(path), 0, f"cannot read: {exc}")]) from None
    return loads_rules(text, str(path), base=path.parent, python=python)


def loads_rules(text: str, file: str = "<rules>", *, base: str | Path = ".",
                python: list[str | Path] | tuple = ()) -> RuleSet:
    """Load rules from YAML text; `python:` files it names are relative to `base`."""
    doc, problems = load_located(text, file)
    ruleset = RuleSet([], {}, [])
    if not problems:
        ruleset, problems = parse_rules_document(doc, file)
    python_files = [Path(base) / p for p in ruleset.python_files] + [Path(p) for p in python]
    return _combine(ruleset, problems, python_files, file)


def _combine(ruleset: RuleSet, problems: list[Problem], python_files: list[Path],
             file: str) -> RuleSet:
    problems = list(problems)
    for py in python_files:
        if not py.is_file():
            problems.append(Problem(file, 0, f"Python rules file not found: {py}"))
            continue
        rules, more = load_python_rules(py)
        ruleset.rules.extend(rules)
        problems += more
    seen: dict[str, RuleDef] = {}
    for r in ruleset.rules:
        if r.id in seen:
            problems.append(Problem(r.file, r.line,
                                    f"duplicate rule id '{r.id}' (also at {seen[r.id].where})"))
        seen.setdefault(r.id, r)
    if problems:
        raise RulesError(problems)
    ruleset.python_files = [str(p) for p in python_files]
    return ruleset
