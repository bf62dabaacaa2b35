"""Aggregates over a parent's children (`sum(children.flow)`, `count(children.where(flow > 5))`):
what one call asks for, and NaN-aware reductions of many groups at once (one group a parent).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AGGREGATE_FUNCTIONS = ("sum", "avg", "min", "max", "count")
CHILDREN = "children"
"""The word an aggregate starts from: children[.TYPE][.where(cond)][.name]."""


@dataclass(frozen=True)
class AggregateSpec:
    """One aggregate call: `func` over the `name` values (None: count the children themselves)
    of the children of type `child_type` (None: of every child type that has the names) for
    which `where` (an expression source over the child's names, or None) holds.

    `key` is the call's canonical text; the engine keeps one value per parent under it.
    """

    func: str
    child_type: str | None
    name: str | None
    where: str | None
    key: str

    @property
    def empty(self) -> float:
        """The value over no children: count 0, anything else unknown (NaN), as in SQL."""
        return 0.0 if self.func == "count" else np.nan


@dataclass
class Partial:
    """Per-group statistics of the values that contributed (count, total, low, high)."""

    count: np.ndarray
    total: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def empty(cls, n: int) -> Partial:
        return cls(np.zeros(n), np.zeros(n), np.full(n, np.nan), np.full(n, np.nan))

    def add(self, other: Partial) -> None:
        """Fold in another part of the same groups (the children of another type)."""
        self.count += other.count
        self.total += other.total
        np.fmin(self.low, other.low, out=self.low)
        np.fmax(self.high, other.high, out=self.high)

    def result(self, func: str) -> np.ndarray:
        """The aggregate per group: NaN for sum, avg, min and max where nothing contributed."""
        if func == "count":
            return self.count.copy()
        none = self.count == 0
        if func == "sum":
            return np.where(none, np.nan, self.total)
        if func == "avg":
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(none, np.nan, self.total / self.count)
        return (self.low if func == "min" else self.high).copy()


def reduce_groups(
    func: str, values: np.ndarray | None, valid: np.ndarray, groups: np.ndarray, n: int
) -> Partial:
    """Statistics of `values` per group for the rows where `valid`, NaN values left out.

    `groups` (int, sorted ascending) gives each row's group in [0, n); `values` may be None for
    a count of rows. Runs as a few bincount / reduceat calls, never a loop over groups.
    """
    part = Partial.empty(n)
    if values is not None:
        valid = valid & ~np.isnan(values)
    part.count = np.bincount(groups, weights=valid, minlength=n).astype(np.float64)
    if func in ("sum", "avg"):
        part.total = np.bincount(groups, weights=np.where(valid, values, 0.0), minlength=n)
    elif func in ("min", "max") and len(groups):
        starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        masked = np.where(valid, values, np.nan)
        reduce = np.fmin if func == "min" else np.fmax
        target = part.low if func == "min" else part.high
        target[groups[starts]] = reduce.reduceat(masked, starts)
    return part
