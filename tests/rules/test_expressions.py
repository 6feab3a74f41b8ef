"""The expression sandbox: what users need works, hostile expressions are rejected or bounded."""

from __future__ import annotations

import time

import pytest

from iotrt.rules.expressions import (
    MAX_ITEMS, Evaluator, ExpressionError, ExpressionLimit, ExpressionRejected,
    compile_expression,
)

NAMES = ("msg", "state", "last", "topic", "trigger", "hour", "minute", "weekday")

FACES = {"faces": [{"name": "owner", "score": 0.93, "box": [1, 2, 3, 4]},
                   {"name": "unknown", "score": 0.4, "box": [5, 6, 7, 8]}],
         "label": "Front Door", "distance": 0.25, "n": 7}


def ev(source: str, msg=FACES, state=None):
    expr = compile_expression(source, NAMES)
    return Evaluator().evaluate(expr, {"msg": msg, "state": state or {}, "last": {},
                                       "topic": "faces", "trigger": {}, "hour": 7,
                                       "minute": 30, "weekday": 2})


@pytest.mark.parametrize("source, expected", [
    ('any(f.name == "owner" and f.score > 0.8 for f in msg.faces)', True),
    ('all(f.score > 0.8 for f in msg.faces)', False),
    ("[f.name for f in msg.faces if f.name != 'unknown']", ["owner"]),
    ("len(msg.faces)", 2),
    ("max(f.score for f in msg.faces)", 0.93),
    ("msg.faces[0].box[2] * msg.faces[0].box[3]", 12),
    ("msg['label'].lower().startswith('front')", True),
    ("msg.get('missing', 3) + 1", 4),
    ("state.get('armed', False) or msg.distance < 0.3", True),
    ("round(msg.distance * 100)", 25),
    ("f'{msg.distance:.1f} m'", "0.2 m"),
    ("'night' if hour >= 22 or hour < 6 else 'day'", "day"),
    ("{f.name: f.score for f in msg.faces}['owner']", 0.93),
    ("sum(x * y for x, y in [(1, 2), (3, 4)])", 14),
    ("2 ** 10", 1024),
    ("sorted(msg.faces, key=len)[0].name", "owner"),
    ("msg.n in range(5, 10)", True),
    ("[x for x in [0, 2, 4] if x != 0 if 8 / x > 3]", [2]),  # ifs short-circuit
])
def test_useful_expressions_work(source, expected):
    assert ev(source) == expected


# (expression, "load" if refused when the rules are loaded, else "run" for bounded at run time)
HOSTILE = [
    ('__import__("os").system("id")', "load"),  # import through a dunder builtin
    ("import os", "load"),  # a statement, not an expression
    ("().__class__.__bases__[0].__subclasses__()", "load"),  # the classic dunder walk
    ("msg.__class__.__init__.__globals__", "load"),
    ("msg.faces.__len__()", "load"),
    ("getattr(msg, '__class__')", "load"),  # getattr is not a function here
    ("open('/etc/passwd').read()", "load"),
    ("eval('1 + 1')", "load"),
    ("exec('x = 1')", "load"),
    ("compile('1', 'f', 'eval')", "load"),
    ("(lambda: 1)()", "load"),
    ("(x := 5)", "load"),  # assignment expression
    ("'{0.__class__}'.format(msg)", "load"),  # str.format reaches attributes
    ("f'{msg:>999999999}'", "load"),  # format-spec width allocates
    ("[*range(10)]", "load"),  # star-unpacking is not in the allowed node set
    ("[" * 100 + "]" * 100, "load"),  # nesting beyond the depth limit
    ("(" * 300 + "1" + ")" * 300, "load"),  # beyond the parser's own nesting limit
    ("-" * 100 + "1", "load"),  # deep unary nesting
    ("1 + " * 600 + "1", "load"),  # too long / too many nodes
    ("not_a_variable + 1", "load"),  # unknown name
    ("9 ** 9 ** 9", "run"),  # huge power
    ("2 ** 100000", "run"),
    ("1 << 10 ** 8", "run"),  # huge shift
    ("'a' * 10 ** 9", "run"),  # giant string
    ("'ab' * 40000 + 'cd' * 40000", "run"),  # concatenation over the cap
    ("[0] * 10 ** 8", "run"),  # giant list
    ("[x for x in range(10 ** 9)]", "run"),  # long comprehension over a huge range
    ("[[y for y in range(5000)] for x in range(5000)]", "run"),  # nested comprehensions
    ("sum(range(10 ** 12))", "run"),  # a C-level loop the deadline could not interrupt
    ("max(list(range(10 ** 7)))", "run"),
    ("str(10 ** 3000)", "run"),  # int bits cap (would also be a 3000-digit string)
    ("round(5, -10 ** 6)", "run"),
    ("msg.label.center(10 ** 9)", "load"),  # a method that allocates: not callable
    ("msg.faces.append(1)", "load"),  # mutation of message data
    ("state.update(armed=True)", "load"),  # mutation of rule state
    ("(10 ** 600) * (10 ** 600) * (10 ** 600) * (10 ** 600) * (10 ** 600)", "run"),
    ("sum(sum(range(9000)) for i in range(9000))", "run"),  # slow in total: deadline
    ("str([[0] * 99999] * 1000)", "run"),  # 1,000 references to one big list: 10^8 to print
    ("[msg.faces for i in range(10000)]", "run"),  # references to message data, multiplied
    ("sum([[0] * 50000, [0] * 50000], [])", "run"),  # list concatenation inside sum()
]


def test_table_has_at_least_twenty_hostile_expressions():
    assert len(HOSTILE) >= 20


@pytest.mark.parametrize("source, where", HOSTILE, ids=[h[0][:40] for h in HOSTILE])
def test_hostile_expression_is_rejected_or_bounded(source, where):
    if where == "load":
        with pytest.raises(ExpressionRejected):
            compile_expression(source, NAMES)
        return
    expr = compile_expression(source, NAMES)
    start = time.monotonic()
    with pytest.raises(ExpressionLimit):
        Evaluator(timeout_s=0.05).evaluate(expr, {"msg": FACES})
    # Bounded means quickly: well under a second even on a loaded 2-core machine.
    assert time.monotonic() - start < 1.0


def test_dunder_attribute_in_message_data_is_unreachable():
    # A key that looks like a dunder in the data is fine to read with [] but not as an attribute.
    assert ev("msg['__class__']", msg={"__class__": 1}) == 1
    with pytest.raises(ExpressionRejected):
        compile_expression("msg.__class__", NAMES)


def test_numpy_values_from_messages_are_bounded_too():
    import numpy as np

    with pytest.raises(ExpressionLimit):
        ev("'a' * msg.n", msg={"n": np.int64(10**9)})
    assert ev("len(msg.boxes) + int(msg.boxes[1][0])", msg={"boxes": np.arange(6).reshape(3, 2)}) == 5


def test_big_values_print_abbreviated():
    text = ev("f'{[0] * 90000}'")
    assert text.startswith("[0, 0,") and text.endswith("...]") and len(text) < 1000


def test_attribute_on_non_mapping_is_a_clear_error():
    with pytest.raises(ExpressionError, match="not available on a int"):
        ev("msg.n.real")
    with pytest.raises(ExpressionError, match="no field 'nope'.*faces"):
        ev("msg.nope")


def test_comprehension_budget_is_per_evaluation_not_per_process():
    expr = compile_expression(f"len([x for x in range({MAX_ITEMS})])", NAMES)
    evaluator = Evaluator(timeout_s=10.0)  # this test is about the item budget, not time
    for _ in range(3):
        assert evaluator.evaluate(expr, {}) == MAX_ITEMS


def test_runtime_errors_become_expression_errors():
    for source in ("1 / 0", "msg.faces[9]", "int('x')", "msg.faces + 1", "None < 1"):
        with pytest.raises(ExpressionError):
            ev(source)


def test_unknown_function_message_lists_what_exists():
    with pytest.raises(ExpressionRejected, match="'open' cannot be called; functions: abs"):
        compile_expression("open('x')", NAMES)


# --- fuzzing: whatever the text, the sandbox answers with a value or an ExpressionError --------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

TOKENS = ["msg", "msg.faces", "f", "f.name", "f.score", "state", "x", "1", "0", "-1", "2.5",
          "9", "'a'", '"owner"', "True", "None", "(", ")", "[", "]", "{", "}", ",", ":", ".",
          "+", "-", "*", "/", "//", "%", "**", "<<", ">>", "&", "|", "^", "~", "<", "<=", "==",
          "!=", "and", "or", "not", "in", "is", "if", "else", "for", "lambda", "len", "any",
          "max", "sum", "range", "sorted", "str", "int", "round", "lower", "split", "get",
          "__class__", "_x", "import", "f'{x}'", "[0]", "msg['label']"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=14).map(" ".join))
def test_any_token_soup_is_rejected_or_evaluated_safely(source):
    try:
        expr = compile_expression(source, NAMES)
    except ExpressionRejected:
        return
    try:
        Evaluator(timeout_s=0.05).evaluate(expr, {"msg": FACES, "state": {"x": 3}})
    except ExpressionError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_is_rejected_or_evaluated_safely(source):
    try:
        expr = compile_expression(source, NAMES)
    except ExpressionRejected:
        return
    try:
        Evaluator(timeout_s=0.05).evaluate(expr, {"msg": FACES})
    except ExpressionError:
        pass
