"""Hostile expressions: each is refused with a useful ExpressionError and nothing is executed."""

from __future__ import annotations

import builtins
import contextlib
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livetwin.expr import EvalContext, ExpressionError, compile_expression
from livetwin.expr import parser as expr_parser

KNOWN = ["x", "y", "flow", "pressure"]


@contextlib.contextmanager
def nothing_runs():
    """Fail the test if, inside the block, anything imports os, opens a file, evals or runs a
    command: compiling an expression must never execute any of it."""
    real_import = builtins.__import__

    def guarded_import(name, *args, **kwargs):
        if name in ("os", "subprocess", "sys", "shutil"):
            pytest.fail(f"an expression imported {name}")
        return real_import(name, *args, **kwargs)

    def forbidden(*args, **kwargs):
        pytest.fail("an expression executed code")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builtins, "__import__", guarded_import)
        for name in ("eval", "exec", "open"):
            patch.setattr(builtins, name, forbidden)
        patch.setattr(os, "system", forbidden)
        yield


def refuse(source, **kwargs) -> ExpressionError:
    """The ExpressionError that compiling `source` raises, checked to have run nothing."""
    with pytest.raises(ExpressionError) as info, nothing_runs():
        compile_expression(source, KNOWN, **kwargs)
    return info.value


# (source, words the message must contain, (line, col) or None where there is no position)
HOSTILE = [
    ("__import__('os').system('echo hi')", "only the listed functions", (1, 1)),
    ("__import__('os')", "names starting with '_'", (1, 1)),
    ("().__class__.__bases__[0].__subclasses__()", "only the listed functions", (1, 1)),
    ("x.__class__", "attribute access", (1, 1)),
    ("lambda: 1", "lambda not allowed", (1, 1)),
    ("[i for i in x]", "comprehensions not allowed", (1, 1)),
    ("abs(i for i in x)", "generator expressions not allowed", (1, 4)),
    ("9**9**9", "exponent of ** must be a number literal", (1, 4)),
    ("2**x", "there is no pow function", (1, 4)),
    ("x ** 17", "between -16 and 16", (1, 6)),
    ("2 ** 3 ** 2", "exponent of ** must be a number literal", (1, 6)),
    ("(" * 10000 + "1" + ")" * 10000, "too long", None),
    ("-" * 10000 + "1", "too long", None),
    ("+".join(["1"] * 100000), "too long", None),
    ("(" * 300 + "1" + ")" * 300, "too many nested parentheses", (1, 201)),
    ("-" * 3000 + "1", "too deeply nested (max 64)", None),
    ("-" * 65 + "1", "too deeply nested (max 64)", (1, 65)),
    ("+".join(["1"] * 1999), "too deeply nested (max 64)", (1, 1)),
    ("abs(" * 70 + "x" + ")" * 70, "too deeply nested (max 64)", (1, 257)),
    ("9" * 400, "huge literal", (1, 1)),
    ("1" + "0" * 300, "huge literal", (1, 1)),
    ("x + 1e999", "huge literal", (1, 5)),
    ("x * 2e300", "huge literal", (1, 5)),
    ("open('f')", "unknown function 'open'", (1, 1)),
    ("eval('1')", "unknown function 'eval'", (1, 1)),
    ("exec('1')", "unknown function 'exec'", (1, 1)),
    ("getattr(x, 'y')", "unknown function 'getattr'", (1, 1)),
    ("f'{x}'", "f-strings not allowed", (1, 1)),
    ("x[0]", "indexing", (1, 1)),
    ("x[0:1]", "indexing", (1, 1)),
    ("{1}", "sets not allowed", (1, 1)),
    ("{1: 2}", "dicts not allowed", (1, 1)),
    ("[x]", "lists not allowed", (1, 1)),
    ("(x, y)", "tuples not allowed", (1, 1)),
    ("(x := 1)", "assignment (:=) not allowed", (1, 2)),
    ("_secret", "names starting with '_'", (1, 1)),
    ("x + __builtins__", "names starting with '_'", (1, 5)),
    ("avg(x, dur='1m')", "keyword arguments are not allowed", (1, 8)),
    ("abs(*x)", "starred arguments", (1, 5)),
    ("foo(x)", "unknown function 'foo'", (1, 1)),
    ("flwo * 2", "Did you mean 'flow'", (1, 1)),
    ("avg(x, '10 parsecs')", "bad duration '10 parsecs'", (1, 8)),
    ("avg(x, '0s')", "between 1ms and 3650d", (1, 8)),
    ("avg(x, 10)", "duration must be a string literal", (1, 8)),
    ("avg(x)", "wrong arguments for avg", (1, 1)),
    ("ewma(x, 2)", "0 < alpha <= 1", (1, 9)),
    ("ewma(x, y)", "0 < alpha <= 1", (1, 9)),
    ("avg(3, '1m')", "must use a name", (1, 5)),
    ("min(x)", "wrong arguments for min", (1, 1)),
    ("clip(x, 1)", "wrong arguments for clip", (1, 1)),
    ("round(x, 2.5)", "digits of round", (1, 10)),
    ("'hi'", "string is only allowed as the duration", (1, 1)),
    ("b'hi'", "constant b'hi' is not allowed", (1, 1)),
    ("None", "constant None is not allowed", (1, 1)),
    ("1j", "constant 1j is not allowed", (1, 1)),
    ("x // 2", "operator '//' is not allowed", (1, 1)),
    ("x @ y", "operator '@' is not allowed", (1, 1)),
    ("x & y", "operator '&' is not allowed", (1, 1)),
    ("~x", "operator ~ is not allowed", (1, 1)),
    ("x in y", "comparison 'in' is not allowed", (1, 1)),
    ("x is None", "comparison 'is' is not allowed", (1, 1)),
    ("await x", "await not allowed", (1, 1)),
    ("(yield x)", "yield not allowed", (1, 2)),
    ("x = 1", "syntax error", (1, 3)),
    ("import os", "syntax error", (1, 1)),
    ("x +* 2", "syntax error: invalid syntax", (1, 4)),
    ("x if y", "syntax error", (1, 1)),
    ("1and x", "syntax error: invalid decimal literal", (1, 1)),
    ("avg(x, '\\d')", "syntax error: invalid escape sequence", (1, 8)),
    ("", "empty", None),
    ("  \n ", "empty", None),
    ("x\x00", "NUL character", None),
]


@pytest.mark.parametrize(("source", "words", "position"), HOSTILE)
def test_hostile_input_is_refused_with_a_useful_message(source, words, position):
    e = refuse(source, field="derived.d.expr")
    assert words in e.message
    assert e.field == "derived.d.expr" and e.source == source
    shown = repr(source) if len(source) <= 80 else "..."
    assert shown in e.message  # the message names the expression (or shows part of it)
    if position is None:
        assert e.line is None
    else:
        assert (e.line, e.col) == position
        assert f"line {position[0]}, col {position[1]}" in e.message


@pytest.mark.parametrize(
    "source",
    ["(" * 10000 + "1" + ")" * 10000, "-" * 10000 + "1", "+".join(["1"] * 100000), "not " * 50000],
)
def test_parser_crashes_become_expression_errors(monkeypatch, source):
    """Past the length limit, ast.parse raises SyntaxError, RecursionError or MemoryError."""
    monkeypatch.setattr(expr_parser, "MAX_SOURCE_LENGTH", 10**7)
    assert "nested" in refuse(source).message


def test_nesting_up_to_the_limit_is_fine():
    assert compile_expression("-" * 63 + "1", KNOWN).evaluate({}, size=1).tolist() == [-1.0]
    assert compile_expression("+".join(["x"] * 64), KNOWN).evaluate({"x": np.ones(1)}) == 64


def test_windows_are_refused_in_filters():
    for source in ("avg(flow, '10m') > 3", "1 + time_in(x > 1, '1h')", "max(x, '1m')"):
        e = refuse(source, allow_windows=False, field="where")
        assert "window functions are not allowed in filters" in e.message and e.field == "where"
    assert "avg" not in refuse("bogus(x)", allow_windows=False).message  # no windows in filters


def test_non_string_source_is_refused():
    assert "must be a string" in refuse(b"x").message


def test_long_expressions_are_shown_around_the_error():
    source = "x + " * 30 + "y.z" + " + x" * 30
    message = refuse(source).message
    assert "y.z" in message and len(message) < len(source) + 400


# -- fuzzing: any text either compiles or raises ExpressionError, never anything else ----------

_ALPHABET = "xyflowpressure_ 0123456789.+-*/%<>=!()[]{},:'\"avgminaxsumcountratedeltaewmatime_in\n"
_TOKENS = [
    "x", "y", "flow", "1", "2.5", "1e3", "+", "-", "*", "/", "%", "**", "(", ")", ",", "<", "==",
    " and ", " or ", "not ", " if ", " else ", "avg(", "min(", "max(", "ewma(", "delta(", "rate(",
    "time_in(", "count(", "sum(", "abs(", "clip(", "round(", "'1m'", "'5s'", "0.5", "isnan(",
]  # fmt: skip


def _evaluate_whatever_compiled(compiled):
    env = {name: np.array([1.0, np.nan, -2.0]) for name in compiled.names}
    present = {name: np.array([True, True, False]) for name in compiled.names}
    ctx = EvalContext(np.array([0, 1000, 2000]), np.arange(3), present, compiled.new_states(3))
    out = compiled.evaluate(env, ctx, size=3)
    assert out.shape == (3,) and out.dtype == np.float64


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_ALPHABET, max_size=60) | st.text(max_size=30))
def test_random_text_compiles_or_raises_expression_error(source):
    try:
        compiled = compile_expression(source, KNOWN)
    except ExpressionError:
        return
    _evaluate_whatever_compiled(compiled)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS), max_size=25).map("".join))
def test_random_token_soup_compiles_or_raises_expression_error(source):
    try:
        compiled = compile_expression(source, KNOWN)
    except ExpressionError:
        return
    _evaluate_whatever_compiled(compiled)
