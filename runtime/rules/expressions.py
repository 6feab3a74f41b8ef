"""Safe expressions for rule conditions and templates: checked once, compiled to closures.

Rules files are written by users and messages come off the network, so an expression must not
be able to reach the interpreter (imports, dunder walks, `format` tricks) nor stall the rule
node (huge powers, giant strings, long or nested comprehensions, deep nesting). The sandbox
is ours, in two places:

* at load (`compile_expression`): the source is parsed once into an AST that must use only the
  node types in `_ALLOWED_NODES`, stay within a size and nesting depth, call only the functions
  in `FUNCTIONS` and name only the variables the rule provides (or comprehension variables).
  Errors are raised here, so a bad rules file is reported with file:line before it runs. The
  checked tree is then compiled into nested Python closures (`_Compiler`): no `eval`, no code
  objects, only the operations below, so evaluating costs a few calls per node, not a walk.
* at run time (`Evaluator`): every operator that can allocate or whose cost grows faster than
  its operands is size-checked *before* it runs (ints are capped in bits, sequences in length),
  comprehensions and `range` are capped in elements, attribute access is a message-field lookup
  or one of a few harmless methods, and each evaluation has a step budget and a monotonic
  deadline, checked as comprehensions iterate (the only place an expression loops).

Everything that goes wrong while evaluating becomes an `ExpressionError`, so a rule whose
expression misbehaves fails alone and the engine keeps evaluating the others.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import reprlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from iotrt import errors

# Limits. They are far above what a condition over a sensor message needs and far below what
# would hurt a Raspberry-Pi-class board.
MAX_SOURCE_CHARS = 2000  # characters of expression source
MAX_AST_NODES = 400  # AST nodes per expression
MAX_DEPTH = 32  # AST nesting depth
MAX_INT_BITS = 4096  # result of **, *, << on ints
MAX_SEQUENCE = 100_000  # length of any str/bytes/list/tuple an operator or function builds
MAX_ITEMS = 10_000  # elements produced by comprehensions (in total) and by range()
MAX_STEPS = 200_000  # AST node evaluations per expression
STEP_CHECK = 64  # steps between two looks at the clock
DEFAULT_TIMEOUT_S = 0.05  # wall budget per evaluation (monotonic)


class ExpressionError(errors.ConfigError):
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


_CONTAINERS = frozenset({list, tuple, set, frozenset, dict})
_SIZED = _CONTAINERS | {str, bytes}


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
            for x in v.values() if type(v) is dict else v:
                if type(x) in _SIZED:
                    stack.append(x)
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


# Binary operators. Only +, -, *, ** and << can build a value larger than their operands (|, &,
# ^, //, >> cannot; % only on strings, which _mod refuses), and *, /, //, % and ** cost more than
# linear time in their operands' size: those check sizes, before computing.
OPERATORS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: _add, ast.Sub: _sub, ast.Mult: _mult, ast.Div: _div, ast.FloorDiv: _floordiv,
    ast.Mod: _mod, ast.Pow: _power, ast.LShift: _lshift, ast.RShift: operator.rshift,
    ast.BitOr: operator.or_, ast.BitXor: operator.xor, ast.BitAnd: operator.and_,
}


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
    """A checked, compiled expression; evaluate it with `Evaluator.evaluate`."""

    source: str
    tree: ast.expr
    code: Callable[[Any], Any] = field(compare=False, repr=False)
    # Whether evaluating can take more than a few operations (a comprehension, a call that
    # loops, or STEP_CHECK nodes or more): only then are the budgets set and the clock read.
    timed: bool = True
    # run(context): `code` with its budgets set first and its deadline checked after when
    # `timed`, else `code` itself (see Evaluator.evaluate).
    run: Callable[[Any], Any] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", _budgeted(self.code) if self.timed else self.code)

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


# Functions that loop over a collection (the others, and the string and dict methods, do a
# bounded amount of work in C).
_LOOPING = frozenset({"all", "any", "max", "min", "sorted", "sum", "list", "tuple", "set",
                      "range", "str"})


def _may_loop(node: ast.AST) -> bool:
    """Whether `node` can run for long: a comprehension, or a call that loops or calls back."""
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
        return True
    return isinstance(node, ast.Call) and bool(
        node.keywords or isinstance(node.func, ast.Name) and node.func.id in _LOOPING)


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
    names = frozenset(names)
    known = names | _bound_names(tree) | {"True", "False", "None"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in known and node.id not in FUNCTIONS:
            raise ExpressionRejected(
                f"unknown name '{node.id}'; available: {', '.join(sorted(names))}"
            )
    timed = count >= STEP_CHECK or any(_may_loop(n) for n in ast.walk(tree))
    return Expression(source, tree.body, _Compiler(names).compile(tree.body), timed)


# --- the compiler: a checked AST -> nested closures ---------------------------------------------
#
# Each AST node becomes a Python closure `f(c)` over the evaluation context `c`; evaluating an
# expression is one call of its top closure, with no tree walk and no per-node dispatch. Names
# are resolved when compiling (a comprehension variable, a rule variable or a function), so a
# lookup is one dict access. The budgets live where time can go: every comprehension
# iteration counts its items and steps (the AST nodes it evaluates) and, every STEP_CHECK
# steps, compares the monotonic clock with the deadline; outside comprehensions an expression
# is at most MAX_AST_NODES operations, each size-checked before it runs.

_MISSING = object()


class _Context:
    """The state of one evaluation: variables, comprehension variables, budgets."""

    __slots__ = ("names", "local", "steps", "items", "deadline", "check_at", "timeout", "late")

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.names: Mapping[str, Any] = {}
        self.local: dict[str, Any] = {}  # comprehension variables (scoped when compiling)
        self.steps = self.items = 0
        self.check_at = STEP_CHECK
        self.deadline = 0.0
        self.timeout = timeout_s  # budget per evaluation (monotonic seconds)
        self.late = False  # the last timed evaluation returned after its deadline


def _budgeted(code: Callable[[_Context], Any]) -> Callable[[_Context], Any]:
    """A timed expression's `run`: fresh budgets, then `code`, then a look at the deadline
    (one operation in C can outlast the budget without a step to check it)."""
    monotonic = time.monotonic

    def run(c: _Context) -> Any:
        c.steps = c.items = 0
        c.check_at = STEP_CHECK
        c.deadline = deadline = monotonic() + c.timeout
        value = code(c)
        if monotonic() > deadline:
            c.late = True
        return value
    return run


def _check_budget(c: _Context) -> None:
    if c.steps > MAX_STEPS:
        raise ExpressionLimit(f"more than {MAX_STEPS} evaluation steps")
    if time.monotonic() > c.deadline:
        raise ExpressionTimeout("evaluation took longer than its time budget")
    c.check_at = c.steps + STEP_CHECK


def _checked(value: Any) -> Any:
    """A call's result: strings and containers over the size cap are refused."""
    t = type(value)
    if t is str or t is bytes:
        if len(value) > MAX_SEQUENCE:
            raise ExpressionLimit(f"a call built {len(value)} items (max {MAX_SEQUENCE})")
        return value
    return _check_size(value) if t in _CONTAINERS else value


def _attribute(value: Any, attr: str) -> Any:
    """`value.attr`: a message field, a dict method, or a (size-checked) string method."""
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


def _format(value: Any, spec: str) -> str:
    if not isinstance(value, (int, float, str)):
        raise ExpressionError(f"a format spec applies to numbers and strings, "
                              f"not {type(value).__name__}")
    return format(value, spec)


def _bind_names(target: ast.AST) -> list[str]:
    return [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]


def _binder(target: ast.AST) -> Callable[[dict, Any], None]:
    if isinstance(target, ast.Name):
        name = target.id

        def bind(local: dict, value: Any) -> None:
            local[name] = value
        return bind
    if isinstance(target, (ast.Tuple, ast.List)):
        parts = [_binder(t) for t in target.elts]

        def unpack(local: dict, value: Any) -> None:
            values = list(_bounded(value))
            if len(values) != len(parts):
                raise ExpressionError(f"cannot unpack {len(values)} values into {len(parts)}")
            for bind, v in zip(parts, values):
                bind(local, v)
        return unpack
    raise ExpressionRejected("comprehension targets must be names")


def _size(tree: ast.AST | None) -> int:
    return 0 if tree is None else sum(1 for _ in ast.walk(tree))


# Operators whose result on two small numbers is a small number (no size check needed).
_NUMERIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
            ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_SMALL = 1 << 62


def _small_number(x: Any) -> bool:
    return type(x) is float or type(x) is int and -_SMALL < x < _SMALL


# Functions of one iterable that may take a (bounded) comprehension's list as it is.
_CONSUMERS = {"any": any, "all": all, "max": max, "min": min, "sum": sum, "sorted": sorted,
              "list": list, "tuple": tuple, "set": set}
# Functions whose result is a number or a boolean: nothing to size-check.
_SCALAR_FUNCTIONS = frozenset({"abs", "bool", "float", "int", "len", "round"})
# String methods whose result is a new string or list (size-checked); the others return
# numbers or booleans.
_STR_BUILDERS = frozenset({"lower", "upper", "casefold", "title", "capitalize", "removeprefix",
                           "removesuffix", "split", "rsplit"})

_COMPARE = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}
# Comparisons with a literal, the operator inlined (no call to `operator.*`).
_COMPARE_CONST: dict[type, Callable[[Closure, Any], Closure]] = {
    ast.Eq: lambda f, k: lambda c: f(c) == k,
    ast.NotEq: lambda f, k: lambda c: f(c) != k,
    ast.Lt: lambda f, k: lambda c: f(c) < k,
    ast.LtE: lambda f, k: lambda c: f(c) <= k,
    ast.Gt: lambda f, k: lambda c: f(c) > k,
    ast.GtE: lambda f, k: lambda c: f(c) >= k,
    ast.Is: lambda f, k: lambda c: f(c) is k,
    ast.IsNot: lambda f, k: lambda c: f(c) is not k,
    ast.In: lambda f, k: lambda c: f(c) in k,
    ast.NotIn: lambda f, k: lambda c: f(c) not in k,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_,
          ast.Invert: operator.invert}

Closure = Callable[[_Context], Any]


class _Compiler:
    """Turns a checked expression tree into closures. `names` are the rule's variables;
    `scope` (per call) the comprehension variables visible at that point."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def compile(self, node: ast.AST, scope: frozenset[str] = frozenset()) -> Closure:
        method = getattr(self, "_" + type(node).__name__.lower(), None)
        if method is None:
            raise ExpressionRejected(f"{type(node).__name__} is not allowed")
        return method(node, scope)

    @staticmethod
    def constant(node: ast.AST) -> tuple[bool, Any]:
        """(True, value) when `node` is a literal number, string, bool or None."""
        if isinstance(node, ast.Constant):
            return True, node.value
        if (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd))
                and isinstance(node.operand, ast.Constant)
                and type(node.operand.value) in (int, float)):
            return True, _UNARY[type(node.op)](node.operand.value)
        return False, None

    def var_field(self, node: ast.AST, scope: frozenset[str]) -> tuple[str, str] | None:
        """(variable, field) when `node` is `msg.field`-like: a rule variable's field."""
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in self.names and node.value.id not in scope):
            return node.value.id, node.attr
        return None

    # -- leaves --------------------------------------------------------------------------------

    def _constant(self, node: ast.Constant, scope: frozenset[str]) -> Closure:
        value = node.value
        return lambda c: value

    def _name(self, node: ast.Name, scope: frozenset[str]) -> Closure:
        key = node.id
        if key in scope:
            return lambda c: c.local[key]
        if key in self.names:
            def name(c: _Context) -> Any:
                try:
                    return c.names[key]
                except KeyError:
                    raise ExpressionError(f"'{key}' is not defined") from None
            return name
        if key in FUNCTIONS:
            func = FUNCTIONS[key]
            return lambda c: func
        raise ExpressionRejected(f"unknown name '{key}'")

    # -- data access ---------------------------------------------------------------------------

    def _attribute(self, node: ast.Attribute, scope: frozenset[str]) -> Closure:
        attr = node.attr
        if isinstance(node.value, ast.Name) and node.value.id in self.names - scope:
            key = node.value.id  # `msg.field`, the commonest of all: one closure

            def var_field(c: _Context) -> Any:
                try:
                    v = c.names[key]
                except KeyError:
                    raise ExpressionError(f"'{key}' is not defined") from None
                if type(v) is dict:
                    try:
                        return v[attr]
                    except KeyError:
                        pass
                return _attribute(v, attr)
            return var_field
        if isinstance(node.value, ast.Name) and node.value.id in scope:
            key = node.value.id  # `f.score` in a comprehension over faces

            def local_field(c: _Context) -> Any:
                v = c.local[key]
                if type(v) is dict:
                    try:
                        return v[attr]
                    except KeyError:
                        pass
                return _attribute(v, attr)
            return local_field
        value = self.compile(node.value, scope)

        def field(c: _Context) -> Any:
            v = value(c)
            if type(v) is dict:  # the common case: a message field
                try:
                    return v[attr]
                except KeyError:
                    pass
            return _attribute(v, attr)
        return field

    def _subscript(self, node: ast.Subscript, scope: frozenset[str]) -> Closure:
        value = self.compile(node.value, scope)
        const, key = self.constant(node.slice)
        if const:
            return lambda c: value(c)[key]
        index = self.compile(node.slice, scope)
        return lambda c: value(c)[index(c)]

    def _slice(self, node: ast.Slice, scope: frozenset[str]) -> Closure:
        parts = [self.compile(p, scope) if p is not None else (lambda c: None)
                 for p in (node.lower, node.upper, node.step)]
        lower, upper, step = parts
        return lambda c: slice(lower(c), upper(c), step(c))

    # -- operators -----------------------------------------------------------------------------

    def _binop(self, node: ast.BinOp, scope: frozenset[str]) -> Closure:
        op = OPERATORS[type(node.op)]
        left = self.compile(node.left, scope)
        const, k = self.constant(node.right)
        fast = _NUMERIC.get(type(node.op))
        field = self.var_field(node.left, scope)
        if const and fast is not None and _small_number(k) and field:
            key, attr = field  # `msg.n % 2`: one closure

            def field_number_op(c: _Context) -> Any:
                try:
                    v = c.names[key]
                except KeyError:
                    raise ExpressionError(f"'{key}' is not defined") from None
                a = v[attr] if type(v) is dict and attr in v else _attribute(v, attr)
                if type(a) is float or type(a) is int and -_SMALL < a < _SMALL:
                    return fast(a, k)
                return op(a, k)
            return field_number_op
        if const and fast is not None and _small_number(k):
            # `msg.n % 2`: a small number with a small number needs no size check
            def number_op(c: _Context) -> Any:
                a = left(c)
                if type(a) is float or type(a) is int and -_SMALL < a < _SMALL:
                    return fast(a, k)
                return op(a, k)
            return number_op
        if const:
            return lambda c: op(left(c), k)
        right = self.compile(node.right, scope)
        if fast is not None:
            def numbers_op(c: _Context) -> Any:
                a, b = left(c), right(c)
                if _small_number(a) and _small_number(b):
                    return fast(a, b)
                return op(a, b)
            return numbers_op
        return lambda c: op(left(c), right(c))

    def _unaryop(self, node: ast.UnaryOp, scope: frozenset[str]) -> Closure:
        const, value = self.constant(node)
        if const:
            return lambda c: value
        op, operand = _UNARY[type(node.op)], self.compile(node.operand, scope)
        return lambda c: op(operand(c))

    def _boolop(self, node: ast.BoolOp, scope: frozenset[str]) -> Closure:
        # Python's own `and`/`or` on closures: the same short-circuit and the same result value.
        values = [self.compile(v, scope) for v in node.values]
        combined = values[-1]
        for first in reversed(values[:-1]):
            if isinstance(node.op, ast.And):
                combined = (lambda a, b: lambda c: a(c) and b(c))(first, combined)
            else:
                combined = (lambda a, b: lambda c: a(c) or b(c))(first, combined)
        return combined

    def _compare(self, node: ast.Compare, scope: frozenset[str]) -> Closure:
        if len(node.ops) == 1:
            op = _COMPARE[type(node.ops[0])]
            const, k = self.constant(node.comparators[0])
            if const and isinstance(node.left, ast.Attribute) and isinstance(
                    node.left.value, ast.Name) and node.left.value.id in scope:
                # `f.score > 0.8` in a comprehension: one closure
                key, attr = node.left.value.id, node.left.attr

                def local_field_compare(c: _Context) -> Any:
                    v = c.local[key]
                    return op(v[attr] if type(v) is dict and attr in v else _attribute(v, attr), k)
                return local_field_compare
            field = self.var_field(node.left, scope)
            if const and field:  # `msg.distance < 0.3`: one closure
                key, attr = field

                def var_field_compare(c: _Context) -> Any:
                    try:
                        v = c.names[key]
                    except KeyError:
                        raise ExpressionError(f"'{key}' is not defined") from None
                    return op(v[attr] if type(v) is dict and attr in v else _attribute(v, attr), k)
                return var_field_compare
            if const and isinstance(node.left, ast.Call):
                fused = self._call_compared(node.left, scope, (op, k))
                if fused is not None:
                    return fused
            left = self.compile(node.left, scope)
            if const:
                return _COMPARE_CONST[type(node.ops[0])](left, k)
            right = self.compile(node.comparators[0], scope)
            return lambda c: op(left(c), right(c))
        left = self.compile(node.left, scope)
        chain = [(_COMPARE[type(o)], self.compile(r, scope))
                 for o, r in zip(node.ops, node.comparators)]

        def compare(c: _Context) -> Any:
            a, result = left(c), True
            for op, right in chain:
                b = right(c)
                result = op(a, b)
                if not result:
                    return result
                a = b
            return result
        return compare

    def _ifexp(self, node: ast.IfExp, scope: frozenset[str]) -> Closure:
        test, body = self.compile(node.test, scope), self.compile(node.body, scope)
        orelse = self.compile(node.orelse, scope)
        return lambda c: body(c) if test(c) else orelse(c)

    # -- calls ---------------------------------------------------------------------------------

    def _call_compared(self, node: ast.Call, scope: frozenset[str],
                       compared: tuple[Callable[[Any, Any], Any], Any]) -> Closure | None:
        """`len(msg.faces) > 1`, `max(f.score for f in msg.faces) > 0.8`: the call and its
        comparison with a literal, `compared` = (operator, literal), as one closure; None for
        other calls (compiled as usual)."""
        if not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
                and node.func.id not in scope | self.names and len(node.args) == 1
                and not node.keywords):
            return None
        name, (arg,) = node.func.id, node.args
        if name in _CONSUMERS and name not in ("any", "all") and isinstance(
                arg, (ast.GeneratorExp, ast.ListComp)):
            return self._comprehension(arg, scope, "list", _CONSUMERS[name], compared)
        field = self.var_field(arg, scope)
        if name in _SCALAR_FUNCTIONS and field:
            fixed, (key, attr), (op, k) = FUNCTIONS[name], field, compared

            def scalar_of_field_compared(c: _Context) -> Any:
                try:
                    v = c.names[key]
                except KeyError:
                    raise ExpressionError(f"'{key}' is not defined") from None
                return op(fixed(v[attr] if type(v) is dict and attr in v
                                else _attribute(v, attr)), k)
            return scalar_of_field_compared
        return None

    def _call(self, node: ast.Call, scope: frozenset[str]) -> Closure:
        args = [self.compile(a, scope) for a in node.args]
        kwargs = {k.arg: self.compile(k.value, scope) for k in node.keywords}
        if isinstance(node.func, ast.Attribute):  # a method of a value
            return self._method_call(node.func, args, kwargs, scope, node.args)
        name = node.func.id
        if name not in FUNCTIONS or name in scope | self.names:
            raise ExpressionRejected(f"'{name}' cannot be called")
        if (name in _CONSUMERS and len(node.args) == 1 and not kwargs
                and isinstance(node.args[0], (ast.GeneratorExp, ast.ListComp))):
            # sum(x for x in ...), any(...) and the like: the comprehension is already bounded
            # (and any/all stop at the first deciding item), so the builtin takes it directly.
            if name in ("any", "all"):
                return self._comprehension(node.args[0], scope, name)
            fused = self._comprehension(node.args[0], scope, "list", _CONSUMERS[name])
            if fused is not None:
                return fused
            builtin, (items,) = _CONSUMERS[name], args
            return lambda c: _checked(builtin(items(c)))
        fixed = FUNCTIONS[name]
        if name in _SCALAR_FUNCTIONS and len(args) == 1 and not kwargs:
            field = self.var_field(node.args[0], scope)
            if field:  # `len(msg.faces)`: one closure
                key, attr = field

                def scalar_of_field(c: _Context) -> Any:
                    try:
                        v = c.names[key]
                    except KeyError:
                        raise ExpressionError(f"'{key}' is not defined") from None
                    return fixed(v[attr] if type(v) is dict and attr in v else _attribute(v, attr))
                return scalar_of_field
            (arg,) = args
            return lambda c: fixed(arg(c))
        if kwargs:
            return lambda c: _checked(fixed(*[a(c) for a in args],
                                            **{k: v(c) for k, v in kwargs.items()}))
        if len(args) == 1:
            (arg,) = args
            return lambda c: _checked(fixed(arg(c)))
        return lambda c: _checked(fixed(*[a(c) for a in args]))

    def _method_call(self, func: ast.Attribute, args: list[Closure], kwargs: dict[str, Closure],
                     scope: frozenset[str], arg_nodes: list[ast.expr]) -> Closure:
        value, attr = self.compile(func.value, scope), func.attr

        def generic(c: _Context, v: Any) -> Any:
            return _checked(_attribute(v, attr)(*[a(c) for a in args],
                                                 **{k: f(c) for k, f in kwargs.items()}))
        if kwargs or attr in ("strip", "lstrip", "rstrip"):
            return lambda c: generic(c, value(c))
        if attr in _STR_METHODS:
            unbound, check = getattr(str, attr), attr in _STR_BUILDERS
            field = self.var_field(func.value, scope)
            consts = [self.constant(a) for a in arg_nodes]
            if field and all(is_const for is_const, _ in consts):
                key, name = field  # `msg.label.startswith("cam")`: one closure
                fixed_args = tuple(value for _, value in consts)

                def str_method_of_field(c: _Context) -> Any:
                    try:
                        v = c.names[key]
                    except KeyError:
                        raise ExpressionError(f"'{key}' is not defined") from None
                    v = v[name] if type(v) is dict and name in v else _attribute(v, name)
                    if type(v) is str:
                        result = unbound(v, *fixed_args)
                        return _checked(result) if check else result
                    return generic(c, v)
                return str_method_of_field
            if len(args) == 1:
                (arg,) = args

                def str_call1(c: _Context) -> Any:
                    v = value(c)
                    if type(v) is str:
                        result = unbound(v, arg(c))
                        return _checked(result) if check else result
                    return generic(c, v)
                return str_call1

            def str_call(c: _Context) -> Any:
                v = value(c)
                if type(v) is str:
                    result = unbound(v, *[a(c) for a in args])
                    return _checked(result) if check else result
                return generic(c, v)
            return str_call
        if attr in _DICT_METHODS:
            unbound = getattr(dict, attr)

            def dict_call(c: _Context) -> Any:
                v = value(c)
                if type(v) is dict and attr not in v:  # a field of that name wins
                    return _checked(unbound(v, *[a(c) for a in args]))
                return generic(c, v)
            return dict_call
        return lambda c: generic(c, value(c))

    # -- literals ------------------------------------------------------------------------------

    def _list(self, node: ast.List, scope: frozenset[str]) -> Closure:
        elts = [self.compile(e, scope) for e in node.elts]
        return lambda c: _check_size([e(c) for e in elts])

    def _tuple(self, node: ast.Tuple, scope: frozenset[str]) -> Closure:
        elts = [self.compile(e, scope) for e in node.elts]
        return lambda c: _check_size(tuple([e(c) for e in elts]))

    def _set(self, node: ast.Set, scope: frozenset[str]) -> Closure:
        elts = [self.compile(e, scope) for e in node.elts]
        return lambda c: _check_size({e(c) for e in elts})

    def _dict(self, node: ast.Dict, scope: frozenset[str]) -> Closure:
        items = [(None if k is None else self.compile(k, scope), self.compile(v, scope))
                 for k, v in zip(node.keys, node.values)]

        def build(c: _Context) -> dict:
            out: dict = {}
            for key, value in items:
                if key is None:  # {**mapping}
                    out.update(value(c))
                else:
                    out[key(c)] = value(c)
            return _check_size(out)
        return build

    def _joinedstr(self, node: ast.JoinedStr, scope: frozenset[str]) -> Closure:
        parts = [(lambda s: lambda c: s)(p.value) if isinstance(p, ast.Constant)
                 else self.compile(p, scope) for p in node.values]
        return lambda c: join_checked([p(c) for p in parts])

    def _formattedvalue(self, node: ast.FormattedValue, scope: frozenset[str]) -> Closure:
        value = self.compile(node.value, scope)
        if node.format_spec is None:
            return lambda c: safe_str(value(c))
        spec_parts = (node.format_spec.values if isinstance(node.format_spec, ast.JoinedStr)
                      else [node.format_spec])
        spec = "".join(str(p.value) for p in spec_parts)  # constants: checked at load
        return lambda c: _format(value(c), spec)

    # -- comprehensions ------------------------------------------------------------------------

    def _loop(self, node: Any, scope: frozenset[str], body: list[ast.AST]):
        """A generator function `iterate(c)` that binds the comprehension's variables for each
        element it yields, counting items and steps, plus the scope its body compiles in."""
        levels = []
        inner = scope
        for i, gen in enumerate(node.generators):
            iter_ = self.compile(gen.iter, scope if i == 0 else inner)
            inner = inner | frozenset(_bind_names(gen.target))
            ifs = [self.compile(cond, inner) for cond in gen.ifs]
            nxt = node.generators[i + 1].iter if i + 1 < len(node.generators) else None
            steps = _size(gen.target) + sum(map(_size, gen.ifs)) + (
                _size(nxt) if nxt is not None else sum(map(_size, body)))
            levels.append((iter_, _binder(gen.target), ifs, steps))
        names = {n for gen in node.generators for n in _bind_names(gen.target)}

        def walk(c: _Context, level: int) -> Iterator[None]:
            iter_, bind, ifs, steps = levels[level]
            last = level == len(levels) - 1
            local = c.local
            for item in _bounded(iter_(c)):
                c.items += 1
                if c.items > MAX_ITEMS:
                    raise ExpressionLimit(f"comprehensions produced more than {MAX_ITEMS} items")
                c.steps += steps
                if c.steps >= c.check_at:
                    _check_budget(c)
                bind(local, item)
                for cond in ifs:  # short-circuits like Python's `if a if b`
                    if not cond(c):
                        break
                else:
                    if last:
                        yield None
                    else:
                        yield from walk(c, level + 1)

        def iterate(c: _Context) -> Iterator[None]:
            # Comprehension variables shadow outer ones of the same name only inside.
            saved = {n: c.local.get(n, _MISSING) for n in names}
            try:
                yield from walk(c, 0)
            finally:
                for n, v in saved.items():
                    if v is _MISSING:
                        c.local.pop(n, None)
                    else:
                        c.local[n] = v
        return iterate, inner

    def _listcomp(self, node: ast.ListComp, scope: frozenset[str]) -> Closure:
        return self._comprehension(node, scope, "list")

    _generatorexp = _listcomp  # materialised, bounded: `len(x for x in ...)` works as before

    def _setcomp(self, node: ast.SetComp, scope: frozenset[str]) -> Closure:
        iterate, inner = self._loop(node, scope, [node.elt])
        elt = self.compile(node.elt, inner)
        return lambda c: _check_size({elt(c) for _ in iterate(c)})

    def _dictcomp(self, node: ast.DictComp, scope: frozenset[str]) -> Closure:
        iterate, inner = self._loop(node, scope, [node.key, node.value])
        key, value = self.compile(node.key, inner), self.compile(node.value, inner)
        return lambda c: _check_size({key(c): value(c) for _ in iterate(c)})

    def _comprehension(self, node: ast.ListComp | ast.GeneratorExp, scope: frozenset[str],
                       mode: str, consumer: Callable[[list], Any] | None = None,
                       compared: tuple[Callable[[Any, Any], Any], Any] | None = None) -> Closure:
        """A list (mode "list"), or any()/all() of it, stopping at the first deciding item.
        With a `consumer` (max, sum, ...): the consumer's result of the list, size-checked,
        and compared with a literal if `compared` = (operator, literal) is given; or None
        when the comprehension is not a single `for NAME in ...` (the caller then applies the
        consumer to the list itself)."""
        gen = node.generators[0]
        if len(node.generators) > 1 or not isinstance(gen.target, ast.Name):
            if consumer is not None:
                return None
            iterate, inner = self._loop(node, scope, [node.elt])
            elt = self.compile(node.elt, inner)
            if mode == "list":
                return lambda c: _check_size([elt(c) for _ in iterate(c)])
            want = mode == "any"

            def decide(c: _Context) -> bool:
                for _ in iterate(c):
                    if bool(elt(c)) is want:
                        return want
                return not want
            return decide
        # One `for NAME in ITER if ...`, by far the commonest: one plain loop, no generator.
        name = gen.target.id
        iter_ = self.compile(gen.iter, scope)
        inner = scope | {name}
        conds = [self.compile(cond, inner) for cond in gen.ifs]
        cond = conds[0] if len(conds) == 1 else (
            (lambda cs: lambda c: all(f(c) for f in cs))(conds) if conds else None)
        elt = self.compile(node.elt, inner)
        steps = 1 + sum(map(_size, gen.ifs)) + _size(node.elt)
        shadows = name in scope  # restore the outer comprehension's variable afterwards

        def checked_loop(c: _Context, seq: Any) -> Any:
            local = c.local
            saved = local.get(name) if shadows else None
            out = []
            for item in _bounded(seq):
                c.items += 1
                c.steps += steps
                if c.items > MAX_ITEMS or c.steps >= c.check_at:
                    _check_loop(c)
                local[name] = item
                if cond is not None and not cond(c):
                    continue
                value = elt(c)
                if mode == "list":
                    out.append(value)
                elif mode == "any":
                    if value:
                        break
                elif not value:
                    break
            else:
                if shadows:
                    local[name] = saved
                if mode != "list":
                    return mode == "all"
                if consumer is None:
                    return _check_size(out)
                result = _checked(consumer(_check_size(out)))
                return result if compared is None else compared[0](result, compared[1])
            if shadows:
                local[name] = saved
            return mode == "any"

        if shadows:
            return lambda c: checked_loop(c, iter_(c))

        # The fast loops below fetch a `msg.field` sequence themselves, and take a short
        # sequence (a message's faces, boxes...) whose items and steps all fit before the next
        # budget check by counting it once, up front, and looping over it plainly; anything
        # else goes through checked_loop, which counts and checks item by item.
        field = self.var_field(gen.iter, scope)
        key, attr = field if field else (None, None)
        # `f.score` and `f.name == "x" and f.score > 0.5` of the loop's item: computed from
        # the item directly (no per-item closures); `test` is None for other elements.
        test = None if cond is not None else _item_test(node.elt, name)
        elt_attr = (node.elt.attr if cond is None and _item_field(node.elt, name) else None)

        if mode == "any":
            def any_loop(c: _Context) -> Any:
                v = c.names.get(key, _MISSING)  # `msg.faces` read here, else iter_
                seq = v[attr] if type(v) is dict and attr in v else _fetch(c, v, key, attr, iter_)
                if type(seq) not in _SEQUENCES:
                    return checked_loop(c, seq)
                n = len(seq)
                if c.steps + n * steps >= c.check_at or c.items + n > MAX_ITEMS:
                    return checked_loop(c, seq)
                c.items += n
                c.steps += n * steps
                if test is not None:
                    for item in seq:
                        if test(item):
                            return True
                    return False
                local = c.local
                for item in seq:
                    local[name] = item
                    if (cond is None or cond(c)) and elt(c):
                        return True
                return False
            return any_loop
        if mode == "all":
            def all_loop(c: _Context) -> Any:
                v = c.names.get(key, _MISSING)  # `msg.faces` read here, else iter_
                seq = v[attr] if type(v) is dict and attr in v else _fetch(c, v, key, attr, iter_)
                if type(seq) not in _SEQUENCES:
                    return checked_loop(c, seq)
                n = len(seq)
                if c.steps + n * steps >= c.check_at or c.items + n > MAX_ITEMS:
                    return checked_loop(c, seq)
                c.items += n
                c.steps += n * steps
                if test is not None:
                    for item in seq:
                        if not test(item):
                            return False
                    return True
                local = c.local
                for item in seq:
                    local[name] = item
                    if (cond is None or cond(c)) and not elt(c):
                        return False
                return True
            return all_loop

        def list_loop(c: _Context) -> Any:
            v = c.names.get(key, _MISSING)
            seq = v[attr] if type(v) is dict and attr in v else _fetch(c, v, key, attr, iter_)
            if type(seq) not in _SEQUENCES:
                return checked_loop(c, seq)
            n = len(seq)
            if c.steps + n * steps >= c.check_at or c.items + n > MAX_ITEMS:
                return checked_loop(c, seq)
            c.items += n
            c.steps += n * steps
            local = c.local
            if elt_attr is not None:
                out = []
                for item in seq:
                    if type(item) is dict and elt_attr in item:
                        out.append(item[elt_attr])
                    else:
                        out.append(_attribute(item, elt_attr))
            elif cond is None:
                out = []
                for item in seq:
                    local[name] = item
                    out.append(elt(c))
            else:
                out = []
                for item in seq:
                    local[name] = item
                    if cond(c):
                        out.append(elt(c))
            if not _SCALARS.issuperset(map(type, out)):  # (numbers alone: nothing nested)
                _check_size(out)
            if consumer is None:
                return out
            result = consumer(out)
            if type(result) not in _SCALARS:
                result = _checked(result)
            return result if op is None else op(result, k)
        op, k = compared if compared is not None else (None, None)
        return list_loop


def _fetch(c: _Context, v: Any, key: str | None, attr: str | None, iter_: Closure) -> Any:
    """A fast loop's sequence when it is not simply `dict[attr]` of variable `key` (`v`):
    the compiled iterable when there is no `key`, else the variable's field the slow way."""
    if key is None:
        return iter_(c)
    if v is _MISSING:
        raise ExpressionError(f"'{key}' is not defined")
    return _attribute(v, attr)


def _item_field(node: ast.AST, name: str) -> bool:
    """Whether `node` is `NAME.attr` (a field of the comprehension's item)."""
    return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == name)


def _item_test(node: ast.AST, name: str) -> Callable[[Any], Any] | None:
    """`NAME.a OP literal`, or such comparisons joined by `and`/`or`, as one function of the
    item (the same value as the closures would give); None for anything else."""
    values = node.values if isinstance(node, ast.BoolOp) else [node]
    parts = []
    for v in values:
        if not (isinstance(v, ast.Compare) and len(v.ops) == 1 and _item_field(v.left, name)):
            return None
        const, k = _Compiler.constant(v.comparators[0])
        if not const:
            return None
        parts.append((v.left.attr, _COMPARE[type(v.ops[0])], k))
    is_or = isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or)

    def test(item: Any) -> Any:
        for attr, op, k in parts:  # Python's and/or: the deciding value is the result
            result = op(item[attr] if type(item) is dict and attr in item
                        else _attribute(item, attr), k)
            if bool(result) is is_or:
                return result
        return result
    return test


_SEQUENCES = frozenset({list, tuple, range, str})
_SCALARS = frozenset({int, float, bool, type(None)})


def _check_loop(c: _Context) -> None:
    if c.items > MAX_ITEMS:
        raise ExpressionLimit(f"comprehensions produced more than {MAX_ITEMS} items")
    _check_budget(c)


# Everything evaluation may raise for a bad expression or bad data; turned into ExpressionError.
EVALUATION_ERRORS = (
    ArithmeticError, LookupError, TypeError, ValueError, AttributeError, RecursionError,
    MemoryError,
)


def evaluation_error(exc: BaseException) -> ExpressionError:
    """An error of EVALUATION_ERRORS raised while evaluating, as the ExpressionError it means."""
    return ExpressionError(f"{type(exc).__name__}: {exc}")


class Evaluator:
    """Evaluates compiled expressions with the sandbox's budgets. Not thread-safe: one per engine.

    `evaluate(expr, names)` is: `context.names = names`, then `expr.run(context)`, where an
    error of EVALUATION_ERRORS becomes `evaluation_error(exc)`. A caller on a hot path may do
    exactly that itself (the rule engine does, once per rule and message), and must then read
    `context.late` like `late` below.
    """

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.context = _Context(timeout_s)

    @property
    def timeout_s(self) -> float:
        return self.context.timeout

    @property
    def late(self) -> bool:
        """Set when an evaluation returned a value after its deadline: the caller decides
        what it costs (and clears it)."""
        return self.context.late

    @late.setter
    def late(self, value: bool) -> None:
        self.context.late = value

    def evaluate(self, expr: Expression, names: Mapping[str, Any]) -> Any:
        c = self.context
        c.names = names
        try:
            return expr.run(c)
        except ExpressionError:
            raise
        except EVALUATION_ERRORS as exc:
            raise evaluation_error(exc) from None
