"""Read a YAML rules file into plain values that remember their file:line.

The file is composed (not loaded) so every mapping, sequence and scalar keeps its position;
`LocatedDict`/`LocatedList` are ordinary dict/list subclasses that also carry the line of
themselves and of each key or item, which the schema uses to say *where* a mistake is.
Duplicate keys are an error here, since plain YAML loading silently keeps the last one.

Scalars follow YAML 1.2's core schema rather than PyYAML's YAML 1.1: only true/false are
booleans (so `on:`, `yes`, `no` and `off` stay strings, as they would in any data a rule
publishes) and `07:30` is the string "07:30", not the base-60 integer 450.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

# One mistake in a file (file, line, message; str() is "file:line: message"), as the graph uses.
from iotrt import errors
from iotrt.yamlcheck import Checker
from iotrt.yamlcheck import Issue as Problem


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema booleans, ints and floats."""


_BOOL, _INT, _FLOAT = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
                       "tag:yaml.org,2002:float")
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver(_INT, re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+)$"),
                              list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


class RulesError(errors.ConfigError):
    """A rules file (YAML or Python) is invalid. `problems` lists every mistake found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class LocatedDict(dict):
    file: str = "<rules>"
    line: int = 0
    key_lines: dict

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class LocatedList(list):
    file: str = "<rules>"
    line: int = 0
    item_lines: list

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if 0 <= index < len(self.item_lines) else self.line


@dataclass
class _Builder:
    file: str
    problems: list[Problem] = field(default_factory=list)
    constructor: yaml.constructor.SafeConstructor = field(
        default_factory=yaml.constructor.SafeConstructor
    )

    def build(self, node: yaml.Node) -> Any:
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out = LocatedDict()
            out.file, out.line, out.key_lines = self.file, line, {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self.problems.append(Problem(self.file, line, "YAML merge keys (<<) are not supported"))
                    continue
                key = self.build(key_node)
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    self.problems.append(Problem(self.file, key_node.start_mark.line + 1,
                                                 "mapping keys must be plain scalars"))
                    continue
                if key in out:
                    self.problems.append(Problem(
                        self.file, key_node.start_mark.line + 1,
                        f"duplicate key '{key}' (first at line {out.key_lines[key]})"))
                    continue
                out[key] = self.build(value_node)
                out.key_lines[key] = key_node.start_mark.line + 1
            return out
        if isinstance(node, yaml.SequenceNode):
            seq = LocatedList(self.build(item) for item in node.value)
            seq.file, seq.line = self.file, line
            seq.item_lines = [item.start_mark.line + 1 for item in node.value]
            return seq
        try:
            return self.constructor.construct_object(node, deep=True)
        except (ValueError, OverflowError, yaml.constructor.ConstructorError) as exc:
            self.problems.append(Problem(self.file, line, f"bad value {node.value!r}: {exc}"))
        except (KeyError, AttributeError):   # PyYAML's own parse of `!!bool maybe`, `!!timestamp x`
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            self.problems.append(Problem(self.file, line, f"bad value {node.value!r}: not a {tag}"))
        return None


def load_located(text: str, file: str) -> tuple[Any, list[Problem]]:
    """Compose YAML `text` into located values; syntax errors become problems with a line.

    Read within the graph file's bounds (size, nesting depth, values once aliases are
    expanded: iotrt.yamlcheck), so a hostile file is a problem, not a RecursionError or
    gigabytes of expanded aliases."""
    check = Checker(file)
    node = check.compose_bounded(text, _Loader)
    if node is None:   # rules problems say file:line, without the column the graph's give
        return None, [dataclasses.replace(issue, column=None) for issue in check.issues]
    builder = _Builder(file)
    try:
        value = builder.build(node)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        builder.problems.append(Problem(file, mark.line + 1 if mark else 1, str(exc.problem)))
        value = None
    return value, builder.problems
