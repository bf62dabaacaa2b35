"""Compile a validated expression tree once into closures over NumPy, and evaluate it for the rows
of a wave: every operation runs on whole columns, never on one row at a time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from livetwin.expr import parser
from livetwin.expr.aggregates import AggregateSpec
from livetwin.expr.windows import WindowSpec, WindowState

Value = np.ndarray | float
Fn = Callable[["_Frame"], Value]


@dataclass
class EvalContext:
    """What window functions need for one evaluate() call over M rows.

    ts: int64 epoch milliseconds a row; rows: int64 distinct row indices into the window states;
    present: for each name, a bool array saying whether the row's observation (re)set it;
    states: one state per entry of `Compiled.windows`, in the same order.
    """

    ts: np.ndarray
    rows: np.ndarray
    present: Mapping[str, np.ndarray]
    states: Sequence[WindowState]


@dataclass(frozen=True)
class _Frame:
    """What the closures of one evaluate() call read."""

    columns: Mapping[str, np.ndarray]
    size: int
    ctx: EvalContext | None


@dataclass(frozen=True)
class Compiled:
    """A compiled expression: evaluate it on columns of float64 values, one entry a row.

    `names` holds every name the expression uses (inside windows too) and `windows` every
    window-function call, inner ones before outer ones; keep one state per window per type.
    `aggregates` holds its aggregates over children: `evaluate` reads each one's values from
    `env[spec.key]` (the engine computes them).
    """

    source: str
    names: frozenset[str]
    windows: tuple[WindowSpec, ...]
    _fn: Fn = field(repr=False, compare=False)
    aggregates: tuple[AggregateSpec, ...] = ()
    text: frozenset[str] = frozenset()
    """The text attributes among `names`: their `env` arrays hold strings (None: unset)."""

    def new_states(self, capacity: int) -> list[WindowState]:
        """Empty window states for `capacity` rows, in the order of `windows`."""
        return [spec.new_state(capacity) for spec in self.windows]

    def evaluate(
        self,
        env: Mapping[str, np.ndarray],
        ctx: EvalContext | None = None,
        *,
        size: int | None = None,
    ) -> np.ndarray:
        """Values for M rows as a new float64 array (booleans are 1.0 / 0.0).

        `env` maps each name in `names` to a float64 array of length M. `ctx` is required when
        the expression has windows, which it updates. `size` gives M when nothing else does
        (an expression without names or windows).
        """
        if self.windows:
            if ctx is None:
                raise ValueError(f"{self.source!r} has window functions: pass an EvalContext")
            if len(ctx.states) != len(self.windows):
                raise ValueError(f"{self.source!r} needs {len(self.windows)} window states")
        size = _row_count(self, env, ctx, size)
        columns = {name: _column(env, name, size, name in self.text) for name in self.names}
        columns.update((a.key, _column(env, a.key, size)) for a in self.aggregates)
        if ctx is not None:
            ctx = _checked_context(ctx, size)
        with np.errstate(all="ignore"):
            out = self._fn(_Frame(columns, size, ctx))
        return _rows_of(out, size)


def compile_expression(
    source: str,
    known_names: Iterable[str],
    *,
    allow_windows: bool = True,
    field: str | None = None,
    child_types: Iterable[str] | None = None,
    text_names: Iterable[str] = (),
) -> Compiled:
    """Validate `source` against the whitelist and compile it; raise ExpressionError if refused.

    `known_names` are the names it may use; window functions only when `allow_windows`;
    `field` names the place the expression came from (e.g. "derived.power.expr") in errors;
    `child_types` (a type's allowed children) allows aggregates over children; `text_names`
    (text attributes) may be compared with strings (`mode == 'auto'`).
    """
    parsed = parser.parse_expression(
        source,
        known_names,
        allow_windows=allow_windows,
        field=field,
        child_types=child_types,
        text_names=text_names,
    )
    fn = _compile(parsed.tree)
    text = parsed.names & frozenset(text_names)
    return Compiled(source, parsed.names, parsed.windows, fn, parsed.aggregates, text)


# -- semantics -----------------------------------------------------------------------------
# NaN means "unknown" and propagates as in SQL: a comparison with NaN is NaN; `and` is 0 if either
# side is 0, else NaN if either is NaN; `or` is 1 if either side is true, else NaN if either is
# NaN; `not NaN` is NaN; `a if NaN else b` is NaN. Any other non-zero value is true.


def _unknown(*values: Value) -> np.ndarray:
    return functools.reduce(np.logical_or, map(np.isnan, values))


def _truth(value: Value) -> np.ndarray:
    """True where value is known and non-zero."""
    return (value != 0) & ~np.isnan(value)


def _compare(op: Callable) -> Callable[[Value, Value], Value]:
    return lambda a, b: np.where(_unknown(a, b), np.nan, op(a, b))


def _text_compare(op: str, column: np.ndarray, value: str) -> Value:
    """A text column (strings, None where unset) compared with `value`: 1.0 / 0.0, NaN unset."""
    equal = np.equal(column, value).astype(bool)
    unset = np.equal(column, None).astype(bool)
    return np.where(unset, np.nan, equal if op == "==" else ~equal).astype(np.float64)


def _and(a: Value, b: Value) -> Value:
    return np.where((a == 0) | (b == 0), 0.0, np.where(_unknown(a, b), np.nan, 1.0))


def _or(a: Value, b: Value) -> Value:
    return np.where(_truth(a) | _truth(b), 1.0, np.where(_unknown(a, b), np.nan, 0.0))


def _not(a: Value) -> Value:
    return np.where(np.isnan(a), np.nan, a == 0)


def _if_else(test: Value, body: Value, orelse: Value) -> Value:
    return np.where(np.isnan(test), np.nan, np.where(test != 0, body, orelse))


_UNARY = {"+": np.positive, "-": np.negative, "not": _not}
_BINARY = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": np.true_divide,
    "%": np.mod,
    "**": np.power,
}
_COMPARE = {
    "<": _compare(np.less),
    "<=": _compare(np.less_equal),
    ">": _compare(np.greater),
    ">=": _compare(np.greater_equal),
    "==": _compare(np.equal),
    "!=": _compare(np.not_equal),
}
_BOOL = {"and": _and, "or": _or}
_MATH = {
    "abs": np.abs,
    "sqrt": np.sqrt,
    "exp": np.exp,
    "log": np.log,
    "log10": np.log10,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "floor": np.floor,
    "ceil": np.ceil,
    "round": lambda x, digits=0.0: np.round(x, int(digits)),
    "clip": np.clip,
    "min": lambda *xs: functools.reduce(np.minimum, xs),
    "max": lambda *xs: functools.reduce(np.maximum, xs),
    "isnan": lambda x: np.isnan(x).astype(np.float64),
}
assert set(_MATH) == set(parser.MATH_FUNCTIONS)


def _compile(node: parser.Node) -> Fn:
    """A closure computing `node` from a frame; each call runs only NumPy operations."""
    match node:
        case parser.Number(value):
            return lambda frame: value
        case parser.Name(name):
            return lambda frame: frame.columns[name]
        case parser.Unary(op, operand):
            return _apply(_UNARY[op], operand)
        case parser.Binary(op, left, right):
            return _apply(_BINARY[op], left, right)
        case parser.Compare(ops, operands):
            return _chain([_COMPARE[op] for op in ops], [_compile(x) for x in operands])
        case parser.TextCompare(op, name, value):
            return lambda frame: _text_compare(op, frame.columns[name], value)
        case parser.BoolOp(op, values):
            return _combine(_BOOL[op], [_compile(value) for value in values])
        case parser.IfElse(test, body, orelse):
            return _apply(_if_else, test, body, orelse)
        case parser.Call(func, args):
            return _apply(_MATH[func], *args)
        case parser.Window():
            return _window(node)
        case parser.Aggregate(spec):
            key = spec.key
            return lambda frame: frame.columns[key]
    raise TypeError(f"not an expression node: {node!r}")


def _apply(op: Callable[..., Value], *args: parser.Node) -> Fn:
    fns = [_compile(arg) for arg in args]
    if len(fns) == 1:
        (f,) = fns
        return lambda frame: op(f(frame))
    if len(fns) == 2:
        f, g = fns
        return lambda frame: op(f(frame), g(frame))
    return lambda frame: op(*(f(frame) for f in fns))


def _chain(compares: list[Callable[[Value, Value], Value]], fns: list[Fn]) -> Fn:
    """`a < b <= c` is `(a < b) and (b <= c)`, each operand computed once."""

    def run(frame: _Frame) -> Value:
        values = [f(frame) for f in fns]
        pairs = zip(compares, values, values[1:], strict=False)
        return functools.reduce(_and, (compare(a, b) for compare, a, b in pairs))

    return run


def _combine(op: Callable[[Value, Value], Value], fns: list[Fn]) -> Fn:
    if len(fns) == 1:
        return fns[0]
    return lambda frame: functools.reduce(op, (f(frame) for f in fns))


def _window(node: parser.Window) -> Fn:
    """Feed the window's state for the rows whose sample counts, then read it for all rows.

    A row feeds a finite value of the first argument; except for time_in, only when the row's
    observation holds any name that argument uses (`ctx.present`).
    """
    inner, index, spec = _compile(node.arg), node.index, node.spec
    names = sorted(spec.names)

    def run(frame: _Frame) -> np.ndarray:
        values = _rows_of(inner(frame), frame.size)
        feed = np.isfinite(values)
        if spec.func != "time_in":
            feed &= _any_present(frame.ctx.present, names, frame.size)
        return frame.ctx.states[index].update(frame.ctx.rows, frame.ctx.ts, values, feed)

    return run


def _any_present(present: Mapping[str, np.ndarray], names: list[str], size: int) -> np.ndarray:
    missing = [name for name in names if name not in present]
    if missing:
        raise KeyError(f"EvalContext.present has no entry for {missing}")
    masks = [_mask_of(present[name], size) for name in names]
    return functools.reduce(np.logical_or, masks)


def _rows_of(value: Value, size: int) -> np.ndarray:
    """`value` (`size` rows, or one value for all) as a new float64 array of `size` rows."""
    if isinstance(value, np.ndarray) and value.shape == (size,):
        return value.astype(np.float64)  # a copy (the common case: no broadcasting needed)
    return np.array(np.broadcast_to(value, (size,)), dtype=np.float64)


def _mask_of(value, size: int) -> np.ndarray:
    """`value` (a bool per row, or one for all) as `size` bools."""
    if isinstance(value, np.ndarray) and value.dtype == bool and value.shape == (size,):
        return value
    return np.broadcast_to(np.asarray(value, dtype=bool), (size,))


def _row_count(
    compiled: Compiled, env: Mapping[str, np.ndarray], ctx: EvalContext | None, size: int | None
) -> int:
    if size is not None:
        return size
    if ctx is not None:
        return len(ctx.ts)
    for name in (*sorted(compiled.names), *(a.key for a in compiled.aggregates), *env):
        if name in env:
            return len(env[name])
    raise ValueError(f"{compiled.source!r} uses no names: pass size= to evaluate()")


def _column(env: Mapping[str, np.ndarray], name: str, size: int, text: bool = False) -> np.ndarray:
    if name not in env:
        raise KeyError(f"no values given for {name!r}")
    column = np.asarray(env[name], dtype=object if text else np.float64)
    if column.shape != (size,):
        raise ValueError(f"values of {name!r} have shape {column.shape}, expected ({size},)")
    return column


def _checked_context(ctx: EvalContext, size: int) -> EvalContext:
    ts, rows = np.asarray(ctx.ts, dtype=np.int64), np.asarray(ctx.rows, dtype=np.int64)
    if ts.shape != (size,) or rows.shape != (size,):
        raise ValueError(f"EvalContext.ts and .rows need {size} entries, one a row")
    return EvalContext(ts, rows, ctx.present, ctx.states)
