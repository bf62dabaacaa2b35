"""The small safe expression language of livetwin: whitelisted Python syntax compiled to NumPy
over all twins of a type, with window functions (avg, min, max, sum, count, rate, delta, ewma,
time_in) whose per-twin state has a fixed size, and aggregates over a parent's children.
"""

from livetwin.expr.aggregates import AGGREGATE_FUNCTIONS, AggregateSpec, reduce_groups
from livetwin.expr.compiler import Compiled, EvalContext, compile_expression
from livetwin.expr.errors import ExpressionError
from livetwin.expr.parser import RESERVED_NAMES
from livetwin.expr.windows import BUCKETS, WindowSpec, WindowState, parse_duration

__all__ = [
    "AGGREGATE_FUNCTIONS",
    "AggregateSpec",
    "BUCKETS",
    "Compiled",
    "EvalContext",
    "ExpressionError",
    "RESERVED_NAMES",
    "WindowSpec",
    "WindowState",
    "compile_expression",
    "parse_duration",
    "reduce_groups",
]
