"""Parse an expression with Python's `ast` and walk a whitelist of node types into a small tree.

Anything not on the whitelist is refused with an `ExpressionError`; nothing is ever executed here.
"""

from __future__ import annotations

import ast
import difflib
import keyword
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

from livetwin.expr.aggregates import AGGREGATE_FUNCTIONS, CHILDREN, AggregateSpec
from livetwin.expr.errors import ExpressionError
from livetwin.expr.windows import DURATION_UNITS, WINDOW_FUNCTIONS, WindowSpec, parse_duration

MAX_SOURCE_LENGTH = 4000
MAX_DEPTH = 64
MAX_LITERAL = 1e300
MAX_INT_DIGITS = 300
MAX_EXPONENT = 16
MAX_ROUND_DIGITS = 15

# Words an expression reads as syntax or constants (True, False, None, and, or, not, if, lambda,
# ...): never the name of a property, parameter or derived value.
RESERVED_NAMES = frozenset(keyword.kwlist)

MATH_FUNCTIONS = {
    "abs": "abs(x)",
    "sqrt": "sqrt(x)",
    "exp": "exp(x)",
    "log": "log(x)",
    "log10": "log10(x)",
    "sin": "sin(x)",
    "cos": "cos(x)",
    "tan": "tan(x)",
    "floor": "floor(x)",
    "ceil": "ceil(x)",
    "round": "round(x) or round(x, digits)",
    "clip": "clip(x, lo, hi)",
    "min": "min(a, b, ...)",
    "max": "max(a, b, ...)",
    "isnan": "isnan(x)",
}
WINDOW_SIGNATURES = {
    "avg": "avg(x, '10m')",
    "min": "min(x, '10m')",
    "max": "max(x, '10m')",
    "sum": "sum(x, '10m')",
    "count": "count(x, '10m')",
    "rate": "rate(x, '10m')",
    "delta": "delta(x) or delta(x, '10m')",
    "ewma": "ewma(x, 0.2)",
    "time_in": "time_in(cond, '1h')",
}
assert set(WINDOW_SIGNATURES) == set(WINDOW_FUNCTIONS)

_UNARY = {ast.UAdd: "+", ast.USub: "-", ast.Not: "not"}
_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Mod: "%", ast.Pow: "**"}
_COMPARE = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}
_BOOL = {ast.And: "and", ast.Or: "or"}

_REFUSED = {  # friendly names of common node types that are not allowed
    ast.Subscript: "indexing (x[i])",
    ast.Slice: "slices",
    ast.Lambda: "lambda",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "generator expressions",
    ast.JoinedStr: "f-strings",
    ast.FormattedValue: "f-strings",
    ast.NamedExpr: "assignment (:=)",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Set: "sets",
    ast.Dict: "dicts",
    ast.Starred: "starred arguments (*x)",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
}


# The validated tree. Numbers are floats; booleans are 1.0 / 0.0.


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class Name:
    name: str


@dataclass(frozen=True)
class Unary:
    op: str  # '+', '-', 'not'
    operand: Node


@dataclass(frozen=True)
class Binary:
    op: str  # '+', '-', '*', '/', '%', '**' (the right side of '**' is a Number)
    left: Node
    right: Node


@dataclass(frozen=True)
class Compare:
    ops: tuple[str, ...]  # a chain: operands[i] ops[i] operands[i + 1], all of them
    operands: tuple[Node, ...]


@dataclass(frozen=True)
class TextCompare:
    """A text attribute compared with a string: `mode == 'auto'` (1.0 / 0.0, NaN if unset)."""

    op: str  # '==', '!='
    name: str
    value: str


@dataclass(frozen=True)
class BoolOp:
    op: str  # 'and', 'or'
    values: tuple[Node, ...]


@dataclass(frozen=True)
class IfElse:
    test: Node
    body: Node
    orelse: Node


@dataclass(frozen=True)
class Call:
    func: str  # a key of MATH_FUNCTIONS
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Window:
    index: int  # position of `spec` in Parsed.windows
    spec: WindowSpec
    arg: Node


@dataclass(frozen=True)
class Aggregate:
    spec: AggregateSpec


Node = (
    Number
    | Name
    | Unary
    | Binary
    | Compare
    | TextCompare
    | BoolOp
    | IfElse
    | Call
    | Window
    | Aggregate
)


@dataclass(frozen=True)
class Parsed:
    tree: Node
    names: frozenset[str]
    windows: tuple[WindowSpec, ...]  # in evaluation order: inner windows before outer ones
    aggregates: tuple[AggregateSpec, ...] = ()  # distinct, in order of appearance


def allowed_summary(allow_windows: bool) -> str:
    """One sentence saying what an expression may contain."""
    text = (
        "Allowed: numbers, names, + - * / % ** (with a number exponent), comparisons, "
        "and/or/not, 'a if cond else b', and the functions " + ", ".join(MATH_FUNCTIONS)
    )
    if allow_windows:
        text += "; window functions " + ", ".join(WINDOW_SIGNATURES.values())
    return text + "."


def parse_expression(
    source: str,
    known_names: Iterable[str],
    *,
    allow_windows: bool = True,
    field: str | None = None,
    child_types: Iterable[str] | None = None,
    text_names: Iterable[str] = (),
) -> Parsed:
    """Validate `source` and return its tree; raise ExpressionError for anything not allowed.

    `child_types` (the type's allowed children) allows aggregates over children; None refuses
    them. `text_names` (text attributes) may only be compared with a string by == or !=.
    """
    return _Parser(source, known_names, allow_windows, field, child_types, text_names).parse()


class _Parser:
    def __init__(
        self, source, known_names, allow_windows: bool, field: str | None, child_types, text=()
    ):
        self.source = source
        self.known = frozenset(known_names)
        self.text = frozenset(text)
        self.allow_windows = allow_windows
        self.field = field
        self.child_types = None if child_types is None else tuple(child_types)
        self.names: set[str] = set()
        self.windows: list[WindowSpec] = []
        self.aggregates: dict[str, AggregateSpec] = {}
        self.allowed = allowed_summary(allow_windows)
        # ast.parse refuses leading white space in eval mode: parse the stripped source and map
        # positions back with the lines and columns stripped in front.
        self._stripped = source.strip() if isinstance(source, str) else ""
        lead = source[: len(source) - len(source.lstrip())] if self._stripped else ""
        self._lead_lines = lead.count("\n")
        self._lead_cols = len(lead) - (lead.rfind("\n") + 1)

    # -- errors --------------------------------------------------------------------------

    def error(self, where: ast.AST | tuple[int, int] | None, problem: str, allowed=None):
        """An ExpressionError naming the expression, the position of `where` and what is allowed.

        `where` is an ast node, a (line, 1-based column) pair, or None when there is no position.
        """
        allowed = self.allowed if allowed is None else allowed  # "" for none
        line = col = None
        if isinstance(where, ast.AST):
            line, col = self._position(where)
        elif where is not None:
            line, col = where
        shown = _excerpt(self.source, line, col)
        at = f", line {line}, col {col}" if line is not None else ""
        return ExpressionError(
            f"expression {shown!r}{at}: {problem}." + (f" {allowed}" if allowed else ""),
            field=self.field,
            fix=allowed or None,
            source=self.source,
            line=line,
            col=col,
        )

    def _position(self, node: ast.AST) -> tuple[int, int]:
        """(line, 1-based column in characters) of an ast node (ast counts columns in bytes)."""
        line = node.lineno
        text = self._stripped.split("\n")[line - 1]
        col = len(text.encode()[: node.col_offset].decode(errors="replace")) + 1
        return self._unstrip(line, col)

    def _unstrip(self, line: int, col: int) -> tuple[int, int]:
        """Map a position in the stripped source back to the source as given."""
        if line == 1:
            col += self._lead_cols
        return line + self._lead_lines, col

    # -- parsing -------------------------------------------------------------------------

    def parse(self) -> Parsed:
        source = self.source
        if not isinstance(source, str):
            raise ExpressionError(
                f"expression must be a string, got {type(source).__name__}", field=self.field
            )
        if len(source) > MAX_SOURCE_LENGTH:
            raise self.error(None, f"too long ({len(source)} characters, max {MAX_SOURCE_LENGTH})")
        if not self._stripped:
            raise self.error(None, "it is empty")
        if "\x00" in source:
            raise self.error(None, "it contains a NUL character")
        try:
            with warnings.catch_warnings():  # e.g. '1and x': refuse what Python only warns about
                warnings.simplefilter("error", SyntaxWarning)
                warnings.simplefilter("error", DeprecationWarning)
                body = ast.parse(self._stripped, mode="eval").body
        except SyntaxError as e:
            where = self._unstrip(e.lineno, e.offset) if e.lineno and e.offset else None
            raise self.error(where, f"syntax error: {e.msg}") from None
        except (RecursionError, MemoryError):
            raise self.error(None, f"too deeply nested (max {MAX_DEPTH})") from None
        tree = self.visit(body, 1)
        aggregates = tuple(self.aggregates.values())
        return Parsed(tree, frozenset(self.names), tuple(self.windows), aggregates)

    def visit(self, node: ast.AST, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise self.error(node, f"too deeply nested (max {MAX_DEPTH})")
        handler = self._HANDLERS.get(type(node))
        if handler is None:
            what = _REFUSED.get(type(node), type(node).__name__)
            raise self.error(node, f"{what} not allowed")
        return handler(self, node, depth + 1)

    def _constant(self, node: ast.Constant, depth: int) -> Node:
        value = node.value
        if isinstance(value, str):
            raise self.error(
                node, "a string is only allowed as the duration of a window function", _units()
            )
        if isinstance(value, bool):
            return Number(float(value))
        if isinstance(value, int | float):
            return Number(self._check_literal(node, value))
        raise self.error(node, f"the constant {value!r} is not allowed")

    def _check_literal(self, node: ast.AST, value: int | float) -> float:
        if isinstance(value, int):
            huge = abs(value) >= 10**MAX_INT_DIGITS
        else:
            huge = not abs(value) <= MAX_LITERAL  # also catches inf (1e999)
        if huge:
            raise self.error(node, f"huge literal (the limit is {MAX_LITERAL:g})")
        return float(value)

    def _name(self, node: ast.Name, depth: int) -> Node:
        name = node.id
        if name.startswith("_"):
            raise self.error(node, f"names starting with '_' are not allowed ({name!r})")
        if name == CHILDREN and name not in self.known:
            raise self.error(node, *self._children_outside())
        if name in self.text:
            raise self.error(
                node,
                f"{name!r} is a text attribute: compare it with a string, e.g. {name} == 'value'",
                "",
            )
        if name not in self.known:
            known = self.known | self.text
            raise self.error(node, f"unknown name {name!r}", _suggest(name, known, "names"))
        self.names.add(name)
        return Name(name)

    def _unary(self, node: ast.UnaryOp, depth: int) -> Node:
        op = _UNARY.get(type(node.op))
        if op is None:
            raise self.error(node, "the operator ~ is not allowed")
        return Unary(op, self.visit(node.operand, depth))

    def _binary(self, node: ast.BinOp, depth: int) -> Node:
        op = _BINARY.get(type(node.op))
        if op is None:
            raise self.error(node, f"the operator '{_symbol(node.op)}' is not allowed")
        left = self.visit(node.left, depth)
        if op == "**":
            exponent = _number_literal(node.right)
            if exponent is None or abs(exponent) > MAX_EXPONENT:
                raise self.error(
                    node.right,
                    f"the exponent of ** must be a number literal between -{MAX_EXPONENT} "
                    f"and {MAX_EXPONENT} (there is no pow function)",
                    "Write e.g. x ** 2, x ** 0.5 or sqrt(x), exp(y * log(x)) for x ** y.",
                )
            return Binary(op, left, Number(exponent))
        return Binary(op, left, self.visit(node.right, depth))

    def _compare(self, node: ast.Compare, depth: int) -> Node:
        text = self._text_compare(node)
        if text is not None:
            return text
        ops = []
        for op in node.ops:
            if type(op) not in _COMPARE:
                raise self.error(node, f"the comparison '{_symbol(op)}' is not allowed")
            ops.append(_COMPARE[type(op)])
        operands = [self.visit(operand, depth) for operand in (node.left, *node.comparators)]
        return Compare(tuple(ops), tuple(operands))

    def _text_compare(self, node: ast.Compare) -> TextCompare | None:
        """`attr == 'x'`, `'x' != attr`: a text attribute and a string literal, else None."""
        sides = [node.left, *node.comparators]
        names = [s for s in sides if isinstance(s, ast.Name) and s.id in self.text]
        if not names:
            return None
        strings = [s for s in sides if isinstance(s, ast.Constant) and isinstance(s.value, str)]
        op = _COMPARE.get(type(node.ops[0]))
        if len(sides) != 2 or len(strings) != 1 or op not in ("==", "!="):
            name = names[0].id
            raise self.error(
                node,
                f"a text attribute is compared with one string by == or != "
                f"(e.g. {name} == 'value' or {name} != 'value')",
                "",
            )
        self.names.add(names[0].id)
        return TextCompare(op, names[0].id, strings[0].value)

    def _bool_op(self, node: ast.BoolOp, depth: int) -> Node:
        return BoolOp(_BOOL[type(node.op)], tuple(self.visit(v, depth) for v in node.values))

    def _if_else(self, node: ast.IfExp, depth: int) -> Node:
        test = self.visit(node.test, depth)
        return IfElse(test, self.visit(node.body, depth), self.visit(node.orelse, depth))

    def _call(self, node: ast.Call, depth: int) -> Node:
        functions = _function_list(self.allow_windows)
        if not isinstance(node.func, ast.Name):
            if _children_root(node) and CHILDREN not in self.known:
                raise self.error(node, *self._children_outside())
            raise self.error(node, "only the listed functions can be called by name", functions)
        func = node.func.id
        if func.startswith("_"):
            raise self.error(node, f"names starting with '_' are not allowed ({func!r})", functions)
        if node.keywords:
            raise self.error(
                node.keywords[0], f"keyword arguments are not allowed in {func}()", functions
            )
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.error(arg, "starred arguments (*x) are not allowed", functions)
        if len(node.args) == 1 and _children_root(node.args[0]) and CHILDREN not in self.known:
            return self._aggregate(node, func)
        if func in WINDOW_FUNCTIONS and (func not in ("min", "max") or _has_duration(node)):
            return self._window(node, func, depth)
        if func not in MATH_FUNCTIONS:
            known = set(MATH_FUNCTIONS) | (set(WINDOW_FUNCTIONS) if self.allow_windows else set())
            raise self.error(node, f"unknown function {func!r}", _suggest(func, known, "functions"))
        args = node.args
        if func in ("min", "max"):
            ok = len(args) >= 2
        elif func == "round":
            ok = len(args) == 1 or (len(args) == 2 and self._round_digits(args[1]))
        else:
            ok = len(args) == MATH_FUNCTIONS[func].count(",") + 1
        if not ok:
            signature = MATH_FUNCTIONS[func]
            if func in ("min", "max"):
                signature += f" or {WINDOW_SIGNATURES[func]}"
            raise self.error(node, f"wrong arguments for {func}: write {signature}", functions)
        return Call(func, tuple(self.visit(arg, depth) for arg in args))

    def _round_digits(self, node: ast.AST) -> bool:
        digits = _number_literal(node)
        if digits is None or digits != int(digits) or abs(digits) > MAX_ROUND_DIGITS:
            raise self.error(
                node, f"the digits of round must be a whole number literal up to {MAX_ROUND_DIGITS}"
            )
        return True

    def _window(self, node: ast.Call, func: str, depth: int) -> Node:
        signature = WINDOW_SIGNATURES[func]
        if not self.allow_windows:
            raise self.error(
                node,
                f"window functions are not allowed in filters ({func})",
                "Filters compare current values. " + self.allowed,
            )
        args = node.args
        counts = (1, 2) if func == "delta" else (2,)
        if len(args) not in counts:
            raise self.error(node, f"wrong arguments for {func}: write {signature}")
        outer_names, self.names = self.names, set()
        aggregates = len(self.aggregates)
        arg = self.visit(args[0], depth)
        inner_names, self.names = frozenset(self.names), outer_names | self.names
        if len(self.aggregates) > aggregates:
            raise self.error(
                args[0],
                f"a window function ({func}) cannot take an aggregate of children",
                "Aggregate the children's own windowed values instead: give the child type a "
                "derived value such as flow_1h: \"avg(flow, '1h')\" and write "
                "sum(children.flow_1h).",
            )
        if not inner_names:
            raise self.error(args[0], f"the first argument of {func} must use a name")
        duration = alpha = None
        if func == "ewma":
            alpha = _number_literal(args[1])
            if alpha is None or not 0 < alpha <= 1:
                raise self.error(
                    args[1],
                    "ewma's alpha must be a number literal with 0 < alpha <= 1",
                    f"Write {signature}.",
                )
        elif len(args) == 2:
            duration = self._duration(args[1], signature)
        spec = WindowSpec(
            func=func,
            source=ast.get_source_segment(self._stripped, node) or func,
            names=inner_names,
            duration_ms=duration,
            alpha=alpha,
        )
        self.windows.append(spec)
        return Window(len(self.windows) - 1, spec, arg)

    # -- aggregates over children ------------------------------------------------------------

    def _children_outside(self) -> tuple[str, str]:
        """The problem and fix for `children` used other than as an aggregate's argument."""
        if self.child_types is None:
            return (
                "aggregates over children are only allowed in the derived values of a type "
                "that declares children",
                "Declare children: [child type] in the type and the aggregate as a derived "
                "value, e.g. total_flow: sum(children.flow); rules then use its name.",
            )
        return (
            "'children' is only allowed as the argument of an aggregate",
            AGGREGATE_HELP,
        )

    def _aggregate(self, node: ast.Call, func: str) -> Node:
        if func not in AGGREGATE_FUNCTIONS:
            raise self.error(node, f"{func}() cannot aggregate children", AGGREGATE_HELP)
        if self.child_types is None:
            raise self.error(node, *self._children_outside())
        steps = self._steps(node.args[0])[1:]
        child_type = where = name = None
        if steps and steps[0][0] == "attr" and steps[0][1] in self.child_types:
            if len(steps) > 1 or func == "count":  # sum(children.pump) sums a value 'pump'
                child_type = steps.pop(0)[1]
        if steps and steps[0][0] == "where":
            where = steps.pop(0)[1]
        if steps and steps[0][0] == "attr":
            name = steps.pop(0)[1]
            if name.startswith("_"):
                raise self.error(node, f"names starting with '_' are not allowed ({name!r})")
        if steps:
            kind, text = steps[0]
            if kind == "attr" and name is not None and child_type is None and where is None:
                problem = f"'{name}' is not a child type of this type (children: " + (
                    ", ".join(self.child_types) or "none"
                )
                raise self.error(node, problem + ")", AGGREGATE_HELP)
            raise self.error(node, f"unexpected '.{text}' in the aggregate", AGGREGATE_HELP)
        if name is None and func != "count":
            raise self.error(
                node, f"{func} needs a value: write {func}(children.flow)", AGGREGATE_HELP
            )
        key = ast.unparse(node)
        self.aggregates.setdefault(key, AggregateSpec(func, child_type, name, where, key))
        return Aggregate(self.aggregates[key])

    def _steps(self, node: ast.AST) -> list[tuple[str, str]]:
        """children.pump.where(cond).flow as [("name", "children"), ("attr", "pump"),
        ("where", "cond"), ("attr", "flow")]."""
        if isinstance(node, ast.Name):
            return [("name", node.id)]
        if isinstance(node, ast.Attribute):
            return [*self._steps(node.value), ("attr", node.attr)]
        call = node
        assert isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
        if call.func.attr != "where" or len(call.args) != 1 or call.keywords:
            raise self.error(
                call, f"'.{call.func.attr}(...)' is not allowed in an aggregate", AGGREGATE_HELP
            )
        condition = ast.get_source_segment(self._stripped, call.args[0])
        return [*self._steps(call.func.value), ("where", condition)]

    def _attribute(self, node: ast.Attribute, depth: int) -> Node:
        if _children_root(node) and CHILDREN not in self.known:
            raise self.error(node, *self._children_outside())
        raise self.error(node, "attribute access (x.y) not allowed")

    def _duration(self, node: ast.AST, signature: str) -> int:
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            raise self.error(node, f"the duration must be a string literal: {signature}", _units())
        try:
            return parse_duration(node.value)
        except ValueError as e:
            raise self.error(node, str(e), allowed=_units()) from None

    _HANDLERS = {
        ast.Constant: _constant,
        ast.Name: _name,
        ast.UnaryOp: _unary,
        ast.BinOp: _binary,
        ast.Compare: _compare,
        ast.BoolOp: _bool_op,
        ast.IfExp: _if_else,
        ast.Call: _call,
        ast.Attribute: _attribute,
    }


AGGREGATE_HELP = (
    "Aggregates over children: sum, avg, min, max or count of children[.TYPE][.where(cond)]"
    "[.name], e.g. sum(children.flow), avg(children.pump.temperature), count(children), "
    "count(children.where(flow > 5)); missing values are left out."
)


def _children_root(node: ast.AST) -> bool:
    """Whether `node` is `children` followed by attributes and .where(...) calls."""
    while True:
        if isinstance(node, ast.Name):
            return node.id == CHILDREN
        if isinstance(node, ast.Attribute):
            node = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            node = node.func.value
        else:
            return False


def _number_literal(node: ast.AST) -> float | None:
    """The value of an int/float literal, optionally signed, without evaluating anything else."""
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        sign = -1 if isinstance(node.op, ast.USub) else 1
        node = node.operand
    if not isinstance(node, ast.Constant) or isinstance(node.value, bool):
        return None
    if not isinstance(node.value, int | float) or abs(node.value) > MAX_LITERAL:
        return None
    return sign * float(node.value)


def _has_duration(node: ast.Call) -> bool:
    """min(x, '10m') is a window; min(a, b) is element-wise."""
    return (
        len(node.args) == 2
        and isinstance(node.args[1], ast.Constant)
        and (isinstance(node.args[1].value, str))
    )


def _function_list(allow_windows: bool) -> str:
    text = "Allowed functions: " + ", ".join(MATH_FUNCTIONS.values())
    if allow_windows:
        text += "; window functions: " + ", ".join(WINDOW_SIGNATURES.values())
    return text + "."


def _units() -> str:
    return "Durations are a number and a unit (" + ", ".join(DURATION_UNITS) + "), e.g. '10m'."


def _suggest(name: str, known: Iterable[str], kind: str, shown: int = 10) -> str:
    """'Did you mean ...? Known names: a, b, c (and 3 more).'"""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3)
    text = f"Did you mean {' or '.join(map(repr, close))}? " if close else ""
    if not known:
        return text + f"There are no known {kind}."
    more = f" (and {len(known) - shown} more)" if len(known) > shown else ""
    return text + f"Known {kind}: " + ", ".join(known[:shown]) + more + "."


def _symbol(op: ast.AST) -> str:
    symbols = {
        ast.FloorDiv: "//",
        ast.MatMult: "@",
        ast.BitAnd: "&",
        ast.BitOr: "|",
        ast.BitXor: "^",
        ast.LShift: "<<",
        ast.RShift: ">>",
        ast.Is: "is",
        ast.IsNot: "is not",
        ast.In: "in",
        ast.NotIn: "not in",
    }
    return symbols.get(type(op), type(op).__name__)


def _excerpt(source: str, line: int | None, col: int | None, width: int = 80) -> str:
    """The source, or for a long one the part around (line, col)."""
    if len(source) <= width:
        return source
    if line is None:
        return source[: width - 3] + "..."
    offset = sum(len(text) + 1 for text in source.split("\n")[: line - 1]) + col - 1
    start = max(0, offset - width // 2)
    end = start + width
    return ("..." if start else "") + source[start:end] + ("..." if end < len(source) else "")
