"""Reading a YAML file strictly, with every problem reported as `file:line: message`.

PyYAML's `safe_load` loses what a user needs to fix a config: it keeps the last of two
duplicate keys without a word, reads `on`/`no`/`yes` as booleans (YAML 1.1) and forgets where
each value came from. This module works on the *composed* node tree instead (`yaml.compose`),
so each value keeps its line, and collects every problem in a `Checker` instead of stopping at
the first one. It knows nothing about graphs; `iotrt.graph` builds the graph schema on it.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from iotrt.hints import suggest

BOOL_TAG = "tag:yaml.org,2002:bool"
NULL_TAG = "tag:yaml.org,2002:null"
STR_TAG = "tag:yaml.org,2002:str"
INT_TAG = "tag:yaml.org,2002:int"
FLOAT_TAG = "tag:yaml.org,2002:float"

# ${NAME} or ${NAME:-default}; "$$" writes a literal "$".
_ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

# Bounds on a file (it may come from anyone): its size, how deep lists and mappings nest
# (PyYAML composes recursively: ~500 levels exhaust Python's stack), and how many values the
# tree holds once every alias is expanded (a "billion laughs" file of 400 bytes expands to
# 10^9 values in whatever later walks or serialises it).
MAX_CHARS = 1024 * 1024
MAX_DEPTH = 64
MAX_EXPANDED = 200_000
MAX_INT_CHARS = 40       # an integer literal: 2**64 has 20 digits, 0x and _ separators fit too


@dataclass(frozen=True)
class Issue:
    """One problem in a file, at a line (1-based)."""

    file: str
    line: int
    message: str
    column: int | None = None     # 1-based, where known (syntax errors)

    def __str__(self) -> str:
        col = f":{self.column}" if self.column else ""
        return f"{self.file}:{self.line}{col}: {self.message}"


class Invalid:
    """Marker returned by the readers for a value that already produced an issue."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID = Invalid()


def syntax_hint(exc: yaml.MarkedYAMLError) -> str:
    """A plain-words hint for PyYAML's parser messages: '; check the indentation of line 5'."""
    problem, context = exc.problem or "", exc.context or ""
    line = exc.problem_mark.line + 1 if exc.problem_mark else None
    opened = exc.context_mark.line + 1 if exc.context_mark else None
    if "'\\t'" in problem or "\t" in problem:
        return f"; YAML indents with spaces only: replace the tab on line {line} with spaces"
    if "quoted scalar" in context and opened:
        return f"; the quote opened on line {opened} is never closed"
    if "flow" in context and opened:
        return f"; the '[' or '{{' opened on line {opened} is never closed"
    if "mapping values are not allowed" in problem:
        return (f"; check the indentation of line {line}, or put quotes around a value "
                f"that contains ': '")
    if line and ("block end" in problem or "expected key" in problem
                 or "block collection" in context or "block mapping" in context):
        return (f"; check the indentation of line {line}: it must line up with the line "
                f"above it, or be indented under a key that ends with ':'")
    return f"; check line {line} and the line above it" if line else ""


def line_of(node: Node) -> int:
    return node.start_mark.line + 1


class Checker:
    """Collects issues for one file and reads typed values out of composed YAML nodes."""

    def __init__(self, file: str | Path):
        self.file = str(file)
        self.issues: list[Issue] = []
        self.notes: list[Issue] = []    # not problems: what works but should change (a renamed kind)
        # A loader instance is the one public way to run PyYAML's safe constructors on a node.
        self._constructor = yaml.SafeLoader("")

    def error(self, where: Node | int, message: str, column: int | None = None) -> Invalid:
        line = where if isinstance(where, int) else line_of(where)
        self.issues.append(Issue(self.file, line, message, column))
        return INVALID

    def note(self, where: Node | int, message: str) -> None:
        line = where if isinstance(where, int) else line_of(where)
        self.notes.append(Issue(self.file, line, f"note: {message}"))

    # -- loading ---------------------------------------------------------------------------

    def compose(self, text: str, environ: Mapping[str, str] | None = None) -> Node | None:
        """Parse `text` (`compose_bounded`), report duplicate keys everywhere, substitute ${ENV}
        in every scalar. A file that cannot be read, or is empty, is one issue, and None."""
        root = self.compose_bounded(text)
        if root is None:
            if not self.issues:
                self.error(1, "the file is empty")
            return None
        self._walk(root, os.environ if environ is None else environ, set())
        return root

    def compose_bounded(self, text: str, loader: type = yaml.SafeLoader) -> Node | None:
        """The node tree of `text` as `loader` resolves it, or None: a syntax error or a file
        beyond the bounds above is one issue; an empty file is no issue. Every YAML file that
        may come from anyone (a graph, a rules file) is read through here."""
        if len(text) > MAX_CHARS:
            self.error(1, f"the file has {len(text)} characters; the limit is {MAX_CHARS}")
            return None
        try:
            if not self._shallow(text):
                return None
            root = yaml.compose(text, Loader=loader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            self.error(mark.line + 1 if mark else 1,
                       f"YAML syntax error: {exc.problem}{syntax_hint(exc)}",
                       mark.column + 1 if mark else None)
            return None
        except yaml.YAMLError as exc:
            self.error(1, f"YAML error: {exc}")
            return None
        if root is None or not self._bounded(root):
            return None
        return root

    def _shallow(self, text: str) -> bool:
        """Whether lists and mappings nest at most MAX_DEPTH deep (the event parser is a state
        machine, so this check itself cannot run out of stack)."""
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    self.error(event.start_mark.line + 1,
                               f"lists and mappings nest deeper than {MAX_DEPTH} levels here")
                    return False
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        return True

    def _bounded(self, root: Node) -> bool:
        """Whether the tree, with every alias expanded, is finite and at most MAX_EXPANDED
        values. Reports the first (innermost) collection that is too big or holds itself."""
        size: dict[int, int] = {}
        # iterative post-order; depth is bounded by _shallow, node count by aliases here
        todo: list[tuple[Node, bool]] = [(root, False)]
        active: set[int] = set()
        while todo:
            node, done = todo.pop()
            if id(node) in size:
                continue
            kids = ([] if isinstance(node, ScalarNode) else
                    list(node.value) if isinstance(node, SequenceNode) else
                    [n for pair in node.value for n in pair])
            if not done:
                if id(node) in active:
                    self.error(node, "an alias refers to a collection that contains it "
                                     "(the value would be infinite)")
                    return False
                active.add(id(node))
                todo.append((node, True))
                todo.extend((k, False) for k in kids if id(k) not in size)
                continue
            active.discard(id(node))
            if any(id(k) not in size for k in kids):   # a kid that is also an ancestor
                self.error(node, "an alias refers to a collection that contains it "
                                 "(the value would be infinite)")
                return False
            size[id(node)] = 1 + sum(size[id(k)] for k in kids)
            if size[id(node)] > MAX_EXPANDED:
                self.error(node, f"with its aliases expanded this holds more than "
                                 f"{MAX_EXPANDED} values (an alias bomb?)")
                return False
        return True

    def _walk(self, node: Node, environ: Mapping[str, str], seen: set[int]) -> None:
        if id(node) in seen:  # an alias shares its anchor's node: visit it once
            return
        seen.add(id(node))
        if isinstance(node, ScalarNode):
            if "$" in node.value:
                self._substitute(node, environ)
            if node.tag == INT_TAG and len(node.value) > MAX_INT_CHARS:
                # far beyond any setting; Python refuses to even read one of 4,300 digits
                self.error(node, f"an integer of {len(node.value)} characters: too large (at most "
                                 f"{MAX_INT_CHARS})")
                node.value = "0"   # the file is invalid already; nothing reads a huge number
        elif isinstance(node, SequenceNode):
            for item in node.value:
                self._walk(item, environ, seen)
        elif isinstance(node, MappingNode):
            first: dict[Any, int] = {}
            for key, value in node.value:
                if isinstance(key, ScalarNode):
                    if key.value in first:
                        self.error(
                            key,
                            f"duplicate key '{key.value}' (first at line {first[key.value]}); "
                            "YAML would silently keep only the last one",
                        )
                    else:
                        first[key.value] = line_of(key)
                self._walk(value, environ, seen)

    def _substitute(self, node: ScalarNode, environ: Mapping[str, str]) -> None:
        def repl(match: re.Match) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            self.error(
                node,
                f"environment variable {name} is not set (set it, or give a default: "
                f"${{{name}:-value}})",
            )
            return ""

        node.value = _ENV_RE.sub(repl, node.value)
        if node.style is None:  # a plain scalar: "${N:-3}" must become the int 3
            node.tag = self._constructor.resolve(ScalarNode, node.value, (True, False))

    # -- typed readers -----------------------------------------------------------------------

    def mapping(
        self, node: Node, what: str, allowed: Mapping[str, Any] | None = None
    ) -> dict[str, tuple[ScalarNode, Node]] | Invalid:
        """A mapping with string keys: key -> (key node, value node).

        With `allowed`, unknown keys are reported with the closest allowed name.
        """
        if not isinstance(node, MappingNode):
            return self.error(node, f"{what} must be a mapping of 'key: value' lines")
        out: dict[str, tuple[ScalarNode, Node]] = {}
        for key, value in node.value:
            if not isinstance(key, ScalarNode) or key.tag != STR_TAG:
                self.error(key, f"{what}: keys must be plain names, not {self._describe(key)}")
                continue
            if allowed is not None and key.value not in allowed:
                self.error(
                    key,
                    f"{what}: unknown key '{key.value}'{suggest(key.value, allowed)}; "
                    f"allowed: {', '.join(allowed)}",
                )
                continue
            out[key.value] = (key, value)
        return out

    def sequence(self, node: Node, what: str) -> list[Node] | Invalid:
        if not isinstance(node, SequenceNode):
            return self.error(node, f"{what} must be a list ('- item' lines)")
        return list(node.value)

    def value(self, node: Node, typ: type, what: str) -> Any:
        """The value of `node` as `typ` (str, int, float, bool, list, dict or any other type
        the YAML value constructs to), or INVALID after reporting why not."""
        if typ is str:
            return self.text(node, what)
        if typ is bool:
            if node.tag == BOOL_TAG:
                return self._construct(node, what)
            return self.error(node, f"{what}: expected true or false, got {self._describe(node)}")
        if typ is int:
            if node.tag == INT_TAG:
                return self._construct(node, what)
            return self.error(node, f"{what}: expected an integer, got {self._describe(node)}")
        if typ is float:
            if node.tag in (INT_TAG, FLOAT_TAG):
                value = self._construct(node, what)
                return value if value is INVALID else float(value)
            return self.error(node, f"{what}: expected a number, got {self._describe(node)}")
        if typ in (list, tuple):
            if isinstance(node, SequenceNode):
                value = self._construct(node, what)
                return value if value is INVALID else typ(value)
            return self.error(node, f"{what}: expected a list, got {self._describe(node)}")
        if typ is dict:
            if isinstance(node, MappingNode):
                return self._construct(node, what)
            return self.error(node, f"{what}: expected a mapping, got {self._describe(node)}")
        value = self._construct(node, what)
        if value is not INVALID and not isinstance(value, typ):
            return self.error(node, f"{what}: expected {typ.__name__}, got {self._describe(node)}")
        return value

    def plain(self, node: Node, what: str, text: bool = False) -> Any:
        """What the YAML value constructs to, for a validator that checks Python values (a
        node's params: iotrt.spec). With `text`, a scalar is taken as written (see `text`;
        an empty value stays None); INVALID after reporting why not."""
        if text and isinstance(node, ScalarNode) and node.tag != NULL_TAG:
            return self.text(node, what)
        return self._construct(node, what)

    def text(self, node: Node, what: str) -> str | Invalid:
        """A string. Plain numbers and dates are taken as written ('1.10' stays '1.10'); a YAML
        1.1 boolean or a null where text is meant is an error, because it is almost always a
        surprise (`mode: on` is True, `country: NO` is False)."""
        if not isinstance(node, ScalarNode):
            return self.error(node, f"{what}: expected text, got {self._describe(node)}")
        if node.tag == BOOL_TAG:
            value = self._construct(node, what)
            if value is INVALID:
                return value
            return self.error(
                node,
                f"{what}: '{node.value}' is read as the boolean {value} by YAML; "
                f"if you mean the text, quote it: \"{node.value}\"",
            )
        if node.tag == NULL_TAG:
            return self.error(node, f"{what}: expected text, got an empty value")
        return node.value

    def number(
        self, node: Node, what: str, typ: type = float, minimum: float | None = None
    ) -> Any:
        value = self.value(node, typ, what)
        if value is not INVALID and not math.isfinite(value):
            return self.error(node, f"{what}: must be a finite number, got {node.value}")
        if value is not INVALID and minimum is not None and value < minimum:
            return self.error(node, f"{what}: must be at least {minimum}, got {value}")
        return value

    def choice(self, node: Node, what: str, choices) -> Any:
        value = self.text(node, what)
        if value is not INVALID and value not in choices:
            return self.error(
                node,
                f"{what}: '{value}' is not one of {', '.join(map(str, choices))}"
                f"{suggest(value, choices)}",
            )
        return value

    def _construct(self, node: Node, what: str) -> Any:
        """What the YAML value constructs to, or INVALID after reporting why it cannot.

        An explicit tag makes PyYAML's constructors parse text they would never resolve to that
        type by themselves (`!!float abc`, `!!int 0x`, `!!timestamp 2020-99-99`, `!!bool
        maybe`, `!!int [1]`); they then fail with whatever the parsing raised. Those are the
        errors caught here, so a file gets its `file:line` and not a traceback."""
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, TypeError, ValueError, OverflowError, KeyError,
                AttributeError) as exc:   # TypeError: e.g. a list as a mapping key
            # the constructor keeps the failed node marked "in construction": start afresh
            self._constructor = yaml.SafeLoader("")
            why = (exc.problem if isinstance(exc, yaml.MarkedYAMLError) and exc.problem
                   else str(exc) if isinstance(exc, (ValueError, OverflowError, TypeError))
                   else "")   # a KeyError or AttributeError from inside PyYAML says nothing
            why = f" ({why.splitlines()[0]})" if why else ""
            if not isinstance(node, ScalarNode):   # the culprit is somewhere inside
                return self.error(node, f"{what}: unreadable value{why}")
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            return self.error(node, f"{what}: unreadable value: '{node.value}' is not a valid "
                                    f"{tag}{why}")

    def _describe(self, node: Node) -> str:
        if isinstance(node, MappingNode):
            return "a mapping"
        if isinstance(node, SequenceNode):
            return "a list"
        kind = {
            BOOL_TAG: "a boolean",
            NULL_TAG: "an empty value",
            INT_TAG: "an integer",
            FLOAT_TAG: "a number",
            STR_TAG: "text",
        }.get(node.tag, "a value")
        return f"{kind} '{node.value}'" if node.value != "" else kind
