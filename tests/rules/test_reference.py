"""The compiled sandbox against a reference nobody here wrote: simpleeval's tree walker.

For expressions from a small grammar (numbers, strings, message fields, arithmetic, comparisons,
boolean logic, conditionals, lists, comprehensions over the message's faces, a few functions),
our closures and simpleeval (through its public API only: `EvalWithCompoundTypes(names=,
functions=).eval`) must agree: the same value, or both an error.
"""

from __future__ import annotations

import math

import pytest
import simpleeval  # the [test] extra installs it
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotrt.rules.expressions import Evaluator, ExpressionError, compile_expression

MSG = {"n": 7, "d": 0.25, "label": "Front Door", "tags": ["a", "b"],
       "faces": [{"name": "owner", "score": 0.93}, {"name": "unknown", "score": 0.4}]}
NAMES = ("msg",)
FUNCTIONS = {"len": len, "max": max, "min": min, "abs": abs, "any": any, "all": all, "sum": sum,
             "round": round}

numbers = st.sampled_from(["0", "1", "2", "-3", "7", "0.5", "2.5", "msg.n", "msg.d",
                           "msg.faces[0].score", "len(msg.faces)", "len(msg.label)"])
strings = st.sampled_from(["'a'", "'owner'", "msg.label", "msg.faces[1].name", "msg.tags[0]",
                           "msg.label.lower()"])
face_tests = st.sampled_from(["f.score > 0.5", "f.name == 'owner'", "f.score * 2 < 1",
                              "f.name != msg.tags[0]", "len(f.name) > 5"])


def _expressions():
    def extend(inner):
        return st.one_of(
            st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "//", "%"]), inner)
            .map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            st.tuples(inner, st.sampled_from(["<", "<=", "==", "!=", ">", ">="]), inner)
            .map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            st.tuples(inner, st.sampled_from(["and", "or"]), inner)
            .map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            inner.map(lambda x: f"(not {x})"),
            inner.map(lambda x: f"(-{x})"),
            st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
            st.lists(inner, min_size=1, max_size=3).map(lambda xs: f"[{', '.join(xs)}]"),
            st.lists(inner, min_size=1, max_size=3).map(lambda xs: f"max([{', '.join(xs)}])"),
            st.tuples(inner, inner).map(lambda t: f"({t[0]} in [{t[1]}, 1])"),
            st.tuples(st.sampled_from(["any", "all", "sum", "len"]), face_tests)
            .map(lambda t: f"{t[0]}({t[1]} for f in msg.faces)"),
            face_tests.map(lambda c: f"[f.name for f in msg.faces if {c}]"),
            st.tuples(inner, inner).map(lambda t: f"{t[0]} < {t[1]} <= 3"),
        )
    return st.recursive(st.one_of(numbers, strings), extend, max_leaves=8)


def _ours(source: str):
    expr = compile_expression(source, NAMES)
    try:
        return "ok", Evaluator(timeout_s=1.0).evaluate(expr, {"msg": MSG})
    except ExpressionError:
        return "error", None


def _reference(source: str):
    evaluator = simpleeval.EvalWithCompoundTypes(names={"msg": MSG}, functions=FUNCTIONS)
    try:
        return "ok", evaluator.eval(source)
    except (simpleeval.InvalidExpression, ArithmeticError, LookupError, TypeError,
            ValueError, AttributeError):
        return "error", None


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_expressions())
def test_compiled_expressions_agree_with_simpleeval(source):
    ours, reference = _ours(source), _reference(source)
    assert ours[0] == reference[0] and (ours[0] == "error" or _same(ours[1], reference[1])), (
        f"{source}: ours {ours}, simpleeval {reference}")


@pytest.mark.parametrize("source", [
    'any(f.name == "owner" and f.score > 0.8 for f in msg.faces)',
    "max(f.score for f in msg.faces) > 0.9",
    "msg.label.lower().startswith('front')",
    "[f.name for f in msg.faces if f.score > 0.5] == ['owner']",
    "msg.n % 4 == 3 and msg.d < 0.3",
    "{f.name: f.score for f in msg.faces}['owner']",
    "'night' if msg.n >= 22 or msg.n < 6 else 'day'",
])
def test_the_documented_examples_agree_with_simpleeval(source):
    assert _ours(source) == _reference(source)
