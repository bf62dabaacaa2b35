"""Aggregates over children across types: which child types contribute to an aggregate, and the
checks a type version passes against the types declared beside it (names, cycles).
"""

from __future__ import annotations

from collections.abc import Mapping

from livetwin.errors import InvalidInput
from livetwin.expr import AggregateSpec, Compiled, ExpressionError, compile_expression
from livetwin.spec.types import CompiledType


def child_filter(spec: AggregateSpec, child: CompiledType) -> Compiled | None:
    """The aggregate's `where` condition compiled for one child type (None without one).

    Raises ExpressionError when the condition does not fit the child type.
    """
    if spec.where is None:
        return None
    return compile_expression(spec.where, child.columns, allow_windows=False, field="where")


def contribution(spec: AggregateSpec, child: CompiledType) -> str | None:
    """Why twins of `child` cannot contribute to the aggregate, or None when they can."""
    if spec.name is not None and spec.name not in child.columns:
        return f"'{child.name}' has no '{spec.name}' (it has: {', '.join(child.columns)})"
    try:
        child_filter(spec, child)
    except ExpressionError as e:
        return f"its where condition does not fit '{child.name}': {e}"
    return None


def candidates(parent: CompiledType, spec: AggregateSpec) -> tuple[str, ...]:
    """The child types an aggregate may read: the one it names, else all the parent's."""
    return (spec.child_type,) if spec.child_type else tuple(parent.spec.children)


def check_aggregates(ctype: CompiledType, types: Mapping[str, CompiledType]) -> None:
    """Check a type version about to be declared against the other declared `types`: every
    aggregate of it (and of its parents over it) has a child type that can contribute, and
    no aggregate depends on itself through children. Child types not declared yet are
    checked when they are."""
    types = {**types, ctype.name: ctype}
    for parent in types.values():
        if parent.aggregates and (parent is ctype or ctype.name in parent.spec.children):
            _check_names(parent, ctype, types)
    _check_cycles(ctype, types)


def _check_names(parent: CompiledType, new: CompiledType, types) -> None:
    for name in parent.aggregated:
        for spec in parent.compiled[name].aggregates:
            wanted = candidates(parent, spec)
            if not all(c in types for c in wanted):
                continue
            problems = [contribution(spec, types[c]) for c in wanted]
            if any(p is None for p in problems):
                continue
            if parent is new:
                raise InvalidInput(
                    f"derived value '{name}': no child type can contribute to {spec.key}: "
                    + "; ".join(problems),
                    field=f"derived.{name}.expr",
                    fix="use a name the child types declare (children.<name>), or name the "
                    "child type: children.<type>.<name>",
                )
            raise InvalidInput(
                f"type '{parent.name}' aggregates its '{new.name}' children in derived value "
                f"'{name}' ({spec.key}), and this version of '{new.name}' cannot contribute: "
                + "; ".join(problems),
                field="properties" if spec.name not in new.columns else "derived",
                fix=f"keep what '{parent.name}' reads in '{new.name}', or first change "
                f"'{parent.name}' (derived.{name})",
            )


def _check_cycles(new: CompiledType, types: Mapping[str, CompiledType]) -> None:
    """Refuse derived values that depend on themselves through aggregates over children."""
    edges: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for t in types.values():
        for name in t.derived_order:
            compiled = t.compiled[name]
            deps = [(t.name, d) for d in sorted(compiled.names) if d in t.compiled]
            for spec in compiled.aggregates:
                for child_name in candidates(t, spec):
                    child = types.get(child_name)
                    if child is None or contribution(spec, child) is not None:
                        continue
                    read = {spec.name} if spec.name else set()
                    where = child_filter(spec, child)
                    read |= set(where.names) if where else set()
                    deps += [(child.name, d) for d in sorted(read) if d in child.compiled]
            edges[(t.name, name)] = deps
    state: dict[tuple[str, str], int] = {}  # 1 on the path, 2 done

    def visit(node, path) -> None:
        if state.get(node) == 2:
            return
        if state.get(node) == 1:
            cycle = path[path.index(node) :] + [node]
            shown = " -> ".join(f"{t}.{n}" for t, n in cycle)
            mine = next((n for t, n in cycle if t == new.name), cycle[0][1])
            raise InvalidInput(
                f"derived values depend on themselves through children: {shown}",
                field=f"derived.{mine}.expr",
                fix="an aggregate cannot read a value that is computed from the same aggregate; "
                "aggregate a property of the children or a value that does not aggregate",
            )
        state[node] = 1
        for dep in edges.get(node, ()):
            visit(dep, path + [node])
        state[node] = 2

    for node in edges:
        visit(node, [])
