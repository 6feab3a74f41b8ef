"""Safe expressions for rule conditions and templates, on top of simpleeval.

Rules files are written by users and messages come off the network, so an expression must not
be able to reach the interpreter (imports, dunder walks, `format` tricks) nor stall the rule
node (huge powers, giant strings, long or nested comprehensions, deep nesting). simpleeval
already refuses imports, lambdas and dunder attributes; this module tightens it in two places:

* at load (`compile_expression`): the source is parsed once into an AST that must use only the
  node types in `_ALLOWED_NODES`, stay within a size and nesting depth, call only the functions
  in `FUNCTIONS` and name only the variables the rule provides (or comprehension variables).
  Errors are raised here, so a bad rules file is reported with file:line before it runs.
* at run time (`Evaluator`): every operator that can allocate is size-checked *before* it runs
  (ints are capped in bits, sequences in length), comprehensions and `range` are capped in
  elements, attribute access is a message-field lookup or one of a few harmless methods, and
  each evaluation has a step budget and a monotonic deadline.

Everything that goes wrong while evaluating becomes an `ExpressionError`, so a rule whose
expression misbehaves fails alone and the engine keeps evaluating the others.
"""

from __future__ import annotations

import ast
import math
import operator
import reprlib
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import simpleeval

# Limits. They are far above what a condition over a sensor message needs and far below what
# would hurt a Raspberry-Pi-class board.
MAX_SOURCE_CHARS = 2000  # characters of expression source
MAX_AST_NODES = 400  # AST nodes per expression
MAX_DEPTH = 32  # AST nesting depth
MAX_INT_BITS = 4096  # result of **, *, << on ints
MAX_SEQUENCE = 100_000  # length of any str/bytes/list/tuple an operator or function builds
MAX_ITEMS = 10_000  # elements produced by comprehensions (in total) and by range()
MAX_STEPS = 200_000  # AST node evaluations per expression
DEFAULT_TIMEOUT_S = 0.05  # wall budget per evaluation (monotonic)


class ExpressionError(Exception):
    """An expression is invalid (at load) or failed while evaluating (at run time)."""


class ExpressionRejected(ExpressionError):
    """The expression uses something the sandbox does not allow; raised at load."""


class ExpressionLimit(ExpressionError):
    """The expression hit a size, step or time bound while evaluating."""


class ExpressionTimeout(ExpressionLimit):
    """The evaluation ran past its time budget (wall clock; the engine confirms by CPU time
    before it counts this against the rule, so a busy machine does not disable rules)."""


_ALLOWED_NODES: tuple[type, ...] = (
    ast.Expression, ast.Constant, ast.Name, ast.Load, ast.Store, ast.Attribute, ast.Subscript,
    ast.Slice, ast.Call, ast.keyword, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare,
    ast.IfExp, ast.List, ast.Tuple, ast.Dict, ast.Set, ast.ListComp, ast.SetComp,
    ast.GeneratorExp, ast.DictComp, ast.comprehension, ast.JoinedStr, ast.FormattedValue,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.LShift, ast.RShift,
    ast.BitOr, ast.BitAnd, ast.BitXor, ast.USub, ast.UAdd, ast.Not, ast.Invert, ast.And, ast.Or,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is, ast.IsNot,
)

# Format specs in f-strings: fill/align/sign/width/precision/type, width and precision small,
# so `f"{x:>999999999}"` cannot allocate a gigabyte.
_FORMAT_SPEC = re.compile(r"^(.?[<>^=])?[+\- ]?#?0?\d{0,3}[,_]?(\.\d{1,2})?[bcdeEfFgGnosxX%]?$")

# Attribute names that are methods callable on values (beside message fields on dicts). None
# of them can allocate more than its receiver's size.
_STR_METHODS = frozenset({
    "lower", "upper", "casefold", "strip", "lstrip", "rstrip", "startswith", "endswith",
    "split", "rsplit", "find", "rfind", "count", "isdigit", "isalpha", "isalnum", "isspace",
    "islower", "isupper", "title", "capitalize", "removeprefix", "removesuffix",
})
_DICT_METHODS = frozenset({"get", "keys", "values", "items"})

# strip(chars) tests every stripped character against every one of `chars`: its cost is the
# product of the two lengths (a 100k string stripped of 100k chars: 90 ms in C). The other
# methods run in time linear in their receiver and arguments (CPython's string search is).
MAX_STRIP_WORK = 64 * MAX_SEQUENCE


def _strip_method(value: str, name: str) -> Any:
    method = getattr(value, name)

    def strip(chars: Any = None) -> Any:
        if isinstance(chars, str) and len(chars) * len(value) > MAX_STRIP_WORK:
            raise ExpressionLimit(f"{name}() of {len(value)} characters by {len(chars)} "
                                  f"characters (at most {MAX_STRIP_WORK} comparisons)")
        return method(chars)
    return strip


def str_method(value: str, name: str) -> Any:
    """The bound method `name` of a string, size-checked where its cost is superlinear."""
    if name in ("strip", "lstrip", "rstrip"):
        return _strip_method(value, name)
    return getattr(value, name)


def _safe_len(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else None


def _check_int(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ExpressionLimit(f"integer result above {MAX_INT_BITS} bits")
    return value


def _check_operands(a: Any, b: Any) -> None:
    """Refuse an integer operand above the cap *before* an operation whose cost grows faster
    than its operands' size (*, /, //, %, **): one division of an 8M-bit by a 2M-bit integer
    runs for seconds in C, where no deadline can stop it. Integers can come from message data
    and rule state, not only from this expression's own (checked) arithmetic."""
    if (isinstance(a, int) and a.bit_length() > MAX_INT_BITS
            or isinstance(b, int) and b.bit_length() > MAX_INT_BITS):
        raise ExpressionLimit(f"integer operand above {MAX_INT_BITS} bits")


_CONTAINERS = (list, tuple, set, frozenset, dict)
_SIZED = (*_CONTAINERS, str, bytes)


def _check_size(value: Any) -> Any:
    """Refuse a container built by an expression whose items, counted through nested
    containers, exceed MAX_SEQUENCE: `[[0] * 99999] * 1000` is 1,000 references, but printing,
    comparing or sorting it would walk 10^8 items in C, where no deadline can stop it."""
    if type(value) not in _CONTAINERS:
        return value
    count, stack = 0, [value]
    while stack:
        v = stack.pop()
        count += len(v)
        if count > MAX_SEQUENCE:
            raise ExpressionLimit(f"a value of more than {MAX_SEQUENCE} items (nested included)")
        if type(v) in _CONTAINERS:
            stack.extend(x for x in (v.values() if type(v) is dict else v) if type(x) in _SIZED)
    return value


def join_checked(parts: list[str]) -> str:
    """The f-string's parts joined, refusing a result over MAX_SEQUENCE before building it
    (each part is bounded alone, but 80 parts of 100k characters are 8M)."""
    size = sum(map(len, parts))
    if size > MAX_SEQUENCE:
        raise ExpressionLimit(f"an f-string of {size} characters (max {MAX_SEQUENCE})")
    return "".join(parts)


# Containers are shown abbreviated, so their text is small whatever their size.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 4, 50, 50, 50
_REPR.maxset, _REPR.maxfrozenset, _REPR.maxstring, _REPR.maxother = 50, 50, 1000, 200


def safe_str(value: Any) -> str:
    """str() for templates and f-strings: whole for scalars, abbreviated for containers."""
    if type(value) is str:
        return value
    if isinstance(value, (int, float, bool)) or value is None:
        return str(value)
    if type(value) in _CONTAINERS:
        return _REPR.repr(value)
    text = str(value)  # numpy arrays summarise themselves beyond 1,000 items
    return text if len(text) <= MAX_SEQUENCE else text[:MAX_SEQUENCE] + "..."


def _power(a: Any, b: Any) -> Any:
    _check_operands(a, b)
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
        # bits of a**b ~= b * log2|a|: refuse before computing, not after.
        if b * math.log2(abs(a)) > MAX_INT_BITS:
            raise ExpressionLimit(f"{a} ** {b} is above {MAX_INT_BITS} bits")
    return a**b


def _mult(a: Any, b: Any) -> Any:
    _check_operands(a, b)
    for seq, n in ((a, b), (b, a)):
        size = _safe_len(seq)
        if size is not None and hasattr(n, "__index__"):  # numpy ints from messages too
            count = operator.index(n)
            if size * count > MAX_SEQUENCE:
                raise ExpressionLimit(
                    f"repeating a sequence to {size * count} items (max {MAX_SEQUENCE})")
    if isinstance(a, int) and isinstance(b, int):
        if a.bit_length() + b.bit_length() > MAX_INT_BITS:
            raise ExpressionLimit(f"integer product above {MAX_INT_BITS} bits")
    return _check_size(a * b)


def _add(a: Any, b: Any) -> Any:
    la, lb = _safe_len(a), _safe_len(b)
    if la is not None and lb is not None and la + lb > MAX_SEQUENCE:
        raise ExpressionLimit(f"concatenating to {la + lb} items (max {MAX_SEQUENCE})")
    return _check_size(_check_int(a + b))


def _sub(a: Any, b: Any) -> Any:
    return _check_int(a - b)


def _lshift(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b > MAX_INT_BITS:
        raise ExpressionLimit(f"{a} << {b} is above {MAX_INT_BITS} bits")
    return a << b


def _div(a: Any, b: Any) -> Any:
    _check_operands(a, b)
    return a / b


def _floordiv(a: Any, b: Any) -> Any:
    _check_operands(a, b)
    return a // b


def _mod(a: Any, b: Any) -> Any:
    _check_operands(a, b)
    # On a string `%` is printf formatting, not modulo: "%0300000000d" % 1 builds 300 MB and
    # "%.200000000f" % 1.0 runs for seconds in C. f-strings have bounded format specs.
    if isinstance(a, (str, bytes, bytearray)):
        raise ExpressionLimit("'%' formatting of strings is not allowed; use an f-string "
                              "(f\"{msg.x:.1f}\")")
    return a % b


OPERATORS = dict(simpleeval.DEFAULT_OPERATORS)
# Only these can build a value larger than their operands (|, &, ^, //, >> cannot; % only on
# strings, which _mod refuses), or cost more than linear time in their operands' size (*, /,
# //, %, ** on integers): they are the ones that check sizes, before computing.
OPERATORS.update({ast.Pow: _power, ast.Mult: _mult, ast.Add: _add, ast.Sub: _sub,
                  ast.LShift: _lshift, ast.Mod: _mod, ast.Div: _div, ast.FloorDiv: _floordiv})


def _bounded(iterable: Iterable) -> Iterable:
    """An iterable from an expression, refusing more than MAX_ITEMS (others are materialised)."""
    if type(iterable) in (list, tuple, range, str, dict):  # sized: check without copying
        if len(iterable) > MAX_ITEMS:
            raise ExpressionLimit(f"iterating {len(iterable)} items (max {MAX_ITEMS})")
        return iterable
    out = []
    for item in iterable:
        out.append(item)
        if len(out) > MAX_ITEMS:
            raise ExpressionLimit(f"iterating more than {MAX_ITEMS} items")
    return out


def _range(*args: int) -> range:
    r = range(*args)
    if len(r) > MAX_ITEMS:
        raise ExpressionLimit(f"range of {len(r)} items (max {MAX_ITEMS})")
    return r


def _str(value: Any = "") -> str:
    return safe_str(value)


def _int(value: Any = 0, base: int | None = None) -> int:
    # int(s, 16) of a 100k-character string is a 400k-bit integer, built in linear time but
    # quadratic to divide: the text is bounded before parsing and the result after.
    if isinstance(value, (str, bytes, bytearray)) and len(value) > 2 * MAX_INT_BITS:
        raise ExpressionLimit(f"int() of a {len(value)}-character text "
                              f"(max {2 * MAX_INT_BITS})")
    return _check_int(int(value) if base is None else int(value, base))


def _sum(iterable: Iterable, start: Any = 0) -> Any:
    # sum(lists, []) would concatenate in C: only numbers are summed.
    if isinstance(start, bool) or not isinstance(start, (int, float)):
        raise ExpressionLimit("sum() adds numbers only: its start must be a number")
    return sum(_bounded(iterable), start)


def _round(value: Any, ndigits: int | None = None) -> Any:
    # round(1.5, 10**9) is harmless, but round(x, -10**9) on an int builds a huge power of ten.
    if ndigits is not None and abs(ndigits) > 32:
        raise ExpressionLimit("round() digits must be within +-32")
    return round(value, ndigits)


# The functions an expression may call. Anything taking an iterable materialises it through
# _bounded first, so no builtin loops over a huge range in C where the deadline cannot see it.
FUNCTIONS: dict[str, Any] = {
    "abs": abs,
    "all": lambda it: all(_bounded(it)),
    "any": lambda it: any(_bounded(it)),
    "bool": bool,
    "float": float,
    "int": _int,
    "len": len,
    "max": lambda *a, **k: max(_bounded(a[0]) if len(a) == 1 else a, **k),
    "min": lambda *a, **k: min(_bounded(a[0]) if len(a) == 1 else a, **k),
    "round": _round,
    "sorted": lambda it, **k: sorted(_bounded(it), **k),
    "str": _str,
    "sum": _sum,
    "range": _range,
    "list": lambda it=(): list(_bounded(it)),
    "tuple": lambda it=(): tuple(_bounded(it)),
    "set": lambda it=(): set(_bounded(it)),
}


@dataclass(frozen=True)
class Expression:
    """A parsed, checked expression; evaluate it with `Evaluator.evaluate`."""

    source: str
    tree: ast.expr

    def __str__(self) -> str:
        return self.source


def _depth(tree: ast.AST) -> int:
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _bound_names(tree: ast.AST) -> set[str]:
    """Names introduced by comprehension targets anywhere in the expression."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.comprehension):
            for target in ast.walk(node.target):
                if isinstance(target, ast.Name):
                    names.add(target.id)
    return names


def compile_expression(source: Any, names: Iterable[str]) -> Expression:
    """Parse and check `source`; `names` are the variables the evaluation will provide.

    Raises ExpressionRejected with a message saying what is not allowed.
    """
    if not isinstance(source, str):
        source = str(source) if isinstance(source, (int, float, bool)) else source
    if not isinstance(source, str) or not source.strip():
        raise ExpressionRejected("expected an expression (a non-empty string)")
    if len(source) > MAX_SOURCE_CHARS:
        raise ExpressionRejected(f"expression is {len(source)} characters (max {MAX_SOURCE_CHARS})")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionRejected(f"not a valid expression: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise ExpressionRejected("expression is nested too deeply") from None
    count = 0
    for node in ast.walk(tree):
        count += 1
        if not isinstance(node, _ALLOWED_NODES):
            raise ExpressionRejected(f"{type(node).__name__} is not allowed in an expression")
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            raise ExpressionRejected(f"names starting with '_' are not allowed ({node.id})")
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            raise ExpressionRejected(f"attributes starting with '_' are not allowed (.{node.attr})")
        if isinstance(node, ast.Call) and not (
            isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
            or isinstance(node.func, ast.Attribute)
            and node.func.attr in _STR_METHODS | _DICT_METHODS
        ):
            what = ast.unparse(node.func)
            raise ExpressionRejected(
                f"'{what}' cannot be called; functions: {', '.join(sorted(FUNCTIONS))}; "
                f"methods: {', '.join(sorted(_STR_METHODS | _DICT_METHODS))}"
            )
        if isinstance(node, ast.FormattedValue) and node.format_spec is not None:
            spec = node.format_spec
            parts = spec.values if isinstance(spec, ast.JoinedStr) else [spec]
            if not all(isinstance(p, ast.Constant) for p in parts) or not _FORMAT_SPEC.match(
                "".join(str(p.value) for p in parts)
            ):
                raise ExpressionRejected("f-string format specs must be short constants")
        if isinstance(node, ast.Constant) and _safe_len(node.value) is not None:
            if len(node.value) > MAX_SEQUENCE:
                raise ExpressionRejected("literal is too long")
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            if node.value.bit_length() > MAX_INT_BITS:
                raise ExpressionRejected(f"integer literal above {MAX_INT_BITS} bits")
    if count > MAX_AST_NODES:
        raise ExpressionRejected(f"expression has {count} parts (max {MAX_AST_NODES})")
    if _depth(tree) > MAX_DEPTH:
        raise ExpressionRejected(f"expression is nested more than {MAX_DEPTH} levels deep")
    known = set(names) | _bound_names(tree) | {"True", "False", "None"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in known and node.id not in FUNCTIONS:
            raise ExpressionRejected(
                f"unknown name '{node.id}'; available: {', '.join(sorted(set(names)))}"
            )
    return Expression(source, tree.body)


class _Sandbox(simpleeval.EvalWithCompoundTypes):
    """simpleeval with our operators, functions, attribute rule and per-evaluation budgets."""

    def __init__(self) -> None:
        super().__init__(operators=OPERATORS, functions=dict(FUNCTIONS), names={})
        self.functions = dict(FUNCTIONS)  # the base class adds raw list/dict/set: not ours
        self.nodes[ast.SetComp] = self._eval_comprehension
        self.nodes[ast.Name] = self._eval_name_fast
        # Literals may hold references to big values ([big] * 1 is cheap, [big, big, ...] too):
        # their results are size-checked like everything else an expression builds.
        self._literal = {k: self.nodes[k] for k in (ast.List, ast.Tuple, ast.Set, ast.Dict)}
        for k in self._literal:
            self.nodes[k] = self._eval_literal
        self._scopes: list[dict[str, Any]] = []
        self._steps = 0
        self._items = 0
        self._deadline = 0.0

    def run(self, expr: Expression, names: Mapping[str, Any], timeout_s: float) -> Any:
        self.names = names
        self.expr = expr.source
        self._steps = self._items = 0
        self._scopes = []
        self._deadline = time.monotonic() + timeout_s
        return self._eval(expr.tree)

    def _eval(self, node: ast.AST) -> Any:
        # Replaces simpleeval's per-node walk over every result (the values here are plain
        # message data and our own functions: nothing the walk could find) with budgets.
        self._steps += 1
        if self._steps & 63 == 0:
            if self._steps > MAX_STEPS:
                raise ExpressionLimit(f"more than {MAX_STEPS} evaluation steps")
            if time.monotonic() > self._deadline:
                raise ExpressionTimeout("evaluation took longer than its time budget")
        kind = type(node)
        if kind is ast.Constant:  # the commonest nodes inline; literal sizes were checked at load
            return node.value
        if kind is ast.Name:
            return self._eval_name_fast(node)
        handler = self.nodes.get(kind)
        if handler is None:
            raise ExpressionRejected(f"{kind.__name__} is not allowed")
        return handler(node)

    def _eval_name_fast(self, node: ast.Name) -> Any:
        for scope in reversed(self._scopes):
            if node.id in scope:
                return scope[node.id]
        if node.id in self.names:
            return self.names[node.id]
        if node.id in simpleeval.DEFAULT_NAMES:
            return simpleeval.DEFAULT_NAMES[node.id]
        if node.id in self.functions:
            return self.functions[node.id]
        raise ExpressionError(f"'{node.id}' is not defined")

    def _eval_attribute(self, node: ast.Attribute) -> Any:
        value = self._eval(node.value)
        attr = node.attr
        if type(value) is dict or isinstance(value, Mapping):
            if attr in value:
                return value[attr]
            if attr in _DICT_METHODS:
                return getattr(value, attr)
            fields = ", ".join(sorted(map(str, value))[:12]) or "none"
            raise ExpressionError(f"no field '{attr}' (fields: {fields})")
        if isinstance(value, str) and attr in _STR_METHODS:
            return str_method(value, attr)
        raise ExpressionError(f"'.{attr}' is not available on a {type(value).__name__}")

    def _eval_call(self, node: ast.Call) -> Any:
        if isinstance(node.func, ast.Attribute):
            func = self._eval(node.func)
        else:
            func = self.functions.get(node.func.id)
            if func is None:
                raise ExpressionRejected(f"'{node.func.id}' cannot be called")
        args = [self._eval(a) for a in node.args]
        if node.keywords:
            result = func(*args, **{k.arg: self._eval(k.value) for k in node.keywords})
        else:
            result = func(*args)
        size = _safe_len(result)
        if size is not None and size > MAX_SEQUENCE:
            raise ExpressionLimit(f"a call built {size} items (max {MAX_SEQUENCE})")
        return _check_size(result)

    def _eval_subscript(self, node: ast.Subscript) -> Any:
        return self._eval(node.value)[self._eval(node.slice)]

    def _eval_formattedvalue(self, node: ast.FormattedValue) -> Any:
        value = self._eval(node.value)
        if node.format_spec is None:
            return safe_str(value)
        if not isinstance(value, (int, float, str)):
            raise ExpressionError(f"a format spec applies to numbers and strings, "
                                  f"not {type(value).__name__}")
        return format(value, self._eval(node.format_spec))

    def _eval_joinedstr(self, node: ast.JoinedStr) -> str:
        return join_checked([safe_str(self._eval(part)) for part in node.values])

    def _eval_literal(self, node: ast.AST) -> Any:
        return _check_size(self._literal[type(node)](node))

    def _eval_comprehension(self, node: ast.AST) -> Any:
        # Own version: scopes instead of swapping simpleeval's name handler (re-entrant for
        # nested comprehensions) and one element budget shared by the whole evaluation.
        out: Any = {} if isinstance(node, ast.DictComp) else set() if isinstance(
            node, ast.SetComp) else []
        scope: dict[str, Any] = {}
        self._scopes.append(scope)
        try:
            self._generate(node, 0, scope, out)
        finally:
            self._scopes.pop()
        return _check_size(out)

    def _generate(self, node: Any, index: int, scope: dict, out: Any) -> None:
        gen = node.generators[index]
        for item in _bounded(self._eval(gen.iter)):
            self._items += 1
            if self._items > MAX_ITEMS:
                raise ExpressionLimit(f"comprehensions produced more than {MAX_ITEMS} items")
            self._bind(gen.target, item, scope)
            if not self._all_true(gen.ifs):
                continue
            if index + 1 < len(node.generators):
                self._generate(node, index + 1, scope, out)
            elif isinstance(out, dict):
                out[self._eval(node.key)] = self._eval(node.value)
            elif isinstance(out, set):
                out.add(self._eval(node.elt))
            else:
                out.append(self._eval(node.elt))

    def _all_true(self, conditions: list[ast.expr]) -> bool:
        for cond in conditions:  # short-circuits like Python's `if a if b`
            if not self._eval(cond):
                return False
        return True

    def _bind(self, target: ast.AST, value: Any, scope: dict) -> None:
        if isinstance(target, ast.Name):
            scope[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            values = list(value)
            if len(values) != len(target.elts):
                raise ExpressionError(f"cannot unpack {len(values)} values")
            for t, v in zip(target.elts, values):
                self._bind(t, v, scope)
        else:
            raise ExpressionRejected("comprehension targets must be names")


# Everything evaluation may raise for a bad expression or bad data; turned into ExpressionError.
_EVAL_ERRORS = (
    simpleeval.InvalidExpression, ArithmeticError, LookupError, TypeError, ValueError,
    AttributeError, RecursionError, MemoryError,
)


class Evaluator:
    """Evaluates compiled expressions with the sandbox's budgets. Not thread-safe: one per engine."""

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        # Set when an evaluation returned a value after its deadline (a single operation in C
        # can outlast the budget without a step to check it): the caller decides what it costs.
        self.late = False
        self._sandbox = _Sandbox()

    def evaluate(self, expr: Expression, names: Mapping[str, Any]) -> Any:
        try:
            value = self._sandbox.run(expr, names, self.timeout_s)
        except ExpressionError:
            raise
        except _EVAL_ERRORS as exc:
            raise ExpressionError(f"{type(exc).__name__}: {exc}") from None
        if time.monotonic() > self._sandbox._deadline:
            self.late = True
        return value
